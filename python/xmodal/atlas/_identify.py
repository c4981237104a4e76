"""Naming the cells of a new sample against an :class:`~xmodal.atlas.Atlas`.

    points (+ features)
      -> candidate poses: principal axes of the sample onto those of the atlas, every proper signed
         permutation of the axes (24 in 3D; 48 with reflections when allowed)
      -> per pose, a short EM of a similarity transform against the atlas as a Gaussian mixture
         (one component per name: mean, isotropic part of its covariance, presence as weight, a
         uniform outlier component); the pose whose optimal assignment costs least wins
      -> alternate: exact sparse assignment (Mahalanobis + feature costs, per-name absence costs,
         an unmatched cost per cell) <-> generalised least-squares fit of the transform (affine,
         each pair weighted by its name's precision), optionally a smooth deformation on top
      -> names from the final exact assignment; per-cell confidence = posterior marginal of the
         assignment (log-domain Sinkhorn on the sparse graph at the atlas's calibrated temperature)
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .._validation import choice, describe, positive_float, positive_int
from ._fit import gls_affine, procrustes
from ._inputs import check_features, check_sample_points, normalise_features
from ._model import Atlas
from ._sinkhorn import sinkhorn_marginals
from ..registration import farthest_point_centers

LOG2PI = math.log(2.0 * math.pi)
#: Sinkhorn settings of the reported confidence (the calibration uses the same).
SINKHORN = {"tol": 1e-5, "max_iter": 200}


@dataclass
class Identification:
    """Result of :func:`identify`.

    Attributes
    ----------
    names : (n,) str array
        Atlas name given to each cell ('' = left unnamed: no atlas name fits it better than the
        unmatched cost).
    confidence : (n,) array in [0, 1]
        Calibrated probability that the cell's name is right (for an unnamed cell: that it has no
        atlas name). Over the atlas's own leave-one-sample-out evaluation, cells with confidence
        >= 0.9 were right at least 90 % of the time (see ``Atlas.calibration``).
    top_k_names : (n, k) str array
        The k most probable names of each cell, by decreasing probability ('' pads, and stands for
        "no atlas name" when that outcome is among the k most probable).
    top_k_probabilities : (n, k) array
        Their probabilities.
    index : (n,) int array
        Row of ``names`` in ``atlas.names`` (-1 when unnamed).
    transform : AffineTransform or CompositeTransform
        Maps the sample's points into the atlas frame (``transform.apply(points)``).
    moved : (n, d) array
        The points in the atlas frame.
    reflected : bool
        Whether the chosen pose mirrors the sample (only with ``allow_reflection=True``).
    cost : float
        Objective of the final assignment (negative log-likelihood, nats, up to a constant).
    diagnostics : dict
        Pose search scores, iterations, unmatched cost, temperature, counts, timings (seconds).
    """

    names: np.ndarray
    confidence: np.ndarray
    top_k_names: np.ndarray
    top_k_probabilities: np.ndarray
    index: np.ndarray
    transform: object
    moved: np.ndarray
    reflected: bool
    cost: float
    diagnostics: dict = field(default_factory=dict)

    @property
    def n_named(self) -> int:
        return int((self.index >= 0).sum())

    def __repr__(self) -> str:
        return (f"Identification(cells={len(self.names)}, named={self.n_named}, "
                f"mean_confidence={float(np.mean(self.confidence)) if len(self.confidence) else 0.0:.3f}, "
                f"reflected={self.reflected})")


# --------------------------------------------------------------------------- atlas-side model
class _Model:
    """Precomputed per-name quantities of an atlas for the costs."""

    def __init__(self, atlas: Atlas, feature_weight: float = 1.0):
        self.atlas = atlas
        self.mu = self.mu0 = atlas.means
        self.d = atlas.ndim
        cov = atlas.covariances
        self.prec = self.prec0 = np.linalg.inv(cov)
        self.logdet = self.logdet0 = np.linalg.slogdet(cov)[1]
        self.iso = np.trace(cov, axis1=1, axis2=2) / self.d
        pres = np.clip(atlas.presence, 1e-6, 1 - 1e-6)
        self.log_pi = np.log(pres)
        self.absent = -np.log1p(-pres)  # cost of a name being absent
        # volume of the atlas (uniform ellipsoid with the covariance of the means)
        c = np.cov((self.mu - self.mu.mean(0)).T)
        ev = np.clip(np.linalg.eigvalsh(c), 1e-12, None)
        if self.d == 3:
            self.log_volume = math.log(4.0 / 3.0 * math.pi) + 0.5 * float(np.log(5.0 * ev).sum())
        else:
            self.log_volume = math.log(math.pi) + 0.5 * float(np.log(4.0 * ev).sum())
        self.feature_weight = float(feature_weight)
        if atlas.feature_means is not None:
            fc = atlas.feature_covariances
            self.fmu = atlas.feature_means
            self.fprec = np.linalg.inv(fc)
            self.flogdet = np.linalg.slogdet(fc)[1]
        else:
            self.fmu = None
        self.rms = float(np.sqrt(((self.mu - self.mu.mean(0)) ** 2).sum(1).mean()))
        from ..pipelines.prealign import median_nn_distance

        self.nn = median_nn_distance(self.mu) if len(self.mu) > 1 else self.rms

    def reset(self):
        self.mu, self.prec, self.logdet = self.mu0, self.prec0, self.logdet0

    def condition(self, residuals, present):
        """Shift each name's mean by what its partners' residuals predict (``residuals`` (m, d),
        valid where ``present``) and shrink its covariance by the share of variance they explain."""
        rel = self.atlas.relations
        J = np.asarray(rel.get("partners", np.zeros((len(self.mu0), 0))), np.int64)
        if J.ndim != 2 or J.shape[1] == 0:
            return False
        w = np.asarray(rel["weights"], np.float64)
        fac = np.asarray(rel["factor"], np.float64)
        sc = np.asarray(rel["scale"], np.float64)
        Jc = np.where(J >= 0, J, 0)
        valid = (J >= 0) & present[Jc]
        z = np.where(valid[..., None], residuals[Jc] / sc[Jc], 0.0)  # (m, p, d)
        shift = sc * (w * valid[..., None] * z).sum(1)
        f = 1.0 - (1.0 - fac) * valid.mean(1)[:, None]  # (m, d): variance left along each axis
        self.mu = self.mu0 + shift
        g = 1.0 / np.sqrt(f)
        self.prec = self.prec0 * g[:, :, None] * g[:, None, :]
        self.logdet = self.logdet0 + np.log(f).sum(1)
        return True

    def outlier_rate(self) -> float:
        """Good-Turing estimate of the fraction of a new sample's cells whose name the atlas lacks:
        names seen in exactly one training sample per sample, over the mean cells per sample;
        at least 0.01 (spurious detections)."""
        a = self.atlas
        n1 = float((a.counts == 1).sum())
        per_sample = float(a.counts.sum()) / max(a.n_samples, 1)
        return float(np.clip(n1 / max(a.n_samples, 1) / max(per_sample, 1.0), 0.01, 0.5))

    def pair_costs(self, y, rows, cols, feats=None):
        """Negative log-likelihood of cell ``rows`` having name ``cols`` (nats)."""
        r = y[rows] - self.mu[cols]
        maha = np.einsum("ei,eij,ej->e", r, self.prec[cols], r)
        c = 0.5 * maha + 0.5 * self.logdet[cols] + 0.5 * self.d * LOG2PI - self.log_pi[cols]
        if feats is not None and self.fmu is not None:
            q = feats[rows] - self.fmu[cols]
            fm = np.einsum("ei,eij,ej->e", q, self.fprec[cols], q)
            f = feats.shape[1]
            c = c + self.feature_weight * (0.5 * fm + 0.5 * self.flogdet[cols] + 0.5 * f * LOG2PI)
        return c

    def unmatched_costs(self, n, u, feats=None):
        cost = np.full(n, float(u))
        if feats is not None and self.fmu is not None:
            f = feats.shape[1]
            cost = cost + self.feature_weight * (0.5 * (feats ** 2).sum(1) + 0.5 * f * LOG2PI)
        return cost


# --------------------------------------------------------------------------- pose search
def _principal(points, weights=None):
    w = np.ones(len(points)) if weights is None else weights
    c = w @ points / w.sum()
    x = points - c
    cov = (x * w[:, None]).T @ x / w.sum()
    var, axes = np.linalg.eigh(cov)
    order = np.argsort(var)[::-1]
    var, axes = var[order], axes[:, order]
    if np.linalg.det(axes) < 0:
        axes[:, -1] *= -1
    return c, axes, var


def _signed_permutations(d, reflections):
    out = []
    for perm in itertools.permutations(range(d)):
        for signs in itertools.product((1.0, -1.0), repeat=d):
            m = np.zeros((d, d))
            m[np.arange(d), perm] = signs
            det = np.linalg.det(m)
            if det > 0 or reflections:
                out.append(m)
    return out


def candidate_rotations(d: int, *, orientations: str = "all", allow_reflection: bool = False,
                        in_plane: int = 3) -> list:
    """Orthogonal matrices Q relating the principal frame of a sample to that of the atlas.

    "all": every signed permutation of the axes (24 proper ones in 3D, 4 in 2D), each composed with
    ``in_plane`` rotations about the sample's first (longest) axis by multiples of 90° / in_plane
    (in 2D: the plane itself), so that a specimen whose two shorter axes have about the same
    length (and hence arbitrary principal directions) still gets a start within 15° of any pose.
    "flips": sign flips only; "none": the identity. With ``allow_reflection`` the improper
    matrices too (twice as many).
    """
    if orientations == "none":
        base = [np.eye(d)] + ([np.diag([1.0] * (d - 1) + [-1.0])] if allow_reflection else [])
    else:
        base = _signed_permutations(d, allow_reflection)
        if orientations == "flips":
            base = [m for m in base if np.allclose(np.abs(m), np.eye(d))]
    if orientations != "all" or in_plane <= 1:
        return base
    out = []
    for j in range(in_plane):
        a = math.radians(90.0 * j / in_plane)
        r = np.eye(d)
        i0, i1 = (d - 2, d - 1)  # rotate within the plane of the two last (shortest) axes
        r[i0, i0] = r[i1, i1] = math.cos(a)
        r[i0, i1], r[i1, i0] = -math.sin(a), math.sin(a)
        out.extend(q @ r for q in base)
    return out


def _em_rigid(x, mu, iso, log_pi, log_volume, A, t, *, iterations, q_out, s2_floor=0.0, tol=1e-5):
    """EM of a rigid map (rotation times the fixed scale of ``A``, proper or improper as ``A``) of
    ``x`` onto a Gaussian mixture: means ``mu``, isotropic variances ``iso + s2``, weights
    ``exp(log_pi)``, a uniform outlier of rate ``q_out`` over the atlas volume. Dense E-step in
    float32 (call it on subsamples). ``s2`` starts at the mean squared distance of all pairs, as
    in CPD, so that a far-off start still sees the whole shape. Returns (A, t, s2)."""
    d = x.shape[1]
    scale = abs(float(np.linalg.det(A))) ** (1.0 / d)
    improper = bool(np.linalg.det(A) < 0)
    log_out = math.log(q_out) - log_volume - math.log(1.0 - q_out)
    mu32 = mu.astype(np.float32)
    mu2 = (mu32 * mu32).sum(1)

    def dist2(A, t):
        y = (x @ A.T + t).astype(np.float32)
        return np.maximum((y * y).sum(1)[:, None] + mu2[None, :] - 2.0 * (y @ mu32.T), 0.0)

    d2 = dist2(A, t)
    s2 = float(d2.mean()) / d
    for _ in range(iterations):
        v = (iso + s2).astype(np.float32)
        lw = (log_pi - 0.5 * d * np.log(2 * math.pi * v)).astype(np.float32)
        logp = lw[None, :] - 0.5 * d2 / v[None, :]
        mx = np.maximum(logp.max(1), np.float32(log_out))
        E = np.exp(logp - mx[:, None])
        den = E.sum(1) + np.exp(np.float32(log_out) - mx)
        P = E / den[:, None]
        W = P / v[None, :]
        ws = W.sum(1, dtype=np.float64)
        wk = W.sum(0, dtype=np.float64)
        sw = float(ws.sum())
        if not sw > 0:
            break
        cs = ws @ x / sw
        cd = wk @ mu / sw
        cross = (mu - cd).T @ (W.T.astype(np.float64) @ (x - cs)) / sw
        u_, _, vt = np.linalg.svd(cross)
        dd = np.ones(d)
        if (np.linalg.det(u_ @ vt) < 0) != improper:
            dd[-1] = -1
        A_new = scale * (u_ * dd) @ vt
        t_new = cd - A_new @ cs
        change = float(np.abs(A_new - A).max()) / scale + float(np.abs(t_new - t).max()) / math.sqrt(s2 + 1e-300)
        A, t = A_new, t_new
        d2 = dist2(A, t)
        Pn = max(float(P.sum(dtype=np.float64)), 1e-300)
        s2 = max(float((P * d2).sum(dtype=np.float64)) / (d * Pn) - float(P.sum(0, dtype=np.float64) @ iso) / Pn,
                 s2_floor)
        if change < tol:
            break
    return A, t, s2


# --------------------------------------------------------------------------- assignment
def _graph(y, model: _Model, k):
    from ..matching import knn_graph

    g = knn_graph(y, model.mu, k=min(k, len(model.mu), len(y)))
    g = g.tocoo()
    return g.row.astype(np.int64), g.col.astype(np.int64)


def _assign(y, model: _Model, u, feats, k):
    """Exact assignment; returns (rows, cols, all candidate rows, cols, relative costs, objective)."""
    from ..matching import linear_assignment
    import scipy.sparse as sp

    n, m = len(y), len(model.mu)
    rows, cols = _graph(y, model, k)
    c = model.pair_costs(y, rows, cols, feats)
    ucell = model.unmatched_costs(n, u, feats)
    rel = c - ucell[rows] - model.absent[cols]
    keep = rel < 0  # pairs that cannot beat leaving both unmatched are never chosen
    r, cc, rr = rows[keep], cols[keep], rel[keep]
    base = float(ucell.sum() + model.absent.sum())
    if r.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), rows, cols, rel, base
    half = 0.5 * float(-rr.min()) + 1e-9
    mat = sp.csr_matrix((rr + 2 * half, (r, cc)), shape=(n, m))
    res = linear_assignment(mat, unmatched_cost=half)
    obj = base + float(res.matched_cost) - 2.0 * half * len(res.rows)
    return res.rows, res.cols, rows, cols, rel, obj


# --------------------------------------------------------------------------- public
def identify(points, atlas: Atlas, *, features=None, unmatched_cost="auto", top_k: int = 5,
             allow_reflection: bool = False, transform: str | None = None, orientations: str = "all",
             deformable: bool = False, temperature: float | None = None, k: int = 12,
                      max_iter: int = 30, search_iter: int = 30, keep_poses: int = 6, refine_poses: int = 2,
             search_points: int = 300, in_plane: int = 3, cpd_iter: int = 100, relational_iter: int = 6,
             feature_weight: float = 1.0,
             _debug: dict | None = None) -> Identification:
    """Name the cells of a sample by registering it to an atlas and assigning names exactly.

    Parameters
    ----------
    points : (n, d) array
        Cell positions of the new sample, same units as the atlas's training samples (the pose is
        found: any rotation, and any mirror image with ``allow_reflection``).
    atlas : Atlas
        From :func:`build_atlas` or :meth:`Atlas.load`.
    features : (n, f) array, optional
        The same features as the atlas was built with (same columns, same order), e.g. colour
        channels, volume, intensity. Normalised per sample as in the atlas.
    unmatched_cost : "auto" or float
        Cost (nats) of leaving a cell unnamed. "auto": ``-log(q / V)``, the density of a uniform
        outlier over the atlas volume V with rate q = the atlas's Good-Turing estimate of cells
        with names it lacks (at least 0.01). A name that is not used costs ``-log(1 - presence)``.
    top_k : int
        Number of candidate names (with probabilities) reported per cell.
    allow_reflection : bool
        Also consider mirror images of the sample (data whose axis handedness is unknown).
    transform : {"rigid", "similarity", "affine"}, optional
        Transform class of the sample onto the atlas; default the atlas's own (``atlas.transform``,
        affine unless its samples share too few names). The pose search is rigid.
    orientations : {"all", "flips", "none"}
        Candidate poses: every signed permutation of the principal axes, sign flips only, or the
        principal axes as they come.
    deformable : bool
        Add a smooth displacement field (Gaussian radial basis, width 2 × the atlas's median
        nearest-neighbour distance) on top of the affine fit.
    temperature : float, optional
        Temperature of the posterior marginals. Default: the atlas's calibration (its temperature,
        then its Platt scaling of the confidences); a given temperature yields the plain tempered
        marginals.
    k : int
        Candidate names per cell (and cells per name) in the sparse cost graph.
    max_iter, search_iter, keep_poses : iterations of the assignment/fit alternation, of the EM
        per candidate pose, and poses refined after the first scoring.
    feature_weight : float
        Weight of the feature log-likelihood relative to the position log-likelihood.

    Returns
    -------
    Identification
    """
    t_all = time.perf_counter()
    timings = {}
    if not isinstance(atlas, Atlas):
        raise TypeError(f"atlas: expected an xmodal.atlas.Atlas, got {describe(atlas)}")
    x = check_sample_points(points, "points")
    d = x.shape[1]
    if d != atlas.ndim:
        raise ValueError(f"points: expected {atlas.ndim} columns like the atlas, got {d}")
    if len(x) < d + 1:
        raise ValueError(f"points: expected at least {d + 1} cells, got {len(x)}")
    transform = atlas.transform if transform is None else transform
    choice(transform, "transform", ("rigid", "similarity", "affine"))
    choice(orientations, "orientations", ("all", "flips", "none"))
    top_k = positive_int(top_k, "top_k")
    k = positive_int(k, "k")
    max_iter = positive_int(max_iter, "max_iter")
    if not isinstance(allow_reflection, (bool, np.bool_)):
        raise TypeError(f"allow_reflection: expected True or False, got {describe(allow_reflection)}")
    feature_weight = positive_float(feature_weight, "feature_weight", allow_zero=True)
    feats = None
    if features is not None:
        if atlas.feature_means is None:
            raise ValueError("features: the atlas was built without features; pass features=None")
        feats = normalise_features(check_features(features, len(x), "features", atlas.n_features),
                                   atlas.feature_normalization)
    elif atlas.feature_means is not None:
        raise ValueError(f"features: the atlas was built with features {atlas.feature_names}; pass the same "
                         f"{atlas.n_features} columns for the new sample")
    T = atlas.temperature if temperature is None else positive_float(temperature, "temperature")

    model = _Model(atlas, feature_weight=feature_weight)
    q_out = model.outlier_rate()
    if isinstance(unmatched_cost, str):
        choice(unmatched_cost, "unmatched_cost", ("auto",))
        u = -math.log(q_out) + model.log_volume
    else:
        if isinstance(unmatched_cost, bool) or not isinstance(unmatched_cost, (int, float, np.floating)) \
                or not np.isfinite(unmatched_cost):
            raise TypeError(f"unmatched_cost: expected 'auto' or a finite number, got {describe(unmatched_cost)}")
        u = float(unmatched_cost)

    # ---- pose search
    t0 = time.perf_counter()
    pose = _pose_search(x, model, u, feats, k, q_out, orientations=orientations,
                        allow_reflection=bool(allow_reflection), search_iter=search_iter, keep=keep_poses,
                        search_points=search_points, in_plane=in_plane, scale=transform != "rigid")
    timings["pose_search"] = time.perf_counter() - t0
    scores = pose["scores"]
    n_cands = pose["n_candidates"]

    # ---- refinement of the best poses: CPD of the atlas onto the sample, then alternate assignment <-> fit
    t0 = time.perf_counter()
    best = None
    for obj0, j, A, t, refl in pose["best"][:max(1, refine_poses)]:
        A, t = _cpd_stage(x, model, A, t, transform, q_out, max_iter=cpd_iter)
        A, t, field_, it, obj = _refine(x, model, A, t, u, feats, k, transform, max_iter, deformable)
        if best is None or obj < best[0]:
            best = (obj, A, t, field_, refl, int(j), it)
    obj, A, t, field_, refl, chosen, iters = best
    timings["refine"] = time.perf_counter() - t0

    # ---- names that move together: condition each name on its partners' placements
    t0 = time.perf_counter()
    moved = _apply(x, A, t, field_)
    rel_it = _relational(moved, np.eye(d), np.zeros(d), model, u, feats, k, relational_iter)
    timings["relational"] = time.perf_counter() - t0

    # ---- final assignment and marginals
    t0 = time.perf_counter()
    y = _apply(x, A, t, field_)
    rows_m, cols_m, rows, cols, rel, obj = _assign(y, model, u, feats, k)
    n, m = len(x), len(model.mu)
    p, p_un, _, sk_it = sinkhorn_marginals(rows, cols, rel, (n, m), temperature=T, **SINKHORN)
    index = np.full(n, -1, np.int64)
    index[rows_m] = cols_m
    names = np.array([atlas.names[i] if i >= 0 else "" for i in index], dtype=object).astype(str)
    # confidence: marginal of the assigned outcome
    key = {(int(a), int(b)): float(v) for a, b, v in zip(rows, cols, p)}
    conf = np.array([key.get((i, int(index[i])), 0.0) if index[i] >= 0 else float(p_un[i]) for i in range(n)])
    # top-k
    kk = top_k
    top_names = np.full((n, kk), "", dtype=object)
    top_p = np.zeros((n, kk))
    o = np.lexsort((-p, rows))
    starts = np.searchsorted(rows[o], np.arange(n))
    ends = np.searchsorted(rows[o], np.arange(n), side="right")
    for i in range(n):
        cand = [(float(p[e]), atlas.names[cols[e]]) for e in o[starts[i]:ends[i]]]
        cand.append((float(p_un[i]), ""))
        cand.sort(key=lambda z: -z[0])
        for r, (pv, nm) in enumerate(cand[:kk]):
            top_names[i, r] = nm
            top_p[i, r] = pv
    tempered = conf
    platt = atlas.calibration.get("platt") if temperature is None else None
    if platt is not None:
        from ._build import apply_platt

        conf = apply_platt(conf, platt)
        top_p = np.where(top_p > 0, apply_platt(top_p, platt), 0.0)
    timings["assign"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all

    from ..registration import AffineTransform

    tr = AffineTransform(A, t)
    if field_ is not None:
        from ..pipelines._transforms import CompositeTransform

        tr = CompositeTransform((tr, field_))
    if _debug is not None:
        _debug.update({"rows": rows, "cols": cols, "rel": rel, "shape": (n, m)})
    diag = {
        "pose_scores": scores, "pose": chosen, "n_poses": n_cands, "iterations": iters,
        "relational_iterations": rel_it,
        "unmatched_cost": u, "outlier_rate": q_out, "temperature": T, "sinkhorn_iterations": sk_it,
        "n_named": int((index >= 0).sum()), "n_unnamed": int((index < 0).sum()), "timings": timings,
        "platt": platt, "tempered_confidence": tempered,
    }
    return Identification(names=names, confidence=conf, top_k_names=top_names.astype(str),
                          top_k_probabilities=top_p, index=index, transform=tr, moved=y, reflected=refl,
                          cost=float(obj), diagnostics=diag)


def _pose_search(x, model, u, feats, k, q_out, *, orientations, allow_reflection, search_iter, keep,
                 search_points, in_plane, scale=True, coarse_points=120, coarse_iter=8):
    """Candidate poses -> a few EM iterations each on small subsamples, scored by a symmetric
    truncated chamfer distance -> the ``keep`` best continue (``search_iter`` iterations on larger
    subsamples) -> scored by the optimal assignment objective. Returns the poses sorted by it."""
    d = x.shape[1]
    cx, ex, vx = _principal(x)
    common = np.exp(model.log_pi) >= 0.5  # the frame of the names most samples have
    if common.sum() < d + 1:
        common = np.ones(len(model.mu), bool)
    ca, ea, va = _principal(model.mu[common])
    # the size of the sample from its spread (a rigid search keeps the sample's own units)
    s0 = math.sqrt(va.sum() / vx.sum()) if (scale and vx.sum() > 0) else 1.0
    cands = candidate_rotations(d, orientations=orientations, allow_reflection=allow_reflection, in_plane=in_plane)

    def subsample(n):
        xs = x if len(x) <= n else x[farthest_point_centers(x, n)]
        if len(model.mu) <= n:
            return xs, model.mu, model.iso, model.log_pi
        sel = farthest_point_centers(model.mu, n)
        # a subsampled atlas: each kept name stands for its neighbours
        return (xs, model.mu[sel], model.iso[sel] + model.nn ** 2,
                model.log_pi[sel] + math.log(len(model.mu) / len(sel)))

    floor = 1e-4 * model.nn ** 2
    cap2 = (2.0 * model.nn) ** 2
    xs, mus, isos, lps = subsample(coarse_points)
    from scipy.spatial import cKDTree

    tree = cKDTree(model.mu)
    coarse = []
    for j, q in enumerate(cands):
        A0 = s0 * ea @ q @ ex.T
        t0 = ca - A0 @ cx
        refl = bool(np.linalg.det(A0) < 0)
        A, t, _ = _em_rigid(xs, mus, isos, lps, model.log_volume, A0, t0, iterations=coarse_iter,
                            q_out=q_out, s2_floor=floor)
        # symmetric truncated chamfer distance on all cells and all names: unlike a one-way
        # distance it notices when many names crowd onto few cells
        y = x @ A.T + t
        d1, _ = tree.query(y)
        d2, _ = cKDTree(y).query(model.mu)
        score = float(np.minimum(d1 ** 2, cap2).mean() + np.minimum(d2 ** 2, cap2).mean())
        coarse.append((score, j, A, t, refl))
    coarse.sort(key=lambda c: c[0])
    xs, mus, isos, lps = subsample(search_points)
    fine = []
    for _, j, A, t, refl in coarse[:max(1, keep)]:
        A, t, _ = _em_rigid(xs, mus, isos, lps, model.log_volume, A, t, iterations=search_iter,
                            q_out=q_out, s2_floor=floor)
        obj = _assign(x @ A.T + t, model, u, feats, k)[-1]
        fine.append((obj, j, A, t, refl))
    fine.sort(key=lambda c: c[0])
    return {"best": fine, "scores": [float(c[0]) for c in fine], "n_candidates": len(cands)}


def _cpd_stage(x, model, A, t, kind, q_out, w=0.1, max_iter=100):
    """CPD of the atlas means (moving, weighted by presence) onto the sample mapped by (A, t); the
    result composed into a new sample -> atlas map (the inverse of the CPD transform)."""
    from ..registration import cpd

    y = x @ A.T + t
    res = cpd(model.mu, y, transform=kind, w=w, weights=np.exp(model.log_pi), max_iter=max_iter)
    tr = res.transform
    B = np.asarray(tr.matrix if hasattr(tr, "matrix") else tr.scale * tr.rotation, np.float64)
    c = np.asarray(tr.translation, np.float64)
    Bi = np.linalg.inv(B)
    return Bi @ A, Bi @ (t - c)


def _relational(x, A, t, model, u, feats, k, iterations, *, temperature=1.0, min_mass=0.3):
    """Mean-field alternation: posterior marginals of the assignment -> expected residual of every
    name (where its total mass exceeds ``min_mass``) -> names conditioned on their partners
    (:meth:`_Model.condition`) -> marginals again. Returns the iterations run."""
    n, m = len(x), len(model.mu0)
    y = x @ A.T + t
    it = 0
    for it in range(1, iterations + 1):
        _, _, rows, cols, rel, _ = _assign(y, model, u, feats, k)
        p, _, _, _ = sinkhorn_marginals(rows, cols, rel, (n, m), temperature=temperature, tol=1e-3, max_iter=100)
        mass = np.bincount(cols, weights=p, minlength=m)
        r = np.zeros((m, model.d))
        for j in range(model.d):
            r[:, j] = np.bincount(cols, weights=p * (y[rows, j] - model.mu0[cols, j]), minlength=m)
        present = mass > min_mass
        r[present] /= mass[present][:, None]
        if not model.condition(r, present):
            return 0
    return it


def _apply(x, A, t, field_):
    y = x @ A.T + t
    if field_ is not None:
        y = field_.apply(y)
    return y


def _refine(x, model, A, t, u, feats, k, kind, max_iter, deformable):
    prev = None
    field_ = None
    obj = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        y = x @ A.T + t
        rows_m, cols_m, _, _, _, obj = _assign(y, model, u, feats, k)
        key = (tuple(rows_m.tolist()), tuple(cols_m.tolist()))
        if key == prev or len(rows_m) < model.d + 2:
            break
        prev = key
        src, dst = x[rows_m], model.mu[cols_m]
        if kind == "affine":
            A_new, t_new = gls_affine(src, dst, model.prec[cols_m])
            if np.linalg.det(A_new) * np.linalg.det(A) <= 0:
                break  # the fit would change the handedness chosen by the pose search
            A, t = A_new, t_new
        else:
            w = 1.0 / model.iso[cols_m]
            A, t = procrustes(src, dst, w, kind=kind, allow_reflection=bool(np.linalg.det(A) < 0))
    else:
        obj = _assign(x @ A.T + t, model, u, feats, k)[-1]
    if deformable:
        field_, obj = _deform(x, model, A, t, u, feats, k)
    return A, t, field_, it, obj


def _deform(x, model, A, t, u, feats, k, iterations=5, beta_factor=2.0, lam=1.0):
    from ..registration import DeformableTransform

    beta = beta_factor * model.nn
    y0 = x @ A.T + t
    field_ = None
    obj = math.inf
    for _ in range(iterations):
        y = y0 if field_ is None else field_.apply(y0)
        rows_m, cols_m, _, _, _, obj = _assign(y, model, u, feats, k)
        if len(rows_m) < 2:
            break
        c = y0[rows_m]
        r = model.mu[cols_m] - c
        d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        G = np.exp(-d2 / (2 * beta * beta))
        # noise of a residual relative to the kernel: the name's isotropic variance
        W = np.linalg.solve(G + lam * np.diag(model.iso[cols_m]) / model.nn ** 2, r)
        field_ = DeformableTransform(c, W, beta, np.zeros(model.d))
    y = y0 if field_ is None else field_.apply(y0)
    obj = _assign(y, model, u, feats, k)[-1]
    return field_, obj
