"""``cpd(..., estep="auto" | "exact" | "fast", estep_tol=...)``: the fast E-step inside registration.

Registration with the fast E-step must land where the exact one does (mean distance between the
two results' moved points within 0.05 of the median nearest-neighbour spacing, issue 15's accuracy
criterion), report its bounds, and "auto" must keep small problems on the exact kernel.
"""

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

import xmodal
from xmodal.registration import _fast_estep

from test_cpd_fast import moving_copy, nuclei_cloud


def _pair(n, seed):
    X = nuclei_cloud(n, 3, seed=seed, spacing=8.0)  # ~8 µm nucleus spacing
    Y = moving_copy(X / 8.0, seed=seed + 1) * 8.0
    ang = 0.15
    R = np.array([[np.cos(ang), -np.sin(ang), 0.0], [np.sin(ang), np.cos(ang), 0.0], [0.0, 0.0, 1.0]])
    Y = (Y - Y.mean(0)) @ R.T + Y.mean(0) + np.array([4.0, -3.0, 2.0])
    return X, Y


def _spacing(X):
    d, _ = cKDTree(X).query(X, k=2)
    return float(np.median(d[:, 1]))


@pytest.mark.parametrize("transform, kw", [("rigid", {}), ("affine", {}),
                                           ("deformable", {"beta": 40.0, "lam": 2.0, "low_rank": 150})])
def test_fast_estep_registration_matches_exact(transform, kw):
    X, Y = _pair(1800, seed=3)
    common = dict(transform=transform, w=0.05, max_iter=30, tol=0.0, **kw)
    ex = xmodal.cpd(Y, X, estep="exact", **common)
    fa = xmodal.cpd(Y, X, estep="fast", estep_tol=1e-2, **common)
    rep = fa.info["estep"]
    # the grid really ran (wide sigma2 of the first iterations), and exact sums once sigma is narrow
    assert rep["fast_calls"] >= 3 and rep["requested"] == "fast"
    assert rep["max_rel_s"] <= 1e-2 / 2 + 1e-12
    assert rep["unresolved_rows"] == 0
    assert ex.info["estep"]["fast_calls"] == 0 and ex.info["estep"]["exact_calls"] == ex.iterations
    gap = np.linalg.norm(fa.moved - ex.moved, axis=1).mean()
    assert gap <= 0.05 * _spacing(X), (transform, gap, _spacing(X))
    # no point left behind either (measured: mean 3e-4, max 1e-3 spacings at most)
    assert np.linalg.norm(fa.moved - ex.moved, axis=1).max() <= 0.2 * _spacing(X)


def test_auto_is_exact_on_small_inputs():
    X, Y = _pair(1500, seed=7)
    assert len(X) * len(Y) < _fast_estep.AUTO_MIN_PAIRS
    auto = xmodal.cpd(Y, X, transform="rigid", w=0.05, max_iter=20)
    ex = xmodal.cpd(Y, X, transform="rigid", w=0.05, max_iter=20, estep="exact")
    assert auto.info["estep"]["requested"] == "exact"  # what "auto" resolved to
    assert auto.info["estep"]["fast_calls"] == 0
    np.testing.assert_array_equal(auto.moved, ex.moved)
    np.testing.assert_array_equal(auto.match, ex.match)


def test_auto_rule_by_sigma_on_large_problems(monkeypatch):
    """Above the size threshold "auto" runs the grid while sigma is wide, exact sums once narrow."""
    monkeypatch.setattr(_fast_estep, "AUTO_MIN_PAIRS", 0)
    X, Y = _pair(2000, seed=11)
    r = xmodal.cpd(Y, X, transform="rigid", w=0.05, max_iter=30, tol=0.0)
    rep = r.info["estep"]
    assert rep["requested"] == "auto"
    methods = [c["method"] for c in rep["calls"]]
    assert methods[0] == "fast" and methods[-1] == "exact", methods
    # once exact, it stays exact (sigma2 shrinks monotonically here)
    first_exact = methods.index("exact")
    assert all(m == "exact" for m in methods[first_exact:])
    ex = xmodal.cpd(Y, X, transform="rigid", w=0.05, max_iter=30, tol=0.0, estep="exact")
    assert np.linalg.norm(r.moved - ex.moved, axis=1).mean() <= 0.05 * _spacing(X)


def test_estep_method_threshold():
    big = int(np.ceil(np.sqrt(_fast_estep.AUTO_MIN_PAIRS)))
    assert _fast_estep.estep_method("auto", 100, 100) == "exact"
    assert _fast_estep.estep_method("auto", big, big) == "auto"
    assert _fast_estep.estep_method("fast", 10, 10) == "fast"
    assert _fast_estep.estep_method("exact", big, big) == "exact"


def test_estep_options_validated():
    X, Y = _pair(300, seed=1)
    with pytest.raises(ValueError, match="estep"):
        xmodal.cpd(Y, X, estep="grid")
    for bad in (0.0, 0.9, -1.0):
        with pytest.raises(ValueError, match="estep_tol"):
            xmodal.cpd(Y, X, estep_tol=bad)
    with pytest.raises((TypeError, ValueError), match="estep_tol"):
        xmodal.cpd(Y, X, estep_tol="small")


# ----------------------------------------------------------------------------- coarse-to-fine
def _rigid_truth(n, seed):
    """Fixed nuclei, the moving set a rigid copy with 1 µm noise and 8 % missing; returns
    (X, Y, X[keep]: the true positions of the moving points)."""
    rng = np.random.default_rng(seed)
    X = nuclei_cloud(n, 3, seed=seed, spacing=8.0)
    ang = 0.15
    R = np.array([[np.cos(ang), -np.sin(ang), 0.0], [np.sin(ang), np.cos(ang), 0.0], [0.0, 0.0, 1.0]])
    keep = rng.random(len(X)) > 0.08
    T = (X - X.mean(0)) @ R.T + X.mean(0) + np.array([4.0, -3.0, 2.0])
    Y = T[keep] + rng.normal(scale=1.0, size=(int(keep.sum()), 3))
    return X, Y, X[keep]


def _procrustes_error(Y, truth):
    """Mean residual of the best rigid fit with known correspondences (the noise floor)."""
    a, b = Y - Y.mean(0), truth - truth.mean(0)
    U, _, Vt = np.linalg.svd(a.T @ b)
    S = np.eye(3)
    S[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = (U @ S @ Vt).T
    return np.linalg.norm(a @ R.T - b, axis=1).mean()


def test_coarse_to_fine_rigid_reaches_the_noise_floor():
    X, Y, truth = _rigid_truth(3000, seed=3)
    sp = _spacing(X)
    r = xmodal.cpd_coarse_to_fine(Y, X, transform="rigid", n_coarse=800, max_iter=30, w=0.05, tol=0.0)
    c2f = r.info["coarse_to_fine"]
    assert 0.9 * 800 <= c2f["n_coarse_moving"] <= 800 and 0.9 * 800 <= c2f["n_coarse_fixed"] <= 800
    assert r.iterations <= 30 and r.moved.shape == Y.shape  # the paired rounds may stop early
    err = np.linalg.norm(r.moved - truth, axis=1).mean()
    assert err <= _procrustes_error(Y, truth) + 0.05 * sp, (err, _procrustes_error(Y, truth), sp)
    # one transform for all points, and a match for every moving point (its true partner mostly)
    np.testing.assert_allclose(r.transform.apply(Y), r.moved, atol=1e-9)
    assert isinstance(r.transform, xmodal.RigidTransform)
    true_idx = np.flatnonzero(np.isin(np.arange(len(X)), np.flatnonzero(
        np.isin(X[:, 0], truth[:, 0]))))
    assert (r.match == true_idx).mean() >= 0.95
    assert len(r.history["sigma2"]) == r.iterations


def _deformed_truth(n, seed):
    """Fixed nuclei, the moving set deformed by a smooth field (~5 µm, length scale 60 µm) plus a
    shift, 1 µm noise, 8 % missing; returns (X, Y, true positions of the moving points)."""
    rng = np.random.default_rng(seed)
    X = nuclei_cloud(n, 3, seed=seed, spacing=8.0)
    keep = rng.random(len(X)) > 0.08
    c = X[rng.choice(len(X), 8, replace=False)]
    disp = np.exp(-((X[:, None] - c[None]) ** 2).sum(-1) / (2 * 60.0 ** 2)) @ rng.normal(scale=4.0, size=(8, 3))
    Y = (X + disp + np.array([3.0, -2.0, 1.0]))[keep] + rng.normal(scale=1.0, size=(int(keep.sum()), 3))
    return X, Y, X[keep]


@pytest.mark.parametrize("refine_iter, gain", [(0, 0.7), (2, 0.45)])
def test_coarse_to_fine_deformable_carries_the_field(refine_iter, gain):
    X, Y, truth = _deformed_truth(2500, seed=5)
    sp = _spacing(X)
    before = np.linalg.norm(Y - truth, axis=1).mean()
    r = xmodal.cpd_coarse_to_fine(Y, X, transform="deformable", n_coarse=800, max_iter=30, refine_iter=refine_iter,
                                  beta=40.0, lam=2.0, low_rank=100, w=0.05, tol=0.0)
    c2f = r.info["coarse_to_fine"]
    assert c2f["n_coarse_fixed"] <= 800  # both sets subsampled (the default, deformable too)
    assert c2f["n_coarse_moving"] <= 800
    assert c2f["interp_bound"] <= 1e-3 * sp  # the field carried to all points within its bound
    # measured: 0.58 (coarse only) and 0.32 (2 iterations on all points) of the initial error;
    # full-resolution CPD with the same 30 iterations: 0.44
    err = np.linalg.norm(r.moved - truth, axis=1).mean()
    assert err <= gain * before, (err, before, sp)
    # the returned transform reproduces the moved points (exact evaluation vs the grid's)
    np.testing.assert_allclose(r.transform.apply(Y), r.moved, atol=1e-3 * sp)
    assert (r.match >= 0).all() and r.iterations == 30


@pytest.mark.slow
@pytest.mark.parametrize("transform", ["rigid", "affine", "deformable"])
def test_coarse_to_fine_not_worse_than_full_resolution(transform):
    X, Y, truth = (_deformed_truth if transform == "deformable" else _rigid_truth)(4000, seed=3)
    sp = _spacing(X)
    kw = dict(beta=40.0, lam=2.0, low_rank=150) if transform == "deformable" else {}
    # deformable: with 2 iterations on all points (the coarse field alone measured 0.66 against
    # 0.49 spacings of full-resolution CPD here)
    extra = dict(refine_iter=2) if transform == "deformable" else {}
    r = xmodal.cpd_coarse_to_fine(Y, X, transform=transform, n_coarse=1000, max_iter=40, w=0.05, tol=0.0, **kw,
                                  **extra)
    ex = xmodal.cpd(Y, X, transform=transform, max_iter=40, w=0.05, tol=0.0, estep="exact", **kw)
    err = np.linalg.norm(r.moved - truth, axis=1).mean()
    err_ex = np.linalg.norm(ex.moved - truth, axis=1).mean()
    assert err <= err_ex + 0.1 * sp, (transform, err, err_ex, sp)


def test_coarse_to_fine_options_validated():
    X, Y, _ = _rigid_truth(400, seed=1)
    with pytest.raises(ValueError, match="weights"):
        xmodal.cpd_coarse_to_fine(Y, X, weights=np.ones(len(Y)))
    with pytest.raises(ValueError, match="refine_iter"):
        xmodal.cpd_coarse_to_fine(Y, X, max_iter=5, refine_iter=5)
    with pytest.raises(ValueError, match="subsample"):
        xmodal.cpd_coarse_to_fine(Y, X, subsample="fixed")
    with pytest.raises(ValueError, match="n_coarse"):
        xmodal.cpd_coarse_to_fine(Y, X, n_coarse=10)
    with pytest.raises(ValueError, match="transform"):
        xmodal.cpd_coarse_to_fine(Y, X, transform="projective")


def test_cli_coarse_to_fine_and_estep(tmp_path, monkeypatch, capsys):
    from xmodal import cli

    X, Y, truth = _rigid_truth(1500, seed=9)
    monkeypatch.chdir(tmp_path)
    np.savetxt("fixed.csv", X, delimiter=",", header="z,y,x", comments="")
    np.savetxt("moving.csv", Y, delimiter=",", header="z,y,x", comments="")
    code = cli.main(["cpd", "moving.csv", "fixed.csv", "--coarse", "500", "--estep", "fast", "--estep-tol", "0.02",
                     "--max-iter", "20", "--w", "0.05", "--out", "c2f", "-q"])
    assert code == 0, capsys.readouterr().err
    moved = np.loadtxt(tmp_path / "c2f" / "moved.csv", delimiter=",", skiprows=1)[:, 1:]
    assert moved.shape == Y.shape
    assert np.linalg.norm(moved - truth, axis=1).mean() <= _procrustes_error(Y, truth) + 0.1 * _spacing(X)
    tr = json.loads((tmp_path / "c2f" / "transform.json").read_text())
    assert tr["type"] == "rigid"
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error
        cli.main(["cpd", "moving.csv", "fixed.csv", "--estep", "grid", "--out", "x", "-q"])
    assert exc.value.code == 2 and "--estep" in capsys.readouterr().err
