"""Audit of halo tiled inference as an analyst or a tool builder uses it: the caller's model is left
as it was, an output that overlaps the input is refused, misleading or missing warnings, clear
errors for unusual model outputs and device arguments."""

import logging
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.inference import find_tile_shape, predict_tiled, tile_mismatch  # noqa: E402

nn = torch.nn


def _bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.0),
                         nn.Conv2d(4, 2, 3, padding=1))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(model, before):
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


@pytest.mark.parametrize("call", ["predict_tiled", "tile_mismatch", "find_tile_shape"])
def test_training_mode_model_keeps_its_buffers_and_mode(call):
    # A model left in training mode (e.g. MC dropout, or a forgotten model.eval() during training):
    # the prediction runs in that mode, but BatchNorm's running statistics must not be overwritten
    # by the probe pass and the tiles.
    m = _bn_net().train()
    before = _state(m)
    x = np.random.default_rng(0).normal(size=(40, 48)).astype(np.float32) * 5 + 3
    if call == "predict_tiled":
        predict_tiled(m, x, tile_shape=(16, 16), halo=2, progress=False)
    elif call == "tile_mismatch":
        tile_mismatch(m, x, tile_shape=(24, 24))
    else:
        find_tile_shape(m, image_shape=(40, 48), halo=2)
    assert _changed(m, before) == []
    assert m.training and all(mod.training for mod in m.modules())


def test_training_mode_buffers_kept_when_the_model_fails_mid_run():
    m = _bn_net().train()
    calls = {"n": 0}

    def hook(mod, inp):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")

    h = m[0].register_forward_pre_hook(hook)
    before = _state(m)
    x = np.random.default_rng(1).normal(size=(40, 48)).astype(np.float32) * 5 + 3
    with pytest.raises(RuntimeError, match="boom"):
        predict_tiled(m, x, tile_shape=(16, 16), halo=2, progress=False)
    h.remove()
    assert _changed(m, before) == []


def test_out_sharing_memory_with_the_image_is_refused():
    # In-place prediction would read windows that earlier tiles already overwrote.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 1, 5, padding=2)).eval()
    buf = np.random.default_rng(0).normal(size=(1, 48, 52)).astype(np.float32)
    keep = buf.copy()
    for blend in ("crop", "linear"):
        with pytest.raises(ValueError, match="out: .*image"):
            predict_tiled(m, buf, tile_shape=(24, 24), out=buf, blend=blend, progress=False)
    with pytest.raises(ValueError, match="out: .*image"):
        predict_tiled(m, buf[0], tile_shape=(24, 24), out=buf, progress=False)
    np.testing.assert_array_equal(buf, keep)  # refused before anything was written


def test_zarr_out_that_is_the_input_array_is_refused(tmp_path):
    zarr = pytest.importorskip("zarr")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2)).eval()
    x = np.random.default_rng(0).normal(size=(1, 48, 48)).astype(np.float32)
    where = os.fspath(tmp_path / "a.zarr")
    z = zarr.create_array(store=where, shape=x.shape, chunks=(1, 24, 24), dtype="f4")
    z[...] = x
    again = zarr.open_array(where, mode="r+")
    for out in (z, again):
        with pytest.raises(ValueError, match="out: .*image"):
            predict_tiled(m, z, tile_shape=(24, 24), out=out, progress=False)
    np.testing.assert_array_equal(z[...], x)


def test_path_out_that_holds_the_input_image_is_refused(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)).eval()
    x = np.random.default_rng(0).normal(size=(1, 48, 48)).astype(np.float32)
    p = os.fspath(tmp_path / "a.ome.zarr")
    first = predict_tiled(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).eval(), x, tile_shape=(24, 24), out=p,
                          progress=False)
    kept = np.asarray(first[...]).copy()
    with pytest.raises(ValueError, match="out: .*image"):
        predict_tiled(m, p, tile_shape=(24, 24), out=p, progress=False)
    np.testing.assert_array_equal(first[...], kept)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("xmodal")]


def test_training_mode_warning_names_mode_dependent_layers_only(caplog):
    x = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        # a freshly built wrapper is in training mode but has nothing whose behaviour depends on it
        predict_tiled(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU()), x, tile_shape=(16, 16),
                      progress=False)
    assert not any("training" in w for w in _warnings(caplog))
    caplog.clear()
    m = _bn_net().eval()
    m[1].train()  # the top level says eval, one BatchNorm still trains
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(m, x, tile_shape=(16, 16), progress=False)
    assert any("training" in w and "BatchNorm2d" in w for w in _warnings(caplog))


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_per_window_statistics_are_warned_about(caplog, norm):
    torch.manual_seed(0)
    layer = nn.GroupNorm(2, 4) if norm == "group" else nn.InstanceNorm2d(4, affine=True)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), layer, nn.Conv2d(4, 1, 3, padding=1)).eval()
    x = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(m, x, tile_shape=(24, 24), progress=False)
    assert any("tile_mismatch" in w and type(layer).__name__ in w for w in _warnings(caplog))
    caplog.clear()
    ok = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, track_running_stats=True),
                       nn.Conv2d(4, 1, 3, padding=1)).eval()  # eval mode: running statistics, exact
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(ok, x, tile_shape=(24, 24), progress=False)
    assert not any("tile_mismatch" in w for w in _warnings(caplog))


def test_model_returning_a_dict_is_a_clear_error():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return {"out": self.c(x)}

    x = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match=r"model: .*expected a tensor.*got dict"):
        predict_tiled(Dict().eval(), x, tile_shape=(16, 16), progress=False)


def test_device_accepts_a_torch_device_and_names_the_device_given():
    m = _bn_net().eval()
    x = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    a = predict_tiled(m, x, tile_shape=(16, 16), device=torch.device("cpu"), progress=False)
    b = predict_tiled(m, x, tile_shape=(16, 16), device="cpu", progress=False)
    np.testing.assert_array_equal(a, b)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda:1'"):
            predict_tiled(m, x, tile_shape=(16, 16), device="cuda:1", progress=False)


def test_model_failing_on_an_off_grid_extent_names_the_axis_and_factor():
    # A U-Net without internal padding fails on an extent that is not a multiple of its factor, on the
    # whole image as on the last window; the error keeps its type and says why.
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, padding=1)
            self.p = nn.MaxPool2d(2)
            self.u = nn.Upsample(scale_factor=2)

        def forward(self, x):
            a = self.c(x)
            return a + self.u(self.p(a))

    x = np.zeros((40, 41), np.float32)
    with pytest.raises(RuntimeError) as info:
        predict_tiled(Pool().eval(), x, tile_shape=(20, 20), progress=False)
    if hasattr(info.value, "add_note"):
        notes = " ".join(getattr(info.value, "__notes__", []))
        assert "axis 1" in notes and "factor (2, 2)" in notes


def test_a_given_halo_below_half_the_receptive_field_is_warned_about(caplog):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.ReLU(), nn.Conv2d(2, 1, 5, padding=2)).eval()  # field 9
    x = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(m, x, tile_shape=(24, 24), halo=(5, 2), progress=False)
    assert any(w.startswith("halo: (5, 2)") for w in _warnings(caplog))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(m, x, tile_shape=(24, 24), halo=5, progress=False)
    assert not any(w.startswith("halo:") for w in _warnings(caplog))


def test_a_normalizer_producing_nan_is_a_clear_error():
    # A per-window z-score divides by zero on a constant (background) window: NaN would fill that
    # tile's prediction silently.
    m = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1)).eval()
    x = np.zeros((48, 48), np.float32)
    x[:24, :24] = np.random.default_rng(0).normal(size=(24, 24))

    def zscore(w):
        with np.errstate(invalid="ignore"):  # windows are normalised in the reader thread
            return (w - w.mean()) / w.std()

    with pytest.raises(ValueError, match="normalize: expected finite values"):
        predict_tiled(m, x, tile_shape=(24, 24), halo=0, normalize=zscore, progress=False)


class _NanInCorner(nn.Module):
    """A model that returns NaN where its input exceeds 3 (one pixel of the image below)."""

    def forward(self, x):
        return torch.where(x > 3, torch.full_like(x, float("nan")), x * 2)


@pytest.mark.parametrize("blend", ["crop", "linear"])
def test_a_model_returning_nan_is_a_clear_error(blend, tmp_path):
    x = np.zeros((48, 48), np.float32)
    x[40, 40] = 5.0
    with pytest.raises(ValueError, match="model: expected finite outputs, got 1 NaN"):
        predict_tiled(_NanInCorner().eval(), x, tile_shape=(24, 24), halo=0, blend=blend, progress=False)
    # the same model on an image that never triggers it predicts as before
    y = predict_tiled(_NanInCorner().eval(), x.clip(0, 1), tile_shape=(24, 24), halo=0, blend=blend,
                      progress=False)
    np.testing.assert_array_equal(y[0], x.clip(0, 1) * 2)
