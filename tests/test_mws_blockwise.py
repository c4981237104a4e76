"""Blockwise mutex watershed: agreement with single-shot, zarr, resume, dask.distributed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from xmodal.segmentation import blockwise_mutex_watershed, mutex_watershed
from xmodal.metrics import adapted_rand_error
from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

OFFS3 = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3), (-3, 0, 0), (0, -9, 0), (0, 0, -9)]
OFFS2 = [(-1, 0), (0, -1), (-3, 0), (0, -3), (-9, 0), (0, -9)]


@pytest.fixture(scope="module")
def volume():
    gt = voronoi_labels((24, 96, 96), 30, seed=11)
    return gt, noisy_affinities(gt, OFFS3, sigma=0.25, seed=12)


def check_consecutive(labels):
    u = np.unique(labels)
    u = u[u > 0]
    assert (u == np.arange(1, len(u) + 1)).all()


def test_blockwise_agrees_with_single_shot(volume):
    gt, affs = volume
    single = mutex_watershed(affs, OFFS3)
    res = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9))
    assert res.n_blocks == 8 and res.n_face_merges > 0
    assert res.labels.shape == gt.shape and res.labels.dtype == np.uint32
    check_consecutive(res.labels)
    assert res.n_labels == res.labels.max()
    assert adapted_rand_error(res.labels, single, ignore_gt=()).error <= 0.01
    # without stitching the blocks would cut every cell crossing a face
    unstitched = np.zeros_like(res.labels, dtype=np.int64)
    for i, z in enumerate((slice(0, 12), slice(12, 24))):
        for j, y in enumerate((slice(0, 48), slice(48, 96))):
            for k, x in enumerate((slice(0, 48), slice(48, 96))):
                unstitched[z, y, x] = mutex_watershed(affs[:, z, y, x], OFFS3) + 1000 * (4 * i + 2 * j + k)
    assert adapted_rand_error(unstitched, single, ignore_gt=()).error > 0.05


def test_blockwise_2d_and_single_block():
    gt = voronoi_labels((120, 130), 15, seed=1)
    affs = noisy_affinities(gt, OFFS2, sigma=0.2, seed=2)
    single = mutex_watershed(affs, OFFS2)
    res = blockwise_mutex_watershed(affs, OFFS2, block_shape=50, halo=9)
    assert res.n_blocks == 9
    assert adapted_rand_error(res.labels, single, ignore_gt=()).error <= 0.01
    whole = blockwise_mutex_watershed(affs, OFFS2, block_shape=(500, 500), halo=0)
    np.testing.assert_array_equal(whole.labels, single)


def test_blockwise_workers_and_mask_deterministic(volume):
    _, affs = volume
    mask = np.ones(affs.shape[1:], bool)
    mask[:, :10] = False
    r1 = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9), mask=mask, n_workers=1)
    r2 = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9), mask=mask, n_workers=2)
    np.testing.assert_array_equal(r1.labels, r2.labels)
    assert (r1.labels[~mask] == 0).all() and (r1.labels[mask] > 0).all()


def test_blockwise_zarr_in_out(volume, tmp_path):
    zarr = pytest.importorskip("zarr")
    _, affs = volume
    za = zarr.open_array(str(tmp_path / "affs.zarr"), mode="w", shape=affs.shape, chunks=(9, 12, 48, 48),
                         dtype=affs.dtype)
    za[:] = affs
    zo = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=affs.shape[1:], chunks=(12, 48, 48),
                         dtype=np.uint64)
    res = blockwise_mutex_watershed(za, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9), out=zo,
                                    workdir=tmp_path / "work")
    assert res.labels is zo
    ref = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9))
    np.testing.assert_array_equal(zo[:], ref.labels)
    with pytest.raises(ValueError, match="chunks"):
        blockwise_mutex_watershed(za, OFFS3, block_shape=(12, 40, 48), halo=(3, 9, 9), out=zo)


class FailingArray:
    """Array wrapper whose reads fail from the ``fail_at``-th read on (simulates a crash part-way).

    Counting reads rather than naming a block keeps the test independent of the order in which the
    scheduler runs the blocks.
    """

    def __init__(self, data, fail_at):
        self.data, self.fail_at = data, fail_at
        self.shape, self.dtype = data.shape, data.dtype
        self.reads = 0
        self.lock = threading.Lock()

    def __getitem__(self, key):
        with self.lock:
            self.reads += 1
            if self.reads >= self.fail_at:
                raise RuntimeError("simulated crash")
        return self.data[key]


def test_blockwise_resume_after_crash(volume, tmp_path):
    _, affs = volume
    kw = dict(block_shape=(12, 48, 48), halo=(3, 9, 9), workdir=tmp_path / "work", n_workers=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        blockwise_mutex_watershed(FailingArray(affs, 5), OFFS3, **kw)  # fails after a few blocks
    done = [p for p in (tmp_path / "work" / "done").iterdir() if p.name != "signature"]
    assert 1 <= len(done) < 8
    res = blockwise_mutex_watershed(affs, OFFS3, **kw)
    assert res.n_blocks_resumed == len(done)
    fresh = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9))
    np.testing.assert_array_equal(res.labels, fresh.labels)
    assert not (tmp_path / "work").exists()  # complete: the resume state is gone
    # other parameters in the same work directory: nothing reused
    with pytest.raises(RuntimeError, match="simulated crash"):
        blockwise_mutex_watershed(FailingArray(affs, 5), OFFS3, **kw)
    res = blockwise_mutex_watershed(affs, OFFS3, **{**kw, "halo": (3, 8, 9)})
    assert res.n_blocks_resumed == 0


def test_blockwise_resume_on_other_data_recomputes(volume, tmp_path):
    """Same shape and dtype, other values: a block is reused only when its own input is unchanged."""
    _, affs = volume
    other = affs.copy()
    other[:, 2:4, 60:70, 60:70] = 1.0 - other[:, 2:4, 60:70, 60:70]  # inside block (0, 1, 1) and its halo
    kw = dict(block_shape=(12, 48, 48), halo=(3, 9, 9), workdir=tmp_path / "work", n_workers=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        blockwise_mutex_watershed(FailingArray(affs, 8), OFFS3, **kw)  # 7 of 8 blocks done
    done = {p.name for p in (tmp_path / "work" / "done").iterdir()} - {"signature"}
    assert len(done) == 7
    res = blockwise_mutex_watershed(other, OFFS3, **kw)
    assert res.n_blocks_resumed == len(done - {"3"})  # every finished block but the changed one (0, 1, 1)
    fresh = blockwise_mutex_watershed(other, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9))
    np.testing.assert_array_equal(res.labels, fresh.labels)


def test_blockwise_dask_distributed(volume):
    distributed = pytest.importorskip("dask.distributed")
    _, affs = volume
    ref = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=(3, 9, 9), client=client)
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_blockwise_bad_inputs(volume):
    _, affs = volume
    with pytest.raises(ValueError, match="halo"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48, 48), halo=0)
    with pytest.raises(ValueError, match="block_shape"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=(12, 48), halo=1)
    with pytest.raises(ValueError, match="block_shape"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=(0, 48, 48), halo=1)
    with pytest.raises(ValueError, match="offsets"):
        blockwise_mutex_watershed(affs, OFFS3[:-1], block_shape=12, halo=1)
    with pytest.raises(ValueError, match="out"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=12, halo=1, out=np.zeros((3, 3, 3), np.uint32))
    with pytest.raises(TypeError, match="out"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=12, halo=1, out=np.zeros(affs.shape[1:]))
    with pytest.raises(ValueError, match="mask"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=12, halo=1, mask=np.ones((2, 2, 2), bool))
    with pytest.raises(TypeError, match="affinities"):
        blockwise_mutex_watershed([[1.0]], OFFS3, block_shape=12, halo=1)
    with pytest.raises(ValueError, match="n_workers: expected an integer >= 1, got 0"):
        blockwise_mutex_watershed(affs, OFFS3, block_shape=12, halo=1, n_workers=0)
