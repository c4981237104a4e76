"""Tests of the registration error estimates (xmodal.registration.uncertainty)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from xmodal.registration.uncertainty import (
    AffineFit,
    RigidFit,
    fit_affine,
    fit_rigid,
    fitzpatrick_tre,
    leave_one_out_residuals,
    prediction_region,
)


def _rotation(rng, d):
    if d == 3:
        return Rotation.random(random_state=rng).as_matrix()
    th = rng.uniform(0, 2 * np.pi)
    return np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])


@pytest.mark.parametrize("d", [2, 3])
def test_fits_recover_exact_transforms(d):
    rng = np.random.default_rng(d)
    src = rng.uniform(-20, 20, (9, d))
    R = _rotation(rng, d)
    t = rng.normal(0, 10, d)
    rigid = fit_rigid(src, src @ R.T + t)
    np.testing.assert_allclose(rigid.rotation, R, atol=1e-10)
    np.testing.assert_allclose(rigid.translation, t, atol=1e-9)
    assert rigid.scale == 1.0 and rigid.rms < 1e-9 and np.linalg.det(rigid.rotation) == pytest.approx(1.0)
    sim = fit_rigid(src, 1.7 * src @ R.T + t, scale=True)
    assert sim.scale == pytest.approx(1.7) and sim.rms < 1e-9
    A = R @ np.diag(rng.uniform(0.5, 2.0, d)) + 0.1 * rng.normal(size=(d, d))
    aff = fit_affine(src, src @ A.T + t)
    np.testing.assert_allclose(aff.matrix, A, atol=1e-10)
    np.testing.assert_allclose(aff.translation, t, atol=1e-9)
    new = rng.normal(size=(4, d))
    np.testing.assert_allclose(aff.transform(new), new @ A.T + t, atol=1e-9)


def test_rigid_never_reflects():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(10, 3))
    mirrored = src * [1, 1, -1]  # a reflection is the best orthogonal map, but not a rotation
    fit = fit_rigid(src, mirrored)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0)
    assert fit.rms > 0.1


def test_noise_estimates_are_the_textbook_ones():
    rng = np.random.default_rng(5)
    n, d = 15, 3
    src = rng.normal(size=(n, d)) * 10
    dst = src + rng.normal(0, 0.5, (n, d))
    aff = fit_affine(src, dst)
    X = np.hstack([src, np.ones((n, 1))])
    B = np.linalg.solve(X.T @ X, X.T @ dst)
    E = dst - X @ B
    np.testing.assert_allclose(aff.noise_covariance, E.T @ E / (n - d - 1))
    # leverages of the raw design x0ᵀ(XᵀX)⁻¹x0 (prediction covariance (1 + h0) S)
    x0 = rng.normal(size=(3, d)) * 20
    X0 = np.hstack([x0, np.ones((3, 1))])
    h0 = np.einsum("mi,ij,mj->m", X0, np.linalg.inv(X.T @ X), X0)
    reg = prediction_region(aff, x0)
    np.testing.assert_allclose(reg.covariances, (1 + h0)[:, None, None] * aff.noise_covariance, rtol=1e-9)
    # far from the origin: same answer relative to the data (the centred design stays well conditioned)
    far = prediction_region(fit_affine(src + 1e6, dst + 1e6), x0 + 1e6)
    np.testing.assert_allclose(far.covariances, reg.covariances, rtol=1e-6)
    np.testing.assert_allclose(far.centers - 1e6, reg.centers, atol=1e-6)
    rig = fit_rigid(src, dst)
    assert rig.dof == n * d - 6
    assert rig.sigma2 == pytest.approx((rig.residuals ** 2).sum() / (n * d - 6))


def _coverage(d, kind, n_trials, seed, n_points=10, sigma=0.4, aniso=False):
    rng = np.random.default_rng(seed)
    hits_pred = hits_conf = 0
    for _ in range(n_trials):
        src = rng.uniform(-10, 10, (n_points, d))
        R = _rotation(rng, d)
        A = R if kind == "rigid" else R @ np.diag(rng.uniform(0.7, 1.4, d))
        t = rng.normal(0, 5, d)
        if aniso:  # correlated anisotropic errors: allowed by the affine model
            L = np.diag(rng.uniform(0.2, 0.8, d))
            L[1, 0] = 0.3
            noise = rng.normal(size=(n_points + 1, d)) @ L.T
        else:
            noise = rng.normal(0, sigma, (n_points + 1, d))
        dst = src @ A.T + t + noise[:-1]
        x0 = rng.uniform(-15, 15, (1, d))
        truth = x0 @ A.T + t
        fit = fit_rigid(src, dst) if kind == "rigid" else fit_affine(src, dst)
        hits_pred += prediction_region(fit, x0).contains(truth + noise[-1:])[0]
        hits_conf += prediction_region(fit, x0, kind="confidence").contains(truth)[0]
    return hits_pred / n_trials, hits_conf / n_trials


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["affine", "rigid"])
def test_95_percent_regions_cover_95_percent(d, kind):
    """2000 simulated registrations: binomial SE 0.49 %, so 93-97 % is a +-4 SE band."""
    pred, conf = _coverage(d, kind, 2000, seed=100 + d + (kind == "rigid"))
    assert 0.93 <= pred <= 0.97, pred
    assert 0.93 <= conf <= 0.97, conf


def test_affine_region_with_anisotropic_correlated_noise():
    pred, conf = _coverage(2, "affine", 2000, seed=7, n_points=7, aniso=True)
    assert 0.93 <= pred <= 0.97, pred
    assert 0.93 <= conf <= 0.97, conf


def test_region_geometry():
    rng = np.random.default_rng(9)
    src = rng.normal(size=(12, 3)) * 5
    dst = src + rng.normal(0, 0.3, src.shape)
    reg = prediction_region(fit_affine(src, dst), rng.normal(size=(5, 3)), level=0.9)
    for S, ax, v in zip(reg.shape_matrices, reg.semi_axes, reg.axes):
        np.testing.assert_allclose(v @ np.diag(ax ** 2) @ v.T, S, atol=1e-12)
    # a point on the boundary along the longest axis has Mahalanobis 1
    edge = reg.centers + reg.axes[:, :, -1] * reg.semi_axes[:, -1:]
    np.testing.assert_allclose(reg.mahalanobis2(edge), 1.0)
    # far targets have bigger regions (leverage grows)
    near = prediction_region(fit_rigid(src, dst), src.mean(axis=0, keepdims=True))
    far = prediction_region(fit_rigid(src, dst), src.mean(axis=0, keepdims=True) + 100)
    assert far.semi_axes.max() > 3 * near.semi_axes.max()
    wider = prediction_region(fit_affine(src, dst), src[:1], level=0.99)
    narrower = prediction_region(fit_affine(src, dst), src[:1], level=0.5)
    assert np.all(wider.semi_axes > narrower.semi_axes)


@pytest.mark.parametrize("d", [2, 3])
def test_rigid_linearisation_equals_fitzpatrick(d):
    """trace Cov(ŷ0) of the linearised rigid fit is Fitzpatrick's TRE² for FLE² = d σ²."""
    rng = np.random.default_rng(20 + d)
    src = rng.normal(size=(8, d)) * [10, 4, 2][:d]
    R = _rotation(rng, d)
    dst = src @ R.T + rng.normal(0, 0.2, src.shape)
    fit = fit_rigid(src, dst)
    targets = rng.normal(size=(6, d)) * 20
    conf = prediction_region(fit, targets, kind="confidence")
    tre = fitzpatrick_tre(src, targets, fle=np.sqrt(d * fit.sigma2))
    np.testing.assert_allclose(np.trace(conf.covariances, axis1=1, axis2=2), tre.tre ** 2, rtol=1e-8)


@pytest.mark.parametrize("d", [2, 3])
def test_fitzpatrick_tre_by_simulation(d):
    rng = np.random.default_rng(30 + d)
    fid = rng.normal(size=(6, d)) * [12, 6, 3][:d]
    targets = np.array([[0.0] * d, [30.0] + [0.0] * (d - 1), [0.0] * (d - 1) + [25.0]])
    sigma = 0.3
    fle = np.sqrt(d) * sigma
    R = _rotation(rng, d)
    t = rng.normal(size=d)
    sq = np.zeros(len(targets))
    fre2 = 0.0
    trials = 2000
    for _ in range(trials):
        fit = fit_rigid(fid, fid @ R.T + t + rng.normal(0, sigma, fid.shape))
        sq += ((fit.transform(targets) - (targets @ R.T + t)) ** 2).sum(axis=1)
        fre2 += fit.rms ** 2
    predicted = fitzpatrick_tre(fid, targets, fle=fle).tre
    np.testing.assert_allclose(np.sqrt(sq / trials), predicted, rtol=0.05)
    # FRE -> FLE conversion: E[FRE²] = FLE² (1 - q / (N d))
    q = d * (d - 1) // 2 + d
    assert fre2 / trials == pytest.approx(fle ** 2 * (1 - q / (len(fid) * d)), rel=0.05)
    via_fre = fitzpatrick_tre(fid, targets, fre=np.sqrt(fre2 / trials)).tre
    np.testing.assert_allclose(via_fre, predicted, rtol=0.05)


@pytest.mark.parametrize("transform", ["affine", "rigid"])
def test_leave_one_out_equals_explicit_refits(transform):
    rng = np.random.default_rng(40)
    src = rng.normal(size=(9, 3)) * 5
    dst = src @ _rotation(rng, 3).T + rng.normal(0, 0.3, src.shape)
    loo = leave_one_out_residuals(src, dst, transform=transform)
    for i in range(len(src)):
        keep = np.arange(len(src)) != i
        fit = fit_affine(src[keep], dst[keep]) if transform == "affine" else fit_rigid(src[keep], dst[keep])
        np.testing.assert_allclose(loo.residuals[i], dst[i] - fit.transform(src[i:i + 1])[0], atol=1e-9)
    assert loo.rms == pytest.approx(np.sqrt((loo.distances ** 2).mean()))
    # leave-one-out residuals are larger than the fit residuals
    full = fit_affine(src, dst) if transform == "affine" else fit_rigid(src, dst)
    assert loo.rms > full.rms


def test_bad_inputs():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(6, 3))
    with pytest.raises(ValueError, match="same shape"):
        fit_affine(src, src[:5])
    with pytest.raises(ValueError, match="d = 2 or 3"):
        fit_rigid(np.zeros((5, 4)), np.zeros((5, 4)))
    with pytest.raises(TypeError, match="numeric"):
        fit_rigid(np.array([["a", "b"]] * 3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_affine(src[:4], src[:4])
    with pytest.raises(ValueError, match="degenerate"):
        line = np.outer(np.arange(6.0), [1, 2, 3])
        fit_affine(line, line)
    with pytest.raises(ValueError, match="at least 7 points"):
        prediction_region(fit_affine(src, src + 0.01 * rng.normal(size=src.shape)), src[:1])
    fit = fit_rigid(src, src)
    with pytest.raises(ValueError, match="level"):
        prediction_region(fit, src, level=1.0)
    with pytest.raises(ValueError, match="columns"):
        prediction_region(fit, src[:, :2])
    with pytest.raises(TypeError, match="AffineFit or RigidFit"):
        prediction_region("fit", src)
    with pytest.raises(ValueError, match="transform"):
        leave_one_out_residuals(src, src, transform="bspline")
    with pytest.raises(ValueError, match="exactly one"):
        fitzpatrick_tre(src, src)
    with pytest.raises(ValueError, match="finite"):
        fit_rigid(np.full((4, 2), np.nan), np.zeros((4, 2)))
    assert isinstance(fit, RigidFit) and isinstance(fit_affine(src, src), AffineFit)
    with pytest.raises(ValueError, match="degenerate"):
        line = np.outer(np.arange(6.0), [1, 2, 3])
        fit_rigid(line, line + 1.0)


def test_similarity_region_coverage():
    rng = np.random.default_rng(77)
    hits, trials = 0, 2000
    for _ in range(trials):
        src = rng.uniform(-10, 10, (8, 3))
        R, s, t = _rotation(rng, 3), rng.uniform(0.5, 2.0), rng.normal(0, 5, 3)
        noise = rng.normal(0, 0.4, (9, 3))
        fit = fit_rigid(src, s * src @ R.T + t + noise[:-1], scale=True)
        x0 = rng.uniform(-15, 15, (1, 3))
        hits += prediction_region(fit, x0).contains(s * x0 @ R.T + t + noise[-1:])[0]
    assert 0.93 <= hits / trials <= 0.97, hits / trials
