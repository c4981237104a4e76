"""slicewise_superpixel_agglomeration: a 2D model's affinity stack segmented a group of slices at a
time, equal to the in-memory superpixel route (learned edge weights included), resumable, on dask;
and segment() uses it for stacks too large for memory."""

import numpy as np
import pytest

from test_segment_methods import _SEGMENT_MODULE, _affinities, _Model
from xmodal.models.em import EM_OFFSETS
from xmodal.segmentation import (fit_edge_classifier, edge_feature_matrix, edge_feature_names,
                                 edge_labels_from_ground_truth, distance_transform_watershed,
                                 boundaries_from_affinities, slicewise_superpixel_agglomeration,
                                 superpixel_agglomeration)
from xmodal.segmentation.slicewise_graph import segment_slices_in_memory

OFFS3 = np.hstack([np.zeros((len(EM_OFFSETS), 1), np.int64), np.asarray(EM_OFFSETS)])


@pytest.fixture(scope="module")
def stack():
    """(affinities (C, 5, 80, 80), ground truth (5, 80, 80)) of five different random partitions."""
    parts = [_affinities((80, 80), seed=s) for s in range(5)]
    return np.stack([p[0] for p in parts], axis=1), np.stack([p[1] for p in parts])


def fit_edge_model(a, gt):
    """A learned edge classifier (dict) fitted on one 2D slice's affinities ``a`` and labels ``gt``."""
    sp = distance_transform_watershed(boundaries_from_affinities(a, EM_OFFSETS, n_attractive=2), threshold=0.5,
                                      sigma_seeds=1.0, min_size=5)
    rag, X, count = edge_feature_matrix(sp, a, EM_OFFSETS, n_attractive=2)
    y, valid = edge_labels_from_ground_truth(sp, gt, rag.edges)
    clf = fit_edge_classifier(X[valid], y[valid], feature_names=edge_feature_names(EM_OFFSETS, 2),
                              weights=np.log1p(count[valid]), l2=1.0)
    return clf.to_dict()


@pytest.fixture(scope="module")
def edge_model(stack):
    """A learned edge classifier fitted on the first slice (as the shipped EM model stores one)."""
    aff, gt = stack
    return fit_edge_model(aff[:, 0], gt[0])


OPTIONS = [{"beta": 0.4, "superpixel_min_size": 10, "min_size": 30},
           {"method": "multicut", "beta": 0.4, "superpixel_min_size": 10}]


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("per_task", [1, 2, 5])
def test_equals_the_in_memory_stacked_route(stack, edge_model, learned, per_task):
    aff, gt = stack
    opts = [dict(OPTIONS[0], edge_model=edge_model, threshold=0.5, sigma_seeds=1.0, superpixel_min_size=5)] \
        if learned else OPTIONS
    for o in opts:
        whole = superpixel_agglomeration(affinities=aff, offsets=OFFS3, n_attractive=2, stacked=True, **o)
        res = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, slices_per_task=per_task, **o)
        np.testing.assert_array_equal(res.labels, whole)
        assert res.labels.dtype == whole.dtype and res.n_segments == int(whole.max())
        threaded = segment_slices_in_memory(aff, EM_OFFSETS, n_attractive=2, n_workers=per_task, **o)
        np.testing.assert_array_equal(threaded, whole)
        assert threaded.dtype == whole.dtype
        assert res.n_tasks == -(-5 // per_task) and res.n_tasks_resumed == 0
    # the partition is a good one (the test would pass for a trivial labelling otherwise)
    from xmodal.metrics import adapted_rand_error
    assert np.mean([adapted_rand_error(res.labels[z], gt[z]).error for z in range(5)]) < 0.1


def test_mask_threads_and_three_column_offsets(stack):
    aff, _ = stack
    mask = np.ones(aff.shape[1:], bool)
    mask[:, :10] = False
    o = OPTIONS[0]
    whole = superpixel_agglomeration(affinities=aff, offsets=OFFS3, n_attractive=2, stacked=True, mask=mask, **o)
    for n_workers in (1, 3):
        res = slicewise_superpixel_agglomeration(aff, OFFS3, n_attractive=2, slices_per_task=2, mask=mask,
                                                 n_workers=n_workers, **o)
        np.testing.assert_array_equal(res.labels, whole)
    assert not res.labels[:, :10].any()


class _FailingAffinities:
    """The affinities, with reading slice ``fail_at`` raising (a crash in the middle of a run)."""

    def __init__(self, aff, fail_at):
        self.aff, self.fail_at = aff, fail_at
        self.shape, self.dtype, self.ndim = aff.shape, aff.dtype, aff.ndim

    def __getitem__(self, sl):
        z = sl[1]
        if z.start <= self.fail_at < z.stop:
            raise RuntimeError("simulated crash")
        return self.aff[sl]


def test_resumes_finished_groups_into_zarr(stack, tmp_path):
    zarr = pytest.importorskip("zarr")
    from xmodal.io import output_status

    aff, _ = stack
    o = OPTIONS[0]
    ref = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, **o).labels
    out = zarr.create_array(store=str(tmp_path / "labels.zarr"), shape=aff.shape[1:], chunks=(1, 80, 80),
                            dtype=np.uint32)
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="simulated crash"):
        slicewise_superpixel_agglomeration(_FailingAffinities(aff, 3), EM_OFFSETS, n_attractive=2, out=out,
                                           workdir=work, n_workers=1, **o)
    assert output_status(out)["complete"] is False  # flagged while half-written
    done = {p.name for p in (work / "done").iterdir() if p.name != "signature"}
    assert {"0", "1", "2"} <= done and "3" not in done  # the groups that finished are recorded
    res = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, out=out, workdir=work, **o)
    assert res.n_tasks_resumed == len(done) and res.labels is out
    np.testing.assert_array_equal(out[...], ref)
    assert output_status(out)["complete"] is True and not work.exists()
    # a crash again, then a rerun with other parameters: nothing is reused
    with pytest.raises(RuntimeError):
        slicewise_superpixel_agglomeration(_FailingAffinities(aff, 4), EM_OFFSETS, n_attractive=2, workdir=work,
                                           n_workers=1, **o)
    with pytest.raises(ValueError, match="out: its chunks of 2 slices must divide slices_per_task"):
        slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, slices_per_task=3, **o, out=zarr.create_array(
            store=str(tmp_path / "l2.zarr"), shape=aff.shape[1:], chunks=(2, 80, 80), dtype=np.uint32))
    res = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, workdir=work, beta=0.45,
                                             superpixel_min_size=10, min_size=30)
    assert res.n_tasks_resumed == 0


def test_dask_distributed(stack):
    distributed = pytest.importorskip("dask.distributed")
    aff, _ = stack
    ref = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, slices_per_task=2, **OPTIONS[0])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = slicewise_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, slices_per_task=2, client=client,
                                                 **OPTIONS[0])
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_bad_inputs(stack):
    aff, _ = stack
    f = slicewise_superpixel_agglomeration
    with pytest.raises(ValueError, match=r"affinities: expected .*\(C, z, y, x\)"):
        f(aff[:, 0], EM_OFFSETS, n_attractive=2)
    with pytest.raises(ValueError, match="offsets: expected a zero z component"):
        f(aff, OFFS3 + np.array([1, 0, 0]), n_attractive=2)
    with pytest.raises(ValueError, match="offsets: expected integers of shape"):
        f(aff, EM_OFFSETS[:3], n_attractive=2)
    with pytest.raises(ValueError, match="slices_per_task: expected an integer >= 1"):
        f(aff, EM_OFFSETS, n_attractive=2, slices_per_task=0)
    with pytest.raises(ValueError, match="n_attractive"):
        f(aff, EM_OFFSETS, n_attractive=len(EM_OFFSETS) + 1)
    with pytest.raises(ValueError, match=r"out: expected shape \(5, 80, 80\)"):
        f(aff, EM_OFFSETS, n_attractive=2, out=np.zeros((5, 80, 81), np.uint32))
    with pytest.raises(TypeError, match="out: expected an integer array"):
        f(aff, EM_OFFSETS, n_attractive=2, out=np.zeros((5, 80, 80), np.float32))
    with pytest.raises(TypeError, match=r"options: .*\['stacked'\]"):
        f(aff, EM_OFFSETS, n_attractive=2, stacked=False)
    with pytest.raises(TypeError, match=r"options: .*\['no_such_option'\]"):
        f(aff, EM_OFFSETS, n_attractive=2, no_such_option=1)
    with pytest.raises(ValueError, match="beta"):  # option values: checked by the in-memory route
        f(aff, EM_OFFSETS, n_attractive=2, beta=2.0)


def test_segment_stack_too_large_for_memory_equals_in_memory(monkeypatch, stack, edge_model):
    """segment() on a 2D model's stack over memory_voxels: the learned settings, slice groups, the
    in-memory labels (before 2026-12-01: the hand-weighted settings on the boundary map)."""
    from xmodal.pipelines import segment

    aff, _ = stack
    learned = {"beta": 0.4, "linkage": "mean", "threshold": 0.5, "sigma_seeds": 1.0, "superpixel_min_size": 5,
               "min_size": 30, "edge_model": edge_model,
               "hand_weighted": {"beta": 0.3, "linkage": "sum", "threshold": 0.6, "superpixel_min_size": 5}}
    model = _Model({"method": "gasp", "gasp": learned})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: aff)
    raw = np.zeros(aff.shape[1:], np.float32)
    single = segment(raw, model=model, normalize=None).labels  # in memory: the slices on threads
    np.testing.assert_array_equal(single, superpixel_agglomeration(
        affinities=aff, offsets=OFFS3, n_attractive=2, stacked=True,
        **{k: v for k, v in learned.items() if k != "hand_weighted"}))
    small = segment(raw, model=model, normalize=None, memory_voxels=2 * 80 * 80).labels
    blocks = segment(raw, model=model, normalize=None, block_shape=(2, 64, 64)).labels
    np.testing.assert_array_equal(small, single)
    np.testing.assert_array_equal(blocks, single)
    # slices larger than memory_voxels: stitched blocks, still with the learned weights
    from xmodal.metrics import adapted_rand_error

    big = segment(raw, model=model, normalize=None, memory_voxels=80 * 40).labels
    assert adapted_rand_error(np.asarray(big), single, ignore_gt=()).error < 0.02


def _writing_predict(aff):
    """A stand-in for segment()'s prediction step that writes ``aff`` where segment() keeps them."""
    import zarr
    from xmodal.io import ome_image_metadata

    def predict(job, normalizer, root, **kw):
        if root is None:
            return aff
        group = zarr.open_group(str(root), mode="a")
        group.create_array("0", shape=aff.shape, dtype=aff.dtype, chunks=aff.shape)[...] = aff
        group.attrs.update({"ome": ome_image_metadata(job.axes, spacing=job.spacing, name="affinities")})
        return group["0"]

    return predict


def test_segment_stack_blockwise_into_an_output_folder(monkeypatch, stack, tmp_path):
    zarr = pytest.importorskip("zarr")
    from xmodal.pipelines import segment

    aff, _ = stack
    model = _Model({"method": "gasp", "gasp": dict(OPTIONS[0])})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", _writing_predict(aff))
    raw = np.zeros(aff.shape[1:], np.float32)
    single = segment(raw, model=model, normalize=None).labels
    res = segment(raw, model=model, normalize=None, block_shape=(2, 64, 64), out=tmp_path / "seg")
    np.testing.assert_array_equal(np.asarray(res.labels[...]), single)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["provenance.json", "segmentation.ome.zarr"]
    written = zarr.open_array(str(tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells" / "0"), mode="r")
    assert written.chunks[0] == 1
    np.testing.assert_array_equal(written[...], single)


def test_segment_blockwise_boundary_route_leaves_no_work_folder(monkeypatch, tmp_path):
    """An image over memory_voxels goes block by block on the boundary map; its work folder (the
    block superpixels) is removed when the run completes."""
    pytest.importorskip("zarr")
    from xmodal.pipelines import segment

    aff, _ = _affinities((96, 96), seed=3)
    model = _Model({"method": "gasp", "gasp": {"beta": 0.5, "superpixel_min_size": 10}})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", _writing_predict(aff))
    res = segment(np.zeros((96, 96), np.float32), model=model, normalize=None, block_shape=(48, 48),
                  out=tmp_path / "seg")
    assert int(np.asarray(res.labels[...]).max()) == res.n_segments > 1
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["provenance.json", "segmentation.ome.zarr"]
