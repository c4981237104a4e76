"""Regression tests of the CPD parts of issue 10 (wrong E-step at small sigma2, unit-dependent
degeneracy tests, failed low-rank M-steps, unchecked sigma2 collapse)."""

import math

import numpy as np
import pytest

import xmodal
from xmodal import _core
from xmodal.registration import _cpd_cpu, _mstep, fit_affine, fit_rigid, fitzpatrick_tre, leave_one_out_residuals

from test_properties_cpd import dense_estep


def issue_case():
    """The reproducer of issue 10 item 1: 60 points, rotated by 0.3 rad about z and shifted."""
    rng = np.random.default_rng(1)
    X = rng.random((60, 3)) * 10
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    Y = (X - [1, -2, 0.5]) @ R
    return Y, X


def normalised(Y, X):
    """The sets as cpd() normalises them (centred, scaled by the fixed set's RMS radius)."""
    xm, ym = X.mean(0), Y.mean(0)
    s0 = np.sqrt(((X - xm) ** 2).sum(1).mean())
    return (Y - ym) / s0, (X - xm) / s0


# ----------------------------------------------------------------------- item 1: the E-step
@pytest.mark.parametrize("transform", ["rigid", "affine"])
@pytest.mark.parametrize("cutoff", [36.0, math.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_small_initial_sigma2_registers_exactly(transform, cutoff, dtype):
    """Was: max|moved - X| = 11.4 with converged=True on the truncated path (cutoff=36)."""
    Y, X = issue_case()
    r = xmodal.cpd(Y.astype(dtype), X.astype(dtype), sigma2=0.01, cutoff=cutoff, transform=transform)
    tol = 1e-6 if dtype == np.float64 else 1e-3
    assert np.abs(r.moved - X).max() < tol * np.abs(X).max()
    assert r.converged and r.info["stop"] in ("converged", "sigma2_collapse")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cutoff", [36.0, math.inf])
@pytest.mark.parametrize("sigma2", [1e-2, 1e-4, 1e-8, 1e-300])
def test_native_estep_mass_and_values_at_small_sigma2(dtype, cutoff, sigma2):
    """Was: P1.sum() = 1e203 at normalised sigma2 = 1e-4 (it must be <= N); 1e-300 silently wrong."""
    Yn, Xn = normalised(*issue_case())
    X, Y = Xn.astype(dtype), Yn.astype(dtype)
    out = _core.cpd_estep(X, Y, None, sigma2, 0.0, cutoff, True)
    P1, Pt1, PX = out["P1"], out["Pt1"], out["PX"]
    tol = 1e-9 if dtype == np.float64 else 3e-4
    assert float(P1.sum()) <= len(X) * (1 + tol) and np.all(Pt1 <= 1 + tol)
    P, _, _ = dense_estep(X, Y, None, sigma2, 0.0, cutoff)
    np.testing.assert_allclose(P1, P.sum(1), rtol=tol, atol=tol)
    np.testing.assert_allclose(Pt1, P.sum(0), rtol=tol, atol=tol)
    np.testing.assert_allclose(PX, P @ X.astype(np.float64), rtol=tol, atol=tol)
    if cutoff == math.inf:  # every fixed point is explained, by its nearest moving point at tiny sigma2
        np.testing.assert_allclose(Pt1, 1.0, rtol=tol)


def test_estep_at_tiny_sigma2_is_deterministic_across_threads():
    """The log-sum-exp rows (shifted) give bit-identical results for any thread count."""
    rng = np.random.default_rng(4)
    X = rng.random((400, 3))
    Y = rng.random((350, 3))
    outs = []
    for threads in (1, 2):
        xmodal.set_num_threads(threads)
        try:
            outs.append(_core.cpd_estep(X, Y, None, 1e-9, 1e-12, math.inf, True))
        finally:
            xmodal.set_num_threads(None)
    assert outs[0]["shifted_columns"] > 0  # rows summed relative to their largest term
    for k in ("P1", "Pt1", "PX", "best_idx", "best_prob"):
        np.testing.assert_array_equal(outs[0][k], outs[1][k])
    assert outs[0]["log_s_sum"] == outs[1]["log_s_sum"]


@pytest.mark.parametrize("cutoff", [36.0, math.inf])
def test_unrepresentable_sigma2_is_reported(cutoff):
    """sigma2 = 1e-300 (squared input units): a warning naming sigma2 and the floor it starts from.
    Dense: the right registration (the first E-step is a nearest-neighbour assignment). Truncated:
    no pair lies within the cutoff radius at that sigma2, which is reported; the result is the
    starting transform (the centroids aligned)."""
    Y, X = issue_case()
    r = xmodal.cpd(Y, X, sigma2=1e-300, cutoff=cutoff)
    assert any(m.startswith("sigma2:") and "floor" in m for m in r.warnings)
    assert r.info["sigma2_floor"] > 0
    if cutoff == math.inf:
        assert np.abs(r.moved - X).max() < 1e-6 * np.abs(X).max() and r.converged
    else:
        assert r.info["stop"] == "no_support" and not r.converged
        assert any("truncation radius" in m and "cutoff=inf" in m for m in r.warnings)
        np.testing.assert_allclose(r.moved, Y - Y.mean(0) + X.mean(0), atol=1e-12)
    for dt in (np.float64, np.float32):  # natively: a clear error
        with pytest.raises(ValueError, match="sigma2 .* too small"):
            _core.cpd_estep(X.astype(dt), Y.astype(dt), None, 1e-310, 0.0, cutoff, True)


def test_float32_below_float_range_runs_in_float64():
    """float32 cannot hold 1/(2 sigma2) for sigma2 = 1e-40: computed in float64, same answer."""
    Yn, Xn = normalised(*issue_case())
    a = _core.cpd_estep(Xn.astype(np.float32), Yn.astype(np.float32), None, 1e-40, 0.0, math.inf, True)
    b = _core.cpd_estep(Xn.astype(np.float32).astype(np.float64), Yn.astype(np.float32).astype(np.float64),
                        None, 1e-40, 0.0, math.inf, True)
    assert a["P1"].dtype == np.float32
    np.testing.assert_allclose(a["P1"], b["P1"], rtol=1e-6)
    np.testing.assert_array_equal(a["best_idx"], b["best_idx"])


def test_huge_coordinates_are_refused_natively_in_float32():
    X = np.array([[0, 0], [3e19, 0]], dtype=np.float32)
    with pytest.raises(ValueError, match="squared distances overflow float32"):
        _core.cpd_estep(X, X, None, 1.0, 0.0, 36.0, True)


def test_correspondence_matrix_at_small_sigma2():
    """The top-k posterior uses log s_n: exact where s_n itself underflows."""
    Y, X = issue_case()  # moving point i is fixed point i, transformed
    for cutoff in (36.0, math.inf):
        r = xmodal.cpd(Y, X, sigma2=0.01, cutoff=cutoff)
        assert r.info["stop"] == "sigma2_collapse"
        P = r.correspondence_matrix(k=3).toarray()
        assert np.all(np.isfinite(P)) and P.max() <= 1.0 and P.sum(0).max() <= 1.0 + 1e-9
        np.testing.assert_allclose(np.diag(P), 1.0, rtol=1e-9)
        np.testing.assert_array_equal(r.match, np.arange(60))


# ----------------------------------------------------------------------- item 5: units
@pytest.mark.parametrize("scale", [1e-6, 1e5, 1e12])
def test_register_cells_rigid_in_any_units(scale):
    """Was: "points are degenerate" at 1e5 (fit_rigid tested cond(JᵀJ) > 1e12, which has units)."""
    from xmodal.pipelines import register_cells

    rng = np.random.default_rng(3)
    F = rng.uniform(0, 100, (120, 3))
    c, s = np.cos(0.2), np.sin(0.2)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    M = (F[10:] - 50) @ R.T + 50 + [2, -1, 3] + rng.normal(0, 0.3, (110, 3))
    ref = register_cells(F, M, transform="rigid", prealign=False)
    got = register_cells(F * scale, M * scale, transform="rigid", prealign=False)
    np.testing.assert_allclose(np.sort(got.distances) / scale, np.sort(ref.distances), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e5, 1e12])
def test_degeneracy_tests_do_not_depend_on_units(scale):
    rng = np.random.default_rng(0)
    src = rng.normal(size=(12, 3)) * 10
    dst = src + 1.0 + rng.normal(scale=0.1, size=src.shape)
    # well-posed data passes at every scale
    fit_rigid(src * scale, dst * scale)
    fit_rigid(src * scale, dst * scale, scale=True)
    fit_affine(src * scale, dst * scale)
    leave_one_out_residuals(src * scale, dst * scale)
    assert np.all(np.isfinite(fitzpatrick_tre(src * scale, src[:2] * scale, fle=scale).tre))
    # collinear sources are refused at every scale
    line = np.outer(np.linspace(-1, 1, 12), [1.0, 2.0, 3.0]) * 10 + 5
    with pytest.raises(ValueError, match="degenerate"):
        fit_rigid(line * scale, dst * scale)
    with pytest.raises(ValueError, match="degenerate"):
        fit_affine(line * scale, dst * scale)
    with pytest.raises(ValueError, match="one line"):
        fitzpatrick_tre(line * scale, src[:2] * scale, fle=scale)
    # coincident points far from the origin (the centroid's rounding is not a spread)
    same = np.full((12, 3), 1e6 * scale) + np.array([1.0, 2.0, 3.0]) * scale
    for f in (lambda: fit_rigid(same, dst * scale), lambda: fit_affine(same, dst * scale),
              lambda: fitzpatrick_tre(same, src[:2] * scale, fle=scale)):
        with pytest.raises(ValueError, match="coincide"):
            f()


@pytest.mark.parametrize("scale", [1e-6, 1e9])
def test_unnormalised_cpd_in_any_units(scale):
    """normalize=False: the sigma2 floor is relative to the points' spread (it was 1e-10 squared
    input units, so small units collapsed at the first iteration)."""
    Y, X = issue_case()
    ref = xmodal.cpd(Y, X, normalize=False, max_iter=40, tol=0.0)
    got = xmodal.cpd(Y * scale, X * scale, normalize=False, max_iter=40, tol=0.0)
    assert got.iterations == ref.iterations
    np.testing.assert_allclose(got.moved / scale, ref.moved, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------- item 9: failed M-steps
def test_failed_low_rank_m_step_is_reverted(monkeypatch):
    """A Woodbury solve that fails (LinAlgError) reverts the step, as a non-finite update does."""
    rng = np.random.default_rng(5)
    Y = rng.uniform(-5, 5, (300, 2))
    X = Y + 0.3 * np.sin(Y[:, ::-1] / 2)
    kw = dict(transform="deformable", beta=2.0, lam=1.0, low_rank=60, max_iter=3, tol=0.0)
    ref = xmodal.cpd(Y, X, **kw)  # three good steps
    calls = {"n": 0}
    solve = _mstep._spd_solve

    def failing(K, b):
        calls["n"] += 1
        if calls["n"] == 4:
            raise np.linalg.LinAlgError("4-th leading minor not positive definite")
        return solve(K, b)

    monkeypatch.setattr(_mstep, "_spd_solve", failing)
    r = xmodal.cpd(Y, X, **dict(kw, max_iter=10))
    assert r.info["stop"] == "m_step_failed" and not r.converged and r.iterations == 4
    assert "LinAlgError" in r.info["m_step_error"]
    assert any("M-step" in m and "reverted" in m for m in r.warnings)
    np.testing.assert_allclose(r.moved, ref.moved, atol=1e-12)  # the third iterate, checked and kept
    np.testing.assert_allclose(r.transform.apply(Y), r.moved, atol=1e-9)


def test_sigma2_collapse_is_checked_before_returning(monkeypatch):
    """When sigma2 collapses, the step is checked (it may not raise the objective at the previous
    sigma2); a step that fails the check is reverted and reported, not returned as converged."""
    Y, X = issue_case()
    good = xmodal.cpd(Y, X, transform="rigid")
    assert good.info["stop"] == "sigma2_collapse" and good.converged
    k = good.iterations
    before = xmodal.cpd(Y, X, transform="rigid", max_iter=k - 1, tol=0.0)

    real = _cpd_cpu.EStep.__call__
    calls = {"n": 0}

    def sabotaged(self, TY, sigma2, c):  # the check (call k + 1) sees a far worse likelihood
        calls["n"] += 1
        out = real(self, TY, sigma2, c)
        if calls["n"] == k + 1:
            out = out._replace(log_s_sum=out.log_s_sum - 1e6)
        return out

    monkeypatch.setattr(_cpd_cpu.EStep, "__call__", sabotaged)
    r = xmodal.cpd(Y, X, transform="rigid")
    assert r.info["stop"] == "sigma2_collapse_rejected" and not r.converged
    assert any("reverted" in m for m in r.warnings)
    np.testing.assert_allclose(r.moved, before.moved, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 1e5, 1e12])
def test_bead_affine_fit_in_any_units(scale):
    """register_beads' affine fit used an uncentred design: at 1e12 the RMS residual grew 6x."""
    from xmodal.pipelines import register_beads

    rng = np.random.default_rng(0)
    fix = rng.uniform(0, 100, (40, 3))
    A = np.array([[1.02, 0.05, 0], [-0.04, 0.98, 0.01], [0, 0.02, 1.01]])
    mov = (fix - 3) @ np.linalg.inv(A).T + rng.normal(0, 0.1, fix.shape)
    ref = register_beads(fix, mov, radius=2.0)
    got = register_beads(fix * scale, mov * scale, radius=2.0 * scale)
    assert got.rms / scale == pytest.approx(ref.rms, rel=1e-6)
    np.testing.assert_allclose(got.matrix, ref.matrix, atol=1e-9)
