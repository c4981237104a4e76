"""Defects found by the audit of instance segmentation from affinities (blockwise, GASP, segment)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import xmodal.io as xio
from xmodal.segmentation import (
    blockwise_mutex_watershed,
    blockwise_superpixel_agglomeration,
    boundary_to_signed_weights,
    gasp,
    mutex_watershed,
)

zarr = pytest.importorskip("zarr")

OFF2 = [[-1, 0], [0, -1], [-3, 0], [0, -3]]


def _affinities(shape=(20, 30), seed=0):
    return np.random.default_rng(seed).random((4,) + shape).astype(np.float32)


def _boundaries():
    b = gaussian_filter(np.random.default_rng(0).random((120, 150)), 1.0)
    return ((b - b.min()) / (b.max() - b.min())).astype(np.float32)


BSA = dict(block_shape=(40, 50), halo=8, superpixel_min_size=1, beta=0.6)


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# ----------------------------------------------------------------- blockwise superpixel agglomeration

def test_blockwise_graph_refuses_zarr_chunks_that_straddle_blocks(tmp_path):
    # chunks (30, 30) do not divide blocks (40, 50): two threads wrote the same chunks and lost voxels
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=(120, 150), chunks=(30, 30), dtype=np.uint32)
    with pytest.raises(ValueError, match=r"block_shape: expected multiples of the chunks of out"):
        blockwise_superpixel_agglomeration(_boundaries(), out=out, n_workers=2, **BSA)


def test_blockwise_graph_refuses_an_out_dtype_too_small_for_the_labels():
    out = np.zeros((120, 150), np.uint8)  # 304 segments would wrap around silently
    with pytest.raises(ValueError, match=r"out: dtype uint8 cannot hold \d+ labels"):
        blockwise_superpixel_agglomeration(_boundaries(), out=out, n_workers=1, **BSA)


def test_blockwise_graph_refuses_a_float_out():
    with pytest.raises(TypeError, match="out: expected an integer array"):
        blockwise_superpixel_agglomeration(_boundaries(), out=np.zeros((120, 150)), n_workers=1, **BSA)


def test_blockwise_graph_flags_a_zarr_out_complete(tmp_path):
    b = _boundaries()
    ref = blockwise_superpixel_agglomeration(b, n_workers=1, **BSA).labels
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=b.shape, chunks=(40, 50), dtype=np.uint32)
    blockwise_superpixel_agglomeration(b, out=out, n_workers=2, **BSA)
    assert np.array_equal(out[:], ref)
    assert xio.output_status(out)["complete"] is True


# ----------------------------------------------------------------- blockwise mutex watershed

def test_blockwise_mws_mask_dtype_checked_as_in_mutex_watershed():
    a = _affinities()
    with pytest.raises(TypeError, match="mask: expected a boolean mask, got dtype float64"):
        mutex_watershed(a, OFF2, mask=np.full((20, 30), 0.5))
    with pytest.raises(TypeError, match="mask: expected a boolean mask, got dtype float64"):
        blockwise_mutex_watershed(a, OFF2, mask=np.full((20, 30), 0.5), block_shape=(7, 9), halo=3)
    # a nested list is an array like any other, as in mutex_watershed
    m = np.ones((20, 30), bool)
    m[:5] = False
    res = blockwise_mutex_watershed(a, OFF2, mask=m.tolist(), block_shape=(7, 9), halo=3, n_workers=1)
    assert (res.labels[:5] == 0).all() and (res.labels[5:] > 0).all()


def test_blockwise_mws_failed_run_leaves_a_complete_zarr_out_alone(tmp_path):
    a = _affinities()
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=(20, 30), chunks=(7, 9), dtype=np.uint32)
    blockwise_mutex_watershed(a, OFF2, out=out, block_shape=(7, 9), halo=3, n_workers=1)
    before = out[:]
    bad = a.copy()
    bad[2, 15, 25] = np.nan  # found by the block pass, before anything is written to out
    with pytest.raises(ValueError, match=r"affinities: expected finite values, found nan in channel 2 at \(15, 25\)"):
        blockwise_mutex_watershed(bad, OFF2, out=out, block_shape=(7, 9), halo=3, n_workers=1)
    assert xio.output_status(out)["complete"] is True
    assert np.array_equal(out[:], before)
    xio.open_array(str(tmp_path / "o.zarr"))  # still readable as a complete output


def test_blockwise_mws_overflowing_out_dtype_leaves_a_zarr_out_unflagged(tmp_path):
    a = _affinities()
    out = zarr.open_array(str(tmp_path / "o8.zarr"), mode="w", shape=(20, 30), chunks=(7, 9), dtype=np.uint8)
    with pytest.raises(ValueError, match="out: dtype uint8 cannot hold 600 labels"):
        blockwise_mutex_watershed(a, OFF2, n_attractive=0, out=out, block_shape=(7, 9), halo=3, n_workers=1)
    assert xio.output_status(out) is None  # nothing was written: not flagged as a broken output


@pytest.mark.parametrize("shape, block, halo", [((20, 30), (7, 9), 100), ((1, 20, 30), (1, 7, 9), (5, 40, 40)),
                                                 ((5, 9, 11), (2, 4, 3), 20)])
def test_blockwise_mws_with_a_halo_covering_the_volume_equals_single_shot(shape, block, halo):
    off = OFF2 if len(shape) == 2 else [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -3, 0], [0, 0, -3]]
    na = len(shape)
    a = np.random.default_rng(1).random((len(off),) + shape).astype(np.float32)
    a[:na] **= 0.3
    single = mutex_watershed(a, off, n_attractive=na)
    res = blockwise_mutex_watershed(a, off, n_attractive=na, block_shape=block, halo=halo, n_workers=2)
    assert _same_partition(single, res.labels)
    assert res.n_labels == single.max() == res.labels.max()


# ----------------------------------------------------------------- GASP helpers

def test_gasp_linkage_of_a_wrong_type_names_the_argument():
    with pytest.raises((TypeError, ValueError), match="linkage: expected one of"):
        gasp(3, [[0, 1], [1, 2]], [1.0, -1.0], linkage=["mean"])


@pytest.mark.parametrize("bad, match", [([0.2, np.nan], "boundary: expected finite values"),
                                        ([0.2, 3.0], r"boundary: expected probabilities in \[0, 1\]")])
def test_boundary_to_signed_weights_checks_its_probabilities(bad, match):
    with pytest.raises(ValueError, match=match):
        boundary_to_signed_weights(bad)


# ----------------------------------------------------------------- segment pipeline

def test_segment_checks_the_ground_truth_shape_before_any_work(monkeypatch):
    pytest.importorskip("torch")
    import importlib

    seg = importlib.import_module("xmodal.pipelines.segment")  # the module (the package exports the function)

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before the ground truth was checked")

    monkeypatch.setattr(seg, "_predict", no_prediction)
    raw = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"ground_truth: expected the shape of the image \(32, 32\), got \(32, 31\)"):
        seg.segment(raw, model="isbi2012", ground_truth=np.zeros((32, 31), np.uint32))


def test_per_slice_evaluation_skips_unannotated_slices_and_nan_values():
    from xmodal.pipelines._evaluate_step import evaluate

    gt = np.zeros((3, 16, 16), np.uint32)
    gt[0, :8], gt[0, 8:] = 1, 2
    gt[2, :, :8], gt[2, :, 8:] = 3, 4  # slice 1 holds no annotation
    labels = np.zeros_like(gt)
    labels[0, :8], labels[0, 8:] = 5, 6
    labels[1] = 1
    labels[2] = 0  # no segment at all here: its Chamfer distance is NaN
    m = evaluate(labels, gt, per_slice=True, spacing=None)
    assert m["scored_slices"] == 2 and "skipped" in m["per_slice"][1]
    assert m["per_slice"][0]["arand"] == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(m["mean"]["arand"]) and np.isfinite(m["mean"]["chamfer"])
    assert m["mean"]["chamfer"] == pytest.approx(m["per_slice"][0]["chamfer"])
    with pytest.raises(ValueError, match="ground_truth: no slice holds an object"):
        evaluate(labels, np.zeros_like(gt), per_slice=True, spacing=None)
