"""Blended tiled inference on a dask cluster: the output cut into groups of whole blocks, one task
per group; bitwise the local result; resume as in a local run; the grouping's cost."""

import itertools
import os
import pickle
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from xmodal import io as xio  # noqa: E402
from xmodal.inference import predict_tiled  # noqa: E402
from xmodal.inference._grid import BlockSweep, blend_blocks, blend_order, make_tiles  # noqa: E402
from xmodal.inference._plan import plan_prediction  # noqa: E402
from xmodal.inference._run import _batches  # noqa: E402
from xmodal.inference._run_blend_dask import (_submit, choose_groups, dask_blocks,  # noqa: E402
                                              run_dask_blended)
from test_tiling_blend_ooc import Net  # noqa: E402
from test_tiling_ooc import Crashing  # noqa: E402

TILE, HALO = (32, 32), 6


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(1, 100, 150)).astype(np.float32)


@pytest.fixture(scope="module")
def client():
    """Four threads in this process (two workers): groups cut along both axes."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _plan(model, image, out=None, *, blend="linear", batch_size=1, tile=TILE, resume=True):
    plan = plan_prediction(model, image, tile_shape=tile, halo=HALO, blend=blend, batch_size=batch_size, device="cpu",
                           normalize=None, channel_axis=0, out=out, progress=False, resume=resume)
    if plan.out_kind == "zarr":
        xio.mark_incomplete(plan.out, "test")
    return plan


def _grid(shape, tile, halo, chunks, batch_size):
    tiles = make_tiles(shape, tile, halo, (1,) * len(shape))
    order, axes = blend_order(shape, tiles)
    grid = BlockSweep(shape, blend_blocks(shape, tile, chunks), order, axes)
    return order, grid, list(_batches(order, batch_size))


@pytest.mark.parametrize("shape, tile, halo, chunks", [
    ((100, 150), (32, 32), (6, 6), None), ((100, 150), (32, 32), (6, 6), (7, 11)),
    ((40, 50, 200), (16, 16, 32), (4, 4, 4), (8, 8, 16))])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_groups_partition_the_blocks(shape, tile, halo, chunks, batch_size):
    """Every block in exactly one group; a group runs every batch holding a window that overlaps it;
    one thread gets one group (no window twice); more threads never a longer makespan."""
    order, grid, batches = _grid(shape, tile, halo, chunks, batch_size)
    by_index = {t.index: t for t in order}
    last = None
    for threads in (1, 2, 3, 4, 8):
        g = choose_groups(grid, batches, threads)
        owner = {}
        for j, box in g.boxes.items():
            for k in itertools.product(*(range(lo, hi) for lo, hi in box)):
                assert k not in owner and g.group_of(k) == j
                owner[k] = j
                runs = {t.index for b in g.batches[j] for t in batches[b]}
                assert set(grid.tiles_of(k)) <= runs
        assert len(owner) == int(np.prod(grid.nblocks)) and len(g.boxes) <= 2 * threads
        assert g.windows == sum(len(batches[b]) for r in g.batches.values() for b in r)
        assert all(r == sorted(r) for r in g.batches.values())  # sweep order
        if threads == 1:
            assert len(g.boxes) == 1 and g.windows == len(by_index)
        assert last is None or g.makespan <= last
        last = g.makespan


def test_cuts_fall_inside_tiles():
    """Half-tile blocks (numpy output): a cut inside a tile is straddled by that tile's windows
    alone, one row of windows predicted twice instead of two at a tile's edge. 64 x 1024, tiles of
    64, halo 8: 16 tiles along x; two threads -> two groups, 17 window predictions (+6 %)."""
    _, grid, batches = _grid((64, 1024), (64, 64), (8, 8), (32, 32), 1)
    g = choose_groups(grid, batches, 2)
    assert len(g.boxes) == 2 and g.windows == 17 and g.makespan == 9
    _, edge, batches = _grid((64, 1024), (64, 64), (8, 8), (64, 64), 1)  # blocks = tiles: cut at a tile edge
    assert choose_groups(edge, batches, 2).windows == 18
    with pytest.raises(ValueError, match="threads"):
        choose_groups(grid, batches, 0)


@pytest.mark.parametrize("blend", ["linear", "gaussian"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_client_equals_local(tmp_path, net, image, client, blend, batch_size):
    """numpy output, a given zarr array with chunks straddling the tiles, an OME-Zarr path: bitwise
    the local blended result (same windows per block, same order, same batches)."""
    local = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend=blend, batch_size=batch_size, progress=False)
    plan = _plan(net, image, blend=blend, batch_size=batch_size)
    y = run_dask_blended(plan, client, "cpu")
    assert np.array_equal(y, local)
    assert plan.stats["blend_groups"] > 1 and plan.stats["blend_threads"] == 4
    assert plan.stats["windows_predicted"] == plan.stats["blend_windows_planned"] > len(plan.tiles)
    out = xio.create_array(tmp_path / "o.zarr", (2, 100, 150), np.float32, chunks=(1, 7, 11))
    z = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend=blend, batch_size=batch_size, out=out,
                      client=client, progress=False)
    assert np.array_equal(z[:], local) and xio.output_status(out)["complete"]
    p = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend=blend, batch_size=batch_size,
                      out=tmp_path / "p.zarr", client=client, progress=False)
    assert np.array_equal(p[:], local)
    assert not (tmp_path / "p.zarr" / "0.xmodal-progress").exists()  # markers removed when complete


def test_scheduler_address_and_progress(net, image, client):
    seen = []
    y = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="gaussian", client=client.scheduler_info()["address"],
                      progress=lambda done, total, what: seen.append((done, total)) if what == "predict_tiled" else None)
    assert np.array_equal(y, predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="gaussian", progress=False))
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)  # every tile counted once


def test_resume_after_a_crash_on_the_cluster(tmp_path, net, image, client):
    """A task fails: blocks its group finished keep their markers; a rerun (on the cluster or
    locally) reuses them and equals an uninterrupted run bitwise."""
    counter = Crashing(net).eval()
    fresh = predict_tiled(counter, image, tile_shape=TILE, halo=HALO, blend="gaussian", progress=False)
    path = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(Crashing(net, fail_at=counter.calls).eval(), image, tile_shape=TILE, halo=HALO,
                      blend="gaussian", out=path, client=client, progress=False)
    with pytest.raises(ValueError, match="incomplete"):
        xio.open_array(path)
    rerun = Crashing(net).eval()
    plan = _plan(rerun, image, path, blend="gaussian")
    run_dask_blended(plan, client, "cpu")
    assert np.array_equal(plan.out[:], fresh)
    assert plan.stats["blocks_reused"] > 0 and plan.stats["windows_predicted"] < plan.stats["blend_windows_planned"]
    # interrupted on the cluster, finished locally: the same markers, the same result
    path2 = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(Crashing(net, fail_at=counter.calls).eval(), image, tile_shape=TILE, halo=HALO,
                      blend="gaussian", out=path2, client=client, progress=False)
    local = Crashing(net).eval()
    y = predict_tiled(local, image, tile_shape=TILE, halo=HALO, blend="gaussian", out=path2, progress=False)
    assert np.array_equal(y[:], fresh) and local.calls < counter.calls
    assert xio.output_status(xio.open_array(path2))["complete"]


def test_resume_on_other_data_recomputes(tmp_path, net, image, client):
    """Blocks written from other input values are not reused: the rerun equals a fresh run."""
    other = image.copy()
    other[:, 5:8, 5:8] += 1.0  # changes the windows of the first tiles only
    path = tmp_path / "o.zarr"
    counter = Crashing(net).eval()
    predict_tiled(counter, image, tile_shape=TILE, halo=HALO, blend="linear", progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(Crashing(net, fail_at=counter.calls).eval(), image, tile_shape=TILE, halo=HALO,
                      blend="linear", out=path, client=client, progress=False)
    plan = _plan(Crashing(net).eval(), other, path)  # the same model token: the markers apply
    run_dask_blended(plan, client, "cpu")
    assert np.array_equal(plan.out[:], predict_tiled(net, other, tile_shape=TILE, halo=HALO, blend="linear",
                                                     progress=False))


class _Slow(torch.nn.Module):
    """The network, 20 ms per call, counting calls, raising on call ``fail_at``."""

    def __init__(self, inner, fail_at=None):
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        time.sleep(0.02)
        return self.inner(x)


def test_a_failure_stops_every_task(tmp_path, net, image, client, monkeypatch):
    """A task fails on its first window: the other tasks stop at their next window, and none runs or
    writes once predict_tiled has raised; the rerun completes."""
    from xmodal.inference import _run_blend_dask

    monkeypatch.setattr(_run_blend_dask, "STOP_POLL_S", 0.0)
    slow = _Slow(net, fail_at=3).eval()  # (2 probe passes on the caller's side)
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(slow, image, tile_shape=TILE, halo=HALO, blend="linear", out=path, client=client,
                      progress=False)
    calls, markers = slow.calls, sorted(os.listdir(path / "0.xmodal-progress"))
    assert not any(client.processing().values())
    time.sleep(0.3)
    assert slow.calls == calls and sorted(os.listdir(path / "0.xmodal-progress")) == markers
    plan = _plan(_Slow(net).eval(), image, path)
    run_dask_blended(plan, client, "cpu")
    assert calls - 2 < plan.stats["blend_windows_planned"] / 2  # the others stopped early
    assert np.array_equal(plan.out[:], predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="linear",
                                                     progress=False))


class _Recorder:
    """A client that records what would be shipped to the workers."""

    def __init__(self):
        self.calls = []

    def scatter(self, obj, **kw):
        return obj

    def submit(self, fn, *args, **kw):
        self.calls.append((fn, args))
        return len(self.calls) - 1


def test_tasks_pickle_and_run_anywhere(tmp_path, net, image):
    """What each task receives (model, image, plan without runner or numpy output, grid, batches)
    pickles; run from the unpickled copies, the tasks give the local result."""
    local = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="linear", progress=False)
    for out in (None, tmp_path / "k.zarr"):
        plan = _plan(net, image, out)
        tiles, axes = blend_order(plan.shape, plan.tiles)
        grid = BlockSweep(plan.shape, dask_blocks(plan), tiles, axes)
        batches = list(_batches(tiles, plan.batch_size))
        rec = _Recorder()
        _submit(plan, rec, "cpu", grid, batches, choose_groups(grid, batches, 3))
        y = np.zeros_like(local)
        for fn, args in rec.calls:
            fn, args = pickle.loads(pickle.dumps((fn, args)))
            for k, values in fn(*args)["blocks"]:
                y[(slice(None),) + grid.region(k)] = values
        assert np.array_equal(plan.out[:] if out is not None else y, local)


@pytest.mark.slow
def test_process_workers(tmp_path, net, image):
    zin = xio.create_array(tmp_path / "in.zarr", image.shape, np.float32, chunks=(1, 32, 32))
    zin[:] = image
    local = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="gaussian", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        y = predict_tiled(net, zin, tile_shape=TILE, halo=HALO, blend="gaussian", client=c, out=tmp_path / "p.zarr",
                          progress=False)
        n = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="gaussian", client=c, progress=False)
        with pytest.raises(RuntimeError, match="injected"):  # each worker's copy fails on its 3rd window
            predict_tiled(Crashing(net, fail_at=5).eval(), image, tile_shape=TILE, halo=HALO, blend="gaussian",
                          client=c, out=tmp_path / "c.zarr", progress=False)
        r = predict_tiled(net, image, tile_shape=TILE, halo=HALO, blend="gaussian", client=c,
                          out=tmp_path / "c.zarr", progress=False)
    assert np.array_equal(y[:], local) and np.array_equal(n, local) and np.array_equal(r[:], local)
    assert not os.path.exists(tmp_path / "p.zarr" / "0.xmodal-progress")
