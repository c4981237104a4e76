"""Size filter: one definition in memory and block by block (remove_small_segments)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xmodal.segmentation import mutex_watershed, remove_small_segments
from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

OFFS3 = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3), (0, -9, 0), (0, 0, -9)]
OFFS2 = [(-1, 0), (0, -1), (-3, 0), (0, -3), (-9, 0), (0, -9)]


@pytest.fixture(scope="module")
def oversegmented():
    """A mutex watershed of noisy affinities: many segments of a few voxels next to large ones."""
    gt = voronoi_labels((12, 48, 40), 25, seed=3)
    aff = noisy_affinities(gt, OFFS3, sigma=0.33, seed=4)
    seg = mutex_watershed(aff, OFFS3)
    sizes = np.bincount(seg.ravel())[1:]
    assert (sizes < 20).sum() > 20 and (sizes >= 20).sum() > 10  # the case the filter is for
    return seg, aff


@pytest.mark.parametrize("block_shape", [(5, 17, 13), (12, 48, 40), (3, 48, 7), 8])
def test_blockwise_equals_single_shot(oversegmented, block_shape):
    seg, aff = oversegmented
    single = remove_small_segments(seg, 20, affinities=aff, offsets=OFFS3)
    sizes = np.bincount(single.ravel())[1:]
    assert single.min() >= 1 and (sizes >= 20).all()  # merged, never made background
    assert single.max() < 0.8 * seg.max()
    blocks = remove_small_segments(seg, 20, affinities=aff, offsets=OFFS3, block_shape=block_shape)
    np.testing.assert_array_equal(blocks, single)


def test_blockwise_in_place_into_zarr(oversegmented, tmp_path):
    import zarr

    seg, aff = oversegmented
    single = remove_small_segments(seg, 30, affinities=aff, offsets=OFFS3, n_attractive=3)
    z = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=seg.shape, chunks=(4, 16, 20), dtype=np.uint32)
    z[...] = seg
    za = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=aff.shape, chunks=(1, 4, 16, 20), dtype=aff.dtype)
    za[...] = aff
    out = remove_small_segments(z, 30, affinities=za, offsets=OFFS3, n_attractive=3, block_shape=(4, 16, 20), out=z)
    assert out is z
    np.testing.assert_array_equal(z[...], single)
    with pytest.raises(ValueError, match="block_shape: expected multiples of the chunks"):
        remove_small_segments(seg, 30, affinities=aff, offsets=OFFS3, block_shape=(3, 16, 20), out=z)


def test_blockwise_with_a_dask_client(oversegmented):
    import distributed

    seg, aff = oversegmented
    single = remove_small_segments(seg, 20, affinities=aff, offsets=OFFS3)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        blocks = remove_small_segments(seg, 20, affinities=aff, offsets=OFFS3, block_shape=(6, 24, 20),
                                       client=client)
    np.testing.assert_array_equal(blocks, single)


def test_result_depends_on_the_partition_only(oversegmented):
    """Ties are broken by first voxels, not label values: relabelling the input changes nothing."""
    seg, aff = oversegmented
    perm = np.random.default_rng(0).permutation(int(seg.max()) + 1).astype(np.int64) + 7
    perm[0] = 0
    a = remove_small_segments(seg, 25, affinities=aff, offsets=OFFS3)
    b = remove_small_segments(perm[seg], 25, affinities=aff, offsets=OFFS3)
    np.testing.assert_array_equal(a, b)


def test_ties_go_to_the_earliest_neighbour():
    # a one-voxel segment between two segments it attracts equally: it joins the one whose first
    # voxel comes first in raster order, whatever the label values
    labels = np.array([[5, 5, 5, 5, 5],
                       [5, 5, 9, 2, 2],
                       [2, 2, 2, 2, 2]])
    aff = np.full((2, 3, 5), 0.5, np.float32)
    for lab in (labels, np.where(labels == 5, 1, np.where(labels == 2, 8, labels))):
        out = remove_small_segments(lab, 2, affinities=aff, offsets=[(-1, 0), (0, -1)])
        assert out[1, 2] == out[0, 0] == 1 and out[2, 0] == 2
    aff[0, 2, 2] = 0.9  # now the segment below attracts it more
    out = remove_small_segments(labels, 2, affinities=aff, offsets=[(-1, 0), (0, -1)])
    assert out[1, 2] == out[2, 0] != out[0, 0]


def test_without_affinities_small_segments_become_background():
    labels = np.zeros((6, 10), np.int64)
    labels[:, :5], labels[:, 5:], labels[0, 0] = 4, 9, 7
    for kw in ({}, {"block_shape": (4, 3)}):
        out = remove_small_segments(labels, 2, **kw)
        assert out[0, 0] == 0 and out.max() == 2 and out[0, 1] == 1 and out[0, 9] == 2


def test_bad_arguments():
    labels = np.ones((6, 7), int)
    aff = np.ones((2, 6, 7), np.float32)
    with pytest.raises(ValueError, match="out: only used with block_shape"):
        remove_small_segments(labels, 2, out=np.zeros((6, 7), int))
    with pytest.raises(ValueError, match="out: expected shape"):
        remove_small_segments(labels, 2, block_shape=3, out=np.zeros((6, 6), int))
    with pytest.raises(TypeError, match="out: expected an integer array"):
        remove_small_segments(labels, 2, block_shape=3, out=np.zeros((6, 7)))
    with pytest.raises(ValueError, match="affinities: expected spatial shape"):
        remove_small_segments(labels, 2, affinities=aff[:, :5], offsets=[(-1, 0), (0, -1)], block_shape=3)
    with pytest.raises(ValueError, match="labels: expected non-negative"):
        remove_small_segments(-labels, 2, block_shape=3)
    with pytest.raises(ValueError, match="n_workers: expected an integer >= 1"):
        remove_small_segments(labels, 2, block_shape=3, n_workers=0)
    bad = aff.copy()
    bad[1, 4, 5] = np.nan
    with pytest.raises(ValueError, match=r"channel 1 at \(4, 5\)"):
        remove_small_segments(labels * np.arange(7), 2, affinities=bad, offsets=[(-1, 0), (0, -1)], block_shape=3)


@settings(max_examples=40)
@given(data=st.data())
def test_property_blockwise_equals_single_shot_2d(data):
    shape = (data.draw(st.integers(3, 14), label="ny"), data.draw(st.integers(3, 14), label="nx"))
    n_labels = data.draw(st.integers(1, 12), label="labels")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels + 1, size=shape)
    # coarse levels make ties between neighbours frequent
    aff = rng.integers(0, 5, size=(len(OFFS2),) + shape).astype(np.float32) / 4
    min_size = data.draw(st.integers(0, 12), label="min_size")
    block = (data.draw(st.integers(1, shape[0]), label="by"), data.draw(st.integers(1, shape[1]), label="bx"))
    na = data.draw(st.integers(0, 4), label="n_attractive")
    single = remove_small_segments(labels, min_size, affinities=aff, offsets=OFFS2, n_attractive=na)
    blocks = remove_small_segments(labels, min_size, affinities=aff, offsets=OFFS2, n_attractive=na,
                                   block_shape=block)
    np.testing.assert_array_equal(blocks, single)
    kept = np.bincount(single.ravel())[1:]
    assert (kept >= min_size).all() and (kept > 0).all()
