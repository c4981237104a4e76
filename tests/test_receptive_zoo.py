"""receptive_field on whole architectures: U-Nets written the usual ways (skips by torch.cat,
up-sampling by scale factor, to the skip's size, transposed convolution, PixelShuffle; per-window
normalisation), MONAI's networks (when MONAI is installed), and TorchScript copies. A local network
is walked without a probe where the walk can judge it and tiles with ``halo="auto"`` equal the
whole-image prediction; a network with a global operation raises GlobalFieldError; InstanceNorm /
GroupNorm (modules or functions) give a warning, never an error."""

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.inference import GlobalFieldError, predict_tiled, receptive_field  # noqa: E402

nn = torch.nn
F = nn.functional


def _norm(kind, c):
    return {"batch": lambda: nn.BatchNorm2d(c), "instance": lambda: nn.InstanceNorm2d(c, affine=True),
            "group": lambda: nn.GroupNorm(2, c), "fgroup": lambda: _FunctionalGroupNorm()}[kind]()


class _FunctionalGroupNorm(nn.Module):
    def forward(self, x):
        return F.group_norm(x, 2)


def _block(ci, co, norm):
    return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), _norm(norm, co), nn.LeakyReLU(0.1),
                         nn.Conv2d(co, co, 3, padding=1, groups=2), _norm(norm, co), nn.LeakyReLU(0.1))


class UNet(nn.Module):
    """Three levels, skips by torch.cat; ``up``: F.interpolate by a scale factor ("scale"), to the
    skip's size ("size"), ConvTranspose2d ("convt"), conv + PixelShuffle ("shuffle"), nn.Upsample
    bilinear ("upsample"), or up-convolution then F.pad to the skip's size ("pad")."""

    def __init__(self, up="scale", norm="batch"):
        super().__init__()
        self.how = up
        self.e1, self.e2, self.e3 = _block(1, 4, norm), _block(4, 8, norm), _block(8, 8, norm)
        self.d2, self.d1 = _block(16, 4, norm), _block(8, 4, norm)
        self.out = nn.Conv2d(4, 2, 1)
        self.u3, self.u2 = {
            "convt": lambda: (nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ConvTranspose2d(4, 4, 2, stride=2)),
            "pad": lambda: (nn.ConvTranspose2d(8, 8, 2, stride=2), nn.ConvTranspose2d(4, 4, 2, stride=2)),
            "shuffle": lambda: (nn.Sequential(nn.Conv2d(8, 32, 1), nn.PixelShuffle(2)),
                                nn.Sequential(nn.Conv2d(4, 16, 1), nn.PixelShuffle(2))),
            "upsample": lambda: (nn.Upsample(scale_factor=2, mode="bilinear"),) * 2,
        }.get(up, lambda: (nn.Identity(), nn.Identity()))()

    def _up(self, x, skip, mod):
        if self.how == "scale":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.how == "size":
            return F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        y = mod(x)
        if self.how == "pad":
            dy, dx = skip.size(2) - y.size(2), skip.size(3) - y.size(3)
            y = F.pad(y, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return y

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(F.max_pool2d(a, 2))
        c = self.e3(F.max_pool2d(b, 2))
        d = self.d2(torch.cat([b, self._up(c, b, self.u3)], 1))
        return self.out(self.d1(torch.cat([a, self._up(d, a, self.u2)], 1)))


def _whole(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None, None])[0].numpy()


def _tiled_exact(model, rf, shape=None):
    """predict_tiled with halo="auto" on an image of about three tiles per axis equals the whole image."""
    tile = tuple(f * -(-(2 * h + 1) // f) for h, f in zip(rf.halo, rf.factor))
    shape = shape or tuple(2 * t + 3 * f for t, f in zip(tile, rf.factor))
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    y = predict_tiled(model, x, tile_shape=tile, progress=False)
    return float(np.abs(y - _whole(model, x)).max())


@pytest.mark.parametrize("up", ["scale", "size", "convt", "pad", "shuffle", "upsample"])
def test_unets_are_walked_without_a_probe_and_tile_exactly(up):
    torch.manual_seed(0)
    m = UNet(up).eval()
    rf = receptive_field(m, 2, check=True)
    assert rf.method == "fx" and rf.factor == (4, 4) and not rf.notes, rf.notes
    assert all(s >= g for s, g in zip(rf.size, rf.measured))
    assert _tiled_exact(m, rf) <= 1e-5


@pytest.mark.parametrize("norm", ["instance", "group", "fgroup"])
def test_per_window_normalisation_is_a_warning_whatever_else_is_probed(norm, caplog):
    """InstanceNorm / GroupNorm modules and F.group_norm: a finite field (the probe of an operation the
    walk cannot judge holds the statistics fixed), predict_tiled with halo="auto" runs and warns."""
    torch.manual_seed(0)
    m = UNet("size", norm).eval()
    m.e3.append(_Unfolded())  # an operation the walk has no rule for: probed
    rf = receptive_field(m, 2)
    assert rf.factor == (4, 4) and any("probe" in n and "unfold" in n for n in rf.notes), rf.notes
    tile = tuple(f * -(-(2 * h + 1) // f) for h, f in zip(rf.halo, rf.factor))
    x = np.random.default_rng(1).normal(size=tuple(2 * t for t in tile)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(m, x, tile_shape=tile, progress=False)
    assert any("statistics of each window" in r.getMessage() for r in caplog.records)


class _Unfolded(nn.Module):
    """A 3 x 3 box filter per channel written with F.unfold."""

    def forward(self, x):
        b, c, h, w = x.shape
        return F.unfold(x, 3, padding=1).view(b, c, 9, h, w).mean(2)


class _Global(nn.Module):
    """A U-Net bottleneck with a global operation ``kind``."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.net = UNet("scale")
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        net = self.net
        a = net.e1(x)
        b = net.e2(F.max_pool2d(a, 2))
        c = net.e3(F.max_pool2d(b, 2))
        n, ch, h, w = c.shape
        if self.kind == "se":
            c = c * torch.sigmoid(c.mean((2, 3), keepdim=True))
        elif self.kind == "attention":
            t = c.flatten(2).transpose(1, 2)
            c = c + self.att(t, t, t)[0].transpose(1, 2).reshape(n, ch, h, w)
        elif self.kind == "non-local":
            t = c.view(n, ch, -1)
            c = c + torch.bmm(t, torch.softmax(torch.bmm(t.transpose(1, 2), t), -1)).view_as(c)
        elif self.kind == "aspp pooling":
            c = torch.cat([c[:, :4], F.interpolate(F.adaptive_avg_pool2d(c[:, 4:], 1), size=(h, w))], 1)
        elif self.kind == "einsum":
            c = c * torch.einsum("bchw,bchw->bc", c, c)[:, :, None, None].sigmoid()
        elif self.kind == "max":
            c = c / (1 + torch.max(c))
        d = net.d2(torch.cat([b, F.interpolate(c, scale_factor=2)], 1))
        return net.out(net.d1(torch.cat([a, F.interpolate(d, scale_factor=2)], 1)))


@pytest.mark.parametrize("kind", ["se", "attention", "non-local", "aspp pooling", "einsum", "max"])
def test_global_bottlenecks_are_refused(kind):
    torch.manual_seed(0)
    m = _Global(kind).eval()
    with pytest.raises(GlobalFieldError) as info:
        receptive_field(m, 2)
    assert info.value.factor == (4, 4)
    # and they are global indeed: input columns beyond the walked field change the centre output
    x = torch.randn(1, 1, 96, 96)
    y = x.clone()
    y[..., :, :20] += 3 * torch.randn(96, 20)
    with torch.inference_mode():
        assert (m(x) - m(y))[..., 48, 48].abs().max() > 0  # exactly 0 for a local network


def test_a_3d_unet_and_its_torchscript_copies():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 4, 3, padding=1),
                      nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv3d(4, 1, 3, padding=1)).eval()
    rf = receptive_field(m, 3)
    assert rf.method == "fx" and rf.factor == (2, 2, 2) and not rf.notes
    for copy in (torch.jit.script(m), torch.jit.trace(m, torch.zeros(1, 1, 16, 16, 16))):
        other = receptive_field(copy, 3)
        assert other.method == "torchscript" and other.size == rf.size and not other.notes
    assert _tiled_exact(m, rf) <= 1e-5


def test_traced_unets_are_walked_and_traced_global_ones_refused():
    torch.manual_seed(0)
    for up in ("scale", "convt"):
        m = UNet(up).eval()
        traced = torch.jit.trace(m, torch.zeros(1, 1, 32, 32))
        rf = receptive_field(traced, 2)
        assert rf.method == "torchscript" and rf.size == receptive_field(m, 2).size and not rf.notes
    with pytest.raises(GlobalFieldError, match=r"aten::mean \(TorchScript\) over axes \(2, 3\)"):
        receptive_field(torch.jit.trace(_Global("se").eval(), torch.zeros(1, 1, 32, 32)), 2)
    with pytest.raises(GlobalFieldError, match="gradient probe"):  # attention: after a reshape, probed
        receptive_field(torch.jit.trace(_Global("attention").eval(), torch.zeros(1, 1, 32, 32), check_trace=False), 2)


# ------------------------------------------------------------------------------------------- MONAI
def _monai():
    return pytest.importorskip("monai.networks.nets")


MONAI_LOCAL = {
    "UNet (InstanceNorm)": lambda N: N.UNet(2, 1, 2, (4, 8, 16), (2, 2), num_res_units=1),
    "BasicUNet": lambda N: N.BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 8, 4)),
    "AttentionUnet": lambda N: N.AttentionUnet(2, 1, 2, (4, 8, 16), (2, 2)),
    "SegResNet (GroupNorm)": lambda N: N.SegResNet(2, init_filters=8, in_channels=1, out_channels=2,
                                                   blocks_down=(1, 1, 1), blocks_up=(1, 1)),
    "DynUNet (InstanceNorm)": lambda N: N.DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16]),
    "VNet (x.repeat)": lambda N: N.VNet(2, 1, 2, dropout_prob_down=None, dropout_prob_up=(None, 0.0)),
    "HighResNet": lambda N: N.HighResNet(2, 1, 2, layer_params=(
        {"name": "conv_0", "n_features": 4, "kernel_size": 3},
        {"name": "res_1", "n_features": 4, "kernels": (3, 3), "repeat": 1},
        {"name": "conv_1", "n_features": 4, "kernel_size": 1}, {"name": "conv_2", "kernel_size": 1})),
}


@pytest.mark.parametrize("name", sorted(MONAI_LOCAL))
def test_monai_local_networks_have_a_finite_field_without_a_probe(name):
    N = _monai()
    torch.manual_seed(0)
    m = MONAI_LOCAL[name](N).eval()
    rf = receptive_field(m, 2)
    assert all(np.isfinite(rf.size)) and not any("probe" in n for n in rf.notes), rf.notes


def test_monai_segresnet_and_dynunet_tile_with_halo_auto(caplog):
    N = _monai()
    torch.manual_seed(0)
    seg = N.SegResNet(2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1),
                      norm="batch").eval()
    assert _tiled_exact(seg, receptive_field(seg, 2)) <= 1e-5
    dyn = N.DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 16]).eval()
    x = np.random.default_rng(2).normal(size=(112, 104)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(dyn, x, tile_shape=(52, 52), progress=False)  # no GlobalFieldError
    assert any("InstanceNorm2d" in r.getMessage() for r in caplog.records)


def test_monai_global_blocks_are_refused():
    N = _monai()
    from monai.networks.blocks import ChannelSELayer

    torch.manual_seed(0)
    se = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), ChannelSELayer(2, 8), nn.Conv2d(8, 1, 3, padding=1)).eval()
    grn = N.MedNeXt(2, init_filters=4, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_bottleneck=1,
                    blocks_up=(1, 1), kernel_size=3, global_resp_norm=True).eval()
    for m in (se, grn):
        with pytest.raises(GlobalFieldError):
            receptive_field(m, 2)


def test_monai_unetr_is_refused():
    N = _monai()
    pytest.importorskip("einops")
    m = N.UNETR(1, 2, (32, 32), feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2, spatial_dims=2).eval()
    with pytest.raises(GlobalFieldError):
        receptive_field(m, 2)


# ------------------------------------------------------------------------------------- TorchScript
class _Deployed(nn.Module):
    """As exported for deployment: InstanceNorm, up-sampling to the skip's size, a branch taken only
    in training (deep supervision at a size computed at run time), a softmax over the classes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.LeakyReLU(0.1))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.LeakyReLU(0.1))
        self.head = nn.Conv2d(8, 3, 1)
        self.aux = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        a = self.a(x)
        b = self.b(F.max_pool2d(a, 2))
        y = self.head(torch.cat([a, F.interpolate(b, size=a.shape[2:], mode="bilinear", align_corners=False)], 1))
        if self.training:
            return y + F.interpolate(self.aux(b), size=(y.shape[2], y.shape[3]))
        return torch.softmax(y, 1)


@pytest.mark.parametrize("compile", ["script", "trace"])
def test_a_deployed_torchscript_network_is_walked_without_a_probe(compile, caplog):
    """Reductions / softmax over the channels are judged by their axes, an up-sampling to a tensor's
    size takes the ratio of their grids, a branch of ``self.training`` is walked as taken: the same
    field as the eager network, no probe (which could not hold InstanceNorm's statistics inside
    compiled code), and predict_tiled with halo="auto" warns about InstanceNorm only."""
    torch.manual_seed(0)
    m = _Deployed().eval()
    ts = torch.jit.script(m) if compile == "script" else torch.jit.trace(m, torch.zeros(1, 1, 32, 32))
    rf = receptive_field(ts, 2)
    assert rf.method == "torchscript" and rf.size == receptive_field(m, 2).size and not rf.notes, rf.notes
    x = np.random.default_rng(3).normal(size=(80, 72)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        predict_tiled(ts, x, tile_shape=(24, 24), progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned and all("InstanceNorm2d" in w for w in warned), warned


class _ListUNet(nn.Module):
    """Encoder features kept in a list built by ``append`` (as MONAI's FlexibleUNet encoder)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 5, padding=2)
        self.c = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        feats: list[torch.Tensor] = []
        feats.append(torch.relu(self.a(x)))
        feats.append(torch.relu(self.b(F.max_pool2d(feats[0], 2))))
        up = F.interpolate(feats[1], scale_factor=2.0)
        return self.c(torch.cat([feats[0], up], 1))


def test_a_scripted_network_keeping_features_in_a_list_is_not_underestimated():
    """Before, the list filled by ``append`` carried no field: the decoder's layers were not counted
    (MONAI's scripted FlexibleUNet: 195 voxels walked, 288 measured)."""
    torch.manual_seed(0)
    m = _ListUNet().eval()
    eager = receptive_field(m, 2, check=True)
    scripted = receptive_field(torch.jit.script(m), 2)
    assert scripted.method == "torchscript" and scripted.size == eager.size  # element by element
    assert all(s >= g for s, g in zip(eager.size, eager.measured))
    assert _tiled_exact(torch.jit.script(m), scripted) <= 1e-5
