"""Former limits of the receptive-field walks: slices with a step on a spatial axis (YOLO's "Focus"
space-to-depth) count in the down-sampling factor; circular padding inside TorchScript is warned
about; an FFT convolution written as functions is probed in float64 (float32 rounding of the FFT
reaches the whole window), so a convolution with a small kernel gets the kernel's field and a
global filter stays global; the probe holds InstanceNorm / GroupNorm statistics fixed inside
compiled TorchScript too."""

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.inference import GlobalFieldError, predict_tiled, receptive_field  # noqa: E402
from xmodal.inference._receptive import spatial_signature  # noqa: E402

nn = torch.nn
F = nn.functional


def _whole(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None, None])[0].numpy()


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _tiled_diff(model, rf, shape, seed=0):
    """max |tiled - whole| with halo="auto" and tiles of about 2 * halo + 1 on the factor grid."""
    tile = tuple(f * -(-(2 * h + 1) // f) for h, f in zip(rf.halo, rf.factor))
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    y = predict_tiled(model, x, tile_shape=tile, progress=False)
    return float(np.abs(y - _whole(model, x)).max())


# ------------------------------------------------------------------------ strided slices (Focus)
class Focus(nn.Module):
    """YOLOv5's Focus at the input (four strided slices to channels, a convolution), then a 3 x 3
    convolution and PixelShuffle back to the input grid. ``where``: the slices at the ``"input"``
    or after a first convolution (``"middle"``)."""

    def __init__(self, where="input", c=1):
        super().__init__()
        self.where = where
        self.pre = nn.Conv2d(1, c, 3, padding=1) if where == "middle" else nn.Identity()
        self.a = nn.Conv2d(4 * c, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.pre(x)
        y = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        return F.pixel_shuffle(self.b(torch.relu(self.a(y))), 2)


def _compiled(m, how, shape=(1, 1, 32, 32)):
    if how == "eager":
        return m
    return torch.jit.script(m) if how == "script" else torch.jit.trace(m, torch.zeros(shape))


@pytest.mark.parametrize("how", ["eager", "script", "trace"])
@pytest.mark.parametrize("where", ["input", "middle"])
def test_a_strided_slice_counts_in_the_factor_and_tiles_are_exact(where, how):
    torch.manual_seed(0)
    m = _compiled(Focus(where).eval(), how)
    rf = receptive_field(m, 2, check=True, in_channels=1)
    assert rf.method == ("fx" if how == "eager" else "torchscript") and rf.factor == (2, 2), rf
    assert not any("probe" in n for n in rf.notes), rf.notes
    assert all(s >= g for s, g in zip(rf.size, rf.measured)), rf
    if how == "script" and where == "input":
        return  # a scripted network cannot be stopped at its first convolution: 4 channels expected
    assert spatial_signature(m) == (2, 1)  # the image's channels, not the first convolution's 4
    assert _tiled_diff(m, rf, (46, 54)) <= 1e-5


class _FocusUntraceable(Focus):
    """The Focus network behind control flow on a size (torch.fx cannot trace it: the hook walk)."""

    def forward(self, x):
        if x.shape[-1] % 2:
            raise ValueError("even widths only")
        return super().forward(x)


def test_the_hook_walk_counts_a_strided_slice():
    torch.manual_seed(0)
    m = _FocusUntraceable("middle").eval()
    rf = receptive_field(m, 2)
    assert rf.method == "hooks" and rf.factor == (2, 2), rf
    assert _tiled_diff(m, rf, (44, 52)) <= 1e-5


class _StridedChannelsLast(nn.Module):
    """A step on a spatial axis of a permuted tensor (channels last): the walks cannot tell the axis,
    so the field and the factor are measured."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x)).permute(0, 2, 3, 1)
        y = torch.cat([y[:, ::2, ::2], y[:, 1::2, ::2], y[:, ::2, 1::2], y[:, 1::2, 1::2]], -1)
        return F.pixel_shuffle(self.b(y.permute(0, 3, 1, 2)), 2)


class _StridedChannelsLastUntraceable(_StridedChannelsLast):
    def forward(self, x):
        if x.shape[-1] % 2:
            raise ValueError("even widths only")
        return super().forward(x)


@pytest.mark.parametrize("how", ["eager", "trace", "hooks"])
def test_a_strided_slice_of_a_permuted_tensor_is_measured(how):
    torch.manual_seed(0)
    m = _StridedChannelsLastUntraceable().eval() if how == "hooks" else _compiled(_StridedChannelsLast().eval(), how)
    rf = receptive_field(m, 2)
    assert rf.method == "gradient" and rf.factor == (2, 2), rf
    assert any("step" in n for n in rf.notes), rf.notes
    assert _tiled_diff(m, rf, (44, 52)) <= 1e-5


def test_a_3d_strided_slice():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), _Lambda(lambda x: x[:, :, ::2, ::2, ::2]),
                      nn.Conv3d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2), nn.Conv3d(2, 1, 3, padding=1))
    rf = receptive_field(m.eval(), 3)
    assert rf.factor == (2, 2, 2) and not any("probe" in n for n in rf.notes), rf
    assert _tiled_diff(m, rf, (22, 18, 26)) <= 1e-5


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _CoordConv(nn.Module):
    """CoordConv with a radius: coordinates over the window (no gradient: the probe cannot see them)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        yy = torch.linspace(-1, 1, h, device=x.device)[:, None].expand(h, w)
        xx = torch.linspace(-1, 1, w, device=x.device)[None, :].expand(h, w)
        coords = torch.stack([yy, xx, (yy ** 2 + xx ** 2).sqrt()])[None].expand(x.shape[0], 3, h, w)
        return self.a(torch.cat([x, coords], 1))


def test_coordinates_of_the_window_are_warned(caplog):
    m = _CoordConv().eval()
    assert spatial_signature(m) == (2, 1)  # four channels reach the convolution, one is the image's
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.size == (3, 3) and any("linspace" in w and "coordinates of the window" in w for w in _warnings(caplog))
    assert _tiled_diff(m, rf, (40, 40)) > 1e-3  # as warned


# ------------------------------------------------------------------ circular padding in TorchScript
class _Circular(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.mode = "circular" if how == "function" else "reflect"
        self.a = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular" if how == "module" else "zeros")
        self.b = nn.Conv2d(2, 1, 3)

    def forward(self, x):
        return self.b(F.pad(torch.relu(self.a(x)), [1, 1, 1, 1], mode=self.mode))


@pytest.mark.parametrize("how", ["module", "function"])
@pytest.mark.parametrize("compile", ["script", "trace"])
def test_circular_padding_in_torchscript_is_warned(how, compile, caplog):
    torch.manual_seed(0)
    m = _compiled(_Circular(how).eval(), compile)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.method == "torchscript" and rf.size == (5, 5)
    assert any("circular" in n for n in rf.notes) and any("circular" in w for w in _warnings(caplog)), rf.notes
    x = np.random.default_rng(7).normal(size=(40, 40)).astype(np.float32)
    assert np.abs(predict_tiled(m, x, tile_shape=(16, 16), progress=False) - _whole(m, x)).max() > 1e-6
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        plain = receptive_field(_compiled(_Circular("none").eval(), compile), 2)
    assert not plain.notes and not _warnings(caplog)


# -------------------------------------------------------------------------------- FFT written out
class FFTConv(nn.Module):
    """conv 3 x 3 -> a k x k convolution through the FFT -> conv 3 x 3. ``linear``: the input is
    zero-padded by the kernel's radius first and cropped after (a linear convolution with zero
    padding, as a convolution layer); else the kernel is wrapped onto the window (a circular one)."""

    def __init__(self, k=5, linear=True, c=2):
        super().__init__()
        self.a = nn.Conv2d(1, c, 3, padding=1)
        self.w = nn.Parameter(torch.randn(c, k, k) / k)
        self.b = nn.Conv2d(c, 1, 3, padding=1)
        self.k, self.linear = k, linear

    def forward(self, x):
        y = torch.relu(self.a(x))
        h, w = y.shape[-2:]
        p = self.k // 2
        if self.linear:
            y = F.pad(y, [p, p, p, p])
        s = y.shape[-2:]
        kernel = torch.roll(F.pad(self.w, [0, s[1] - self.k, 0, s[0] - self.k]), (-p, -p), dims=(-2, -1))
        z = torch.fft.irfftn(torch.fft.rfftn(y, dim=(-2, -1)) * torch.fft.rfftn(kernel, dim=(-2, -1)), s=s,
                             dim=(-2, -1))
        if self.linear:
            z = z[..., p:p + h, p:p + w]
        return self.b(torch.relu(z))


class LowPass(nn.Module):
    """A global filter through the FFT: the lowest frequencies of the window kept."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        f = torch.fft.rfftn(y, dim=(-2, -1))
        keep = (torch.fft.fftfreq(y.shape[-2]).abs()[:, None] < 0.2) & (torch.fft.rfftfreq(y.shape[-1]) < 0.2)
        return self.b(torch.fft.irfftn(f * keep, s=y.shape[-2:], dim=(-2, -1)))


def test_an_fft_convolution_with_a_small_kernel_has_the_kernels_field(caplog):
    torch.manual_seed(0)
    m = FFTConv(linear=True).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.size == (9, 9) and rf.factor == (1, 1), rf  # 3 + 5 + 3 - 2
    assert any("float64" in n for n in rf.notes), rf.notes
    assert not _warnings(caplog)
    assert _tiled_diff(m, rf, (40, 36)) <= 1e-5


def test_a_circular_fft_convolution_is_local_and_warned(caplog):
    torch.manual_seed(0)
    m = FFTConv(linear=False).eval()
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        rf = receptive_field(m, 2)
    assert rf.size == (9, 9), rf
    assert any("wraps" in n for n in rf.notes) and any("wraps" in w for w in _warnings(caplog)), rf.notes
    assert _tiled_diff(m, rf, (40, 36)) > 1e-4  # the image border: as warned


def test_a_global_fft_filter_is_refused_with_a_clear_message():
    torch.manual_seed(0)
    with pytest.raises(GlobalFieldError, match="FFT over the window combines every position") as info:
        receptive_field(LowPass().eval(), 2)
    assert "fft_rfftn" in str(info.value)


@pytest.mark.parametrize("compile", ["script", "trace"])
def test_ffts_inside_torchscript_are_probed(compile):
    """The TorchScript walk passed operators it does not know (aten::fft_rfftn) through as if they were
    element-wise: a global filter got the field of its convolutions."""
    torch.manual_seed(0)
    rf = receptive_field(_compiled(FFTConv(linear=True).eval(), compile), 2)
    assert rf.size == (9, 9) and any("fft_rfftn" in n and "float64" in n for n in rf.notes), rf.notes
    with pytest.raises(GlobalFieldError, match="fft_rfftn"):
        receptive_field(_compiled(LowPass().eval(), compile), 2)


PICKS = {"x[..., :1]": (lambda x: x + x[..., :1], True), "x[:, :, -2:]": (lambda x: x * x[:, :, -2:].mean(2, True), True),
         "x[:, :, 2:3]": (lambda x: x * x[:, :, 2:3], True), "x[:, :, 0]": (lambda x: x + x[:, :, 0][:, :, None], True),
         "x[:, 0]": (lambda x: x + x[:, 0][:, None], False), "x[:, :, 1:-1] padded": (
             lambda x: F.pad(x[:, :, 1:-1, 1:-1], [1, 1, 1, 1]), False)}


@pytest.mark.parametrize("name", sorted(PICKS))
def test_torchscript_positions_fixed_in_the_window_are_global(name):
    """As in the torch.fx walk: a slice of a fixed length or an index of a spatial axis picks positions
    fixed in the window (before, the TorchScript walk passed them through); channels and crops stay local."""
    fn, is_global = PICKS[name]
    torch.manual_seed(0)
    m = torch.jit.trace(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), _Lambda(fn), nn.Conv2d(2, 1, 3, padding=1)).eval(),
                        torch.zeros(1, 1, 32, 32))
    if is_global:
        with pytest.raises(GlobalFieldError, match=r"aten::(slice|select) \(TorchScript\)"):
            receptive_field(m, 2)
    else:
        assert receptive_field(m, 2).size == (5, 5)


# ------------------------------------------------------ per-window statistics inside TorchScript
class _NormFlat(nn.Module):
    """An InstanceNorm module and a softmax over the channels of flattened positions (the
    TorchScript walk leaves the softmax to the probe): local, with the per-window warning."""

    def __init__(self, norm="instance"):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True) if norm == "instance" else nn.GroupNorm(2, 4)

    def forward(self, x):
        y = self.norm(torch.relu(self.a(x)))
        return self.b(torch.softmax(y.flatten(2), 1).view_as(y))


@pytest.mark.parametrize("norm", ["instance", "group"])
@pytest.mark.parametrize("compile", ["script", "trace"])
def test_the_probe_holds_statistics_fixed_inside_torchscript(norm, compile, caplog):
    torch.manual_seed(0)
    eager = _NormFlat(norm).eval()
    m = _compiled(eager, compile)
    rf = receptive_field(m, 2)
    assert rf.method == "torchscript" and rf.size == (5, 5), rf
    assert any("probe" in n for n in rf.notes), rf.notes
    # the module itself is untouched: its gradient still reaches the whole window
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    m(x)[0, 0, 16, 16].backward()
    assert (x.grad != 0).all()


def test_an_eager_network_with_a_scripted_part_is_probed_with_fixed_statistics():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), torch.jit.script(_NormFlat().eval())).eval()
    rf = receptive_field(m, 2)
    assert rf.size == (7, 7) and any("probe" in n for n in rf.notes), rf



def test_an_fft_convolution_after_a_scripted_part_with_per_window_statistics():
    """The float64 copy of an eager network with a TorchScript part holds the part's statistics fixed too."""
    torch.manual_seed(0)
    m = FFTConv(linear=True)
    m.a = torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2)))
    rf = receptive_field(m.eval(), 2)
    assert rf.size == (9, 9) and any("float64" in n for n in rf.notes), rf
