"""stitched_superpixel_agglomeration: the superpixel route block by block with a halo, stitched as the
blockwise mutex watershed stitches; and segment() on images too large for memory with learned weights."""

import logging

import numpy as np
import pytest

from test_segment_methods import _SEGMENT_MODULE, _affinities, _Model
from test_slicewise_graph import OFFS3, _FailingAffinities, _writing_predict
from xmodal.metrics import adapted_rand_error
from xmodal.models.em import EM_OFFSETS
from xmodal.segmentation import stitched_superpixel_agglomeration, superpixel_agglomeration

OPTS = {"beta": 0.45, "threshold": 0.5, "sigma_seeds": 1.0, "superpixel_min_size": 10}


def test_shipped_model_on_real_em_equals_single_shot():
    """Real EM (the two built-in ISBI 2012 slices, held out from training) through the shipped
    network and its learned defaults: blocks of 256² with a 64-pixel halo give the single-shot labels."""
    pytest.importorskip("torch")
    from xmodal.datasets import isbi2012_slices
    from xmodal.models.em import load_em_affinity_unet, normalize_em, predict_em_affinities
    from xmodal.pipelines._agglomerate import GRAPH_OPTIONS

    raw, gt = isbi2012_slices()
    model = load_em_affinity_unet()
    stored = model.segmentation_defaults["gasp"]
    opts = {k: v for k, v in stored.items() if k in GRAPH_OPTIONS} | {"min_size": stored.get("min_size", 0)}
    for z, x in enumerate(normalize_em(raw)):
        aff = predict_em_affinities(model, x)
        single = superpixel_agglomeration(affinities=aff, offsets=EM_OFFSETS, n_attractive=2, **opts)
        res = stitched_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, block_shape=256, halo=64, **opts)
        assert res.n_blocks == 4 and res.n_face_merges > 0
        assert adapted_rand_error(np.asarray(res.labels), single, ignore_gt=()).error < 1e-3
        assert adapted_rand_error(np.asarray(res.labels), gt[z]).error < 0.03  # a good segmentation


@pytest.mark.parametrize("method", ["gasp", "multicut"])
def test_close_to_single_shot_and_worker_independent(method):
    aff, lab = _affinities((128, 128), seed=4)
    single = superpixel_agglomeration(affinities=aff, offsets=EM_OFFSETS, n_attractive=2, method=method, **OPTS)
    one = stitched_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, block_shape=128, halo=0, method=method,
                                            **OPTS)
    np.testing.assert_array_equal(one.labels, single)  # one block: the in-memory call
    r1 = stitched_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, block_shape=64, halo=32, method=method,
                                           n_workers=1, **OPTS)
    r2 = stitched_superpixel_agglomeration(aff, EM_OFFSETS, n_attractive=2, block_shape=64, halo=32, method=method,
                                           n_workers=3, **OPTS)
    np.testing.assert_array_equal(r1.labels, r2.labels)
    assert r1.n_blocks == 4 and r1.n_face_merges > 0
    assert adapted_rand_error(r1.labels, single, ignore_gt=()).error < 0.02
    assert adapted_rand_error(r1.labels, lab, ignore_gt=()).error < 0.1


class _FailingOut:
    """An output array whose writes fail (a crash in the relabel pass)."""

    def __init__(self, shape):
        self.shape, self.dtype, self.chunks = shape, np.dtype(np.uint32), None

    def __setitem__(self, key, value):
        raise RuntimeError("simulated crash")


def test_stacked_resumable_and_bad_inputs(tmp_path):
    parts = [_affinities((80, 80), seed=s) for s in range(4)]
    aff = np.stack([p[0] for p in parts], axis=1)
    whole = superpixel_agglomeration(affinities=aff, offsets=OFFS3, n_attractive=2, stacked=True, **OPTS)
    kw = dict(n_attractive=2, block_shape=(2, 48, 48), halo=(1, 32, 32), stacked=True, **OPTS)
    ref = stitched_superpixel_agglomeration(aff, OFFS3, **kw)
    assert ref.n_blocks == 8
    assert adapted_rand_error(np.asarray(ref.labels), whole, ignore_gt=()).error < 0.02
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="simulated crash"):  # while the blocks run
        stitched_superpixel_agglomeration(_FailingAffinities(aff, 3), OFFS3, workdir=work, n_workers=1, **kw)
    done = {p.name for p in (work / "done").iterdir() if p.name != "signature"}
    res = stitched_superpixel_agglomeration(aff, OFFS3, workdir=work, **kw)
    assert res.n_blocks_resumed == len(done) and not work.exists()
    np.testing.assert_array_equal(res.labels, ref.labels)
    with pytest.raises(RuntimeError, match="simulated crash"):  # after every block: all of them are reused
        stitched_superpixel_agglomeration(aff, OFFS3, workdir=work, out=_FailingOut(aff.shape[1:]), **kw)
    res = stitched_superpixel_agglomeration(aff, OFFS3, workdir=work, **kw)
    assert res.n_blocks_resumed == 8
    np.testing.assert_array_equal(res.labels, ref.labels)
    with pytest.raises(TypeError, match=r"options: .*\['no_such_option'\]"):
        stitched_superpixel_agglomeration(aff, OFFS3, no_such_option=1, **kw)
    with pytest.raises(ValueError, match="stacked: expected 3D affinities whose offsets have a zero z"):
        stitched_superpixel_agglomeration(aff[:, 0], EM_OFFSETS, n_attractive=2, block_shape=40, halo=8, stacked=True)
    with pytest.raises(ValueError, match="halo"):
        stitched_superpixel_agglomeration(aff[:, 0], EM_OFFSETS, n_attractive=2, block_shape=40, halo=0)
    with pytest.raises(ValueError, match="beta"):
        stitched_superpixel_agglomeration(aff[:, 0], EM_OFFSETS, n_attractive=2, block_shape=40, halo=8, beta=3.0)


def test_segment_image_over_memory_keeps_the_learned_weights(monkeypatch, caplog, tmp_path):
    """A 2D image over memory_voxels with a model that stores learned edge weights: stitched blocks with
    those weights (before: the hand-weighted settings on the boundary map, with a warning)."""
    pytest.importorskip("zarr")
    from test_slicewise_graph import fit_edge_model
    from xmodal.pipelines import segment

    aff, lab = _affinities((128, 128), seed=6)
    clf = fit_edge_model(aff, lab)
    learned = dict(OPTS, edge_model=clf, hand_weighted={"beta": 0.3, "linkage": "sum", "superpixel_min_size": 10})
    model = _Model({"method": "gasp", "gasp": learned})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", _writing_predict(aff))
    raw = np.zeros((128, 128), np.float32)
    single = segment(raw, model=model, normalize=None).labels
    with caplog.at_level(logging.WARNING, logger="xmodal"):
        blocks = segment(raw, model=model, normalize=None, block_shape=(64, 64), out=tmp_path / "seg")
    assert not [r for r in caplog.records if "single-shot only" in r.getMessage()]
    assert adapted_rand_error(np.asarray(blocks.labels[...]), single, ignore_gt=()).error < 0.02
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["provenance.json", "segmentation.ome.zarr"]
