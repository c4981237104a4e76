"""EM affinity models that also read the neighbouring sections of a stack ("context" input
channels): the stack layout, the joint augmentation of the sections, training and prediction.
Quick: synthetic data only."""

from __future__ import annotations

import numpy as np
import pytest
from test_training import _script, needs_torch, torch  # the training script's loader

from xmodal.models._augment import EMAugmentation, augmented_sample
from xmodal.models.em import EM_OFFSETS, em_context_stack, predict_em_affinities


def _stack(n, shape=(48, 48), seed=0):
    """``n`` sections of one synthetic cell layout (membranes 0) drifting by one pixel a section."""
    from xmodal.segmentation._synthetic import voronoi_labels

    lab = voronoi_labels((shape[0], shape[1] + n), 12, seed=seed)
    edge = np.zeros(lab.shape, bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    lab = np.where(edge, 0, lab).astype(np.int32)
    labs = np.stack([lab[:, z:z + shape[1]] for z in range(n)])
    rng = np.random.default_rng(seed)
    raws = np.clip(np.where(labs > 0, 180.0, 50.0) + rng.normal(0, 15, labs.shape), 0, 255).astype(np.uint8)
    return raws, labs


def test_context_stack_mirrors_at_the_ends():
    x = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    c1 = em_context_stack(x, 1)
    assert c1.shape == (4, 3, 2, 3)
    np.testing.assert_array_equal(c1[:, :, 0, 0], [[1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 2]])
    np.testing.assert_array_equal(em_context_stack(x, 2)[0, :, 0, 0], [2, 1, 0, 1, 2])
    np.testing.assert_array_equal(em_context_stack(x[:2], 2)[:, :, 0, 0], [[0, 1, 0, 1, 0], [1, 0, 1, 0, 1]])
    np.testing.assert_array_equal(em_context_stack(x[:1], 1)[0, :, 0, 0], [0, 0, 0])
    np.testing.assert_array_equal(em_context_stack(x, 0)[:, 0], x)
    with pytest.raises(ValueError, match="x: expected a \\(sections, H, W\\)"):
        em_context_stack(x[0], 1)
    with pytest.raises(ValueError, match="context"):
        em_context_stack(x, -1)


def test_context_sections_share_the_geometry():
    """Without shifts or intensity changes every section is warped exactly like the centre, and the
    centre (raw, targets, mask) is the single-section sample of the same seed."""
    raws, labs = _stack(3)
    x3 = np.stack([raws[1]] * 3).astype(np.float32) / 255.0
    aug = EMAugmentation(rotate_prob=1.0, elastic_prob=1.0, local_contrast_prob=0.0, contrast_range=(1, 1),
                         brightness_range=(0, 0), gamma_range=(1, 1), blur_prob=0.0, noise_prob=0.0,
                         defect_line_prob=0.0, missing_patch_prob=0.0, section_shift=0.0,
                         missing_section_prob=0.0)
    for seed in range(4):
        x, t, m = augmented_sample(np.random.default_rng(seed), x3, labs[1], crop=16, offsets=EM_OFFSETS, aug=aug)
        x1, t1, m1 = augmented_sample(np.random.default_rng(seed), x3[1], labs[1], crop=16, offsets=EM_OFFSETS,
                                      aug=aug)
        assert x.shape == (3, 16, 16) and t.shape == t1.shape
        np.testing.assert_array_equal(x[1], x1)
        np.testing.assert_array_equal(x[0], x1)
        np.testing.assert_array_equal(x[2], x1)
        np.testing.assert_array_equal(t, t1)
        np.testing.assert_array_equal(m, m1)


def test_context_sections_shift_and_go_missing():
    from scipy.ndimage import gaussian_filter

    raws, labs = _stack(3, shape=(64, 64))
    smooth = gaussian_filter(raws[1].astype(np.float32) / 255.0, 3.0)
    x3 = np.stack([smooth] * 3)
    quiet = dict(local_contrast_prob=0.0, contrast_range=(1, 1), brightness_range=(0, 0), gamma_range=(1, 1),
                 blur_prob=0.0, noise_prob=0.0, defect_line_prob=0.0, missing_patch_prob=0.0)
    shifted = EMAugmentation(section_shift=2.0, missing_section_prob=0.0, **quiet)
    x, _, _ = augmented_sample(np.random.default_rng(1), x3, labs[1], crop=32, offsets=EM_OFFSETS, aug=shifted)
    for j in (0, 2):  # misaligned, but the same image
        assert not np.array_equal(x[j], x[1])
        assert np.corrcoef(x[j].ravel(), x[1].ravel())[0, 1] > 0.2
    lost = EMAugmentation(section_shift=0.0, missing_section_prob=1.0, **quiet)
    sharp = np.stack([raws[1]] * 3).astype(np.float32) / 255.0
    x, _, m = augmented_sample(np.random.default_rng(1), sharp, labs[1], crop=32, offsets=EM_OFFSETS, aug=lost)
    assert x[0].std() < 0.05 and x[2].std() < 0.05 and x[1].std() > 2 * x[0].std()
    assert m.mean() > 0.5  # a lost neighbour does not remove the centre's targets


@needs_torch
def test_context_training_is_reproducible_and_predicts(tmp_path):
    mod = _script()
    raws, labs = _stack(4)
    kw = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), steps=3, batch=2, crop=16,
              warmup=1, threads=1, log_every=0, context=1, val_images=raws[:2], val_instances=labs[:2])
    m1, meta = mod.train(raws, labs, seed=2, **kw)
    m2, _ = mod.train(raws, labs, seed=2, **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert meta["in_channels"] == 3 and meta["context"] == 1 and meta["training"]["val_loss"] > 0
    first = next(v for v in m1.state_dict().values() if v.ndim == 4)
    assert first.shape[1] == 3  # the first convolution reads three sections

    from xmodal.models.em import load_em_affinity_unet, normalize_em

    out = tmp_path / "ctx.pt"
    mod.save_checkpoint(m1, meta, out)
    model = load_em_affinity_unet(out)
    x = em_context_stack(normalize_em(raws), 1)
    a = predict_em_affinities(model, x[1, :, :40, :44])
    assert a.shape == (6, 40, 44) and np.all((a >= 0) & (a <= 1))
    with pytest.raises(ValueError, match="x: expected a \\(batch, 3"):  # it reads three sections
        predict_em_affinities(model, x[1, 1])
