"""Pre-alignment of two point clouds by principal axes with a search over proper rotations.

Two specimens imaged in different orientations (or by different modalities) first need a coarse
rotation before CPD can converge. The principal axes of each cloud give a frame up to the sign and,
when variances are close, the order of the axes. Each candidate rotation of the moving frame onto
the fixed frame (a signed permutation with determinant +1: 4 in 3D with signs alone, 24 with axis
permutations; 2 / 4 in 2D) is refined by a short rigid CPD and scored by the matching objective: the
total cost of an optimal one-to-one assignment between the two clouds in which a point may stay
unmatched at a fixed cost. The best candidate wins (the thesis' SVD step, made exhaustive).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from .._validation import as_bool, as_points, choice, positive_float, positive_int


def principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, principal axes (columns, by decreasing variance, right-handed) and variances.

    ``points``: (n, d) finite coordinates, d = 2 or 3, n >= 2 (ValueError naming ``points``
    otherwise). Variances in squared units of ``points``.
    """
    pts = as_points(points, "points", min_points=2)
    centre = pts.mean(axis=0)
    cov = np.cov((pts - centre).T)
    var, axes = np.linalg.eigh(cov)
    order = np.argsort(var)[::-1]
    var, axes = var[order], axes[:, order]
    if np.linalg.det(axes) < 0:
        axes[:, -1] *= -1
    return centre, axes, var


def median_nn_distance(points: np.ndarray) -> float:
    """Median distance from each point to its nearest other point (the units of ``points``)."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    return float(np.median(dist[:, 1]))


def rms_radius(points: np.ndarray) -> float:
    """Root-mean-square distance of the points from their centroid (the units of ``points``): the
    size of the specimen, independent of how densely its cells are sampled."""
    pts = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(((pts - pts.mean(axis=0)) ** 2).sum(axis=1).mean()))


def proper_signed_permutations(d: int, *, permute: bool = True) -> list[np.ndarray]:
    """All d×d signed permutation matrices with determinant +1 (24 in 3D, 4 in 2D).

    With ``permute=False`` only the diagonal sign flips (4 in 3D, 2 in 2D).
    """
    permute = as_bool(permute, "permute")
    d = positive_int(d, "d")
    out = []
    perms = itertools.permutations(range(d)) if permute else [tuple(range(d))]
    for perm in perms:
        for signs in itertools.product((1.0, -1.0), repeat=d):
            m = np.zeros((d, d))
            m[np.arange(d), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


@dataclass
class PrealignResult:
    """Outcome of :func:`prealign`.

    Attributes
    ----------
    matrix : (d, d) array; the pre-alignment maps a moving point p to ``matrix @ p + offset``
        (a proper rotation, improper when ``reflected``; times ``scale`` when scaling was estimated)
    offset : (d,) array
    scale : float
    scores : per candidate, the matching objective after refinement (lower is better)
    best : index of the chosen candidate
    n_matched : matched pairs of the best candidate
    reflected : whether the chosen candidate mirrors the moving points (``matrix`` has a negative
        determinant; only with ``allow_reflection``)
    """

    matrix: np.ndarray
    offset: np.ndarray
    scale: float
    scores: list = field(default_factory=list)
    best: int = 0
    n_matched: int = 0
    reflected: bool = False

    def apply(self, points) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.offset


def _subsample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(points) <= n:
        return points
    return points[np.sort(rng.choice(len(points), n, replace=False))]


def matching_objective(moved: np.ndarray, fixed: np.ndarray, unmatched_cost: float, *, k: int = 8):
    """Total cost of the optimal partial one-to-one matching (distance per pair, ``unmatched_cost``
    per unmatched point of either set) and the number of matched pairs."""
    from ..matching import linear_assignment, knn_graph

    graph = knn_graph(moved, fixed, k=max(1, min(k, len(fixed), len(moved))), radius=unmatched_cost)
    res = linear_assignment(graph, unmatched_cost=unmatched_cost)
    return float(res.cost), len(res.rows)


class _DropNonConvergence(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "without convergence" not in str(record.msg)


def _trial_fit(cpd):
    """``cpd`` without its "without convergence" log records (the other records pass).

    The filter sits, for the duration of each call, on the ``xmodal.registration`` logger and its
    children, where CPD logs.
    """
    def fit(*args, **kwargs):
        names = ["xmodal.registration"] + [n for n in logging.Logger.manager.loggerDict
                                           if n.startswith("xmodal.registration.")]
        loggers = [logging.getLogger(n) for n in names]
        flt = _DropNonConvergence()
        for lg in loggers:
            lg.addFilter(flt)
        try:
            return cpd(*args, **kwargs)
        finally:
            for lg in loggers:
                lg.removeFilter(flt)

    return fit


def prealign(moving, fixed, *, rotations: str = "all", scale: bool = False, refine_iter: int = 100,
             score_affine: bool = True, unmatched_cost: float | None = None, max_points: int = 3000,
             seed: int = 0, allow_reflection: bool = False, callback=None) -> PrealignResult:
    """Coarse rigid (or similarity) alignment of ``moving`` onto ``fixed`` by principal axes.

    Parameters
    ----------
    moving, fixed : (n, d) arrays, physical units, d = 2 or 3
    rotations : "all" (every proper signed permutation of the principal axes: 24 in 3D) or "flips"
        (sign flips only: 4 in 3D), or "none" (principal axes as they come)
    scale : bool
        Also match the overall size (ratio of the root-mean-square radii).
    refine_iter : int
        Rigid CPD iterations that refine each candidate (0: no refinement).
    score_affine : bool
        Score each refined candidate after a further affine CPD (of ``refine_iter`` iterations),
        so that a candidate is judged by how well the clouds can match after the shape change
        between specimens, not by the rigid fit alone. On the 28 C. elegans embryo pairs this picks
        the orientation that gives the best final matching far more often. The returned
        pre-alignment is the rigid (or similarity) part.
    unmatched_cost : float, optional
        Cost of an unmatched point in the scoring matching, physical units. Default: twice the
        median nearest-neighbour distance within ``fixed``.
    max_points : int
        Larger clouds are subsampled (fixed seed) for the search.
    allow_reflection : bool
        Also try the mirror image of every candidate (twice as many): for data whose axis
        handedness is unknown (a flipped stack, a specimen mounted upside down, left against
        right of a bilateral animal). Off by default: a mirror image of a specimen is a different
        specimen, and the extra candidates can only add wrong orientations when the handedness is
        known. ``result.reflected`` says which was chosen.
    callback : callable, optional
        Passed to every CPD refinement of the search as :func:`xmodal.cpd`'s ``callback`` (called
        after each iteration; ``moved`` are the candidate's subsampled moving points): an exception
        it raises (a cancel) stops the search within one CPD iteration.
    """
    scale, score_affine = as_bool(scale, "scale"), as_bool(score_affine, "score_affine")
    allow_reflection = as_bool(allow_reflection, "allow_reflection")
    mov = as_points(moving, "moving")
    fix = as_points(fixed, "fixed")
    if mov.shape[1] != fix.shape[1]:
        raise ValueError(f"moving, fixed: expected the same number of dimensions, got {mov.shape[1]} and {fix.shape[1]}")
    choice(rotations, "rotations", ("all", "flips", "none"))
    d = mov.shape[1]
    for name, pts in (("moving", mov), ("fixed", fix)):
        if len(pts) < d + 1:
            raise ValueError(f"{name}: expected at least d + 1 = {d + 1} points, got {len(pts)}")
    rng = np.random.default_rng(seed)
    mov_s, fix_s = _subsample(mov, max_points, rng), _subsample(fix, max_points, rng)

    cm, am, vm = principal_axes(mov)
    cf, af, vf = principal_axes(fix)
    s = float(np.sqrt(vf.sum() / vm.sum())) if scale else 1.0
    if unmatched_cost is None:
        unmatched_cost = 2.0 * median_nn_distance(fix_s)
    unmatched_cost = positive_float(unmatched_cost, "unmatched_cost")

    if rotations == "none":
        cands = [np.eye(d)]
    else:
        cands = proper_signed_permutations(d, permute=rotations == "all")
    if allow_reflection:
        mirror = np.diag(np.r_[np.ones(d - 1), -1.0])
        cands = cands + [q @ mirror for q in cands]

    from ..registration import cpd

    cpd = _trial_fit(cpd)  # the trial fits' iteration cap is deliberate: no "without convergence" notes
    best = None
    scores = []
    for i, q in enumerate(cands):
        rot = af @ q @ am.T  # moving principal frame -> fixed principal frame, then candidate
        mat = s * rot
        off = cf - mat @ cm
        start = mov_s @ mat.T + off
        if refine_iter > 0:
            res = cpd(start, fix_s, transform="similarity" if scale else "rigid", w=0.1, max_iter=refine_iter,
                      tol=1e-6, callback=callback)
            t = res.transform
            r2, t2, s2 = np.asarray(t.rotation), np.asarray(t.translation), float(getattr(t, "scale", 1.0))
            mat = s2 * r2 @ mat
            off = s2 * r2 @ off + t2
            moved = mov_s @ mat.T + off
            if score_affine:
                moved = np.asarray(cpd(moved, fix_s, transform="affine", w=0.1, max_iter=refine_iter,
                                       callback=callback).moved)
        else:
            moved = start
        score, n_matched = matching_objective(moved, fix_s, unmatched_cost)
        scores.append(score)
        if best is None or score < best[0]:
            best = (score, i, mat, off, n_matched)
    _, i, mat, off, n_matched = best
    det = float(np.linalg.det(mat))
    total_scale = abs(det) ** (1.0 / d)
    return PrealignResult(matrix=mat, offset=off, scale=total_scale, scores=scores, best=i, n_matched=n_matched,
                          reflected=det < 0)


def fast_prealign(moving, fixed, *, n_points: int = 500, seed: int = 0, **options):
    """:func:`prealign` run on farthest-point subsamples (what :func:`register_cells` runs).

    The rotation search scores every candidate by CPD refinements and a matching on the points it
    is given; on large sets (thousands of cells) that dominates the registration. Farthest-point
    sampling keeps the shape of the whole cloud with ``n_points`` points (evenly spread, unlike a
    random subsample), so the search gives the same orientation at a fraction of the cost. The
    result applies to the full sets (``result.apply(moving)``).

    Parameters
    ----------
    moving, fixed : (n, d) arrays, physical units
    n_points : int
        Points of each set used by the search (sets no larger are used whole).
    seed : int
        Passed on (sets are no longer subsampled at random inside).
    **options
        Further keyword arguments of ``prealign`` (``rotations``, ``scale``, ``refine_iter``,
        ``score_affine``, ``unmatched_cost``, ``allow_reflection``, ``callback``).
    """
    from ..registration import farthest_point_centers

    mov = as_points(moving, "moving")
    fix = as_points(fixed, "fixed")
    n_points = positive_int(n_points, "n_points", minimum=4)
    ms = mov if len(mov) <= n_points else mov[np.sort(farthest_point_centers(mov, n_points))]
    fs = fix if len(fix) <= n_points else fix[np.sort(farthest_point_centers(fix, n_points))]
    return prealign(ms, fs, seed=seed, max_points=max(len(ms), len(fs)), **options)
