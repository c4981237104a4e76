"""Halo tiled inference: exactness, blending, receptive field, tile mismatch, errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xmodal  # noqa: E402
from xmodal.inference import find_tile_shape, predict_tiled, receptive_field, tile_mismatch  # noqa: E402
from xmodal.inference._normalize import quantile_normalizer  # noqa: E402

nn = torch.nn


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


class UNet2d(nn.Module):
    """Two-level U-Net: conv-BN-ReLU, max pooling, nearest up-sampling, skip concatenation."""

    def __init__(self, cin=1, cout=2, norm="batch"):
        super().__init__()
        N = nn.BatchNorm2d if norm == "batch" else (lambda c: nn.InstanceNorm2d(c, affine=True))
        self.e1 = nn.Sequential(nn.Conv2d(cin, 4, 3, padding=1), N(4), nn.ReLU())
        self.e2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), N(6), nn.ReLU())
        self.b = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=2, dilation=2), nn.ReLU(),
                               nn.Upsample(scale_factor=2))
        self.d2 = nn.Sequential(nn.Conv2d(12, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))
        self.d1 = nn.Conv2d(8, cout, 3, padding=1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.b(b)
        d = self.d2(torch.cat([b, c], 1))
        return torch.sigmoid(self.d1(torch.cat([a, d], 1)))


def _monai_unet3d(norm="batch"):
    monai = pytest.importorskip("monai")
    torch.manual_seed(1)
    m = monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 8),
                                 strides=(2, 2), num_res_units=0, norm=norm)
    return _randomise_bn(m)


def _whole(model, x):
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None])[0].numpy()


@pytest.fixture(scope="module")
def unet2d():
    torch.manual_seed(0)
    return _randomise_bn(UNet2d())


def test_exact_2d_odd_shape(unet2d):
    x = np.random.default_rng(0).normal(size=(1, 76, 108)).astype(np.float32)  # not multiples of the tile
    ref = _whole(unet2d, x)
    for tile, bs in [((48, 52), 1), ((52, 56), 3), ((48, 108), 2)]:
        y = predict_tiled(unet2d, x, tile_shape=tile, batch_size=bs, progress=False)
        assert y.shape == ref.shape and y.dtype == np.float32
        assert np.abs(y - ref).max() <= 1e-5, tile
    # no channel axis in the image (single-channel model)
    y = predict_tiled(unet2d, x[0], tile_shape=(48, 52), progress=False)
    assert np.abs(y - ref).max() <= 1e-5


def test_halo_too_small_is_not_exact(unet2d):
    x = np.random.default_rng(1).normal(size=(1, 64, 64)).astype(np.float32)
    ref = _whole(unet2d, x)
    y = predict_tiled(unet2d, x, tile_shape=(16, 16), halo=0, progress=False)
    assert np.abs(y - ref).max() > 1e-3  # seams without a halo: the check can fail


def test_exact_3d_monai_batchnorm():
    m = _monai_unet3d()
    x = np.random.default_rng(2).normal(size=(1, 36, 44, 52)).astype(np.float32)  # multiples of 4, not of the tile
    ref = _whole(m, x)
    y = predict_tiled(m, x, tile_shape=(28, 28, 28), progress=False)
    assert np.abs(y - ref).max() <= 1e-5
    y = predict_tiled(m, x[0], tile_shape=(32, 32, 28), batch_size=2, progress=False)  # no channel axis
    assert np.abs(y - ref).max() <= 1e-5


class PadToFactor(nn.Module):
    """A network that pads its input at the end to a multiple of 4 and crops the output back."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        pads = []
        for n in reversed(x.shape[2:]):
            pads += [0, (-n) % 4]
        y = self.inner(nn.functional.pad(x, pads))
        return y[(slice(None), slice(None)) + tuple(slice(0, n) for n in x.shape[2:])]


def test_exact_when_volume_not_divisible_by_factor(unet2d):
    m = PadToFactor(unet2d).eval()
    x = np.random.default_rng(3).normal(size=(1, 61, 83)).astype(np.float32)
    ref = _whole(m, x)
    y = predict_tiled(m, x, tile_shape=(48, 52), progress=False)
    assert np.abs(y - ref).max() <= 1e-5


def test_blend_modes_normalise_weights():
    # a point-wise "network": every window agrees, so any weighted average returns it exactly
    x = np.random.default_rng(4).normal(size=(2, 20, 50, 70)).astype(np.float32)  # 3-D, 2 channels

    def model(b):
        return np.concatenate([2 * b, b[:, :1] - 1], axis=1)

    expect = np.concatenate([2 * x, x[:1] - 1])
    for blend in ("linear", "gaussian", "crop"):
        y = predict_tiled(model, x, tile_shape=(12, 16, 24), halo=5, blend=blend, progress=False)
        np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-6)


def test_blend_close_to_whole_volume(unet2d):
    x = np.random.default_rng(5).normal(size=(1, 64, 80)).astype(np.float32)
    ref = _whole(unet2d, x)
    for blend in ("linear", "gaussian"):
        y = predict_tiled(unet2d, x, tile_shape=(48, 48), blend=blend, progress=False)
        assert np.abs(y - ref).max() < 0.2
        assert np.abs(y - ref).mean() < 5e-3


def test_auto_tile_and_quantile_normalisation(unet2d):
    x = (np.random.default_rng(6).gamma(2.0, 50.0, size=(1, 60, 92))).astype(np.float32)
    norm = quantile_normalizer(x, channel_axis=0)
    q = np.quantile(x, [0.01, 0.98])
    width = (x.max() - x.min()) / 65536
    assert abs(norm.low[0] - q[0]) <= width and abs(norm.high[0] - q[1]) <= width
    ref = _whole(unet2d, norm(x))
    y = predict_tiled(unet2d, x, normalize="quantile", progress=False)
    assert np.abs(y - ref).max() <= 1e-5
    y = predict_tiled(unet2d, x, tile_shape=(48, 48), normalize="quantile", progress=False)
    assert np.abs(y - ref).max() <= 1e-5


def test_receptive_field_known_architectures(unet2d):
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 5, padding=2), nn.MaxPool2d(2),
                        nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.Upsample(scale_factor=2),
                        nn.Conv2d(2, 1, 3, padding=1))
    rf = receptive_field(seq, 2, check=True)
    # 1 + 2 + 4 + 1 (pool) + 2*2*2 (dilated, jump 2) + 1 (nearest x2: a window may straddle two
    # input voxels, (1 - 1/2) * jump 2) + 2 = 19
    assert rf.size == (19, 19) and rf.factor == (2, 2) and rf.halo == (10, 10)
    assert rf.measured is not None and all(m <= s for m, s in zip(rf.measured, rf.size))
    assert all(m >= s - 2 for m, s in zip(rf.measured, rf.size))
    # anisotropic 3-D kernels
    aniso = nn.Sequential(nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 2, 2)),
                          nn.Conv3d(2, 1, 3, padding=1))
    rf3 = receptive_field(aniso, 3)
    assert rf3.size == (3, 8, 8) and rf3.factor == (1, 2, 2)
    # U-Net: branches merge by maximum, PlantSeg's rule as a cross-check
    ru = receptive_field(unet2d, 2, check=True)
    assert ru.method == "fx" and ru.factor == (4, 4)
    assert all(p <= h for p, h in zip(ru.plantseg_halo, ru.halo))
    assert all(m <= s for m, s in zip(ru.measured, ru.size))


def test_receptive_field_monai_unet_and_instance_norm():
    rf = receptive_field(_monai_unet3d(), 3, check=True)
    assert rf.size == (21, 21, 21) and rf.factor == (4, 4, 4) and rf.halo == (12, 12, 12)
    assert rf.plantseg_halo == (10, 10, 10)  # 1 + 2 + 4 (convs) + 2 + 1 (transposed convs)
    assert all(m <= s for m, s in zip(rf.measured, rf.size))
    # InstanceNorm: the output depends on the whole input, the gradient check sees it
    rfi = receptive_field(_monai_unet3d(norm="instance"), 3, check=True)
    assert any(m > s for m, s in zip(rfi.measured, rfi.size)) and rfi.notes


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 1, 5, padding=2)

    def forward(self, x):
        if x.sum() > -1e30:  # data-dependent control flow: torch.fx cannot trace it
            x = self.a(x)
        return self.b(x)


def test_receptive_field_hook_fallback():
    rf = receptive_field(Untraceable(), 2)
    assert rf.method == "hooks" and rf.size == (7, 7) and rf.factor == (1, 1)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(2, 1, 5, 5) * 0.2)
        self.w2 = nn.Parameter(torch.randn(1, 2, 3, 3) * 0.2)

    def forward(self, x):
        x = torch.relu(nn.functional.conv2d(x, self.w1, padding=2)) + 0.1
        return nn.functional.conv2d(x, self.w2, padding=1)


def test_receptive_field_gradient_fallback():
    torch.manual_seed(4)
    m = Functional().eval()
    rf = receptive_field(m, 2)
    assert rf.method == "gradient" and rf.size == (7, 7) and rf.halo == (4, 4)
    x = np.random.default_rng(10).normal(size=(1, 40, 50)).astype(np.float32)
    # no convolution module to read the layout from: a 2-D image without channel axis
    y = predict_tiled(m, x[0], tile_shape=(12, 16), progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5


def test_tile_mismatch_batchnorm_vs_instancenorm(unet2d):
    x = np.random.default_rng(7).normal(size=(1, 96, 96)).astype(np.float32)
    r = tile_mismatch(unet2d, x, tile_shape=(64, 64))
    assert len(r.pairs) >= 4
    assert r.max_abs_diff <= 1e-5 and r.median_one_minus_dice == 0.0
    torch.manual_seed(3)
    inorm = UNet2d(norm="instance").eval()
    ri = tile_mismatch(inorm, x, tile_shape=(64, 64))
    assert ri.max_abs_diff > 1e-3
    assert ri.median_one_minus_dice > 0.0
    # per-tile normalisation also breaks stitching; global quantiles do not
    rp = tile_mismatch(unet2d, x * 10 + 3, tile_shape=(64, 64),
                       normalize=lambda w: (w - w.mean()) / w.std())
    assert rp.max_abs_diff > 1e-3
    rq = tile_mismatch(unet2d, x * 10 + 3, tile_shape=(64, 64), normalize="quantile")
    assert rq.max_abs_diff <= 1e-5


def test_find_tile_shape_budget(unet2d):
    big = find_tile_shape(unet2d, image_shape=(1000, 1000), memory_budget=1 << 30, device="cpu")
    small = find_tile_shape(unet2d, image_shape=(1000, 1000), memory_budget=4 << 20, device="cpu")
    assert big == (1000, 1000)  # 1000 is a multiple of the factor 4; the whole image fits
    assert all(t % 4 == 0 for t in small) and np.prod(small) < np.prod(big)
    from xmodal.inference import activation_bytes_per_voxel

    cost = activation_bytes_per_voxel(unet2d, 2, 1, (4, 4))
    halo = receptive_field(unet2d, 2).halo
    assert np.prod([t + 2 * h for t, h in zip(small, halo)]) * cost <= 4 << 20
    assert all(t >= 2 * h + 1 for t, h in zip(small, halo))


def test_bad_input_errors(unet2d):
    x = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="2 \\* halo \\+ 1"):
        predict_tiled(unet2d, x, tile_shape=(8, 8), halo=8, progress=False)
    with pytest.raises(ValueError, match="multiple of the network's down-sampling factor"):
        predict_tiled(unet2d, x, tile_shape=(30, 30), progress=False)
    with pytest.raises(ValueError, match="spatial axes"):
        predict_tiled(unet2d, np.zeros((1, 1, 8, 8, 8), np.float32), progress=False)
    with pytest.raises(ValueError, match="input channel"):
        predict_tiled(unet2d, np.zeros((3, 64, 64), np.float32), progress=False)
    with pytest.raises(ValueError, match="blend"):
        predict_tiled(unet2d, x, blend="max", progress=False)
    with pytest.raises(ValueError, match="normalize"):
        predict_tiled(unet2d, x, normalize="zscore", progress=False)
    with pytest.raises(TypeError, match="image"):
        predict_tiled(unet2d, "not an array".split(), progress=False)
    with pytest.raises(ValueError, match="out: expected shape"):
        predict_tiled(unet2d, x, out=np.zeros((2, 64, 63), np.float32), progress=False)

    class Valid(nn.Module):  # valid convolution: output smaller than the input
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.c(x)

    with pytest.raises(ValueError, match="spatial shape"):
        predict_tiled(Valid(), x, tile_shape=(32, 32), halo=2, progress=False)
    with pytest.raises(ValueError, match="halo"):
        predict_tiled(lambda b: b, x[0], progress=False)  # 'auto' halo needs a torch module


def test_native_kernels_match_numpy():
    from xmodal import _core

    rng = np.random.default_rng(8)
    out = np.zeros((2, 10, 12, 14), np.float32)
    wsum = np.zeros((10, 12, 14), np.float32)
    ref_out = out.copy()
    ref_w = wsum.copy()
    for off in [(-2, 3, 5), (4, -1, -3), (7, 8, 9)]:
        tile = rng.normal(size=(2, 6, 7, 8)).astype(np.float32)
        ws = [rng.uniform(0.1, 1, n).astype(np.float32) for n in tile.shape[1:]]
        _core.stitch_accumulate(out, wsum, tile, list(off), ws)
        w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
        src = tuple(slice(max(0, -o), min(n, N - o)) for o, n, N in zip(off, tile.shape[1:], out.shape[1:]))
        dst = tuple(slice(o + s.start, o + s.stop) for o, s in zip(off, src))
        ref_out[(slice(None),) + dst] += (w * tile)[(slice(None),) + src]
        ref_w[dst] += w[src]
    np.testing.assert_allclose(out, ref_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(wsum, ref_w, rtol=1e-6, atol=1e-6)
    _core.stitch_normalize(out, wsum)
    np.testing.assert_allclose(out, np.where(ref_w > 0, ref_out / np.where(ref_w > 0, ref_w, 1), ref_out),
                               rtol=1e-5, atol=1e-6)
    dst2 = np.zeros((3, 20, 20), np.float32)
    t2 = rng.normal(size=(3, 9, 9)).astype(np.float32)
    _core.stitch_paste(dst2, t2, [2, 1], [5, 10], [6, 7])
    assert np.array_equal(dst2[:, 5:11, 10:17], t2[:, 2:8, 1:8]) and np.count_nonzero(dst2) == 3 * 6 * 7
    with pytest.raises(ValueError, match="outside"):
        _core.stitch_paste(dst2, t2, [2, 1], [15, 10], [6, 7])
    with pytest.raises(TypeError, match="float32"):
        _core.stitch_paste(dst2.astype(np.float64), t2, [0, 0], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        _core.stitch_accumulate(out, wsum, tile, [0, 0, 0], ws[:2])


def test_threads_do_not_change_blend(unet2d):
    x = np.random.default_rng(9).normal(size=(1, 48, 64)).astype(np.float32)
    old = xmodal.get_num_threads()
    try:
        xmodal.set_num_threads(1)
        a = predict_tiled(unet2d, x, tile_shape=(48, 48), blend="gaussian", progress=False)
        xmodal.set_num_threads(2)
        b = predict_tiled(unet2d, x, tile_shape=(48, 48), blend="gaussian", progress=False)
    finally:
        xmodal.set_num_threads(old)
    assert np.array_equal(a, b)


def test_public_names_resolve():
    assert xmodal.predict_tiled is predict_tiled
    assert xmodal.receptive_field is receptive_field
    assert xmodal.find_tile_shape is find_tile_shape
    assert xmodal.tile_mismatch is tile_mismatch


def test_find_tile_shape_refuses_bad_shapes_budgets_and_halos(unet2d):
    ok = dict(image_shape=(64, 64), memory_budget=1 << 24, device="cpu")
    assert find_tile_shape(unet2d, **ok) == (64, 64)
    for kw, exc, match in [
        (dict(image_shape=(-64, 64)), ValueError, "image_shape: expected integers >= 1"),
        (dict(image_shape=(0, 64)), ValueError, "image_shape"),
        (dict(image_shape=(64,)), ValueError, "image_shape: expected 2 values"),
        (dict(image_shape=(64.5, 64)), TypeError, "image_shape"),
        (dict(memory_budget=0), ValueError, "memory_budget"),
        (dict(memory_budget=-1), ValueError, "memory_budget"),
        (dict(memory_budget=float("nan")), ValueError, "memory_budget"),
        (dict(memory_budget="1GB"), TypeError, "memory_budget"),
        (dict(halo=-1), ValueError, "halo: expected integers >= 0"),
        (dict(halo=(4, -2)), ValueError, "halo"),
        (dict(halo="big"), ValueError, "halo"),
        (dict(multiple_of=(0, 4)), ValueError, "multiple_of"),
        (dict(bytes_per_voxel=0.0), ValueError, "bytes_per_voxel"),
        (dict(bytes_per_voxel=float("nan")), ValueError, "bytes_per_voxel"),
        (dict(max_shape=0, image_shape=None), ValueError, "max_shape"),
        (dict(ndim=True), TypeError, "ndim"),
    ]:
        with pytest.raises(exc, match=match):
            find_tile_shape(unet2d, **{**ok, **kw})


def test_predict_tiled_refuses_integer_zarr_out_and_truthy_strings(unet2d, tmp_path):
    import zarr

    x = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    out = zarr.create_array(store=str(tmp_path / "o.zarr"), shape=(2, 32, 32), chunks=(2, 32, 32), dtype="i1")
    with pytest.raises(TypeError, match="out: expected a floating dtype.*int8"):
        predict_tiled(unet2d, x, out=out, progress=False)
    assert not np.asarray(out[...]).any()  # nothing written
    with pytest.raises(TypeError, match="out: expected a floating dtype"):
        predict_tiled(unet2d, x, out=np.zeros((2, 32, 32), np.int8), progress=False)
    f32 = zarr.create_array(store=str(tmp_path / "f.zarr"), shape=(2, 32, 32), chunks=(2, 32, 32), dtype="f4")
    res = predict_tiled(unet2d, x, out=f32, progress=False)
    assert np.allclose(np.asarray(res[...]), predict_tiled(unet2d, x, progress=False))
    for name in ("progress", "resume"):
        with pytest.raises(TypeError, match=f"{name}: expected True,? (False|or False)"):
            predict_tiled(unet2d, x, **{name: "no"})


def test_normalisers_have_one_home_and_scale_globally():
    """Standardize / global_mean_std and the quantile normaliser: global statistics read block by
    block equal numpy's on the whole array; a constant image is centred, not divided by zero; the
    shipped model's normalisation is the same Standardize."""
    from xmodal.inference import Standardize, global_mean_std, quantile_normalizer
    from xmodal.models import normalize_isbi2012

    rng = np.random.default_rng(11)
    img = rng.normal(100.0, 7.0, (9, 20, 30)).astype(np.float32)
    mean, std = global_mean_std(img, block_voxels=1000)  # many slabs
    assert mean == pytest.approx(img.astype(np.float64).mean(), rel=1e-12)
    assert std == pytest.approx(img.astype(np.float64).std(), rel=1e-9)
    tile = (slice(2, 5), slice(3, 17), slice(0, 30))
    np.testing.assert_array_equal(Standardize(mean, std)(img[tile]), Standardize(mean, std)(img)[tile])
    assert not Standardize(4.0, 0.0)(np.full((3, 3), 4.0, np.float32)).any()
    np.testing.assert_allclose(normalize_isbi2012(img[0]), Standardize(*global_mean_std(img[0]))(img[0]), atol=1e-6)
    with pytest.raises(ValueError, match="image: expected finite"):
        global_mean_std(np.array([[1.0, np.nan]]), name="image")
    q = quantile_normalizer(img[None], channel_axis=0)
    lo, hi = np.quantile(img.astype(np.float64), [0.01, 0.98])
    width = (img.max() - img.min()) / 65536
    assert abs(q.low[0] - lo) <= width and abs(q.high[0] - hi) <= width


def test_convolution_after_nearest_upsampling_is_exact():
    """A 3 x 3 convolution after two nearest x2 up-samplings reads voxels that may straddle two
    coarse voxels: the halo must count that (it used to be 2 voxels short, so tiles left seams)."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                      nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.Upsample(scale_factor=2),
                      nn.Upsample(scale_factor=2), nn.Conv2d(4, 2, 3, padding=1)).eval()
    rf = receptive_field(m, 2, check=True)
    assert all(mm <= s for mm, s in zip(rf.measured, rf.size))
    x = np.random.default_rng(7).normal(size=(1, 100, 76)).astype(np.float32)
    y = predict_tiled(m, x, tile_shape=40, progress=False)
    assert np.abs(y - _whole(m, x)).max() <= 1e-5
