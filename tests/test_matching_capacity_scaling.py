"""The cost-scaling route of the capacitated cover (``cpp/src/cover_scaling.cpp``): push-relabel prices
on rounded costs, then the exact repairs. Taken by default when the warm-started repairs run long (an
exact fill with the points crowded on some targets), at once with ``_core.cover_assignment(...,
scaling=1)``. Optima against HiGHS and the plain route (``scaling=0``) on random, tied, offset and
crowded instances; degenerate costs that the route gives up on; infeasible problems (the same witness
as the plain route); Ctrl-C inside the route."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import xmodal
from test_matching_capacity import check_cover, random_problem, reference_cost
from xmodal import _core, cover_assignment


def native(c: sp.csr_matrix, cap: int, scaling: int) -> dict:
    g = sp.csr_matrix(c).copy()
    g.sort_indices()
    return _core.cover_assignment(g.shape[0], g.shape[1], g.indptr.astype(np.int64), g.indices.astype(np.int32),
                                  g.data.astype(np.float64), cap, scaling=scaling)


def crowded(n_small: int, ratio: float, seed: int, k: int = 12) -> sp.csr_matrix:
    """`ratio * n_small` points around targets drawn at random (some get none, some several), k-NN
    graph: with max_per_target = ratio an exact fill far from the uncapacitated optimum."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0, 1000 * np.sqrt(n_small / 5000), (n_small, 2))
    n_big = int(round(ratio * n_small))
    a = b[rng.integers(0, n_small, n_big)] + rng.normal(0, 10, (n_big, 2))
    return xmodal.knn_graph(a, b, k=k)


@pytest.mark.parametrize("kind", ["float", "ties", "negative"])
@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (50, 30), (60, 21)])
def test_scaling_route_equals_highs_and_the_plain_route(kind, shape):
    n, m = shape
    rng = np.random.default_rng([n, m, ord(kind[0]), 17])
    taken = 0
    for trial in range(6):
        c = random_problem(rng, n, m, density=[0.06, 0.15, 0.5][trial % 3], kind=kind)
        for cap in (1, 2, 3):
            if cap * min(n, m) < max(n, m):
                continue
            out = native(c, cap, 1)
            plain = native(c, cap, 0)
            if plain["failed_row"] != -1:
                assert out["failed_row"] != -1 and out["scaling_phases"] <= 0
                continue
            assert out["failed_row"] == -1
            cost = reference_cost(c, out)
            if kind == "float":
                hi = cover_assignment(c, max_per_target=cap, solver="highs")
                assert cost == pytest.approx(hi.cost, rel=1e-9, abs=1e-9)
                assert cost == pytest.approx(reference_cost(c, plain), rel=1e-12, abs=1e-12)
            else:  # integer and half-integer costs: every route reaches the same sum exactly
                assert cost == reference_cost(c, plain)
            load = np.bincount(out["col_of_row"], minlength=min(n, m))
            assert load.min() >= 1 and load.max() <= cap
            taken += out["scaling_phases"] > 0
    assert taken >= 3


@pytest.mark.parametrize("n_small, ratio", [(800, 2), (500, 3)])
def test_exact_fill_takes_the_scaling_route(n_small, ratio):
    g = crowded(n_small, ratio, seed=n_small)
    res = cover_assignment(g, max_per_target=ratio)
    assert res.info["capacity_binding"] and res.info["scaling_phases"] > 0
    check_cover(res, g, ratio)
    assert np.all(np.bincount(res.cols, minlength=n_small) == ratio)
    hi = cover_assignment(g, max_per_target=ratio, solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-10)
    assert res.cost == pytest.approx(reference_cost(g, native(g, ratio, 0)), rel=1e-12)
    again = cover_assignment(g, max_per_target=ratio)  # deterministic
    assert np.array_equal(again.rows, res.rows) and np.array_equal(again.cols, res.cols)


def test_exact_fill_with_ties_and_a_large_offset():
    # rounded distances (many ties): every route and HiGHS reach the same integer sum; the same
    # costs on a 1e12 offset must not change the choice
    g = crowded(700, 2, seed=5)
    g.data = np.round(g.data)
    res = cover_assignment(g, max_per_target=2)
    assert res.info["scaling_phases"] > 0
    assert res.cost == cover_assignment(g, max_per_target=2, solver="highs").cost
    assert res.cost == reference_cost(g, native(g, 2, 0)) == reference_cost(g, native(g, 2, 1))
    shifted = g.copy()
    shifted.data = shifted.data + 1e12
    rs = cover_assignment(shifted, max_per_target=2)
    assert rs.info["scaling_phases"] > 0
    assert float(np.sum(rs.pair_costs - 1e12)) == res.cost


def test_degenerate_costs_are_left_to_the_repairs():
    g = crowded(300, 2, seed=2)
    # all pairs of every point cost the same: nothing to scale, the route is not taken
    flat = g.copy()
    flat.data[:] = 3.0
    out = native(flat, 2, 1)
    assert out["failed_row"] == -1 and out["scaling_phases"] == 0
    assert reference_cost(flat, out) == 3.0 * flat.shape[0]
    # a cost range so small that the integer scale overflows: given up, same optimum
    tiny = g.copy()
    tiny.data = tiny.data * 1e-306
    out = native(tiny, 2, 1)
    assert out["failed_row"] == -1 and out["scaling_phases"] == 0
    assert reference_cost(tiny, out) == pytest.approx(reference_cost(tiny, native(tiny, 2, 0)), rel=1e-12)


def _with_trap(g: sp.csr_matrix) -> sp.csr_matrix:
    """g with its last 7 rows allowed only on its last 3 columns: no cover with max_per_target=2."""
    g = g.tolil()
    rows, cols = np.arange(g.shape[0] - 7, g.shape[0]), np.arange(g.shape[1] - 3, g.shape[1])
    for r in rows:
        g.rows[r], g.data[r] = [], []
    g = g.tocsr()
    trap = sp.csr_matrix((np.arange(21.0) + 1, (np.repeat(rows, 3), np.tile(cols, 7))), shape=g.shape)
    return (g + trap).tocsr()


def test_infeasible_after_long_repairs_names_the_same_witness():
    # the repairs of the crowded part exceed their budget before the search that fails: the
    # scaling route gives up (a price falls too far) and the plain repairs name the witness
    g = _with_trap(crowded(800, 2, seed=8))
    plain = native(g, 2, 0)
    assert plain["failed_row"] >= 0
    for scaling in (-1, 1):
        out = native(g, 2, scaling)
        assert out["failed_row"] >= 0 and out["scaling_phases"] < 0
        assert np.array_equal(np.sort(out["hall_rows"]), np.sort(plain["hall_rows"]))
        assert np.array_equal(np.sort(out["hall_cols"]), np.sort(plain["hall_cols"]))
    with pytest.raises(ValueError) as exc:
        cover_assignment(g, max_per_target=2)
    msg = str(exc.value)
    assert "rows [1593, 1594, 1595, 1596, 1597, 1598, 1599] (7 in all)" in msg
    assert "columns [797, 798, 799] (3 in all), which can take at most max_per_target=2 each" in msg


def test_ctrl_c_stops_the_scaling_route():
    if sys.platform == "win32":
        pytest.skip("POSIX signals")
    root = os.path.dirname(os.path.dirname(os.path.abspath(xmodal.__file__)))
    body = textwrap.dedent("""
        import os, signal, threading, time
        import numpy as np, xmodal
        from xmodal import _core
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(1)
        n = 40000   # the cost-scaling route alone takes a few seconds here
        b = rng.uniform(0, 1000 * np.sqrt(n / 5000), (n, 2))
        a = b[rng.integers(0, n, 2 * n)] + rng.normal(0, 10, (2 * n, 2))
        g = xmodal.knn_graph(a, b, k=20)
        g.sort_indices()
        args = (g.shape[0], g.shape[1], g.indptr.astype(np.int64), g.indices.astype(np.int32), g.data)
        threading.Timer(0.8, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.perf_counter()
        try:
            _core.cover_assignment(*args, 2, scaling=1)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
        seconds = time.perf_counter() - t0
        r = xmodal.cover_assignment(np.array([[1.0, 5.0], [5.0, 1.0], [2.0, 9.0]]), max_per_target=2)
        print(status, seconds < 2.0, r.cols.tolist())
    """)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["interrupted", "True", "[0,", "1,", "0]"]
