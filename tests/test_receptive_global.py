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


def _sdpa(x):
    t = x.flatten(2).transpose(1, 2)  # (b, h*w, c)
    return F.scaled_dot_product_attention(t, t, t).transpose(1, 2).view_as(x)


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
    "F.layer_norm over (c, h, w)": lambda x: F.layer_norm(x, x.shape[1:]),
    "x.permute + mean over the last axis": lambda x: x + x.permute(0, 3, 1, 2).mean(-1).permute(0, 2, 1)[:, :, None],
    "x.view(b, c, -1).mean(-1)": lambda x: x * x.view(x.shape[0], x.shape[1], -1).mean(-1)[..., None, None],
    "x[..., :1] (a fixed first column)": lambda x: x + x[..., :1],
    "x[:, :, -1:] (the fixed last row)": lambda x: x + x[:, :, -1:],
    "x[:, :, 2:3] (a fixed row)": lambda x: x * x[:, :, 2:3],
    "F.scaled_dot_product_attention over positions": lambda x: _sdpa(x),
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
    "x.repeat over channels (VNet input)": lambda x: x.repeat(1, 2, 1, 1)[:, 1:5],
    "x.repeat_interleave over channels": lambda x: x.repeat_interleave(2, dim=1)[:, ::2],
    "x.tile over channels": lambda x: x.tile((1, 2, 1, 1))[:, 2:6],
    "crop x[:, :, 1:-1, 1:-1] padded back": lambda x: F.pad(x[:, :, 1:-1, 1:-1], [1, 1, 1, 1]),
    "channels reordered by a list x[:, [1, 0, 3, 2]]": lambda x: x[:, [1, 0, 3, 2]],
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

    def __init__(self, mean=False, how="shape"):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 1, 3, padding=1)
        self.mean, self.how = mean, how

    def forward(self, x):
        a = torch.relu(self.a(x))
        b = torch.relu(self.b(F.max_pool2d(a, 2)))
        if self.how == "scale":
            up = F.interpolate(b, scale_factor=2, mode="bilinear")
        elif self.how == "computed":
            up = F.interpolate(b, size=[2 * b.shape[2], 2 * b.shape[3]], mode="bilinear")
        else:
            size = {"shape": lambda: a.shape[2:], "a.size()[2:]": lambda: a.size()[2:],
                    "a.shape[-2:]": lambda: a.shape[-2:], "(a.size(2), a.size(3))": lambda: (a.size(2), a.size(3))}
            up = F.interpolate(b, size=size[self.how](), mode="bilinear")
        return self.c(torch.cat([a, up - up.mean() if self.mean else up], 1))


def test_interpolate_to_the_size_of_a_tensor_is_walked():
    """``F.interpolate(b, size=a.shape[2:])`` samples ``b`` on ``a``'s grid: the walk takes the ratio of
    their grids as the scale (no probe); a size computed otherwise is probed."""
    torch.manual_seed(0)
    rf = receptive_field(_Resize().eval(), 2)
    assert rf.method == "fx" and rf.factor == (2, 2) and rf.measured is None and not rf.notes
    assert rf.size == receptive_field(_Resize(how="scale").eval(), 2).size  # as by scale_factor=2
    for how in ("a.size()[2:]", "a.shape[-2:]", "(a.size(2), a.size(3))"):
        other = receptive_field(_Resize(how=how).eval(), 2)
        assert other.size == rf.size and not other.notes, how
    x = np.random.default_rng(3).normal(size=(48, 40)).astype(np.float32)
    m = _Resize().eval()
    y = predict_tiled(m, x, tile_shape=(20, 20), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5
    with pytest.raises(GlobalFieldError, match=r"mean"):
        receptive_field(_Resize(mean=True).eval(), 2)
    rf = receptive_field(_Resize(how="computed").eval(), 2)
    assert rf.measured is not None and any("interpolate" in n and "probe" in n for n in rf.notes)


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


def test_torchscript_reductions_are_judged_by_their_axes_or_probed():
    """In a TorchScript graph a reduction / softmax of a tensor whose axes are still (batch, channel,
    spatial...) is judged by its constant axes; after a reshape the gradient probe decides."""
    torch.manual_seed(0)
    se = torch.jit.trace(_net("x.mean(dim=(2, 3), keepdim=True)"), torch.zeros(1, 1, 32, 32))
    with pytest.raises(GlobalFieldError, match=r"aten::mean \(TorchScript\) over axes \(2, 3\)"):
        receptive_field(se, 2)
    with pytest.raises(GlobalFieldError, match=r"over axes \(2, 3\)"):
        receptive_field(torch.jit.script(_SoftmaxSE(flat=False).eval()), 2)
    for name in ("F.softmax(x, dim=1)", "x.amax(1, keepdim=True)", "x.mean(dim=1) (per-pixel attention)"):
        local = torch.jit.trace(_net(name), torch.zeros(1, 1, 32, 32))
        rf = receptive_field(local, 2)
        assert rf.size == (5, 5) and not rf.notes, (name, rf.notes)
    flat = torch.jit.trace(_net("x.view(b, c, -1).mean(-1)"), torch.zeros(1, 1, 32, 32))
    with pytest.raises(GlobalFieldError, match=r"aten::mean.*gradient probe"):
        receptive_field(flat, 2)


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


# ---------------------------------------------------------------- per-window statistics as functions
PER_WINDOW = {
    "F.instance_norm": lambda x: F.instance_norm(x),
    "F.group_norm": lambda x: F.group_norm(x, 2),
    "torch.group_norm": lambda x: torch.group_norm(x, 2),
}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("name", sorted(PER_WINDOW))
def test_functional_instance_and_group_norm_warn_like_the_modules(name, caplog):
    """As the InstanceNorm / GroupNorm modules: statistics of each window, a warning, halo="auto" works."""
    m = _Net(_Fn(PER_WINDOW[name])).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.method == "fx" and rf.size == (5, 5) and not any("probe" in n for n in rf.notes)
    assert any("statistics of each window" in n and name.split(".")[-1] in n for n in rf.notes)
    assert any("statistics of each window" in w for w in _warnings(caplog))
    x = np.random.default_rng(0).normal(size=(40, 36)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(16, 16), progress=False)  # no GlobalFieldError
    assert y.shape == (1, 40, 36)


def test_instance_norm_with_running_statistics_is_local(caplog):
    mean, var = torch.zeros(4), torch.ones(4)
    m = _Net(_Fn(lambda x: F.instance_norm(x, mean, var, use_input_stats=False))).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.size == (5, 5) and not rf.notes and not _warnings(caplog)


class _UntraceableNorm(nn.Module):
    """F.group_norm behind data-dependent control flow (the hook walk)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] % 2:
            raise ValueError("even widths only")
        return self.b(F.group_norm(torch.relu(self.a(x)), 2))


def test_per_window_statistics_in_the_hook_and_torchscript_walks(caplog):
    torch.manual_seed(0)
    hooked = _UntraceableNorm().eval()
    traced = torch.jit.trace(_net("F.softmax(x, dim=1)"), torch.zeros(1, 1, 32, 32))  # probe: softmax
    for model, method in ((hooked, "hooks"), (torch.jit.trace(hooked, torch.zeros(1, 1, 32, 32)), "torchscript"),
                          (torch.jit.trace(_Net(_Fn(PER_WINDOW["F.instance_norm"])).eval(),
                                           torch.zeros(1, 1, 32, 32)), "torchscript")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xmodal"):
            rf = receptive_field(model, 2)
        assert rf.method == method and rf.size == (5, 5), (method, rf)
        assert any("statistics of each window" in n for n in rf.notes), rf.notes
        assert any("statistics of each window" in w for w in _warnings(caplog))
    assert not any("statistics" in n for n in receptive_field(traced, 2).notes)


class _NormUnfold(nn.Module):
    """An InstanceNorm module and F.group_norm around F.unfold (probed): per-window statistics make
    the input gradient reach the whole window, which is the statistics' warning, not a global field."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3, padding=1)
        self.norm = nn.InstanceNorm2d(2)
        self.w = nn.Parameter(torch.randn(1, 50, 1, 1) * 0.1)

    def forward(self, x):
        y = torch.relu(self.norm(self.c(x)))
        b, c, h, w = y.shape
        patches = F.unfold(y, 5, padding=2).view(b, c * 25, h, w)
        return F.group_norm((patches * self.w).sum(1, keepdim=True), 1)


def test_the_probe_ignores_per_window_statistics():
    torch.manual_seed(0)
    m = _NormUnfold().eval()
    rf = receptive_field(m, 2)
    assert rf.size == (7, 7) and rf.measured == (7, 7)
    assert any("unfold" in n and "probe" in n for n in rf.notes)
    # check=True measures the gradient as it is: the statistics reach the whole window, as warned
    checked = receptive_field(m, 2, check=True)
    assert any(v > 7 for v in checked.measured) and "measured field exceeds the analytic one" in checked.notes


def test_repeat_along_a_spatial_axis_is_probed():
    m = _net("F.softmax(x, dim=1)")
    m.mix = _Fn(lambda x: x.repeat(1, 1, 2, 1)[:, :, :x.shape[2]])
    rf = receptive_field(m, 2)
    assert rf.size == (5, 5) and any("repeat" in n and "probe" in n for n in rf.notes)


class _Shuffle(nn.Module):
    """Down-sampling by PixelUnshuffle (module) or F.pixel_unshuffle, up by PixelShuffle."""

    def __init__(self, functional):
        super().__init__()
        self.functional = functional
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.down, self.up = nn.PixelUnshuffle(2), nn.PixelShuffle(2)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = F.pixel_unshuffle(y, 2) if self.functional else self.down(y)
        y = torch.relu(self.b(y))
        return self.c(F.pixel_shuffle(y, 2) if self.functional else self.up(y))


@pytest.mark.parametrize("functional", [False, True])
def test_pixel_shuffle_and_unshuffle_are_walked_as_layers(functional):
    torch.manual_seed(0)
    m = _Shuffle(functional).eval()
    rf = receptive_field(m, 2, check=True)
    assert rf.method == "fx" and rf.factor == (2, 2) and not any("probe" in n for n in rf.notes), rf.notes
    assert all(s >= g for s, g in zip(rf.size, rf.measured))
    x = np.random.default_rng(4).normal(size=(44, 52)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(16, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


class _Corners(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
        self.how = how
        self.up = {"module": nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                   "bilinear2d": nn.UpsamplingBilinear2d(scale_factor=2)}.get(how, nn.Identity())

    def forward(self, x):
        y = F.max_pool2d(torch.relu(self.a(x)), 2)
        if self.how in ("module", "bilinear2d"):
            return self.b(self.up(y))
        return self.b(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=self.how == "function"))


@pytest.mark.parametrize("how", ["module", "bilinear2d", "function"])
def test_align_corners_up_sampling_is_inexact_and_warned(how, caplog):
    """align_corners=True places the samples by the length of the axis: tiles differ slightly from the
    whole image whatever the halo; a warning as for per-window statistics, not an error."""
    torch.manual_seed(0)
    m = _Corners(how).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.factor == (2, 2) and any("align_corners" in n for n in rf.notes)
    assert any("align_corners" in w for w in _warnings(caplog))
    x = np.random.default_rng(5).normal(size=(48, 48)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(16, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() > 1e-6  # as warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        plain = receptive_field(_Corners("plain").eval(), 2)
    assert not plain.notes and not _warnings(caplog)


class _Divisible(nn.Module):
    """A network that accepts only multiples of 64 voxels (SwinUNETR v2: of 32) with a global
    operation the hook walk cannot see."""

    def __init__(self, mean=True):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 1, 3, padding=1)
        self.mean = mean

    def forward(self, x):
        if x.shape[-1] % 64 or x.shape[-2] % 64:
            raise ValueError("spatial sizes must be multiples of 64")
        y = torch.relu(self.a(x))
        return self.b(y - y.mean() if self.mean else y * torch.sigmoid(y.mean(1, keepdim=True)))


def test_the_probe_finds_a_window_the_network_accepts():
    torch.manual_seed(0)
    with pytest.raises(GlobalFieldError, match="gradient probe"):
        receptive_field(_Divisible().eval(), 2)
    rf = receptive_field(_Divisible(mean=False).eval(), 2)
    assert rf.method == "hooks" and rf.size == (5, 5)
    assert any("probe on (64, 64)" in n for n in rf.notes), rf.notes


class _FourierConv(nn.Conv2d):
    """A convolution layer whose forward takes a detour through the FFT (as MONAI's FFT convolution,
    a Conv2d subclass): the walk applies it as the layer it is."""

    def forward(self, x):
        x = torch.fft.ifft2(torch.fft.fft2(x)).real
        return super().forward(x)


class _WithFourier(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _FourierConv(1, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] % 2:
            raise ValueError("even widths only")
        return self.b(torch.relu(self.a(x)))


def test_operations_inside_a_convolution_subclass_are_not_probed():
    rf = receptive_field(_WithFourier().eval(), 2)
    assert rf.method == "hooks" and rf.size == (5, 5) and not any("probe" in n for n in rf.notes), rf.notes


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
        self.att = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        y = self.a(x)
        t = y.flatten(2).transpose(1, 2)
        out = self.att(t, t, t)[0].transpose(1, 2).reshape(y.shape)
        return self.b(out)


def test_scripted_attention_is_probed_and_refused():
    torch.manual_seed(0)
    with pytest.raises(GlobalFieldError):
        receptive_field(_Attention().eval(), 2)
    with pytest.raises(GlobalFieldError, match="gradient probe"):
        receptive_field(torch.jit.script(_Attention().eval()), 2)


class _SpareHead(nn.Module):
    """A network whose first convolution (an auxiliary head) is not called in eval mode."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Conv2d(1, 1, 1)
        self.a = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.a(x)


def test_a_traced_network_with_an_unused_convolution_is_predicted():
    """The traced copy of an unused convolution has no forward method: the signature comes from the
    convolutions that have one (predict_tiled failed with "Method 'forward' is not defined")."""
    m = torch.jit.trace(_SpareHead().eval(), torch.zeros(1, 1, 16, 16))
    x = np.random.default_rng(6).normal(size=(20, 24)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=(8, 8), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


class _Circular(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular" if how == "module" else "zeros")
        self.b = nn.Conv2d(2, 1, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if self.how == "hooks" and x.shape[-1] < 1:  # control flow on a size: torch.fx cannot trace it
            raise ValueError("empty input")
        return self.b(F.pad(y, [1, 1, 1, 1], mode="circular" if self.how != "module" else "reflect"))


@pytest.mark.parametrize("how", ["module", "function", "hooks"])
def test_circular_padding_is_inexact_and_warned(how, caplog):
    """Circular padding wraps the opposite edge of the window, not of the image: tiles at the image
    border differ from the whole image whatever the halo (a warning, as for per-window statistics)."""
    torch.manual_seed(0)
    m = _Circular(how).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.size == (5, 5) and rf.method == ("hooks" if how == "hooks" else "fx")
    assert any("circular" in n for n in rf.notes) and any("circular" in w for w in _warnings(caplog))
    x = np.random.default_rng(7).normal(size=(40, 40)).astype(np.float32)
    assert np.abs(predict_tiled(m, x, tile_shape=(16, 16), progress=False) - _whole(m, x)).max() > 1e-6


class _SoftmaxSE(nn.Module):
    """A squeeze-and-excitation block before a softmax over the output channels: the channels of the
    output sum to 1, so the probe must not measure the gradient of their plain sum. ``flat``: the
    squeeze is a mean of the flattened positions (the TorchScript walk leaves it to the probe)."""

    def __init__(self, flat: bool = True):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1)
        self.flat = flat

    def forward(self, x):
        y = torch.relu(self.a(x))
        if self.flat:
            w = y.flatten(2).mean(-1)[:, :, None, None]
        else:
            w = y.mean((2, 3), keepdim=True)
        return torch.softmax(self.b(y * torch.sigmoid(w)), 1)


def test_the_probe_sees_through_a_final_softmax():
    torch.manual_seed(0)
    with pytest.raises(GlobalFieldError, match="gradient probe"):
        receptive_field(torch.jit.trace(_SoftmaxSE().eval(), torch.zeros(1, 1, 32, 32)), 2)
