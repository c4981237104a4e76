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
      -> a smooth displacement field of the atlas frame (when the atlas was built with its deformable
         stage): EM of a regularised Gaussian radial-basis field against the posterior marginals
      -> names from the final exact assignment; per-cell confidence = posterior marginal of the
         assignment (log-domain Sinkhorn on the sparse graph at the atlas's calibrated temperature)
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np

from .._validation import as_spacing, choice, describe, positive_float, positive_int
from ..registration.transforms import AffineTransform, CompositeTransform, DeformableTransform
from ._deform import DEFAULT, check_deform
from ._inputs import check_features, check_sample_points, normalise_features
from ._mixture import Model, assign
from ._model import Atlas
from ._fitcheck import fit_check
from ._handedness import handedness_test
from ._pose import pose_search
from ._refine import apply_map, cpd_stage, deform_em, refine, relational
from ._result import Identification
from ._sinkhorn import SINKHORN, apply_platt, sinkhorn_marginals

__all__ = ["Identification", "identify"]


def identify(points, atlas: Atlas, *, features=None, spacing=None, unmatched_cost="auto", top_k: int = 5,
             allow_reflection: bool = False, transform: str | None = None, orientations: str = "all",
             deformable: bool = False, temperature: float | None = None, k: int = 12,
             max_iter: int = 30, search_iter: int = 30, keep_poses: int = 6, refine_poses: int = 2,
             search_points: int = 300, in_plane: int = 3, cpd_iter: int = 100, relational_iter: int = 6,
             smooth: dict | None = None,
             feature_weight: float = 1.0, check_handedness: bool = True,
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
    spacing : scalar or (d,) sequence, optional
        Coordinate scale (e.g. the voxel size, for centroids in voxels): the cells are at
        ``points * spacing``, which must be in the atlas's units (``atlas.parameters["spacing"]``
        records the scale its samples were given with). ``transform`` and the
        ``diagnostics["spacing"]`` then include it: ``res.transform.apply(points)`` is ``res.moved``.
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
    smooth : dict, optional
        Options of the smooth field fitted after the affine registration (keys as
        ``build_atlas(deform=...)``: ``centres``, ``beta``, ``lambda``, ``identify_iterations``,
        ``anneal``, ``adaptive``). Default: the atlas's own (``atlas.parameters["deform"]``; none
        for an atlas built with ``deform=None`` or saved before it existed). ``{}`` is not "off":
        pass ``smooth={"identify_iterations": 0}`` to skip the field.
    temperature : float, optional
        Temperature of the posterior marginals. Default: the atlas's calibration (its temperature,
        then its Platt scaling of the confidences); a given temperature yields the plain tempered
        marginals.
    k : int
        Candidate names per cell (and cells per name) in the sparse cost graph.
    max_iter, search_iter, keep_poses : iterations of the assignment/fit alternation (>= 1), of the
        EM per candidate pose (>= 0), and poses refined after the first scoring (>= 1).
    refine_poses, search_points, in_plane : poses registered in full after the pose search, cells
        (and names) of the farthest-point subsamples its EM runs on, and in-plane rotations about the
        longest axis tried per orientation (all >= 1).
    cpd_iter, relational_iter : iterations of the CPD stage per refined pose (>= 1) and rounds of
        conditioning each name on its partners (``atlas.relations``; >= 0, 0: off).
    feature_weight : float
        Weight of the feature log-likelihood relative to the position log-likelihood.
    check_handedness : bool
        Without ``allow_reflection``: when the fit is doubtful (its statistic above 0.825 times the
        largest of the atlas's leave-one-out samples), also identify the sample's mirror image and,
        when that fits better (lower assignment objective), warn and set ``fit["ok"]`` False. Costs
        one more identification, for such samples only.

    Returns
    -------
    Identification
    """
    t_all = time.perf_counter()
    options = dict(locals())  # the arguments as given, for the handedness test's run on the mirror image
    x, s, feats, transform, T, u, model, q_out = _check(
        points, atlas, features, spacing, unmatched_cost, transform, orientations, allow_reflection, feature_weight,
        temperature)
    top_k, k, max_iter, search_iter, keep_poses, refine_poses, search_points, in_plane, cpd_iter, relational_iter = (
        positive_int(v, label, minimum=low) for v, label, low in (
            (top_k, "top_k", 1), (k, "k", 1), (max_iter, "max_iter", 1), (search_iter, "search_iter", 0),
            (keep_poses, "keep_poses", 1), (refine_poses, "refine_poses", 1), (search_points, "search_points", 1),
            (in_plane, "in_plane", 1), (cpd_iter, "cpd_iter", 1), (relational_iter, "relational_iter", 0)))
    for flag, label in ((deformable, "deformable"), (check_handedness, "check_handedness")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{label}: expected True or False, got {describe(flag)}")
    d = x.shape[1]
    timings = {}

    t0 = time.perf_counter()
    pose = pose_search(x, model, u, feats, k, q_out, orientations=orientations,
                       allow_reflection=bool(allow_reflection), search_iter=search_iter, keep=keep_poses,
                       search_points=search_points, in_plane=in_plane, scale=transform != "rigid")
    timings["pose_search"] = time.perf_counter() - t0

    # refinement of the best poses: CPD of the atlas onto the sample, then assignment <-> fit
    t0 = time.perf_counter()
    best = None
    for _, j, A, t, refl in pose["best"][:refine_poses]:
        A, t = cpd_stage(x, model, A, t, transform, q_out, max_iter=cpd_iter)
        A, t, field_, it, obj = refine(x, model, A, t, u, feats, k, transform, max_iter, deformable)
        if best is None or obj < best[0]:
            best = (obj, A, t, field_, refl, int(j), it)
    obj, A, t, field_, refl, chosen, iters = best
    timings["refine"] = time.perf_counter() - t0

    # a smooth field of the atlas frame fitted to the soft assignment
    t0 = time.perf_counter()
    y = apply_map(x, A, t, field_)
    smooth_field = _smooth(y, model, u, feats, k, atlas, smooth)
    if smooth_field is not None:
        y = smooth_field.apply(y)
    timings["smooth"] = time.perf_counter() - t0

    # names that move together: condition each name on its partners' placements
    t0 = time.perf_counter()
    rel_it = relational(y, np.eye(d), np.zeros(d), model, u, feats, k, relational_iter)
    timings["relational"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows_m, cols_m, rows, cols, rel, obj = assign(y, model, u, feats, k)
    n, m = len(x), len(model.mu)
    index = np.full(n, -1, np.int64)
    index[rows_m] = cols_m
    conf, top_names, top_p, sk_it = _marginals(rows, cols, rel, (n, m), index, atlas.names, T, top_k)
    tempered = conf
    platt = atlas.calibration.get("platt") if temperature is None else None
    if platt is not None:
        conf = apply_platt(conf, platt)
        top_p = np.where(top_p > 0, apply_platt(top_p, platt), 0.0)
    timings["assign"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all

    # the map of the points as given: their scale (spacing) first
    chain = [AffineTransform(A if s is None else A @ np.diag(s), t)] + [f for f in (field_, smooth_field) if f is not None]
    if smooth_field is not None:
        chain[-1] = DeformableTransform(smooth_field.c, smooth_field.W, smooth_field.beta, np.zeros(d))
    tr = chain[0] if len(chain) == 1 else CompositeTransform(tuple(chain))
    if _debug is not None:
        _debug.update({"rows": rows, "cols": cols, "rel": rel, "shape": (n, m)})
    names = np.array([atlas.names[i] if i >= 0 else "" for i in index], dtype=object).astype(str)
    fit = fit_check(y, index, atlas)
    if check_handedness and not allow_reflection:  # a doubtful fit: does the mirror image fit better?
        handedness_test(identify, x, atlas, fit, float(obj), options, timings, t_all)
    diag = {"fit": fit,
        "pose_scores": pose["scores"], "pose": chosen, "n_poses": pose["n_candidates"], "iterations": iters,
        "relational_iterations": rel_it, "unmatched_cost": u, "outlier_rate": q_out, "temperature": T,
        "sinkhorn_iterations": sk_it, "n_named": int((index >= 0).sum()), "n_unnamed": int((index < 0).sum()),
        "timings": timings, "platt": platt, "smooth_field": smooth_field is not None, "tempered_confidence": tempered, "transform": transform,
        "spacing": None if s is None else s.tolist(),
    }
    return Identification(names=names, confidence=conf, top_k_names=top_names.astype(str),
                          top_k_probabilities=top_p, index=index, transform=tr, moved=y, reflected=refl,
                          cost=float(obj), diagnostics=diag)


def _smooth(y, model, u, feats, k, atlas, smooth):
    """The smooth field of :func:`identify` (None when the atlas has none or it is switched off)."""
    base = {key: v for key, v in (atlas.parameters.get("deform") or {}).items() if key in DEFAULT}
    if smooth is None:
        opts = check_deform(base) if base else None
    elif not isinstance(smooth, dict):
        raise TypeError(f"smooth: expected a dict of deform options or None, got {describe(smooth)}")
    else:
        opts = check_deform({**base, **smooth})
    if not opts or opts["identify_iterations"] == 0:
        return None
    return deform_em(y, model, u, feats, k, beta=opts["beta"] * model.rms, lam=opts["lambda"],
                     iterations=opts["identify_iterations"], n_centres=opts["centres"], anneal=opts["anneal"],
                     adaptive=opts["adaptive"])


def _check(points, atlas, features, spacing, unmatched_cost, transform, orientations, allow_reflection,
           feature_weight, temperature):
    """Validated inputs of :func:`identify`: points (times the spacing), the spacing, normalised
    features, transform, temperature, unmatched cost, the atlas's mixture model and its outlier rate."""
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
    model = Model(atlas, feature_weight=feature_weight)
    q_out = model.outlier_rate()
    if isinstance(unmatched_cost, str):
        choice(unmatched_cost, "unmatched_cost", ("auto",))
        u = -math.log(q_out) + model.log_volume
    else:
        if isinstance(unmatched_cost, (bool, np.bool_)) or not isinstance(unmatched_cost, numbers.Real) \
                or not np.isfinite(unmatched_cost):
            raise TypeError(f"unmatched_cost: expected 'auto' or a finite number, got {describe(unmatched_cost)}")
        u = float(unmatched_cost)
    s = as_spacing(spacing, d, "spacing")
    return (x if s is None else x * s), s, feats, transform, T, u, model, q_out


def _marginals(rows, cols, rel, shape, index, atlas_names, T, top_k):
    """Sinkhorn marginals at temperature T: confidence of the assigned outcome of every cell, and its
    ``top_k`` most probable names ('' = unnamed) with their probabilities."""
    n, _ = shape
    p, p_un, _, sk_it = sinkhorn_marginals(rows, cols, rel, shape, temperature=T, **SINKHORN)
    key = {(int(a), int(b)): float(v) for a, b, v in zip(rows, cols, p)}
    conf = np.array([key.get((i, int(index[i])), 0.0) if index[i] >= 0 else float(p_un[i]) for i in range(n)])
    top_names = np.full((n, top_k), "", dtype=object)
    top_p = np.zeros((n, top_k))
    o = np.lexsort((-p, rows))
    starts = np.searchsorted(rows[o], np.arange(n))
    ends = np.searchsorted(rows[o], np.arange(n), side="right")
    for i in range(n):
        cand = [(float(p[e]), atlas_names[cols[e]]) for e in o[starts[i]:ends[i]]]
        cand.append((float(p_un[i]), ""))
        cand.sort(key=lambda z: -z[0])
        for r, (pv, nm) in enumerate(cand[:top_k]):
            top_names[i, r] = nm
            top_p[i, r] = pv
    return conf, top_names, top_p, sk_it
