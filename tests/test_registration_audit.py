"""Audit of the public CPD API as users embed it: what the callback sees, the transform objects'
contracts (proper rotations, finite parameters, dtype kept, clear errors) and their JSON form."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xmodal
from xmodal.registration import (
    AffineTransform,
    DeformableTransform,
    RigidTransform,
    SimilarityTransform,
    transform_from_dict,
)
from xmodal.registration.transforms import CompositeTransform


def _pair(n=150, d=3, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.uniform(-50, 50, (n, d))
    return Y, Y + np.arange(1, d + 1)


@pytest.mark.parametrize("kind", ["rigid", "affine", "deformable"])
def test_callback_reports_every_iteration_including_a_collapse(kind):
    # an exact pair ends with sigma2 at the floor ("sigma2_collapse"): that last iteration changed
    # the transform, so a viewer updated from the callback must see the returned points
    Y, X = _pair()
    seen = []
    r = xmodal.cpd(Y, X, transform=kind, callback=lambda **kw: seen.append(kw))
    assert r.info["stop"] == "sigma2_collapse"
    assert [kw["iteration"] for kw in seen] == list(range(1, r.iterations + 1))
    np.testing.assert_array_equal(seen[-1]["moved"], r.moved)
    np.testing.assert_array_equal(r.history["sigma2"], [kw["sigma2"] for kw in seen])
    np.testing.assert_array_equal(r.history["objective"], [kw["objective"] for kw in seen])
    assert seen[-1]["sigma2"] == r.sigma2


@pytest.mark.parametrize("cls", [RigidTransform, SimilarityTransform])
def test_rotation_must_be_proper(cls):
    with pytest.raises(ValueError, match="rotation"):
        cls(np.diag([1.0, 1.0, -1.0]), np.zeros(3))  # a reflection
    with pytest.raises(ValueError, match="rotation"):
        cls(np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2))  # a shear
    with pytest.raises(ValueError, match="rotation"):
        transform_from_dict({"type": cls.kind, "rotation": [[1, 0], [0, -1]], "translation": [0, 0]})
    # rounding of a composed or JSON-stored rotation is fine
    a = 0.3
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    t = cls(R @ R @ R, [1.0, 2.0])
    p = np.random.default_rng(1).normal(size=(5, 2))
    np.testing.assert_allclose(t.inverse().apply(t.apply(p)), p, atol=1e-12)


def test_rigid_dict_with_a_scale_is_refused():
    d = {"type": "rigid", "rotation": [[1, 0], [0, 1]], "translation": [0, 0], "scale": 2.0}
    with pytest.raises(ValueError, match="scale"):
        transform_from_dict(d)
    ok = RigidTransform(np.eye(2), [1.0, 2.0]).to_dict()  # written with scale 1
    assert transform_from_dict(json.loads(json.dumps(ok))).kind == "rigid"


def test_transform_parameters_must_be_finite():
    with pytest.raises(ValueError, match="matrix"):
        AffineTransform(np.full((2, 2), np.nan), [0.0, 0.0])
    with pytest.raises(ValueError, match="translation"):
        AffineTransform(np.eye(2), [np.inf, 0.0])
    with pytest.raises(ValueError, match="translation"):
        RigidTransform(np.eye(2), [np.nan, 0.0])
    with pytest.raises(ValueError, match="coefficients"):
        DeformableTransform(np.zeros((2, 2)), np.array([[np.nan, 0], [0, 0]]), 1.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="cutoff"):
        DeformableTransform(np.zeros((2, 2)), np.zeros((2, 2)), 1.0, [0.0, 0.0], cutoff=-1.0)


def test_singular_affine_inverse_names_the_matrix():
    with pytest.raises(ValueError, match="^matrix: "):
        AffineTransform(np.array([[1.0, 2.0], [2.0, 4.0]]), [0.0, 0.0]).inverse()


def test_composite_keeps_float32():
    t = CompositeTransform((RigidTransform(np.eye(3), [1.0, 2.0, 3.0]), AffineTransform(2 * np.eye(3), np.zeros(3))))
    p = np.ones((4, 3), np.float32)
    out = t.apply(p)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.full((4, 3), [4.0, 6.0, 8.0], np.float32))
    assert t.apply(p.astype(np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="points"):
        t.apply(np.full((2, 3), np.nan))


def test_coarse_to_fine_deformable_transform_reproduces_moved_in_its_dtype():
    rng = np.random.default_rng(3)
    X = rng.uniform(-100, 100, (3000, 3))
    Y = (X[:2800] + 2.0 + rng.normal(0, 0.3, (2800, 3))).astype(np.float32)
    r = xmodal.cpd_coarse_to_fine(Y, X.astype(np.float32), transform="deformable", n_coarse=600, max_iter=10,
                                  refine_iter=2, beta=30.0, lam=1.0)
    assert isinstance(r.transform, CompositeTransform)
    out = r.transform.apply(Y)
    assert out.dtype == r.moved.dtype == np.float32
    np.testing.assert_allclose(out, r.moved, atol=1e-3)
