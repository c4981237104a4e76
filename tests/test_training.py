"""Training of the EM affinity model: reproducibility, joint augmentation of raw and labels, and
the shipped ``em_affinity_unet`` (loading, metadata, prediction). Quick: no real data is read."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from xmodal.models import affinity_targets
from xmodal.models._augment import (
    EMAugmentation,
    affinity_targets_ignore,
    augment_intensity,
    augmented_sample,
    sample_geometry,
    warp_pair,
)
from xmodal.models.em import (
    EM_N_ATTRACTIVE,
    EM_OFFSETS,
    bias_affinities,
    em_affinity_unet_metadata,
    em_quantile_range,
    em_weights_path,
    normalize_em,
)

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional extra
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (xmodal[torch])")

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("train_em_affinities", ROOT / "scripts" / "train_em_affinities.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cells(shape, n_cells, seed):
    """Voronoi cells with 2-px membranes (label 0) between them, and an EM-like raw image of them:
    bright cytoplasm, dark membranes, noise."""
    from xmodal.segmentation._synthetic import voronoi_labels

    lab = voronoi_labels(shape, n_cells, seed=seed)
    edge = np.zeros(shape, bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    lab = np.where(edge, 0, lab).astype(np.int32)
    rng = np.random.default_rng(seed)
    raw = np.where(lab > 0, 180.0, 50.0) + rng.normal(0, 15, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), lab


# ------------------------------------------------------------------------------------ training


@needs_torch
def test_training_is_bit_identical_for_the_same_seed(tmp_path):
    mod = _script()
    raws, labs = zip(*[_cells((48, 48), 12, s) for s in (1, 2)])
    raws, labs = np.stack(raws), np.stack(labs)
    kw = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), steps=3, batch=2, crop=16,
              warmup=1, threads=1, aug=EMAugmentation(), log_every=0)
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    m1, meta1 = mod.train(raws, labs, seed=5, **kw)
    m2, meta2 = mod.train(raws, labs, seed=5, **kw)
    m3, _ = mod.train(raws, labs, seed=6, **kw)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if s1[k].is_floating_point())
    # the steps changed the weights (not a no-op)
    torch.manual_seed(0)
    fresh = type(m1)(1, 6, features=(4, 8)).state_dict()
    assert any(not torch.equal(s1[k], fresh[k]) for k in s1 if "running" not in k and s1[k].is_floating_point())
    t = meta1["training"]
    assert t["steps"] == 3 and t["seed"] == 5 and t["threads"] == 1 and t["deterministic"]
    assert t["wall_seconds"] >= 0 and t["augmentation"]["scale_range"] == [0.8, 1.2]
    lo, hi = em_quantile_range(raws, (0.01, 0.99))
    assert meta1["normalization"]["training_low"] == lo and meta1["normalization"]["training_high"] == hi

    # checkpoint round trip: weights, and metadata readable without torch from the .json sidecar
    from xmodal.models.em import load_em_affinity_unet

    out = tmp_path / "tiny.pt"
    mod.save_checkpoint(m1, meta1, out)
    assert not out.with_suffix(".pt.tmp").exists()
    assert json.loads(out.with_suffix(".json").read_text()) == em_affinity_unet_metadata(out)
    loaded = load_em_affinity_unet(out)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, s1[k]), k
    np.testing.assert_array_equal(loaded.offsets, EM_OFFSETS[:6])


@needs_torch
def test_training_rejects_bad_input():
    mod = _script()
    raw, lab = _cells((48, 48), 10, 0)
    with pytest.raises(ValueError, match="images, instances"):
        mod.train(raw[None], lab[None, :40], offsets=EM_OFFSETS, steps=1)
    with pytest.raises(ValueError, match="crop"):
        mod.train(raw[None], lab[None], offsets=EM_OFFSETS, steps=1, crop=64)
    with pytest.raises(ValueError, match="loss"):
        mod.train(raw[None], lab[None], offsets=EM_OFFSETS, steps=1, loss="dice")


@needs_torch
def test_boundary_dice_loss():
    mod = _script()
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # 0 = boundary (different objects)
    m = torch.ones_like(t)
    right = torch.where(t > 0, torch.tensor(20.0), torch.tensor(-20.0))  # logits of merge probability
    wrong = -right
    assert float(mod.masked_boundary_dice(right, t, m, eps=1e-6)) < 1e-6
    assert float(mod.masked_boundary_dice(wrong, t, m, eps=1e-6)) > 0.99
    # a masked-out wrong pixel does not count
    half = right.clone()
    half[0, 0, 0, 1] = 20.0  # boundary pixel predicted as merge
    m2 = m.clone()
    m2[0, 0, 0, 1] = 0.0
    assert float(mod.masked_boundary_dice(half, t, m2, eps=1e-6)) < 1e-6
    assert float(mod.masked_boundary_dice(half, t, m, eps=1e-6)) > 0.3
    # the training loss option: deterministic and recorded
    raws, labs = zip(*[_cells((48, 48), 12, s) for s in (1, 2)])
    kw = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), steps=2, batch=2, crop=16,
              warmup=1, threads=1, log_every=0, seed=3, loss="bce+dice")
    m1, meta = mod.train(np.stack(raws), np.stack(labs), **kw)
    m2, _ = mod.train(np.stack(raws), np.stack(labs), **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert "Dice" in meta["training"]["loss"]


@needs_torch
def test_malis_training_option():
    """--loss bce+malis: deterministic, recorded, and refused for offsets without the two
    nearest-neighbour channels first."""
    mod = _script()
    raws, labs = zip(*[_cells((48, 48), 12, s) for s in (1, 2)])
    kw = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), steps=2, batch=2, crop=16,
              warmup=1, threads=1, log_every=0, seed=3, loss="bce+malis")
    m1, meta = mod.train(np.stack(raws), np.stack(labs), **kw)
    m2, _ = mod.train(np.stack(raws), np.stack(labs), **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert "MALIS" in meta["training"]["loss"]
    m3, _ = mod.train(np.stack(raws), np.stack(labs), **{**kw, "loss": "bce"})
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))
    with pytest.raises(ValueError, match="bce\\+malis"):
        mod.train(np.stack(raws), np.stack(labs), **{**kw, "offsets": EM_OFFSETS[2:8]})


# ---------------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("seed", range(6))
def test_geometry_moves_raw_and_labels_together(seed):
    """Raw that *is* the label image, warped with nearest-neighbour sampling, equals the warped
    labels pixel for pixel: rotation, scale, flips and elastic deformation act identically."""
    _, lab = _cells((96, 96), 15, seed)
    rng = np.random.default_rng(seed)
    aug = EMAugmentation(rotate_prob=1.0, elastic_prob=1.0, elastic_alpha=4.0)
    coords = sample_geometry(rng, 70, lab.shape, aug)
    raw_w, lab_w = warp_pair(lab.astype(np.float32), lab, coords, raw_order=0)
    inside = lab_w >= 0
    assert inside.mean() > 0.9
    np.testing.assert_array_equal(raw_w[inside], lab_w[inside].astype(np.float32))
    # bilinear raw (the training default) still agrees with the labels away from label edges
    mem_raw = (lab > 0).astype(np.float32)
    raw_b, lab_b = warp_pair(mem_raw, lab, coords, raw_order=1)
    agree = (raw_b > 0.5) == (lab_b > 0)
    assert agree[lab_b >= 0].mean() > 0.95


@pytest.mark.parametrize("k", range(8))
def test_symmetries_are_exact(k):
    """Without rotation, scale or elastic terms the warp is one of the 8 symmetries of the square."""
    _, lab = _cells((33, 33), 8, k)
    aug = EMAugmentation(rotate_prob=0.0, scale_range=(1.0, 1.0), elastic_prob=0.0)
    coords = sample_geometry(np.random.default_rng(k), 33, lab.shape, aug, center=(16, 16))
    _, lab_w = warp_pair(lab.astype(np.float32), lab, coords, raw_order=0)
    candidates = [np.rot90(lab, j) for j in range(4)] + [np.rot90(lab, j)[:, ::-1] for j in range(4)]
    assert any(np.array_equal(lab_w, c) for c in candidates)


def test_scale_magnifies_objects():
    lab = np.zeros((200, 200), np.int32)
    yy, xx = np.mgrid[:200, :200]
    lab[(yy - 100) ** 2 + (xx - 100) ** 2 < 30 ** 2] = 1
    for s in (0.8, 1.2):
        aug = EMAugmentation(dihedral=False, rotate_prob=0.0, scale_range=(s, s), elastic_prob=0.0)
        coords = sample_geometry(np.random.default_rng(0), 180, lab.shape, aug, center=(100, 100))
        _, w = warp_pair(lab.astype(np.float32), lab, coords)
        ratio = (w == 1).sum() / (lab == 1).sum()
        assert abs(ratio - s ** 2) < 0.05 * s ** 2, (s, ratio)


def test_targets_follow_the_warped_labels():
    """augmented_sample: targets of the nearest-neighbour channels are 0 exactly where the raw
    (derived from the labels, geometry only) shows a membrane next to the pixel."""
    raw, lab = _cells((128, 128), 20, 3)
    x0 = normalize_em(raw)
    aug = EMAugmentation.geometry_only()
    x, t, m = augmented_sample(np.random.default_rng(1), x0, lab, crop=48, offsets=EM_OFFSETS, aug=aug)
    assert x.shape == (48, 48) and t.shape == m.shape == (len(EM_OFFSETS), 48, 48)
    assert t.dtype == np.uint8 and m.dtype == np.uint8
    # a pixel whose (-1, 0) and (0, -1) targets are both 1 lies inside a cell: bright raw
    inside = (t[0] == 1) & (t[1] == 1) & (m[0] == 1) & (m[1] == 1)
    membrane = (t[0] == 0) & (t[1] == 0) & (m[0] == 1) & (m[1] == 1)
    assert inside.sum() > 100 and membrane.sum() > 20
    assert x[inside].mean() > 0.7 and x[membrane].mean() < x[inside].mean() - 0.3


def test_affinity_targets_ignore_matches_brute_force():
    rng = np.random.default_rng(0)
    lab = rng.integers(-1, 4, size=(9, 11)).astype(np.int32)
    offs = np.array([[-1, 0], [0, -1], [-3, 2], [2, -4], [0, 12]])
    t, m = affinity_targets_ignore(lab, offs)
    for c, (dy, dx) in enumerate(offs):
        for y in range(9):
            for x in range(11):
                yy, xx = y + dy, x + dx
                ok = 0 <= yy < 9 and 0 <= xx < 11
                exp_m = ok and lab[y, x] != -1 and lab[yy, xx] != -1
                assert m[c, y, x] == exp_m
                if ok:
                    assert t[c, y, x] == (lab[y, x] == lab[yy, xx] and lab[y, x] != 0)
    # without unknown pixels: the same as xmodal.models.affinity_targets
    lab2 = np.abs(lab)
    t2, m2 = affinity_targets_ignore(lab2, offs)
    t_ref, m_ref = affinity_targets(lab2, offs, background=0)
    np.testing.assert_array_equal(t2, t_ref)
    np.testing.assert_array_equal(m2, m_ref)


def test_missing_patch_is_masked_and_intensity_is_reproducible():
    raw, lab = _cells((96, 96), 12, 4)
    x0 = normalize_em(raw)
    aug = EMAugmentation(missing_patch_prob=1.0, defect_line_prob=1.0, blur_prob=1.0, noise_prob=1.0,
                         local_contrast_prob=1.0)
    a = augmented_sample(np.random.default_rng(7), x0, lab, crop=32, offsets=EM_OFFSETS, aug=aug)
    b = augmented_sample(np.random.default_rng(7), x0, lab, crop=32, offsets=EM_OFFSETS, aug=aug)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    x, t, m = a
    assert np.isfinite(x).all()
    # the patch removes pixels from the loss (nearest-neighbour channel: all pairs inside the crop
    # would otherwise be valid except the first row)
    assert m[0, 1:].min() == 0
    y, missing = augment_intensity(np.random.default_rng(3), np.full((40, 40), 0.5, np.float32),
                                   EMAugmentation(missing_patch_prob=1.0))
    assert missing.any() and not missing.all() and y.shape == (40, 40)


def test_normalisation_is_global_quantile():
    rng = np.random.default_rng(0)
    raw = rng.integers(10, 240, size=(3, 40, 40)).astype(np.uint16) * 7  # another intensity range
    lo, hi = em_quantile_range(raw)
    np.testing.assert_allclose([lo, hi], np.quantile(raw.astype(float), [0.01, 0.99]))
    x = normalize_em(raw)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    # one slice normalised with the volume's values equals that slice of the whole
    np.testing.assert_array_equal(normalize_em(raw[1], low=lo, high=hi), x[1])
    with pytest.raises(ValueError, match="high"):
        normalize_em(raw, low=5.0, high=5.0)
    with pytest.raises(ValueError, match="raw"):
        em_quantile_range(np.zeros((0, 3)))


def test_bias_shifts_only_repulsive_channels():
    a = np.random.default_rng(0).random((5, 6, 6)).astype(np.float32)
    b = bias_affinities(a, n_attractive=2, bias=0.3)
    np.testing.assert_array_equal(b[:2], a[:2])
    np.testing.assert_allclose(b[2:], np.clip(a[2:] + 0.3, 0, 1))
    np.testing.assert_array_equal(bias_affinities(a, n_attractive=2, bias=0.0), a)


# ---------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def em_model():
    from xmodal.models.em import load_em_affinity_unet

    return load_em_affinity_unet()


def test_shipped_metadata_without_torch():
    meta = em_affinity_unet_metadata()
    np.testing.assert_array_equal(np.asarray(meta["offsets"]), EM_OFFSETS)
    assert meta["n_attractive"] == EM_N_ATTRACTIVE
    assert meta["convention"] == "merge_probability"
    norm = meta["normalization"]
    assert norm["kind"] == "quantile" and norm["quantiles"] == [0.01, 0.99]
    t = meta["training"]
    assert t["threads"] >= 1 and t["wall_seconds"] > 0 and t["deterministic"]
    assert set(t["train_slices"].replace("-", ",").split(",")) <= {str(i) for i in range(25)}
    assert "Cardona" in meta["data"] and "Arganda-Carreras" in meta["data"]
    d = meta["segmentation_defaults"]
    assert d["method"] in ("mws", "gasp", "multicut") and "20-24" in d["chosen_on"]
    assert d["mws"]["min_size"] >= 0 and 0.0 < d["baseline_threshold"] < 1.0
    # the default method is the best on slices 20-24 and beats the thresholded-boundary baseline there
    tuned = d["tune_mean_arand"]
    assert tuned[d["method"]] == min(tuned[m] for m in ("mws", "gasp", "multicut")) < tuned["baseline"]
    with __import__("importlib").resources.as_file(em_weights_path()) as p:
        assert p.stat().st_size <= 20e6


@needs_torch
def test_shipped_model_loads_and_predicts(em_model):
    meta = em_affinity_unet_metadata()
    assert not em_model.training
    np.testing.assert_array_equal(em_model.offsets, EM_OFFSETS)
    assert em_model.n_attractive == EM_N_ATTRACTIVE
    assert em_model.metadata["normalization"] == meta["normalization"]
    assert em_model.metadata["segmentation_defaults"] == meta["segmentation_defaults"]
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32))
    with torch.no_grad():
        y = em_model(x)
    assert y.shape == (1, len(EM_OFFSETS), 64, 64)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@needs_torch
def test_shipped_model_sees_membranes(em_model):
    """On real EM it never trained on (the packaged ISBI slice 25, a 256 x 256 crop) the
    nearest-neighbour merge probability is high inside cells and low on the ground-truth membranes,
    whatever the raw intensity range (global quantile normalisation)."""
    from xmodal.datasets import isbi2012_slices
    from xmodal.models.em import predict_em_affinities

    raw, gt = isbi2012_slices()
    raw, lab = raw[0, :256, :256], gt[0, :256, :256]
    for scale in (1.0, 40.0):
        aff = predict_em_affinities(em_model, normalize_em(raw.astype(np.float64) * scale + 1000 * (scale > 1)))
        inside = (lab > 0) & (np.roll(lab, 1, 0) == lab) & (np.roll(lab, 2, 0) == lab)
        inside[:3] = False
        across = (lab == 0)
        assert aff[0][inside].mean() > aff[0][across].mean() + 0.5


@needs_torch
@pytest.mark.slow
def test_shipped_model_tiled_prediction_is_exact(em_model):
    """BatchNorm in eval mode and no per-sample statistics: tiles with the automatic halo give the
    whole-image prediction exactly (the 5-level network needs tiles of at least 257 px)."""
    import xmodal
    from xmodal.models.em import predict_em_affinities

    raw, _ = _cells((544, 544), 60, 21)
    x = normalize_em(raw)
    whole = predict_em_affinities(em_model, x)
    tiled = xmodal.predict_tiled(em_model, x, tile_shape=(272, 272), progress=False, channel_axis=None)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
