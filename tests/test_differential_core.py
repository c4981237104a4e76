"""Differential checks of the numerical core against peer tools on edge cases the other tests do not
cover: CPD step for step against pycpd (outlier weight, unequal set sizes, duplicates, 3D), CPD
invariances (huge offsets, tiny / huge units, memory layouts, integer input, permutations), the
deformable field against ``moved`` at any E-step cutoff, k-NN graphs against a brute-force
reference and cKDTree (ties, duplicates, offsets, float32), and exact assignment against scipy's
``linear_sum_assignment`` (augmented with dummy rows / columns) and ``milp`` (cover matching).
"""

import numpy as np
import pytest
import scipy.sparse as sp

import xmodal


# ----------------------------------------------------------------------------------------- CPD
def _case(seed, M, N, D, dup=False):
    """Moving points, and fixed points = an affine image of them plus (N > M) uniform clutter."""
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(M, D))
    if dup:
        Y[1] = Y[2] = Y[0]
    A = np.eye(D) + 0.2 * rng.normal(size=(D, D))
    X = Y @ A.T + 0.3
    X = np.vstack([X, 2 * rng.normal(size=(max(N - M, 0), D))])[:N]
    return Y, X


# (kind, D, M, N, w, duplicates, seed): cases where neither side's sigma2 collapses within 30 iterations
PYCPD_CASES = [
    ("similarity", 2, 40, 60, 0.3, False, 1),
    ("similarity", 3, 40, 60, 0.9, False, 2),
    ("similarity", 3, 5, 400, 0.3, False, 3),
    ("similarity", 2, 200, 8, 0.3, False, 4),
    ("similarity", 3, 40, 60, 0.3, True, 5),
    ("affine", 2, 40, 60, 0.3, False, 6),
    ("affine", 3, 5, 400, 0.9, False, 7),
    ("affine", 3, 40, 60, 0.0, True, 8),
    ("deformable", 2, 40, 60, 0.3, False, 12),
    ("deformable", 3, 5, 400, 0.3, False, 10),
    ("deformable", 2, 40, 60, 0.0, True, 11),
]


@pytest.mark.parametrize("kind,D,M,N,w,dup,seed", PYCPD_CASES)
def test_cpd_step_for_step_equals_pycpd(kind, D, M, N, w, dup, seed):
    """normalize=False, cutoff=inf and the same iteration count reproduce pycpd to rounding, with the
    outlier weight w, 5 vs 400 and 200 vs 8 points, and repeated moving points."""
    pycpd = pytest.importorskip("pycpd")
    Y, X = _case(seed, M, N, D, dup)
    K = 30
    kw = dict(X=X, Y=Y, w=w, max_iterations=K, tolerance=0.0)
    if kind == "similarity":
        reg = pycpd.RigidRegistration(**kw)
    elif kind == "affine":
        reg = pycpd.AffineRegistration(**kw)
    else:
        reg = pycpd.DeformableRegistration(alpha=2.0, beta=1.5, **kw)
    with np.errstate(all="ignore"):
        TY, _ = reg.register()
    r = xmodal.cpd(Y, X, transform=kind, w=w, max_iter=K, tol=0.0, normalize=False, cutoff=np.inf, beta=1.5,
                   lam=2.0, low_rank=False)
    assert r.info["stop"] == "max_iter" and r.iterations == reg.iteration == K
    np.testing.assert_allclose(r.moved, TY, atol=1e-9)
    assert r.sigma2 == pytest.approx(reg.sigma2, rel=1e-8)


def _rigid_pair(seed=0, M=60, noise=0.01):
    rng = np.random.default_rng(seed)
    Y = rng.normal(size=(M, 2))
    c, s = np.cos(0.3), np.sin(0.3)
    X = Y @ np.array([[c, -s], [s, c]]).T + [0.4, -0.2] + noise * rng.normal(size=Y.shape)
    return Y, X


@pytest.mark.parametrize("offset", [1e5, 1e6, -3e7])
@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_cpd_huge_offsets_are_translation_equivariant(offset, kind):
    Y, X = _rigid_pair()
    base = xmodal.cpd(Y, X, transform=kind)
    r = xmodal.cpd(Y + offset, X + offset, transform=kind)
    np.testing.assert_allclose(r.moved - offset, base.moved, atol=1e-13 * abs(offset))
    assert r.sigma2 == pytest.approx(base.sigma2, rel=1e-6)


@pytest.mark.parametrize("unit", [1e-6, 1e6])
@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine", "deformable"])
def test_cpd_units_are_scale_equivariant(unit, kind):
    """Scaling both sets by ``unit`` scales the result, when beta scales with the units and lam (pycpd's
    alpha, in squared input units^-1) with 1 / unit^2."""
    Y, X = _rigid_pair(seed=1)
    base = xmodal.cpd(Y, X, transform=kind, beta=1.0, lam=2.0)
    r = xmodal.cpd(Y * unit, X * unit, transform=kind, beta=1.0 * unit, lam=2.0 / unit ** 2)
    np.testing.assert_allclose(r.moved / unit, base.moved, atol=1e-9)
    assert r.sigma2 / unit ** 2 == pytest.approx(base.sigma2, rel=1e-8)
    assert r.iterations == base.iterations


def test_cpd_layouts_integer_input_and_permutations():
    Y, X = _rigid_pair(seed=2)
    base = xmodal.cpd(Y, X, transform="affine", w=0.1)
    wide = np.zeros((len(Y), 4))
    wide[:, ::2] = Y
    for y, x in ((np.asfortranarray(Y), np.asfortranarray(X)), (wide[:, ::2], X)):
        np.testing.assert_array_equal(xmodal.cpd(y, x, transform="affine", w=0.1).moved, base.moved)
    Yi, Xi = np.round(Y * 100).astype(np.int32), np.round(X * 100).astype(np.int64)
    np.testing.assert_array_equal(xmodal.cpd(Yi, Xi).moved, xmodal.cpd(Yi.astype(float), Xi.astype(float)).moved)
    rng = np.random.default_rng(3)
    pm, pf = rng.permutation(len(Y)), rng.permutation(len(X))
    r = xmodal.cpd(Y[pm], X[pf], transform="affine", w=0.1)
    np.testing.assert_allclose(r.moved, base.moved[pm], atol=1e-12)
    np.testing.assert_array_equal(pf[r.match], base.match[pm])


@pytest.mark.parametrize("cutoff", [36.0, 8.0, 2.0, 0.5])
@pytest.mark.parametrize("low_rank", [False, 20])
def test_deformable_field_reproduces_moved_at_any_cutoff(cutoff, low_rank):
    """The M-step solves with the dense kernel: the returned field must not be truncated at a small
    E-step cutoff (at cutoff=2 it was 13 units off ``moved``)."""
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(80, 2))
    X = Y + 0.2 * np.sin(2 * Y[:, ::-1])
    r = xmodal.cpd(Y, X, transform="deformable", beta=1.0, cutoff=cutoff, low_rank=low_rank)
    np.testing.assert_allclose(r.transform.apply(Y), r.moved, atol=1e-9)
    np.testing.assert_allclose(xmodal.registration.transform_from_dict(r.transform.to_dict()).apply(Y), r.moved,
                               atol=1e-9)


# ----------------------------------------------------------------------------------------- k-NN
def _knn_reference(a, b, k, radius, symmetric):
    """Selected pairs by brute force with the documented rule: squared float64 distances, ties by
    the lower index."""
    A, B = np.asarray(a, np.float64), np.asarray(b, np.float64)
    D2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    n, m = D2.shape
    sel = np.zeros((n, m), bool)
    if radius is not None:
        sel |= D2 <= radius * radius
    if k is not None:
        for i in range(n):
            sel[i, np.lexsort((np.arange(m), D2[i]))[:k]] = True
        if symmetric:
            for j in range(m):
                sel[np.lexsort((np.arange(n), D2[:, j]))[:k], j] = True
    return sel, np.sqrt(D2)


def _knn_points(rng, kind, n, m, d):
    if kind == "ties":  # integer lattice: many equal distances and duplicate points
        return rng.integers(0, 3, (n, d)).astype(float), rng.integers(0, 3, (m, d)).astype(float)
    if kind == "offset":
        return rng.normal(size=(n, d)) + 1e6, rng.normal(size=(m, d)) + 1e6
    if kind == "float32":
        return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)
    if kind == "int":
        return rng.integers(-5, 5, (n, d)), rng.integers(-5, 5, (m, d))
    return rng.normal(size=(n, d)), rng.normal(size=(m, d))


@pytest.mark.parametrize("kind", ["plain", "ties", "offset", "float32", "int"])
def test_knn_graph_equals_brute_force_and_ckdtree(kind):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(["plain", "ties", "offset", "float32", "int"].index(kind))
    for trial in range(30):
        d = int(rng.choice([2, 3]))
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        a, b = _knn_points(rng, kind, n, m, d)
        k = [None, 1, 3, 50][trial % 4]  # 50: larger than either set
        radius = [1.0, None, 0.0, 1.5, None][trial % 5] if k is not None else [0.0, 1.0, 1.5][trial % 3]
        symmetric = bool(trial % 2)
        g = xmodal.knn_graph(a, b, k=k, radius=radius, symmetric=symmetric)
        sel, dist = _knn_reference(a, b, None if k is None else k, radius, symmetric)
        got = np.zeros((n, m), bool)
        coo = g.tocoo()
        got[coo.row, coo.col] = True
        np.testing.assert_array_equal(got, sel)
        np.testing.assert_allclose(coo.data, dist[coo.row, coo.col], rtol=1e-12, atol=1e-12)
        # the k smallest stored distances of every row are cKDTree's k nearest (whatever the tie order)
        if k is not None:
            kk = min(k, m)
            dk = cKDTree(np.asarray(b, np.float64)).query(np.asarray(a, np.float64), k=kk)[0].reshape(n, kk)
            stored = np.sort(np.where(got, g.toarray(), np.inf), axis=1)[:, :kk]
            np.testing.assert_allclose(stored, dk, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- assignment
def _partial_reference(C, mask, u):
    """Dense optimum: linear_sum_assignment on C (forbidden = inf), or with unmatched cost u on the
    (n + m) x (m + n) matrix with a dummy column per row and a dummy row per column."""
    from scipy.optimize import linear_sum_assignment

    n, m = C.shape
    if u is None:
        D = np.where(mask, C, np.inf)
        try:
            r, c = linear_sum_assignment(D)
        except ValueError:  # infeasible
            return None
        return D[r, c].sum()
    A = np.full((n + m, m + n), np.inf)
    A[:n, :m] = np.where(mask, C, np.inf)
    A[:n, m:] = np.where(np.eye(n, dtype=bool), u, np.inf)
    A[n:, :m] = np.where(np.eye(m, dtype=bool), u, np.inf)
    A[n:, m:] = 0.0
    r, c = linear_sum_assignment(A)
    return A[r, c].sum()


def _cover_reference(C, mask, cap):
    """Cover optimum by MILP (the larger side exactly once, the smaller at least once, at most cap)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if C.shape[0] < C.shape[1]:
        return _cover_reference(C.T, mask.T, cap)
    n, m = C.shape
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    k = len(idx)
    big = sp.csr_matrix((np.ones(k), (idx[:, 0], np.arange(k))), shape=(n, k))
    small = sp.csr_matrix((np.ones(k), (idx[:, 1], np.arange(k))), shape=(m, k))
    res = milp(C[idx[:, 0], idx[:, 1]], integrality=np.ones(k), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(big, 1, 1), LinearConstraint(small, 1, np.inf if cap is None else cap)])
    return res.fun if res.status == 0 else None


def _random_costs(rng, n, m, kind):
    if kind == "ints":  # many ties, zero and negative costs
        return rng.integers(-3, 4, (n, m)).astype(float)
    if kind == "huge":
        return rng.normal(size=(n, m)) * 1e9
    if kind == "tiny_gaps":  # differences of 1e-9 on top of 1
        return 1.0 + rng.integers(0, 3, (n, m)) * 1e-9
    return np.zeros((n, m))


@pytest.mark.parametrize("kind", ["ints", "huge", "tiny_gaps", "zeros"])
def test_linear_assignment_equals_augmented_scipy(kind):
    pytest.importorskip("highspy")
    rng = np.random.default_rng(["ints", "huge", "tiny_gaps", "zeros"].index(kind))
    for trial in range(25):
        n, m = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        mask = rng.random((n, m)) < [0.2, 0.5, 1.0][trial % 3]  # sparse graphs: empty rows, infeasible ones
        C = _random_costs(rng, n, m, kind)
        S = sp.csr_matrix((C[mask], np.nonzero(mask)), shape=(n, m))
        for u in (None, 0.0, -1.0, 1.0, 1e9):
            ref = _partial_reference(C, mask, u)
            for solver in ("native", "highs"):
                if ref is None:
                    with pytest.raises(ValueError, match="infeasible"):
                        xmodal.linear_assignment(S, unmatched_cost=u, solver=solver)
                    continue
                res = xmodal.linear_assignment(S, unmatched_cost=u, solver=solver)
                assert res.cost == pytest.approx(ref, rel=1e-12, abs=1e-12), (trial, u, solver)
                assert np.all(mask[res.rows, res.cols])
                assert len(set(res.rows)) == len(res.rows) and len(set(res.cols)) == len(res.cols)
        # maximisation is minimisation of the negated costs
        if _partial_reference(-C, mask, -0.5) is not None:
            got = xmodal.linear_assignment(S, unmatched_cost=0.5, maximize=True).cost
            assert got == pytest.approx(-_partial_reference(-C, mask, -0.5), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", ["ints", "huge", "tiny_gaps"])
def test_cover_assignment_equals_milp(kind):
    pytest.importorskip("highspy")
    rng = np.random.default_rng(10 + ["ints", "huge", "tiny_gaps"].index(kind))
    for trial in range(20):
        n, m = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        mask = rng.random((n, m)) < [0.3, 0.6, 1.0][trial % 3]
        C = _random_costs(rng, n, m, kind)
        S = sp.csr_matrix((C[mask], np.nonzero(mask)), shape=(n, m))
        for cap in (None, 1, 2):
            ref = _cover_reference(C, mask, cap)
            for solver in ("native", "highs"):
                if ref is None:
                    with pytest.raises(ValueError):
                        xmodal.cover_assignment(S, max_per_target=cap, solver=solver)
                    continue
                res = xmodal.cover_assignment(S, max_per_target=cap, solver=solver)
                assert res.cost == pytest.approx(ref, rel=1e-9, abs=1e-9), (trial, cap, solver)
                assert len(res) == max(n, m)
