"""compare_segmentation_methods / `xmodal evaluate --methods`: every method from one prediction,
each equal to what segment(method=...) gives, scored per slice beside the boundary baseline."""

import json
import sys

import numpy as np
import pytest

from xmodal.metrics import adapted_rand_error
from xmodal.models.em import EM_OFFSETS
from xmodal.models.isbi2012 import boundary_baseline_segmentation

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_segment_methods import _affinities  # noqa: E402

_SEGMENT_MODULE = sys.modules["xmodal.pipelines.segment"]


class _Model:
    """A stand-in network with stored defaults; the prediction step is replaced in the tests."""

    def __init__(self, defaults):
        self.offsets, self.n_attractive = EM_OFFSETS, 2
        self.segmentation_defaults = defaults

    def __call__(self, x):
        raise AssertionError("the stand-in model was called")


DEFAULTS = {"method": "gasp", "baseline_threshold": 0.4,
            "gasp": {"beta": 0.45, "threshold": 0.5, "sigma_seeds": 1.0, "superpixel_min_size": 10, "min_size": 30},
            "multicut": {"beta": 0.45, "threshold": 0.5, "sigma_seeds": 1.0, "superpixel_min_size": 10},
            "mws": {"repulsive_bias": 0.1, "min_size": 20}}


@pytest.fixture
def stack(monkeypatch):
    """Two slices of known partitions; the 'prediction' returns their affinities (C, z, y, x)."""
    a0, l0 = _affinities((96, 96), seed=0)
    a1, l1 = _affinities((96, 96), seed=5)
    aff = np.stack([a0, a1], axis=1)
    calls = []

    def predict(job, *a, **k):
        calls.append(1)
        return aff

    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", predict)
    return aff, np.stack([l0, l1]).astype(np.int32), calls


def test_every_method_equals_segment_and_is_scored_per_slice(stack):
    from xmodal.pipelines import compare_segmentation_methods, segment

    aff, gt, calls = stack
    model = _Model(DEFAULTS)
    raw = np.zeros(gt.shape, np.float32)
    res = compare_segmentation_methods(raw, gt, model=model, normalize=None)
    assert len(calls) == 1  # one prediction for all methods
    assert list(res["methods"]) == ["mws", "gasp", "multicut", "baseline"]
    assert res["slices"] == 2 and res["default_method"] == "gasp"
    for name in ("mws", "gasp", "multicut"):
        labels = np.asarray(segment(raw, model=model, normalize=None, method=name).labels)
        per = res["methods"][name]["per_slice"]
        for z in range(2):
            assert per["arand"][z] == pytest.approx(adapted_rand_error(labels[z], gt[z], ignore_gt=(0,)).error)
            assert per["n_segments"][z] == len(np.unique(labels[z][labels[z] != 0]))
        assert res["methods"][name]["mean"]["arand"] == pytest.approx(np.mean(per["arand"]))
        assert res["methods"][name]["worst"]["arand"] == max(per["arand"])
    base = boundary_baseline_segmentation(aff[:, 1], n_attractive=2, threshold=0.4)  # the stored threshold
    assert res["methods"]["baseline"]["per_slice"]["arand"][1] == pytest.approx(
        adapted_rand_error(base, gt[1], ignore_gt=(0,)).error)
    assert res["methods"]["gasp"]["mean"]["arand"] < 0.1  # the known partitions are found


def test_selection_threshold_and_bad_inputs(stack):
    from xmodal.pipelines import compare_segmentation_methods

    aff, gt, calls = stack
    raw = np.zeros(gt.shape, np.float32)
    model = _Model(DEFAULTS)
    res = compare_segmentation_methods(raw, gt, model=model, normalize=None, methods="baseline",
                                       baseline_threshold=0.9)
    assert list(res["methods"]) == ["baseline"]
    base = boundary_baseline_segmentation(aff[:, 0], n_attractive=2, threshold=0.9)
    assert res["methods"]["baseline"]["per_slice"]["n_segments"][0] == len(np.unique(base[base != 0]))
    with pytest.raises(ValueError, match="methods: expected"):
        compare_segmentation_methods(raw, gt, model=model, normalize=None, methods=("mws", "watershed"))
    with pytest.raises(ValueError, match="methods: expected"):
        compare_segmentation_methods(raw, gt, model=model, normalize=None, methods=())
    with pytest.raises(ValueError, match="ground_truth: expected the shape"):
        compare_segmentation_methods(raw, gt[:1], model=model, normalize=None)
    with pytest.raises(TypeError, match="ground_truth: expected integer"):
        compare_segmentation_methods(raw, gt.astype(float), model=model, normalize=None)
    n_before = len(calls)
    for bad in (1.5, float("nan"), True, "0.3"):  # refused before the prediction, not after it
        with pytest.raises(ValueError, match="baseline_threshold: expected a number in"):
            compare_segmentation_methods(raw, gt, model=model, normalize=None, methods="baseline",
                                         baseline_threshold=bad)
    assert len(calls) == n_before


def test_cli_baseline_threshold_needs_methods(tmp_path, capsys):
    from xmodal.cli import main

    seg = np.arange(64, dtype=np.int32).reshape(8, 8) // 16
    np.save(tmp_path / "seg.npy", seg)
    assert main(["evaluate", str(tmp_path / "seg.npy"), str(tmp_path / "seg.npy"), "--baseline-threshold", "0.3"]) == 2
    assert "--baseline-threshold: applies only with --methods" in capsys.readouterr().err


def test_cli_evaluate_methods_on_the_shipped_slices(tmp_path, capsys):
    """`xmodal evaluate RAW GT --methods ...` with the shipped model on the built-in ISBI slices."""
    from xmodal.cli import main
    from xmodal.datasets import isbi2012_slices

    raw, gt = isbi2012_slices()
    raw, gt = raw[:1, :256, :256], gt[:1, :256, :256]
    np.save(tmp_path / "raw.npy", raw)
    np.save(tmp_path / "gt.npy", gt.astype(np.int32))
    out = tmp_path / "methods.json"
    rc = main(["evaluate", str(tmp_path / "raw.npy"), str(tmp_path / "gt.npy"), "--methods", "gasp,baseline",
               "--out", str(out), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "gasp *" in text and "baseline" in text
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {"gasp", "baseline"}
    for m in res["methods"].values():
        assert 0.0 <= m["mean"]["arand"] < 0.5 and m["per_slice"]["n_segments"][0] > 5


def test_scores_leave_out_slices_without_annotation():
    from xmodal.pipelines.compare import _scores

    gt = np.zeros((3, 12, 12), np.uint32)
    gt[0, :6], gt[0, 6:] = 1, 2
    gt[2, :, :6], gt[2, :, 6:] = 3, 4  # slice 1: nothing annotated
    labels = gt.copy()
    labels[1] = 7
    s = _scores(labels, gt, stack=True, ignore_gt=(0,))
    assert s["scored_slices"] == [0, 2] and len(s["per_slice"]["arand"]) == 2
    assert s["mean"]["arand"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="ground_truth: no slice"):
        _scores(labels, np.zeros_like(gt), stack=True, ignore_gt=(0,))
