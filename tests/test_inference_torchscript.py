"""TorchScript models (``torch.jit.script`` / ``torch.jit.trace`` files, as ``xmodal predict --model
unet.pt`` loads them) in tiled inference: receptive field, layout, tiling, tile shape, mismatch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.inference import (  # noqa: E402
    activation_bytes_per_voxel,
    find_tile_shape,
    predict_tiled,
    receptive_field,
    tile_mismatch,
)
from xmodal.inference._receptive import ReceptiveFieldError, spatial_signature  # noqa: E402
from xmodal.models import load_model  # noqa: E402

nn = torch.nn
F = nn.functional


class Net2d(nn.Module):
    """Conv-BN-ReLU, max pooling, dilated convolution, nearest up-sampling, skip concatenation."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(6, 6, 3, padding=2, dilation=2), nn.BatchNorm2d(6), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                 nn.Upsample(scale_factor=2))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        a = self.enc(x)
        b = self.up(self.mid(self.pool(a)))
        return self.out(torch.cat([a, b], 1))


class RuntimeWeight(nn.Module):
    """A convolution whose weight is computed in forward: the TorchScript walk cannot read its kernel."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(2, 4, 3, 3) * 0.3)

    def forward(self, x):
        y = F.max_pool2d(torch.relu(self.c(x)), 2)
        return F.interpolate(F.conv2d(y, self.w * 2.0, padding=1), scale_factor=2.0)


class Thresholded(RuntimeWeight):
    """Not differentiable either (a step function): neither walked nor measured."""

    def forward(self, x):
        return (F.conv2d(self.c(x), self.w * 2.0, padding=1) > 0).float()


def _eager(seed=0):
    torch.manual_seed(seed)
    m = Net2d()
    g = torch.Generator().manual_seed(seed)
    for bn in (m.enc[1], m.mid[1]):
        bn.running_mean.copy_(torch.rand(6, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
    return m.eval()


def _save_load(model, kind, path, example):
    compiled = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, example)
    torch.jit.save(compiled, str(path))
    return load_model(str(path))  # torch.jit.load on the CPU, eval mode: what `xmodal predict` does


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    eager = _eager()
    where = tmp_path_factory.mktemp("jit")
    example = torch.zeros(1, 1, 64, 64)
    return eager, {kind: _save_load(eager, kind, where / f"{kind}.pt", example) for kind in ("script", "trace")}


def _whole(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None, None])[0].numpy()


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_receptive_field_and_layout_equal_the_eager_model(models, kind):
    eager, jit = models
    assert isinstance(jit[kind], torch.jit.ScriptModule)
    e, j = receptive_field(eager, 2), receptive_field(jit[kind], 2, check=True)
    assert j.method == "torchscript" and e.method == "fx"
    assert (j.size, j.factor, j.halo, j.plantseg_halo, j.layers) == (e.size, e.factor, e.halo, e.plantseg_halo, e.layers)
    assert e.factor == (4, 4) and all(m <= s for m, s in zip(j.measured, j.size))
    assert spatial_signature(jit[kind]) == spatial_signature(eager) == (2, 1)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_predict_tiled_equals_eager_and_whole_image(models, kind):
    eager, jit = models
    x = np.random.default_rng(1).normal(size=(100, 76)).astype(np.float32)
    whole = _whole(eager, x)
    ref = predict_tiled(eager, x, tile_shape=40, progress=False)  # halo "auto": the receptive field
    y = predict_tiled(jit[kind], x, tile_shape=40, progress=False)
    assert y.shape == whole.shape == (3, 100, 76)
    assert np.abs(y - ref).max() <= 1e-5 and np.abs(y - whole).max() <= 1e-5
    y_halo = predict_tiled(jit[kind], x, tile_shape=(32, 28), halo=12, progress=False)
    assert np.abs(y_halo - whole).max() <= 1e-5


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_find_tile_shape_and_tile_mismatch_take_torchscript(models, kind):
    eager, jit = models
    assert activation_bytes_per_voxel(jit[kind], 2, 1, (4, 4)) > 0
    tile = find_tile_shape(jit[kind], image_shape=(400, 400), memory_budget=64 * 64 * 400)
    assert all(t % 4 == 0 and t < 400 for t in tile)
    x = np.random.default_rng(2).normal(size=(96, 96)).astype(np.float32)
    y = predict_tiled(jit[kind], x, progress=False)  # tile_shape None: find_tile_shape
    assert np.abs(y - _whole(eager, x)).max() <= 1e-5
    tm = tile_mismatch(jit[kind], x, tile_shape=64)
    assert tm.max_abs_diff <= 1e-5


def test_eager_module_holding_a_torchscript_submodule(models):
    eager, jit = models
    wrap = nn.Sequential(nn.Identity(), jit["script"], nn.Conv2d(3, 1, 5, padding=2)).eval()
    same = nn.Sequential(nn.Identity(), eager, nn.Conv2d(3, 1, 5, padding=2)).eval()
    rw, rs = receptive_field(wrap, 2), receptive_field(same, 2)
    assert (rw.size, rw.factor, rw.halo) == (rs.size, rs.factor, rs.halo)
    assert rw.size[0] == receptive_field(eager, 2).size[0] + 4


def test_traced_3d_anisotropic():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 2, 2)),
                      nn.Conv3d(2, 2, 3, padding=1), nn.ConvTranspose3d(2, 1, (1, 2, 2), stride=(1, 2, 2))).eval()
    traced = torch.jit.trace(m, torch.zeros(1, 1, 4, 16, 16))
    e, j = receptive_field(m, 3), receptive_field(traced, 3)
    assert (j.size, j.factor, j.halo) == (e.size, e.factor, e.halo) and e.factor == (1, 2, 2)
    assert spatial_signature(traced) == (3, 1)
    x = np.random.default_rng(4).normal(size=(12, 40, 36)).astype(np.float32)
    y = predict_tiled(traced, x, tile_shape=(6, 16, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_unreadable_layers_are_measured(kind):
    torch.manual_seed(5)
    m = RuntimeWeight().eval()
    jm = torch.jit.script(m) if kind == "script" else torch.jit.trace(m, torch.zeros(1, 1, 32, 32))
    rf = receptive_field(jm, 2)
    # 3x3 conv, 2x2 max pooling, 3x3 conv at jump 2, nearest up-sampling: 1 + 2 + 1 + 4 = 8, factor 2
    assert rf.method == "gradient" and rf.factor == (2, 2) and rf.notes
    assert all(8 - 1 <= m <= 8 for m in rf.measured) and all(s >= 8 for s in rf.size)
    x = np.random.default_rng(6).normal(size=(1, 60, 44)).astype(np.float32)
    y = predict_tiled(jm, x, tile_shape=16, progress=False)
    assert np.abs(y - _whole(m, x[0])).max() <= 1e-5


def test_unanalysable_model_error_names_the_argument_and_halo_works():
    torch.manual_seed(7)
    m = torch.jit.script(Thresholded().eval())
    x = np.random.default_rng(8).normal(size=(40, 36)).astype(np.float32)
    with pytest.raises(ReceptiveFieldError, match=r"(?s)model: expected a network .*TorchScript module compiled from Thresholded.*halo="):
        predict_tiled(m, x, tile_shape=16, progress=False)
    with pytest.raises(ValueError, match="halo="):
        receptive_field(m, 2)
    y = predict_tiled(m, x, tile_shape=16, halo=2, progress=False)
    assert np.array_equal(y, _whole(m, x))
