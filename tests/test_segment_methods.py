"""segment(method=...): the superpixel route (GASP / multicut) and the pixel mutex watershed with the
shipped EM model's stored defaults and normalisation."""

import sys

import numpy as np
import pytest

from xmodal.metrics import adapted_rand_error
from xmodal.models.em import EM_OFFSETS, bias_affinities
from xmodal.pipelines._agglomerate import _BiasedView, _BoundaryView, resolve_method
from xmodal.segmentation import boundaries_from_affinities, superpixel_agglomeration

_SEGMENT_MODULE = sys.modules["xmodal.pipelines.segment"]  # the module (the package exports the function)


def _affinities(shape=(96, 96), seed=0):
    """Merge probabilities of a random Voronoi-like partition for EM_OFFSETS, plus noise."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, min(shape), size=(14, 2))
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    membrane = np.zeros(shape, bool)  # 2 px thick, as in EM
    for dy, dx in ((1, 0), (0, 1), (-1, 0), (0, -1)):
        membrane |= np.roll(lab, (dy, dx), axis=(0, 1)) != lab
    aff = np.empty((len(EM_OFFSETS), *shape), np.float32)
    for c, (dy, dx) in enumerate(EM_OFFSETS):
        other = np.roll(lab, (-dy, -dx), axis=(0, 1))
        inside = ~membrane & ~np.roll(membrane, (-dy, -dx), axis=(0, 1))
        aff[c] = ((lab == other) & (inside if c < 2 else True)).astype(np.float32)
    aff = np.clip(aff * 0.8 + 0.1 + rng.normal(0, 0.05, aff.shape).astype(np.float32), 0, 1)
    return aff, lab + 1


class _Model:
    """A stand-in network (any callable): returns fixed affinities, carries stored defaults."""

    def __init__(self, defaults=None):
        self.offsets, self.n_attractive = EM_OFFSETS, 2
        self.segmentation_defaults = defaults or {}

    def __call__(self, x):  # never run: the tests replace the prediction step
        raise AssertionError("the stand-in model was called")


def test_resolve_method_uses_stored_defaults_and_checks_arguments():
    model = _Model({"method": "gasp", "gasp": {"beta": 0.4, "threshold": 0.6, "min_size": 50},
                    "mws": {"repulsive_bias": 0.2, "strides": None, "min_size": 400}})
    assert resolve_method(model, None, None, None) == ("gasp", 50, {"beta": 0.4, "threshold": 0.6})
    assert resolve_method(model, None, 10, {"beta": 0.7}) == ("gasp", 10, {"beta": 0.7, "threshold": 0.6})
    assert resolve_method(model, "mws", None, None) == ("mws", 400, {"repulsive_bias": 0.2})
    assert resolve_method(_Model(), None, None, None) == ("mws", 0, {})
    with pytest.raises(ValueError, match="method: expected one of"):
        resolve_method(model, "watershed", None, None)
    with pytest.raises(ValueError, match="graph_options"):
        resolve_method(model, "mws", None, {"beta": 0.5})
    with pytest.raises(ValueError, match="graph_options"):
        resolve_method(model, "gasp", None, {"no_such_option": 1})
    with pytest.raises(TypeError, match="graph_options"):
        resolve_method(model, "gasp", None, [("beta", 0.5)])


def test_block_views_equal_the_whole_array():
    aff, _ = _affinities((70, 90))
    whole_b = boundaries_from_affinities(aff, EM_OFFSETS, n_attractive=2)
    whole_a = bias_affinities(aff, n_attractive=2, bias=0.25)
    bview, aview = _BoundaryView(aff, EM_OFFSETS, 2), _BiasedView(aff, 2, 0.25)
    assert bview.shape == (70, 90) and aview.shape == aff.shape
    for sl in [(slice(0, 32), slice(0, 40)), (slice(30, 70), slice(17, 90)), (slice(5, 6), slice(None))]:
        np.testing.assert_array_equal(bview[sl], whole_b[sl])
        np.testing.assert_array_equal(aview[(slice(None),) + sl], whole_a[(slice(None),) + sl])
    np.testing.assert_array_equal(aview[(slice(2, 5), slice(0, 10), slice(3, 9))], whole_a[2:5, :10, 3:9])


@pytest.mark.parametrize("method", ["gasp", "multicut"])
def test_segment_graph_method_equals_superpixel_agglomeration(monkeypatch, method):
    """segment(method=...) runs superpixel_agglomeration on the predicted affinities with the
    stored options, and its size filter is the graph-level one."""
    from xmodal.pipelines import segment

    aff, lab = _affinities()
    opts = {"beta": 0.45, "threshold": 0.5, "sigma_seeds": 1.0, "superpixel_min_size": 10}
    model = _Model({"method": method, method: opts | {"min_size": 30}})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: aff)
    res = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None)
    expected = superpixel_agglomeration(affinities=aff, offsets=EM_OFFSETS, n_attractive=2, method=method,
                                        min_size=30, **opts)
    np.testing.assert_array_equal(res.labels, expected)
    assert res.parameters["method"] == method and res.parameters["agglomeration"]["beta"] == 0.45
    assert adapted_rand_error(res.labels, lab).error < 0.1  # the partition is found
    with pytest.raises(ValueError, match="bias, strides"):
        segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, bias=-0.5)


def test_segment_gasp_blockwise_close_to_single_shot(monkeypatch):
    """Blockwise, the superpixel route runs on the boundary map block by block; its partition is
    close to the single-shot one (face statistics of the boundary map instead of the links)."""
    from xmodal.pipelines import segment

    aff, lab = _affinities((128, 128), seed=3)
    model = _Model({"method": "gasp", "gasp": {"beta": 0.5, "superpixel_min_size": 10}})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: aff)
    single = segment(np.zeros((128, 128), np.float32), model=model, normalize=None).labels
    blocks = segment(np.zeros((128, 128), np.float32), model=model, normalize=None, block_shape=(64, 64)).labels
    assert adapted_rand_error(np.asarray(blocks), single).error < 0.05
    assert adapted_rand_error(np.asarray(blocks), lab).error < 0.1


def test_segment_mws_applies_the_stored_repulsive_bias(monkeypatch):
    from xmodal.pipelines import segment
    from xmodal.segmentation import mutex_watershed

    aff, _ = _affinities(seed=5)
    model = _Model({"method": "mws", "mws": {"repulsive_bias": 0.3, "min_size": 0}})
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: aff)
    res = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None)
    biased = mutex_watershed(bias_affinities(aff, n_attractive=2, bias=0.3), EM_OFFSETS, n_attractive=2)
    np.testing.assert_array_equal(res.labels, biased)
    blocks = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, block_shape=(48, 48))
    assert adapted_rand_error(np.asarray(blocks.labels), biased).error < 0.02


def test_model_normalizer_follows_the_metadata():
    from xmodal.inference import Standardize, model_normalizer
    from xmodal.models.em import normalize_em

    img = np.random.default_rng(1).integers(0, 256, (3, 40, 50)).astype(np.uint8)
    q = model_normalizer(img, {"kind": "quantile", "quantiles": [0.01, 0.99]})
    np.testing.assert_allclose(q(img), normalize_em(img), atol=1e-3)  # histogram quantiles: within a bin
    z = model_normalizer(img, {"kind": "zscore", "mean": 1.0, "std": 2.0})
    assert isinstance(z, Standardize) and z.mean == pytest.approx(img.mean()) and z.std == pytest.approx(img.std())
    with pytest.raises(ValueError, match="normalization"):
        model_normalizer(img, {"kind": "minmax"})


def test_shipped_em_model_is_the_segment_default():
    pytest.importorskip("torch")
    from xmodal.models import SHIPPED_MODELS, em_affinity_unet_metadata, load_model

    model = load_model("em")
    assert "em" in SHIPPED_MODELS
    stored = em_affinity_unet_metadata()["segmentation_defaults"]
    assert model.segmentation_defaults == stored
    method, min_size, extra = resolve_method(model, None, None, None)
    assert method == stored["method"] and min_size == stored[method]["min_size"]
    import inspect

    from xmodal.pipelines import segment

    sig = inspect.signature(segment).parameters
    assert sig["model"].default == "em" and sig["normalize"].default == "auto" and sig["method"].default is None
