"""Global operations written as functions or tensor methods (not modules) make the receptive field
the whole input: the walk finds them (torch.fx graph), records them (forward hooks, TorchScript) and
probes what it cannot judge with gradients; reductions over the channel or batch axis stay local."""

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.inference import (GlobalFieldError, ReceptiveFieldError, find_tile_shape,  # noqa: E402
                              predict_tiled, receptive_field, tile_mismatch)

nn = torch.nn
F = nn.functional


class _Net(nn.Module):
    """conv 3x3 -> ``mix(x)`` -> conv 3x3 (field 5 without the mix), 2-D or 3-D."""

    def __init__(self, mix, nd=2, c=4):
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.a = conv(1, c, 3, padding=1)
        self.b = conv(c, 1, 3, padding=1)
        self.mix = mix

    def forward(self, x):
        return self.b(self.mix(torch.relu(self.a(x))))


class SEUNet(nn.Module):
    """A two-level U-Net whose bottleneck has a squeeze-and-excitation block written with x.mean."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.e2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
        self.up = nn.Upsample(scale_factor=2)
        self.d1 = nn.Conv2d(12, 2, 3, padding=1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        w = b.mean(dim=(2, 3))  # squeeze
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))  # excitation
        b = b * w[:, :, None, None]
        return self.d1(torch.cat([a, self.up(b)], 1))


def _attention(x):
    b, c, h, w = x.shape
    q = x.flatten(2).transpose(1, 2)  # (b, h*w, c)
    att = torch.softmax(q @ q.transpose(1, 2) / c ** 0.5, dim=-1)
    return (att @ q).transpose(1, 2).reshape(b, c, h, w)


class _FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.LazyLinear(4)

    def forward(self, x):
        return x * self.fc(torch.flatten(x, 1))[:, :, None, None]


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


GLOBAL_2D = {
    "x.mean(dim=(2, 3), keepdim=True)": lambda x: x * x.mean(dim=(2, 3), keepdim=True),
    "torch.mean(x, (2, 3))": lambda x: x + torch.mean(x, (2, 3))[..., None, None],
    "F.adaptive_avg_pool2d(x, 1)": lambda x: x * F.adaptive_avg_pool2d(x, 1),
    "x.amax(dim=(-2, -1))": lambda x: x - x.amax(dim=(-2, -1), keepdim=True),
    "x.sum(dim=-1)": lambda x: x + x.sum(dim=-1, keepdim=True),
    "x.max(3).values": lambda x: x + x.max(3).values.unsqueeze(3),
    "torch.max(x, dim=2)[0]": lambda x: x + torch.max(x, dim=2)[0][:, :, None],
    "x.std()": lambda x: x / x.std(),
    "(x - x.mean()) / x.std()": lambda x: (x - x.mean()) / x.std(),
    "x.var(2, keepdim=True)": lambda x: x * x.var(2, keepdim=True),
    "x.norm(dim=(2, 3))": lambda x: x / x.norm(dim=(2, 3))[..., None, None],
    "torch.logsumexp(x, dim=2)": lambda x: x - torch.logsumexp(x, dim=2, keepdim=True),
    "softmax over flattened positions": lambda x: F.softmax(x.flatten(2), dim=-1).view_as(x),
    "torch.softmax(x, 3)": lambda x: torch.softmax(x, 3),
    "x.cumsum(-2)": lambda x: x.cumsum(-2),
    "interpolate to a fixed size": lambda x: F.interpolate(F.interpolate(x, size=(8, 8)), size=x.shape[2:]),
    "attention over all positions": _attention,
    "einsum over positions": lambda x: torch.einsum("bchw,bdhw->bcd", x, x).sum(-1)[..., None, None] * x,
    "F.instance_norm": lambda x: F.instance_norm(x),
    "F.layer_norm over (c, h, w)": lambda x: F.layer_norm(x, x.shape[1:]),
    "x.permute + mean over the last axis": lambda x: x + x.permute(0, 3, 1, 2).mean(-1).permute(0, 2, 1)[:, :, None],
    "x.view(b, c, -1).mean(-1)": lambda x: x * x.view(x.shape[0], x.shape[1], -1).mean(-1)[..., None, None],
}

LOCAL_2D = {
    "F.softmax(x, dim=1)": lambda x: F.softmax(x, dim=1),
    "torch.softmax(x, -3)": lambda x: torch.softmax(x, -3),
    "x.mean(dim=1) (per-pixel attention)": lambda x: x * torch.sigmoid(x.mean(dim=1, keepdim=True)),
    "x.amax(1, keepdim=True)": lambda x: x - x.amax(1, keepdim=True),
    "x.sum(dim=-3)": lambda x: x / (1 + x.sum(dim=-3, keepdim=True)),
    "x.norm(dim=1)": lambda x: x / (1 + x.norm(dim=1, keepdim=True)),
    "F.normalize(x) (channels)": lambda x: F.normalize(x),
    "x.max(1)[0]": lambda x: x + x.max(1)[0][:, None],
    "torch.max(x, x * 2) (element-wise)": lambda x: torch.max(x, x * 2),
    "x.mean(0) (batch)": lambda x: x - x.mean(0, keepdim=True),
    "per-pixel linear after permute": None,  # built below: a module with parameters
    "x.permute + mean over the last axis (channels)": lambda x: x + x.permute(0, 2, 3, 1).mean(-1)[:, None],
    "x.permute + softmax over channels": lambda x: torch.softmax(x.permute(0, 2, 3, 1), -1).permute(0, 3, 1, 2),
    "einsum over channels": lambda x: torch.einsum("bchw,bchw->bhw", x, x)[:, None] * x,
    "chunk over channels": lambda x: torch.cat(x.chunk(2, dim=1)[::-1], 1),
}


class _PixelMLP(nn.Module):
    """ConvNeXt-style per-pixel LayerNorm + Linear (channels last), channel attention per pixel."""

    def __init__(self, c=4):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)

    def forward(self, x):
        y = self.fc(self.norm(x.permute(0, 2, 3, 1)))
        return torch.softmax(y, dim=-1).permute(0, 3, 1, 2) * x


def _mix(name):
    if name == "flatten + Linear":
        return _FlattenLinear()
    if name == "per-pixel linear after permute":
        return _PixelMLP()
    return _Fn(GLOBAL_2D.get(name) or LOCAL_2D[name])


def _net(name, nd=2, seed=0):
    torch.manual_seed(seed)
    return _Net(_mix(name), nd).eval()


def _whole(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None, None])[0].numpy()


@pytest.mark.parametrize("name", sorted(GLOBAL_2D) + ["flatten + Linear"])
def test_global_operations_written_as_tensor_ops_are_found(name):
    m = _net(name)
    if name == "flatten + Linear":
        m(torch.zeros(1, 1, 32, 32))  # materialise the lazy layer for this input size
    with pytest.raises(GlobalFieldError, match=r"model: expected a network .*finite receptive field.*whole input"):
        receptive_field(m, 2)


@pytest.mark.parametrize("name", sorted(LOCAL_2D))
def test_channel_and_batch_reductions_stay_local(name):
    m = _net(name)
    rf = receptive_field(m, 2)
    assert rf.method == "fx" and rf.size == (5, 5) and rf.factor == (1, 1)
    assert not any("probe" in n for n in rf.notes), rf.notes  # judged from the graph, nothing measured
    x = np.random.default_rng(1).normal(size=(40, 44)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(16, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


def test_se_block_unet_is_refused_and_the_message_says_what_to_do():
    torch.manual_seed(0)
    m = SEUNet().eval()
    with pytest.raises(GlobalFieldError) as info:
        receptive_field(m, 2)
    msg = str(info.value)
    assert "mean" in msg and "graph node 'mean'" in msg and "halo=" in msg and "tile_shape=" in msg
    assert info.value.factor == (2, 2) and info.value.operations
    assert isinstance(info.value, ReceptiveFieldError) and isinstance(info.value, ValueError)
    x = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    with pytest.raises(GlobalFieldError, match="halo="):
        predict_tiled(m, x, progress=False)  # halo="auto": no finite halo exists


def test_a_given_halo_is_used_with_a_warning_and_one_tile_is_exact(caplog):
    torch.manual_seed(0)
    m = SEUNet().eval()
    x = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        y = predict_tiled(m, x, tile_shape=(24, 24), halo=4, progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("whole input" in w and "differ" in w for w in warned)
    assert np.abs(y - _whole(m, x)).max() > 1e-4  # tiles see their own means: seams, as warned
    one = predict_tiled(m, x, tile_shape=(48, 48), halo=0, progress=False)
    assert np.abs(one - _whole(m, x)).max() <= 1e-5
    assert tile_mismatch(m, x, tile_shape=(32, 32), halo=4).max_abs_diff > 1e-4
    tile = find_tile_shape(m, image_shape=(1000, 1000), halo=4, memory_budget=1 << 20, device="cpu")
    assert all(t % 2 == 0 for t in tile)  # on the walked factor grid
    with pytest.raises(GlobalFieldError):
        find_tile_shape(m, image_shape=(1000, 1000), device="cpu")


def test_global_pooling_module_names_the_module():
    torch.manual_seed(0)
    m = _Net(nn.Sequential(nn.AdaptiveAvgPool2d(1)), 2).eval()
    with pytest.raises(GlobalFieldError, match=r"AdaptiveAvgPool2d module 'mix.0'"):
        receptive_field(m, 2)


@pytest.mark.parametrize("nd", [2, 3])
def test_last_axis_reductions_in_2d_and_3d(nd):
    for fn in (lambda x: x + x.sum(dim=-1, keepdim=True), lambda x: x * x.amax(-1, keepdim=True),
               lambda x: x - x.mean(dim=(-nd,), keepdim=True)):
        torch.manual_seed(0)
        with pytest.raises(GlobalFieldError, match=r"over axes \(\d(, \d)*,?\)"):
            receptive_field(_Net(_Fn(fn), nd).eval(), nd)
    # the channel axis counted from the end: -(nd + 1) is axis 1
    local = _Net(_Fn(lambda x: x - x.mean(dim=-(nd + 1), keepdim=True)), nd).eval()
    rf = receptive_field(local, nd)
    assert rf.size == (5,) * nd and rf.method == "fx"


def test_a_global_op_off_the_output_path_is_ignored():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            y = self.c(x)
            self.last_mean = y.mean()  # a statistic kept aside, not used by the output
            return y

    assert receptive_field(Aux(), 2).size == (3, 3)


class _Unfold(nn.Module):
    """A 5 x 5 neighbourhood gathered with F.unfold (an operation the walk has no rule for)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3, padding=1)
        self.w = nn.Parameter(torch.randn(1, 50, 1, 1) * 0.1)

    def forward(self, x):
        y = torch.relu(self.c(x))
        b, c, h, w = y.shape
        patches = F.unfold(y, 5, padding=2).view(b, c * 25, h, w)
        return (patches * self.w).sum(1, keepdim=True)


def test_unknown_local_operation_is_measured_and_tiles_stay_exact():
    torch.manual_seed(0)
    m = _Unfold().eval()
    rf = receptive_field(m, 2)
    assert rf.size == (7, 7) and rf.measured == (7, 7)
    assert any("unfold" in n and "probe" in n for n in rf.notes)
    x = np.random.default_rng(2).normal(size=(40, 36)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(12, 12), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


class _Resize(nn.Module):
    """U-Net step whose up-sampling is F.interpolate to the skip's size (computed at run time)."""

    def __init__(self, mean=False):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 1, 3, padding=1)
        self.mean = mean

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.relu(self.b(F.max_pool2d(a, 2)))
        up = F.interpolate(b, size=a.shape[2:])
        return self.c(torch.cat([a, up - up.mean() if self.mean else up], 1))


def test_interpolate_to_a_run_time_size_is_probed():
    torch.manual_seed(0)
    rf = receptive_field(_Resize().eval(), 2)
    assert rf.method == "fx" and rf.factor == (2, 2) and rf.measured is not None
    assert any("interpolate" in n for n in rf.notes)
    x = np.random.default_rng(3).normal(size=(48, 40)).astype(np.float32)
    m = _Resize().eval()
    y = predict_tiled(m, x, tile_shape=(16, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5
    with pytest.raises(GlobalFieldError, match=r"mean"):
        receptive_field(_Resize(mean=True).eval(), 2)


class _Untraceable(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it): the hook walk."""

    def __init__(self, normalise):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 1, 3, padding=1)
        self.normalise = normalise

    def forward(self, x):
        if x.sum() > -1e30:
            x = self.a(x)
        if self.normalise:
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-3)
        return self.b(x)


def test_hook_walk_probes_tensor_operations_it_cannot_see():
    torch.manual_seed(0)
    m = _Untraceable(False).eval()
    rf = receptive_field(m, 2)
    assert rf.method == "hooks" and rf.size == (5, 5)
    assert any("sum()" in n and "probe" in n for n in rf.notes)  # x.sum() of the control flow, probed
    # the probe leaves the caller's model as it was: no hooks, no gradients, parameters trainable
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert all(p.requires_grad and p.grad is None for p in m.parameters())
    with pytest.raises(GlobalFieldError, match=r"mean\(\).*gradient probe"):
        receptive_field(_Untraceable(True).eval(), 2)


def test_torchscript_global_operations_are_probed():
    torch.manual_seed(0)
    se = torch.jit.trace(_net("x.mean(dim=(2, 3), keepdim=True)"), torch.zeros(1, 1, 32, 32))
    with pytest.raises(GlobalFieldError, match=r"aten::mean.*gradient probe"):
        receptive_field(se, 2)
    local = torch.jit.trace(_net("F.softmax(x, dim=1)"), torch.zeros(1, 1, 32, 32))
    rf = receptive_field(local, 2)
    assert rf.size == (5, 5) and any("probe" in n for n in rf.notes)


def test_functional_network_with_a_global_normalisation_is_refused():
    class FunctionalNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(1, 1, 3, 3))

        def forward(self, x):
            y = F.conv2d(x, self.w, padding=1)
            return (y - y.mean()) / (y.std() + 1e-3)

    with pytest.raises(GlobalFieldError):
        receptive_field(FunctionalNorm(), 2)


def test_slicewise_setup_uses_a_given_halo_for_a_global_network(caplog):
    """segment / predict of a stack slice by slice: a 2D network with a global operation gets the
    given halo with a warning (as predict_tiled), and 'auto' is refused with GlobalFieldError."""
    import logging

    import torch

    from xmodal.inference import GlobalFieldError
    from xmodal.pipelines._slicewise import slicewise

    class Global2D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y - y.mean(dim=(2, 3), keepdim=True)

    model = Global2D().eval()
    with pytest.raises(GlobalFieldError):
        slicewise(model, (64, 64), 32, "auto", "cpu")
    with caplog.at_level(logging.WARNING, logger="xmodal.inference"):
        _, tile, halo = slicewise(model, (64, 64), 32, 8, "cpu")
    assert tile == (1, 32, 32) and halo == (0, 8, 8)
    assert any("using the given halo" in r.getMessage() for r in caplog.records)
