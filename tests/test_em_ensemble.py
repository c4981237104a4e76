"""Ensembles of EM affinity networks (``AffinityEnsemble``, ``scripts/make_em_ensemble.py``): the
output is the mean of the members' merge probabilities, the checkpoint loads through
``load_em_affinity_unet``, bad member sets are refused. Quick: tiny networks, synthetic slices."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.models.em import EM_OFFSETS, load_em_affinity_unet, predict_em_affinities  # noqa: E402
from xmodal.models.unet2d import AffinityEnsemble, UNet2D  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _slices(n=2, shape=(48, 48)):
    from xmodal.segmentation._synthetic import voronoi_labels

    raws, labs = [], []
    for s in range(n):
        lab = voronoi_labels(shape, 10, seed=s)
        edge = np.zeros(shape, bool)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        lab = np.where(edge, 0, lab).astype(np.int32)
        raw = np.where(lab > 0, 180.0, 50.0) + np.random.default_rng(s).normal(0, 15, shape)
        raws.append(np.clip(raw, 0, 255).astype(np.uint8))
        labs.append(lab)
    return np.stack(raws), np.stack(labs)


def test_ensemble_is_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [UNet2D(1, 3, features=(4, 8), final_activation="sigmoid").eval() for _ in range(3)]
    ens = AffinityEnsemble(members).eval()
    x = torch.rand(2, 1, 20, 23)
    with torch.no_grad():
        want = sum(m(x) for m in members) / 3
        got = ens(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert ens.divisor == 2 and ens.in_channels == 1 and ens.out_channels == 3
    with pytest.raises(ValueError, match="members: expected at least one"):
        AffinityEnsemble([])
    with pytest.raises(ValueError, match="members: expected equal"):
        AffinityEnsemble([members[0], UNet2D(1, 4, features=(4, 8))])


def test_ensemble_receptive_field_and_tiling_are_the_members():
    from xmodal.inference import predict_tiled
    from xmodal.inference._receptive import receptive_field

    torch.manual_seed(1)
    members = [UNet2D(1, 3, features=(4, 8, 16), final_activation="sigmoid").eval() for _ in range(2)]
    ens = AffinityEnsemble(members).eval()
    one, both = receptive_field(members[0], 2), receptive_field(ens, 2)
    assert (both.size, both.factor, both.halo) == (one.size, one.factor, one.halo)
    x = np.random.default_rng(2).random((150, 131), dtype=np.float32)
    whole = predict_tiled(ens, x, tile_shape=(152, 132), progress=False)
    with torch.no_grad():
        direct = ens(torch.from_numpy(x)[None, None])[0].numpy()
    assert np.abs(direct - whole).max() <= 1e-6
    tiled = predict_tiled(ens, x, tile_shape=(60, 60), progress=False)
    assert np.abs(whole - tiled).max() <= 1e-6


@pytest.mark.parametrize("half", [False, True])
def test_make_em_ensemble_checkpoint(tmp_path, half):
    from PIL import Image

    train_mod = _load("train_em_affinities")
    make = _load("make_em_ensemble")
    raws, labs = _slices()
    data = tmp_path / "isbi"
    (data / "train_image").mkdir(parents=True)
    (data / "train_label").mkdir()
    for i, (r, lab) in enumerate(zip(raws, labs)):
        Image.fromarray(r).save(data / "train_image" / f"{i}.png")
        Image.fromarray(np.where(lab > 0, 255, 0).astype(np.uint8)).save(data / "train_label" / f"{i}.png")
    kw = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), steps=2, batch=2, crop=16, warmup=1,
              threads=1, log_every=0)
    paths = []
    for seed in (1, 2):
        model, meta = train_mod.train(raws, labs, seed=seed, **kw)
        meta["training"].update(train_slices="0-1", val_slices="0-1")
        paths.append(tmp_path / f"m{seed}.pt")
        train_mod.save_checkpoint(model, meta, paths[-1])
    out = tmp_path / "ens" / "em.pt"
    make.main(["--members", *map(str, paths), "--out", str(out), "--data", str(data), "--val-slices", "0-1"]
              + (["--half"] if half else []))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["ensemble"]["n_members"] == 2 and meta["training"]["kind"] == "ensemble"
    assert meta["ensemble"]["weights_dtype"] == ("float16" if half else "float32")
    assert meta["training"]["seed"] == [1, 2] and len(meta["training"]["member_val_loss"]) == 2
    assert "segmentation_defaults" not in meta
    ens = load_em_affinity_unet(out)
    assert isinstance(ens, AffinityEnsemble)
    np.testing.assert_array_equal(ens.offsets, EM_OFFSETS[:6])
    x = np.random.default_rng(0).random((37, 41), dtype=np.float32)
    members = [load_em_affinity_unet(p) for p in paths]
    want = np.mean([predict_em_affinities(m, x) for m in members], axis=0)
    got = predict_em_affinities(ens, x)
    np.testing.assert_allclose(got, want, atol=5e-3 if half else 1e-6)
    # the stored validation loss is that of the checkpoint as written
    assert np.isfinite(meta["training"]["val_loss"]) and meta["training"]["val_loss"] > 0
    # an ensemble cannot be a member, and members must agree on their offsets
    with pytest.raises(SystemExit, match="already an ensemble"):
        make.main(["--members", str(out), str(paths[0]), "--out", str(tmp_path / "x.pt"), "--data", str(data)])
    model, meta3 = train_mod.train(raws, labs, seed=3, **{**kw, "offsets": EM_OFFSETS[:5]})
    meta3["training"].update(train_slices="0-1", val_slices="0-1")
    train_mod.save_checkpoint(model, meta3, tmp_path / "m3.pt")
    with pytest.raises(SystemExit, match="'offsets' differs"):
        make.main(["--members", str(paths[0]), str(tmp_path / "m3.pt"), "--out", str(tmp_path / "y.pt"),
                   "--data", str(data)])
