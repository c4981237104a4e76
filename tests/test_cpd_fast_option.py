"""``cpd(..., estep="auto" | "exact" | "fast", estep_tol=...)``: the fast E-step inside registration.

Registration with the fast E-step must land where the exact one does (mean distance between the
two results' moved points within 0.05 of the median nearest-neighbour spacing, issue 15's accuracy
criterion), report its bounds, and "auto" must keep small problems on the exact kernel.
"""

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
