"""Choosing how to register two point sets: out-of-sample criteria that compare fitted models on
held-out points.

``register_cells(transform="auto")`` uses :func:`select_model` with the matching criterion
(:func:`heldout_matching_cost`); ``scripts/eval_selection_criteria.py`` compares the criteria on the
embryo pairs (``scripts/eval_register_models.py`` the earlier likelihood rules).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .._validation import as_points, describe, positive_float, positive_int

__all__ = ["heldout_log_likelihood", "heldout_matching_cost", "heldout_split", "select_model", "ModelSelection",
           "CRITERIA"]


def heldout_split(n: int, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask of the held-out points: a random ``fraction`` (at least one point, at most
    n - 1), reproducible from ``seed``."""
    n = positive_int(n, "n", minimum=2)
    fraction = positive_float(fraction, "fraction")
    if fraction >= 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    k = int(np.clip(round(fraction * n), 1, n - 1))
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).choice(n, k, replace=False)] = True
    return mask


def heldout_log_likelihood(moved, held, sigma2: float, *, w: float = 0.1, volume: float | None = None,
                           k: int = 32) -> float:
    """Mean log-likelihood of held-out fixed points under a fitted CPD mixture.

    The mixture of CPD: equal-weight isotropic Gaussians of variance ``sigma2`` at the ``moved``
    points, plus a uniform outlier component of weight ``w`` over ``volume`` (default the
    bounding box of ``held`` and ``moved`` together). Fit the model on the other fixed points, then
    compare models by this score (higher is better): a transform that bends to fit noise gets a
    small sigma2 and pays for it on points it has not seen. Only the ``k`` nearest centres of each
    held-out point enter the sum (the others are negligible at the fitted sigma2).
    """
    moved = as_points(moved, "moved")
    held = as_points(held, "held")
    sigma2 = positive_float(sigma2, "sigma2")
    d = held.shape[1]
    if volume is None:
        both = np.vstack([held, moved])
        volume = float(np.prod(np.maximum(both.max(0) - both.min(0), 1e-12)))
    from scipy.spatial import cKDTree

    kk = min(k, len(moved))
    dist, _ = cKDTree(moved).query(held, k=kk)
    dist = np.asarray(dist).reshape(len(held), kk)
    log_g = -0.5 * dist ** 2 / sigma2 - 0.5 * d * math.log(2 * math.pi * sigma2) - math.log(len(moved))
    mx = log_g.max(1)
    lg = mx + np.log(np.exp(log_g - mx[:, None]).sum(1))
    ll = np.logaddexp(math.log1p(-w) + lg, math.log(w) - math.log(volume)) if w > 0 else lg
    return float(ll.mean())


def heldout_matching_cost(moved, fixed, heldout, *, unmatched_cost: float, k: int = 30) -> float:
    """Mean matching cost of held-out fixed points: how far a fit leaves the points it did not see
    from their partners.

    The ``moved`` points (a model fitted to the fixed points outside ``heldout``) are matched
    one-to-one to *all* ``fixed`` points by :func:`xmodal.matching.match_points` (the ``k``
    nearest neighbours both ways, a point may stay unmatched at ``unmatched_cost``: the matching
    ``register_cells`` does). The score is the mean, over the held-out fixed points, of the
    distance to their partner, or ``unmatched_cost`` for those left unmatched (input units; lower
    is better). Matching against all fixed points, not the held-out ones alone, lets the training
    points compete for the moved points as they will in the final matching.

    Parameters
    ----------
    moved : (m, d) array
    fixed : (n, d) array
    heldout : (n,) bool array, at least one True
    unmatched_cost : positive float (input units)
    k : positive int
    """
    moved = as_points(moved, "moved")
    fixed = as_points(fixed, "fixed")
    if moved.shape[1] != fixed.shape[1]:
        raise ValueError(f"moved, fixed: expected points of the same dimension, got {moved.shape[1]}D and "
                         f"{fixed.shape[1]}D")
    mask = np.asarray(heldout)
    if mask.dtype != bool or mask.shape != (len(fixed),):
        raise ValueError(f"heldout: expected a ({len(fixed)},) bool mask, got {describe(heldout)}")
    if not mask.any():
        raise ValueError("heldout: expected at least one held-out point, got none")
    u = positive_float(unmatched_cost, "unmatched_cost")
    k = positive_int(k, "k")
    from ..matching import match_points

    m = match_points(moved, fixed, k=k, unmatched_cost=u)
    rows, cols = np.asarray(m.rows, dtype=np.int64), np.asarray(m.cols, dtype=np.int64)
    held = mask[cols]
    dist = np.linalg.norm(moved[rows[held]] - fixed[cols[held]], axis=1)
    n_held = int(mask.sum())
    return float((dist.sum() + u * (n_held - int(held.sum()))) / n_held)


def _median_nn(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(points).query(points, k=2)
    return float(np.median(dist[:, 1]))


@dataclass
class ModelSelection:
    """Result of :func:`select_model`.

    Attributes
    ----------
    best : the chosen candidate
    criterion : "matching" or "likelihood", the criterion that chose it
    scores : candidate -> the criterion's score averaged over the splits: mean held-out matching
        cost (input units, lower is better) or mean held-out log-likelihood (nats per point, higher
        is better)
    all_scores : criterion name -> (candidate -> score): both criteria, computed from the same fits
        (the one not used is a diagnostic)
    split_scores : one dict (candidate -> score of ``criterion``) per split
    heldout : (n,) bool mask of the first split's held-out fixed points
    margin : the margin used (the criterion's units)
    repeats : number of random splits
    unmatched_cost : the unmatched cost of the matching criterion (input units)
    """

    best: object
    scores: dict = field(default_factory=dict)
    heldout: np.ndarray | None = None
    margin: float = 0.0
    criterion: str = "matching"
    all_scores: dict = field(default_factory=dict)
    split_scores: list = field(default_factory=list)
    repeats: int = 1
    unmatched_cost: float | None = None


#: The criteria of :func:`select_model`, and the number of random held-out splits each averages by
#: default: the setting that chose the most accurate models on the 6 training embryo pairs
#: (``scripts/eval_selection_criteria.py``; matching cost 0.425 with 1 split, 0.430 with 3;
#: likelihood 0.420 with 1 split, 0.411 with 3).
CRITERIA = {"matching": 3, "likelihood": 1}

#: Higher is better for these criteria; lower for the others.
_HIGHER_IS_BETTER = {"likelihood": True, "matching": False}


def select_model(fixed, fit: Callable, candidates: Sequence, *, criterion: str = "matching",
                 fraction: float = 0.2, seed: int = 0, repeats: int | None = None, w: float = 0.1,
                 margin: float = 0.0, unmatched_cost: float | None = None, k: int = 30) -> ModelSelection:
    """Choose among registration models by how well a fit to part of the fixed points predicts the
    rest.

    For each of ``repeats`` random splits (seeds ``seed``, ``seed + 1``, ...; :func:`heldout_split`)
    a ``fraction`` of the fixed points is held out, every candidate is fitted to the other points by
    ``fit(candidate, fixed_train) -> (moved, sigma2)`` (the moved moving points and the fitted CPD
    variance), and scored on the held-out points:

    ``criterion="matching"`` (default)
        :func:`heldout_matching_cost`: the moved points are matched one-to-one to *all* fixed points
        (exact sparse assignment, ``k`` nearest neighbours, unmatched cost ``unmatched_cost``, as
        ``register_cells`` matches); the score is the mean cost of the held-out points (distance to
        their partner, ``unmatched_cost`` if unmatched). Lower is better: the held-out points did not
        shape the fit, so a model that bends to fit noise, or one too stiff to follow the specimen,
        leaves them far from their partners or unmatched.
    ``criterion="likelihood"``
        :func:`heldout_log_likelihood` of the held-out points under the fitted CPD mixture (outlier
        weight ``w`` over the bounding box of all fixed points). Higher is better.

    The scores are averaged over the splits, and the first candidate in the order given (list them
    simplest first) within ``margin`` of the best wins. Both criteria are computed from the same
    fits (``all_scores``; the likelihood is NaN for a fit that returns no positive ``sigma2``, which
    only ``criterion="likelihood"`` requires); only ``criterion`` chooses.

    Parameters
    ----------
    fixed : (n, d) array
    fit : callable ``(candidate, fixed_train) -> (moved, sigma2)``
    candidates : sequence of candidate labels (anything ``fit`` understands)
    criterion : {"matching", "likelihood"}
    fraction, seed : the held-out share and the seed of the first split
    repeats : int, optional
        Independent random splits averaged (``repeats`` times the cost). Default: 3 for
        "matching", 1 for "likelihood" (:data:`CRITERIA`, each criterion's best setting on the
        training embryo pairs).
    w : outlier weight of the CPD mixture (as in the fits), for the likelihood
    margin : what a simpler candidate may lose and still be chosen, in the criterion's units
        (input units for "matching", nats per held-out point for "likelihood")
    unmatched_cost : float, optional
        Cost of an unmatched point in the matching criterion (input units). Default 3 × the median
        nearest-neighbour distance within ``fixed`` (``register_cells``' default).
    k : nearest neighbours of the matching's candidate graph

    Notes
    -----
    On the C. elegans embryo pairs (6 candidates: rigid, affine, four deformable settings, after the
    same pre-alignment; ``scripts/eval_selection_criteria.py``) the matching criterion with 3 splits
    was chosen on the 6 training pairs (mean accuracy of its choices 0.430, the likelihood's best
    0.420); on the 22 held-out pairs it gave 0.431 against the likelihood's 0.397.
    """
    fix = as_points(fixed, "fixed")
    if not callable(fit):
        raise TypeError(f"fit: expected a callable (candidate, fixed_train) -> (moved, sigma2), got {describe(fit)}")
    if not isinstance(criterion, str) or criterion not in CRITERIA:
        raise ValueError(f"criterion: expected one of {', '.join(map(repr, CRITERIA))}, got {criterion!r}")
    candidates = list(candidates)
    if not candidates:
        raise ValueError("candidates: expected at least one candidate, got none")
    if len(fix) < 3:
        raise ValueError(f"fixed: expected at least 3 points to hold some out, got {len(fix)}")
    margin = positive_float(margin, "margin", allow_zero=True)
    repeats = CRITERIA[criterion] if repeats is None else positive_int(repeats, "repeats")
    seed = positive_int(seed, "seed", minimum=0)
    k = positive_int(k, "k")
    w = positive_float(w, "w", allow_zero=True)
    if w >= 1:
        raise ValueError(f"w: expected a number in [0, 1), got {w}")
    u = positive_float(unmatched_cost, "unmatched_cost", allow_none=True)
    if u is None:
        u = 3.0 * _median_nn(fix)
        if not u > 0:
            raise ValueError("fixed: the points coincide (median nearest-neighbour distance 0); "
                             "give unmatched_cost")
    volume = float(np.prod(np.maximum(fix.max(0) - fix.min(0), 1e-12)))
    masks = [heldout_split(len(fix), fraction, seed + r) for r in range(repeats)]
    splits = []
    for mask in masks:
        split = {"matching": {}, "likelihood": {}}
        for c in candidates:
            out = fit(c, fix[~mask])
            if not isinstance(out, tuple) or len(out) != 2:
                raise TypeError(f"fit: expected it to return (moved, sigma2), got {describe(out)} for {c!r}")
            moved = as_points(out[0], f"fit({c!r}) moved points")
            if moved.shape[1] != fix.shape[1]:
                raise ValueError(f"fit: expected {fix.shape[1]}D moved points for {c!r}, got {moved.shape[1]}D")
            # the likelihood needs the fit's variance; as a mere diagnostic it is NaN without one
            s2 = out[1]
            usable = isinstance(s2, numbers.Real) and not isinstance(s2, bool) and math.isfinite(s2) and s2 > 0
            split["likelihood"][c] = (heldout_log_likelihood(moved, fix[mask], s2, w=w, volume=volume)
                                      if usable or criterion == "likelihood" else float("nan"))
            split["matching"][c] = heldout_matching_cost(moved, fix, mask, unmatched_cost=u, k=k)
        splits.append(split)
    all_scores = {name: {c: float(np.mean([s[name][c] for s in splits])) for c in candidates} for name in CRITERIA}
    scores = all_scores[criterion]
    if _HIGHER_IS_BETTER[criterion]:
        best = max(scores.values())
        chosen = next(c for c in candidates if scores[c] >= best - margin)
    else:
        best = min(scores.values())
        chosen = next(c for c in candidates if scores[c] <= best + margin)
    return ModelSelection(best=chosen, scores=scores, heldout=masks[0], margin=margin, criterion=criterion,
                          all_scores=all_scores, split_scores=[s[criterion] for s in splits], repeats=repeats,
                          unmatched_cost=u)
