"""Tests of xmodal.models: the shipped ISBI 2012 affinity U-Net and its helpers (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.models import (
    ISBI2012_N_ATTRACTIVE,
    ISBI2012_OFFSETS,
    affinity_targets,
    dihedral_transform,
    isbi2012_weights_path,
)

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional extra
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (xmodal[torch])")


@pytest.fixture(scope="module")
def model():
    from xmodal.models import load_isbi2012_affinity_unet

    return load_isbi2012_affinity_unet()


@needs_torch
def test_shipped_weights_small_and_described(model):
    assert isbi2012_weights_path().is_file()
    with __import__("importlib").resources.as_file(isbi2012_weights_path()) as p:
        assert p.stat().st_size < 2.5e6
    meta = model.metadata
    np.testing.assert_array_equal(np.asarray(meta["offsets"]), ISBI2012_OFFSETS)
    np.testing.assert_array_equal(model.offsets, ISBI2012_OFFSETS)
    assert model.n_attractive == meta["n_attractive"] == ISBI2012_N_ATTRACTIVE
    assert meta["convention"] == "merge_probability"
    assert "Cardona" in meta["data"] and "Arganda-Carreras" in meta["data"]
    assert meta["training"]["train_slices"] == "0-24" and meta["training"]["val_slices"] == "25-29"
    assert np.isfinite(meta["training"]["val_loss"])
    assert meta["normalization"]["std"] > 0


@needs_torch
def test_model_runs_in_eval_mode(model):
    assert not model.training
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 1, 64, 48)).astype(np.float32))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, len(ISBI2012_OFFSETS), 64, 48)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # eval mode: each sample independent of the batch (no batch statistics)
    with torch.no_grad():
        y0 = model(x[:1])
    np.testing.assert_allclose(y0.numpy(), y[:1].numpy(), atol=1e-5)
    # other sizes: padded at the end to multiples of 8 (last row / column repeated), output cropped
    with torch.no_grad():
        odd = model(x[:, :, :60, :45])
        padded = model(torch.nn.functional.pad(x[:, :, :60, :45], (0, 3, 0, 4), mode="replicate"))
    assert odd.shape == (2, len(ISBI2012_OFFSETS), 60, 45)
    np.testing.assert_allclose(odd.numpy(), padded[..., :60, :45].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="batch, 1, height, width"):
        model(torch.zeros(1, 2, 64, 64))


@needs_torch
def test_model_sees_a_membrane(model):
    """A dark line (membrane) on bright noisy cytoplasm: low merge probability across it."""
    from xmodal.models.isbi2012 import boundary_baseline_segmentation, predict_affinities

    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(170, 20, (96, 96)), 0, 255)
    img[:, 46:50] = 40  # vertical membrane
    img = img.astype(np.uint8)
    norm = model.metadata["normalization"]
    aff = predict_affinities(model, img, mean=norm["mean"], std=norm["std"])
    assert aff.shape == (len(ISBI2012_OFFSETS), 96, 96)
    across = aff[1, 20:76, 48:51].mean()  # offset (0, -1) at the membrane columns
    inside = aff[1, 20:76, 15:30].mean()
    assert inside > across + 0.2, (inside, across)
    seg = boundary_baseline_segmentation(aff, n_attractive=2, threshold=0.5)
    assert seg[48, 20] != seg[48, 75]


@needs_torch
def test_unet_architecture():
    from xmodal.models import UNet2D

    net = UNet2D(1, 3, features=(4, 8)).eval()
    assert net.divisor == 2
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 10, 6)).shape == (1, 3, 10, 6)
    with pytest.raises(ValueError, match="features"):
        UNet2D(1, 1, features=(8,))
    with pytest.raises(ValueError, match="final_activation"):
        UNet2D(1, 1, final_activation="softmax")


def test_affinity_targets_hand_example():
    labels = np.array([[1, 1, 0, 2],
                       [1, 1, 0, 2],
                       [3, 3, 3, 2]])
    t, m = affinity_targets(labels, [[-1, 0], [0, -1], [0, 2]], background=0)
    # (-1, 0): pixel and the one above
    np.testing.assert_array_equal(t[0], [[0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(m[0], [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    # (0, -1): pixel and its left neighbour; background pairs are 0
    np.testing.assert_array_equal(t[1], [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]])
    # (0, 2): two to the right
    np.testing.assert_array_equal(t[2], [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(m[2], [[1, 1, 0, 0]] * 3)
    t_all, _ = affinity_targets(labels, [[0, -1]], background=None)
    assert t_all[0, 0, 3] == 0 and t_all[0, 1, 1] == 1
    with pytest.raises(ValueError, match="offsets"):
        affinity_targets(labels, [[0, 1, 0]])
    with pytest.raises(TypeError, match="integer"):
        affinity_targets(labels.astype(float), [[0, 1]])


def test_dihedral_transform_group():
    a = np.arange(12).reshape(3, 4)
    outs = {dihedral_transform(a, k).tobytes() + bytes(dihedral_transform(a, k).shape) for k in range(8)}
    assert len(outs) == 8  # 8 distinct symmetries
    np.testing.assert_array_equal(dihedral_transform(a, 4), a[:, ::-1])
    with pytest.raises(ValueError, match="0..7"):
        dihedral_transform(a, 8)


def test_load_model_by_name_file_or_module(tmp_path):
    torch = pytest.importorskip("torch")
    from xmodal.models import SHIPPED_MODELS, load_model

    shipped = load_model("isbi2012")
    assert "isbi2012" in SHIPPED_MODELS and shipped.n_attractive == 2 and not shipped.training
    assert load_model(shipped) is shipped
    scripted = torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval())
    scripted.save(str(tmp_path / "m.pt"))
    loaded = load_model(tmp_path / "m.pt")
    x = torch.zeros(1, 1, 5, 5)
    assert torch.equal(loaded(x), scripted(x))
    with pytest.raises(ValueError, match="model: expected one of \\['isbi2012'\\]"):
        load_model("no-such-model")
    with pytest.raises(TypeError, match="model: expected a model name"):
        load_model(42)
