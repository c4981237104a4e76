"""Tests of xmodal.cpd (Coherent Point Drift) and its transforms."""

import json

import numpy as np
import pytest

import xmodal
from xmodal.registration import (
    AffineTransform,
    CPDResult,
    DeformableTransform,
    RigidTransform,
    SimilarityTransform,
    transform_from_dict,
)
from xmodal.registration._mstep import gauss_kernel


def rotation(d, seed, angle=0.6):
    """A proper rotation by ``angle`` radians (about a random axis in 3D): CPD is a local method."""
    rng = np.random.default_rng(seed)
    c, s = np.cos(angle), np.sin(angle)
    if d == 2:
        return np.array([[c, -s], [s, c]])
    k = rng.normal(size=3)
    k /= np.linalg.norm(k)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * K + (1 - c) * K @ K


def cloud(n, d, seed, extent=50.0):
    return np.random.default_rng(seed).uniform(-extent, extent, size=(n, d))


def make_pair(d, kind, seed, n=250, outliers=0.0, missing=0.0, noise=0.0):
    """fixed = T(moving) with a known T, plus outliers in fixed and points missing from moving."""
    rng = np.random.default_rng(seed)
    Y = cloud(n, d, seed)
    R = rotation(d, seed + 1)
    t = rng.uniform(-5, 5, size=d)
    if kind == "rigid":
        A, s = R, 1.0
    elif kind == "similarity":
        s = 1.3
        A = s * R
    else:
        A = R @ np.diag(rng.uniform(0.8, 1.25, size=d))
    X = Y @ A.T + t + rng.normal(scale=noise, size=Y.shape)
    keep = np.sort(rng.choice(n, size=int(n * (1 - missing)), replace=False))
    Ym = Y[keep]
    Xtrue = X[keep]
    if outliers:
        X = np.vstack([X, rng.uniform(X.min(0), X.max(0), size=(int(n * outliers), d))])
    return Ym, X, Xtrue, A, t


# ----------------------------------------------------------------------- native E-step
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_estep_matches_dense(d, dtype):
    from xmodal import _core

    rng = np.random.default_rng(d)
    X = rng.normal(size=(200, d))
    Y = rng.normal(size=(170, d))
    s2, w = 0.2, 0.1
    c = (2 * np.pi * s2) ** (d / 2) * w / (1 - w) * 170 / 200
    K = np.exp(-((X[None] - Y[:, None]) ** 2).sum(-1) / (2 * s2))
    den = K.sum(0) + c
    P = K / den
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for cutoff in (np.inf, 36.0):
        out = _core.cpd_estep(X.astype(dtype), Y.astype(dtype), None, s2, c, cutoff, True)
        P1, Pt1, PX, best, prob = (out[k] for k in ("P1", "Pt1", "PX", "best_idx", "best_prob"))
        logsum, empty, log_s, shifted = (out[k] for k in ("log_s_sum", "empty_columns", "log_s", "shifted_columns"))
        assert P1.dtype == dtype  # the precision of the input
        np.testing.assert_allclose(np.exp(log_s), den, rtol=tol)
        assert shifted == 0  # every fixed point has a term above exp(-48): no log-sum-exp shift needed
        np.testing.assert_allclose(P1, P.sum(1), atol=tol)
        np.testing.assert_allclose(Pt1, P.sum(0), atol=tol)
        np.testing.assert_allclose(PX, P @ X, atol=tol * 10)
        np.testing.assert_array_equal(best, P.argmax(1))
        np.testing.assert_allclose(prob, P.max(1), atol=tol)
        assert abs(logsum - np.log(den).sum()) < tol * 1e3 * len(X)
        assert empty == 0


def test_estep_truncation_skips_work_and_is_deterministic():
    from xmodal import _core

    X = cloud(3000, 3, 5)
    Y = X + np.random.default_rng(0).normal(scale=0.5, size=X.shape)
    dense = _core.cpd_estep(X, Y, None, 1.0, 1e-3, np.inf, True)
    trunc = _core.cpd_estep(X, Y, None, 1.0, 1e-3, 36.0, True)
    assert trunc["pairs"] < dense["pairs"] / 10  # far fewer kernel evaluations
    for k in ("P1", "Pt1", "PX"):
        np.testing.assert_allclose(dense[k], trunc[k], rtol=1e-12, atol=1e-14)
    xmodal.set_num_threads(1)
    try:
        one = _core.cpd_estep(X, Y, None, 1.0, 1e-3, 36.0, True)
    finally:
        xmodal.set_num_threads(None)
    for k in ("P1", "Pt1", "PX", "best_idx", "best_prob"):
        np.testing.assert_array_equal(one[k], trunc[k])


def test_native_rechecks_input():
    from xmodal import _core

    X = cloud(10, 3, 0)
    Y = X.copy()
    Y[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        _core.cpd_estep(X, Y, None, 1.0, 0.0, 36.0, True)
    with pytest.raises(ValueError, match="sigma2"):
        _core.cpd_estep(X, X, None, 0.0, 0.0, 36.0, True)
    with pytest.raises(ValueError, match="non-finite"):
        _core.cpd_gauss_transform(X, X, Y, 1.0, 36.0)


def test_gauss_transform_matches_dense():
    from xmodal import _core

    C = cloud(120, 3, 1, 5.0)
    W = np.random.default_rng(2).normal(size=(120, 3))
    Q = cloud(90, 3, 3, 6.0)
    out = _core.cpd_gauss_transform(C, W, Q, 2.0, np.inf)["values"]
    np.testing.assert_allclose(out, gauss_kernel(Q, C, 2.0) @ W, atol=1e-12)


# ----------------------------------------------------------------------- recovery
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine"])
def test_recovers_linear_transforms_with_outliers_and_missing(d, kind):
    Y, X, Xtrue, A, t = make_pair(d, kind, seed=10 + d, outliers=0.1, missing=0.1, noise=0.05)
    r = xmodal.cpd(Y, X, transform=kind, w=0.1)
    assert isinstance(r, CPDResult)
    B = r.transform.matrix
    np.testing.assert_allclose(B, A, atol=0.02)
    np.testing.assert_allclose(r.transform.translation, t, atol=0.3)
    assert np.abs(r.moved - Xtrue).mean() < 0.15
    if kind in ("rigid", "similarity"):
        assert np.linalg.det(r.transform.rotation) == pytest.approx(1.0, abs=1e-9)
    assert r.match.shape == (len(Y),) and r.match_probability.max() <= 1.0


def test_rigid_gives_proper_rotation_for_reflected_input():
    Y = cloud(200, 3, 4)
    X = Y * np.array([1, 1, -1])  # a mirror image: the best proper rotation is not the reflection
    r = xmodal.cpd(Y, X, transform="rigid")
    assert np.linalg.det(r.transform.rotation) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_recovers_deformable(d):
    rng = np.random.default_rng(d)
    Y = cloud(300, d, 20 + d, 10.0)
    disp = np.stack([np.sin(Y[:, (i + 1) % d] / 4.0) for i in range(d)], 1) * 1.0
    X = Y + disp
    keep = np.sort(rng.choice(300, 270, replace=False))
    Xo = np.vstack([X, rng.uniform(-10, 10, size=(15, d))])
    before = np.abs(Y[keep] - X[keep]).mean()
    r = xmodal.cpd(Y[keep], Xo, transform="deformable", w=0.05, beta=3.0, lam=1.0)
    after = np.abs(r.moved - X[keep]).mean()
    assert after < 0.25 * before
    # the field evaluated at the moving points reproduces `moved`; it interpolates at new points
    np.testing.assert_allclose(r.transform.apply(Y[keep]), r.moved, atol=1e-9)
    left_out = np.setdiff1d(np.arange(300), keep)
    assert np.abs(r.transform.apply(Y[left_out]) - X[left_out]).mean() < 0.5 * before


def test_low_rank_agrees_with_direct():
    Y = cloud(400, 3, 30, 10.0)
    X = Y + np.stack([np.sin(Y[:, 1] / 4), np.cos(Y[:, 2] / 4), 0 * Y[:, 0]], 1)
    kw = dict(transform="deformable", beta=4.0, lam=1.0, max_iter=40)
    a = xmodal.cpd(Y, X, low_rank=False, **kw)
    b = xmodal.cpd(Y, X, low_rank=150, **kw)
    assert a.info["solver"] == "direct" and b.info["solver"] == "nystrom-woodbury"
    diff = np.abs(a.moved - b.moved)
    assert diff.max() < 0.1 and diff.mean() < 0.02  # displacement amplitude ~1
    np.testing.assert_allclose(b.transform.apply(Y), b.moved, atol=1e-9)


# ----------------------------------------------------------------------- peers, precision
@pytest.mark.parametrize("kind", ["similarity", "affine", "deformable"])
def test_agrees_with_pycpd(kind):
    """Same inputs and parameters, no normalisation, dense sums, fixed iteration count.

    Tolerance 1e-8 (absolute, coordinates ~10): both run the same EM in float64; the differences
    are summation order and our polynomial exp (relative error < 1e-15) propagated through 30
    iterations. (pycpd's RigidRegistration always estimates a scale: it is our "similarity".)
    """
    pycpd = pytest.importorskip("pycpd")
    Y, X, *_ = make_pair(3, "rigid" if kind == "deformable" else kind, seed=7, n=150, noise=0.3)
    X = X[:130]
    w = 0.0 if kind == "similarity" else 0.05  # pycpd's free scale collapses here with w > 0
    kw = dict(X=X, Y=Y, w=w, max_iterations=20, tolerance=0.0)
    if kind == "similarity":
        reg = pycpd.RigidRegistration(**kw)
    elif kind == "affine":
        reg = pycpd.AffineRegistration(**kw)
    else:
        reg = pycpd.DeformableRegistration(beta=3.0, alpha=2.0, **kw)
    TY, _ = reg.register()
    r = xmodal.cpd(Y, X, transform=kind, w=w, beta=3.0, lam=2.0, max_iter=20, tol=0.0, normalize=False,
                   cutoff=np.inf)
    assert r.iterations == reg.iteration == 20
    np.testing.assert_allclose(r.moved, TY, atol=1e-8)
    assert r.sigma2 == pytest.approx(reg.sigma2, rel=1e-7)


@pytest.mark.parametrize("kind", ["rigid", "deformable"])
def test_float32_agrees_with_float64(kind):
    Y, X, *_ = make_pair(3, "rigid", seed=3, n=200, noise=0.2)
    kw = dict(transform=kind, w=0.05, beta=8.0, lam=2.0, max_iter=50)
    a = xmodal.cpd(Y, X, **kw)
    b = xmodal.cpd(Y.astype(np.float32), X.astype(np.float32), **kw)
    assert b.moved.dtype == np.float32 and a.moved.dtype == np.float64
    assert np.abs(a.moved - b.moved).max() < 1e-3 * np.abs(X).max()


def test_scale_does_not_collapse_with_large_w():
    """pycpd/cycpd collapse (scale -> ~0) on uniform points with free scale and w >= 0.1."""
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 200, size=(400, 3))
    R = rotation(3, 0)
    Y = ((X[40:] - X.mean(0)) @ R) * 1.2 + 5 + rng.normal(0, 1, size=(360, 3))
    for w in (0.1, 0.3, 0.5):
        r = xmodal.cpd(Y, X, transform="similarity", w=w)
        assert r.transform.scale == pytest.approx(1 / 1.2, rel=0.01)
        assert np.abs(r.moved - X[40:]).mean() < 1.5
    # the unnormalised (pycpd) model does collapse here: the guard matters
    raw = xmodal.cpd(Y, X, transform="similarity", w=0.1, normalize=False)
    assert raw.transform.scale < 0.5


def test_fixed_scale_and_weights():
    Y, X, Xtrue, A, t = make_pair(3, "similarity", seed=5)
    r = xmodal.cpd(Y, X, transform="similarity", scale=1.3)
    assert r.transform.scale == pytest.approx(1.3, rel=1e-12)
    r2 = xmodal.cpd(Y, X, transform="rigid", weights=np.linspace(1, 2, len(Y)))
    assert np.linalg.det(r2.transform.rotation) == pytest.approx(1.0)


# ----------------------------------------------------------------------- transforms
def test_json_round_trip_and_inverse():
    Y = cloud(150, 3, 8, 10.0)
    for kind in ("rigid", "similarity", "affine", "deformable"):
        X = Y @ rotation(3, 2).T * (1.1 if kind != "rigid" else 1.0) + 1.0
        if kind == "deformable":
            X = Y + np.sin(Y / 3.0)
        r = xmodal.cpd(Y, X, transform=kind, beta=3.0, lam=1.0, max_iter=30)
        text = json.dumps(r.transform.to_dict())
        back = transform_from_dict(json.loads(text))
        with pytest.raises(ValueError, match=f"d: a '{kind}' transform needs the key"):
            transform_from_dict({"type": kind, "R": [[1.0]]})
        assert type(back) is type(r.transform)
        Z = cloud(40, 3, 9, 12.0)
        np.testing.assert_allclose(back.apply(Z), r.transform.apply(Z), atol=1e-12)
        if kind == "deformable":
            with pytest.raises(NotImplementedError):
                back.inverse()
        else:
            np.testing.assert_allclose(back.inverse().apply(back.apply(Z)), Z, atol=1e-9)
    assert isinstance(RigidTransform(np.eye(2), [0, 0]).inverse(), RigidTransform)
    assert isinstance(SimilarityTransform(np.eye(2), [0, 0], 2.0).inverse(), SimilarityTransform)
    assert isinstance(AffineTransform(np.eye(3), [0, 0, 0]).inverse(), AffineTransform)
    assert DeformableTransform(np.zeros((1, 2)), np.zeros((1, 2)), 1.0, [1.0, 2.0]).apply([[0.0, 0.0]]).tolist() == [[1.0, 2.0]]


# ----------------------------------------------------------------------- landmarks
def test_landmarks_pull_deformable():
    """Landmarks to other fixed points than the natural partners: the field follows the landmarks."""
    rng = np.random.default_rng(0)
    Y = rng.uniform(-10, 10, size=(200, 2))
    X = Y + 0.5 * np.stack([np.sin(Y[:, 1] / 5), np.cos(Y[:, 0] / 5)], 1)
    src = np.array([3, 50, 120])
    # targets: the fixed point nearest to 2.5 units right of the natural partner
    dst = np.array([np.argmin(((X - (X[i] + [2.5, 0])) ** 2).sum(1)) for i in src])
    free = xmodal.cpd(Y, X, transform="deformable", beta=3.0, lam=1.0)
    pulled = xmodal.cpd(Y, X, transform="deformable", beta=3.0, lam=1.0,
                        landmarks=np.stack([src, dst], 1), landmark_weight=50.0)
    assert np.abs(free.moved[src] - X[src]).max() < 0.05
    d_target = np.linalg.norm(pulled.moved[src] - X[dst], axis=1)
    assert d_target.max() < 0.5


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_landmarks_honoured(kind):
    """A symmetric set has a wrong local optimum (rotated by 180 degrees); landmarks pick the right one."""
    rng = np.random.default_rng(0)
    base = rng.uniform(-10, 10, size=(120, 2))
    Y = np.vstack([base, -base])  # point symmetric: rotation by pi maps the set onto itself
    X = Y @ rotation(2, 5).T
    # the pairs of the true correspondence, far apart in the set
    lm = np.array([[0, 0], [5, 5], [130, 130]])
    r = xmodal.cpd(Y, X, transform=kind, landmarks=lm, landmark_weight=20.0, beta=4.0, lam=1.0)
    np.testing.assert_allclose(r.moved[lm[:, 0]], X[lm[:, 1]], atol=0.2)
    assert np.mean(r.match == np.arange(len(Y))) > 0.9


# ----------------------------------------------------------------------- errors, degenerate runs
def test_bad_inputs():
    Y = cloud(20, 3, 0)
    with pytest.raises(ValueError, match="moving"):
        xmodal.cpd(np.vstack([Y[:-1], [[np.nan, 0, 0]]]), Y)
    with pytest.raises(ValueError, match="fixed"):
        xmodal.cpd(Y, np.vstack([Y[:-1], [[np.inf, 0, 0]]]))
    with pytest.raises(ValueError, match="d \\+ 1"):
        xmodal.cpd(Y[:3], Y)
    with pytest.raises(ValueError, match="identical"):
        xmodal.cpd(np.ones((10, 3)), Y)
    with pytest.raises(ValueError, match="columns"):
        xmodal.cpd(np.ones((10, 4)), Y)
    with pytest.raises(ValueError, match="same dimension"):
        xmodal.cpd(Y[:, :2], Y)
    with pytest.raises(ValueError, match="beta"):
        xmodal.cpd(Y, Y, transform="deformable", beta=0)
    with pytest.raises(ValueError, match="lam"):
        xmodal.cpd(Y, Y, transform="deformable", lam=-1)
    for w in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="w:"):
            xmodal.cpd(Y, Y, w=w)
    with pytest.raises(ValueError, match="transform"):
        xmodal.cpd(Y, Y, transform="projective")
    with pytest.raises(ValueError, match="landmarks"):
        xmodal.cpd(Y, Y, landmarks=[[0, 25]])
    with pytest.raises(TypeError, match="max_iter"):
        xmodal.cpd(Y, Y, max_iter=2.5)
    with pytest.raises(ValueError, match="dtype"):
        xmodal.cpd(Y, Y, dtype=np.int32)


def test_identical_sets_end_cleanly():
    Y = cloud(100, 3, 1)
    for kind in ("rigid", "affine", "deformable"):
        r = xmodal.cpd(Y, Y.copy(), transform=kind, max_iter=200)
        assert np.all(np.isfinite(r.moved)) and np.isfinite(r.sigma2) and r.sigma2 > 0
        assert np.abs(r.moved - Y).max() < 1e-4
        assert r.converged
    r = xmodal.cpd(Y, Y.copy(), transform="rigid", max_iter=200, tol=0.0)
    assert any("sigma2" in m for m in r.warnings)


def test_correspondence_matrix_top_k():
    Y, X, Xtrue, A, t = make_pair(2, "rigid", seed=6, n=120, noise=0.3)
    r = xmodal.cpd(Y, X, w=0.05)
    P = r.correspondence_matrix(k=4)
    assert P.shape == (len(Y), len(X)) and P.nnz == 4 * len(Y)
    dense = P.toarray()
    # best entries agree with the E-step's best match; probabilities are proper
    np.testing.assert_array_equal(dense.argmax(1), r.match)
    assert dense.max() <= 1.0 + 1e-12 and dense.min() >= 0.0
    # the column sums of the full posterior are <= 1: so are those of the restriction
    assert dense.sum(0).max() <= 1.0 + 1e-9
    with pytest.raises(ValueError, match="k"):
        r.correspondence_matrix(k=0)


def test_callback_and_history():
    Y, X, *_ = make_pair(2, "rigid", seed=2, n=100)
    seen = []
    r = xmodal.cpd(Y, X, callback=lambda **kw: seen.append((kw["iteration"], kw["sigma2"], kw["objective"])),
                   max_iter=10, tol=0.0)
    # tol = 0 on a well-posed pair: all 10 iterations run, none degenerates, every one is reported
    assert r.warnings == [] and r.iterations == 10 and not r.converged and r.info["stop"] == "max_iter"
    assert [it for it, _, _ in seen] == list(range(1, 11))
    np.testing.assert_array_equal(r.history["sigma2"], [s2 for _, s2, _ in seen])
    np.testing.assert_array_equal(r.history["objective"], [obj for _, _, obj in seen])


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["rigid", "deformable"])
def test_cuda_matches_cpu(kind):
    cupy = pytest.importorskip("cupy")
    Y, X, *_ = make_pair(3, "rigid", seed=4, n=300, noise=0.2)
    kw = dict(transform=kind, w=0.05, beta=8.0, lam=2.0, max_iter=40)
    a = xmodal.cpd(Y, X, **kw)
    b = xmodal.cpd(cupy.asarray(Y), cupy.asarray(X), **kw)
    assert isinstance(b.moved, cupy.ndarray)
    assert np.abs(a.moved - cupy.asnumpy(b.moved)).max() < 1e-6 * np.abs(X).max()
