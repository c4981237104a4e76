"""`spacing` of build_atlas and identify: samples given in voxels (or any other scale) are scaled
into the atlas's units, the result's transform maps the points as given, bad scales are refused."""

import json
import warnings

import numpy as np
import pytest

from test_atlas import _accuracy, _base_shape, _names, _sample
from xmodal.atlas import Atlas, build_atlas, identify


@pytest.fixture(scope="module")
def animals():
    rng = np.random.default_rng(21)
    base, names = _base_shape(60, rng), _names(60)
    train = [_sample(base, names, rng, noise=0.1, drop=0.05) for _ in range(4)]
    return rng, base, names, train


def test_build_atlas_scales_each_sample(animals):
    _, _, _, train = animals
    pts, nms = [t[0] for t in train], [t[1] for t in train]
    plain = build_atlas(pts, names=nms, calibrate=False, deform=None)
    voxel = [np.array([0.5, 0.2, 0.2]), np.array([2.0, 1.0, 1.0]), None, np.array([1.0, 0.25, 0.5])]
    given = [p if s is None else p / s for p, s in zip(pts, voxel)]  # centroids in voxels
    scaled = build_atlas(given, names=nms, spacing=voxel, calibrate=False, deform=None)
    assert np.allclose(scaled.means, plain.means, atol=1e-6)
    assert scaled.parameters["spacing"] == [None if s is None else s.tolist() for s in voxel]
    # one scale for every sample
    one = build_atlas([p / 0.5 for p in pts], names=nms, spacing=0.5, calibrate=False, deform=None)
    assert np.allclose(one.means, plain.means, atol=1e-6) and one.parameters["spacing"] == [0.5] * 3
    again = Atlas.from_dict(json.loads(json.dumps(scaled.to_dict())))
    assert again.parameters["spacing"] == scaled.parameters["spacing"]
    assert plain.parameters["spacing"] is None


def test_identify_in_voxels_equals_identify_in_physical_units(animals):
    rng, base, names, train = animals
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train])  # deformable stage on
    pts, nm, _ = _sample(base, names, rng, noise=0.1)
    s = np.array([0.5, 0.2, 0.25])
    ref = identify(pts, atlas)
    res = identify(pts / s, atlas, spacing=s)
    assert _accuracy(res, nm) >= 0.95
    assert np.array_equal(res.names, ref.names)
    assert np.allclose(res.moved, ref.moved, atol=1e-6)
    # the transform maps the points as given (voxels), a smooth field included
    assert res.transform.kind == "composite"
    assert np.allclose(res.transform.apply(pts / s), res.moved, atol=1e-6)
    assert res.diagnostics["spacing"] == s.tolist() and ref.diagnostics["spacing"] is None


def test_spacing_repairs_a_sample_in_other_units(animals):
    """The fit check's case of a forgotten spacing: with the spacing given, the sample fits."""
    rng, base, names, train = animals
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train])
    pts, nm, _ = _sample(base, names, rng, noise=0.1)
    factor = np.array([1.0, 0.35, 0.35])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fit warning
        res = identify(pts * factor, atlas, spacing=1.0 / factor)
    assert res.diagnostics["fit"]["ok"] is True and _accuracy(res, nm) >= 0.95


def test_bad_spacing_is_refused(animals):
    _, _, _, train = animals
    pts, nms = [t[0] for t in train], [t[1] for t in train]
    with pytest.raises(ValueError, match=r"spacing: expected positive finite values"):
        build_atlas(pts, names=nms, spacing=[1.0, -1.0, 1.0], calibrate=False)
    with pytest.raises(ValueError, match=r"spacing: expected a scalar or 3 values"):
        build_atlas(pts, names=nms, spacing=[1.0, 2.0], calibrate=False)
    with pytest.raises(ValueError, match=r"spacing: expected a scale for every sample .* 4 per-sample"):
        build_atlas(pts, names=nms, spacing=[None, [1, 1, 1]], calibrate=False)
    with pytest.raises(ValueError, match=r"spacing\[1\]: expected a scalar or 3 values"):
        build_atlas(pts, names=nms, spacing=[None, [1, 1], None, None], calibrate=False)
    with pytest.raises(TypeError, match=r"spacing: expected a positive number"):
        build_atlas(pts, names=nms, spacing="0.5", calibrate=False)
    atlas = build_atlas(pts, names=nms, calibrate=False, deform=None)
    with pytest.raises(ValueError, match=r"spacing: expected a scalar or 3 values"):
        identify(pts[0], atlas, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing: expected positive finite values"):
        identify(pts[0], atlas, spacing=0.0)
