"""Blended tiled inference out of core: block accumulators with bounded memory, equal to in-core
blending, chunk-aligned writes, completion flags and resume."""

import os
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zarr = pytest.importorskip("zarr")

from xmodal import _core  # noqa: E402
from xmodal import io as xio  # noqa: E402
from xmodal.inference import predict_tiled  # noqa: E402
from xmodal.inference._grid import BlockSweep, blend_order, blend_weights, make_tiles  # noqa: E402
from xmodal.inference._plan import plan_prediction, read_window  # noqa: E402
from xmodal.inference._run import run_local  # noqa: E402
from test_tiling_ooc import Crashing  # noqa: E402  (the same injected failure as crop mode)

nn = torch.nn


class Net(nn.Module):
    """Zero-padded convolutions: window edges change the prediction, which blending smooths."""

    def __init__(self, cin=1, cout=2, nd=2):
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        self.c1 = conv(cin, 4, 3, padding=1)
        self.c2 = conv(4, cout, 3, padding=2, dilation=2)

    def forward(self, x):
        return self.c2(torch.tanh(self.c1(x)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(1, 100, 150)).astype(np.float32)


def in_core(model, image, tile, halo, blend, *, raster=False):
    """Blending with one output-sized accumulator (the former in-core path), tiles in the sweep order
    of the streaming run (or plain raster order)."""
    nd = image.ndim - 1
    tiles = make_tiles(image.shape[1:], tile, (halo,) * nd, (1,) * nd)
    if not raster:
        tiles = blend_order(image.shape[1:], tiles)[0]
    acc = wsum = None
    for t in tiles:
        with torch.inference_mode():
            y = model(torch.from_numpy(read_window(image, 0, t.window, None))[None])[0].numpy()
        if acc is None:
            acc = np.zeros((y.shape[0],) + image.shape[1:], np.float32)
            wsum = np.zeros(image.shape[1:], np.float32)
        _core.stitch_accumulate(acc, wsum, np.ascontiguousarray(y), list(t.wstart), blend_weights(t, blend))
    _core.stitch_normalize(acc, wsum)
    return acc


@pytest.mark.parametrize("blend", ["linear", "gaussian"])
def test_blocks_equal_in_core_blending(tmp_path, net, image, blend):
    ref = in_core(net, image, (48, 48), 6, blend)
    mem = predict_tiled(net, image, tile_shape=(48, 48), halo=6, blend=blend, progress=False)
    assert np.array_equal(mem, ref)  # same sums in the same order: bitwise
    # a given zarr array whose chunks (16) make blocks of 32 voxels, straddling the tiles (48)
    out = xio.create_array(tmp_path / "o.zarr", (2, 100, 150), np.float32, chunks=(1, 16, 16))
    z = predict_tiled(net, image, tile_shape=(48, 48), halo=6, blend=blend, out=out, progress=False)
    assert np.array_equal(z[:], ref)
    assert xio.output_status(out)["complete"]
    p = predict_tiled(net, image, tile_shape=(48, 48), halo=6, blend=blend, out=tmp_path / "p.zarr", progress=False)
    assert np.array_equal(p[:], ref) and xio.open_array(tmp_path / "p.zarr").shape == (2, 100, 150)
    assert not (tmp_path / "p.zarr" / "0.xmodal-progress").exists()  # block markers removed when complete


def test_blended_zarr_chunks_need_not_divide_the_tile(tmp_path, net, image):
    """Crop mode writes whole tiles, so its tiles must be multiples of out's chunks; blended mode
    writes blocks made of whole chunks, so any chunks do (here 7 x 11 against tiles of 48)."""
    ref = in_core(net, image, (48, 48), 6, "linear")
    out = xio.create_array(tmp_path / "o.zarr", (2, 100, 150), np.float32, chunks=(1, 7, 11))
    z = predict_tiled(net, image, tile_shape=(48, 48), halo=6, blend="linear", out=out, progress=False)
    assert np.array_equal(z[:], ref) and xio.output_status(out)["complete"]
    crop = xio.create_array(tmp_path / "c.zarr", (2, 100, 150), np.float32, chunks=(1, 7, 11))
    with pytest.raises(ValueError, match=r"tile_shape: tiles must be whole multiples of out's chunks"):
        predict_tiled(net, image, tile_shape=(48, 48), halo=6, blend="crop", out=crop, progress=False)


def test_sweep_along_the_longest_axis_3d(tmp_path):
    """More tiles along x: the sweep runs along x (other sums order than raster: float32 rounding)."""
    torch.manual_seed(1)
    model = Net(nd=3).eval()
    x = np.random.default_rng(1).normal(size=(1, 20, 24, 120)).astype(np.float32)
    tiles = make_tiles(x.shape[1:], (16, 16, 16), (4, 4, 4), (1, 1, 1))
    assert blend_order(x.shape[1:], tiles)[1] == (2, 0, 1)
    out = xio.create_array(tmp_path / "o.zarr", (2, 20, 24, 120), np.float32, chunks=(2, 8, 8, 8))
    y = predict_tiled(model, x, tile_shape=(16, 16, 16), halo=4, blend="gaussian", out=out, progress=False)[:]
    assert np.array_equal(y, in_core(model, x, (16, 16, 16), 4, "gaussian"))
    raster = in_core(model, x, (16, 16, 16), 4, "gaussian", raster=True)
    # at most 8 windows per voxel, summed in another order: a few float32 ulps of the output's magnitude
    assert np.abs(y - raster).max() <= 1e-6 * np.abs(raster).max()


def _pointwise(b):
    return np.concatenate([b, 0.5 * b * b], axis=1)


def test_open_blocks_stay_within_the_slab_bound(tmp_path):
    """A 3-D volume long along x: the open blocks never exceed a slab of a window plus two blocks along
    x, a small share of the output-sized accumulator the in-core path held (measured too)."""
    shape = (32, 128, 1024)
    x = np.random.default_rng(2).normal(size=(1,) + shape).astype(np.float32)
    plan = plan_prediction(_pointwise, x, tile_shape=(16, 64, 64), halo=4, blend="linear", batch_size=1,
                           device="cpu", normalize=None, channel_axis=0, out=tmp_path / "b.zarr", progress=False,
                           resume=True)
    xio.mark_incomplete(plan.out, "test")
    run_local(plan)
    full = 4 * (2 + 1) * int(np.prod(shape))  # accumulators of the whole output: 48 MiB
    slab = 4 * (2 + 1) * (72 + 2 * 64) * 32 * 128  # window 72 + 2 blocks of 64 along x, whole (z, y)
    assert plan.stats["blend_axes"][0] == 2 and plan.stats["blend_bound_bytes"] == slab
    assert 0 < plan.stats["blend_peak_bytes"] <= slab <= full / 5
    assert plan.stats["blocks_written"] == len(list(xio.iter_blocks(shape, plan.blocks)))
    np.testing.assert_allclose(plan.out[:], _pointwise(x[None])[0], rtol=1e-6, atol=1e-6)
    # black box: the Python heap (numpy buffers included) of a whole run stays far below one accumulator
    tracemalloc.start()
    try:
        predict_tiled(_pointwise, x, tile_shape=(16, 64, 64), halo=4, blend="linear", out=tmp_path / "c.zarr",
                      progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full / 2, peak


def test_block_sweep_counts_every_window():
    tiles = make_tiles((50, 70), (16, 24), (5, 5), (2, 2))
    order, axes = blend_order((50, 70), tiles)
    grid = BlockSweep((50, 70), (12, 20), order, axes)
    seen: dict = {}
    for t in order:
        for k in grid.blocks_of(t):
            seen.setdefault(k, []).append(t.index)
    assert {k: len(v) for k, v in seen.items()} == {k: grid.count(k) for k in seen}
    assert all(list(grid.tiles_of(k)) == v for k, v in seen.items())
    assert len(seen) == 5 * 4  # every block of the grid is overlapped


def test_blended_resume_after_crash(tmp_path, net, image):
    path = tmp_path / "r.zarr"
    counter = Crashing(net).eval()
    fresh = predict_tiled(counter, image, tile_shape=(32, 32), halo=6, blend="gaussian", progress=False)
    calls = counter.calls  # setup passes (trace, probe) and the 4 x 5 tiles
    with pytest.raises(RuntimeError, match="injected"):  # on the 19th of 20 tiles
        predict_tiled(Crashing(net, fail_at=calls - 1).eval(), image, tile_shape=(32, 32), halo=6,
                      blend="gaussian", out=path, progress=False)
    markers = [n for n in os.listdir(path / "0.xmodal-progress") if n != "signature"]
    assert 0 < len(markers) < 20  # blocks of 32 x 32 (4 x 5), those no window left to come overlaps
    with pytest.raises(ValueError, match="incomplete"):
        xio.open_array(path)
    rerun = Crashing(net).eval()
    y = predict_tiled(rerun, image, tile_shape=(32, 32), halo=6, blend="gaussian", out=path, progress=False)
    assert rerun.calls < calls - 5  # windows overlapping only written blocks are not predicted again
    assert np.array_equal(y[:], fresh)
    assert xio.output_status(xio.open_array(path))["complete"]
    again = Crashing(net).eval()  # complete for this input: returned as it is
    predict_tiled(again, image, tile_shape=(32, 32), halo=6, blend="gaussian", out=path, progress=False)
    assert again.calls == calls - 20


def test_blended_resume_on_other_data_recomputes(tmp_path, net, image):
    """A block written from other input values is not reused: the rerun equals a fresh run."""
    other = image.copy()
    other[:, 5:8, 5:8] += 1.0  # changes the window of the first tile only: 4 written blocks are stale
    path = tmp_path / "r.zarr"
    counter = Crashing(net).eval()
    predict_tiled(counter, image, tile_shape=(32, 32), halo=6, blend="linear", progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(Crashing(net, fail_at=counter.calls - 1).eval(), image, tile_shape=(32, 32), halo=6,
                      blend="linear", out=path, progress=False)
    rerun = Crashing(net).eval()  # the same model token as the interrupted run: its markers apply
    y = predict_tiled(rerun, other, tile_shape=(32, 32), halo=6, blend="linear", out=path, progress=False)
    assert np.array_equal(y[:], predict_tiled(net, other, tile_shape=(32, 32), halo=6, blend="linear",
                                              progress=False))
    assert rerun.calls < counter.calls  # blocks whose windows did not change were reused


def test_blended_with_a_client(tmp_path, net, image):
    """Blended modes run on a dask client (formerly refused): one task per group of output blocks,
    bitwise the local result (more in tests/test_tiling_blend_client.py)."""
    distributed = pytest.importorskip("distributed")
    local = predict_tiled(net, image, tile_shape=(32, 32), halo=6, blend="linear", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        z = predict_tiled(net, image, tile_shape=(32, 32), halo=6, blend="linear", client=client,
                          out=tmp_path / "x.zarr", progress=False)
    assert np.array_equal(z[:], local) and xio.output_status(z)["complete"]
