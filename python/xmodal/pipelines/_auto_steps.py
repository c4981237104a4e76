"""The model-selection step of :func:`xmodal.pipelines.register_cells` (``transform="auto"``):
the candidate models, their out-of-sample comparison on the fixed cells (:func:`select_step`) and,
for sets compared on subsamples, the final fit from the chosen candidate's fit (:func:`refine_step`).

It runs between the pre-alignment and the match step of :mod:`xmodal.pipelines._register_steps`
(whose ``fit_step`` fits every candidate).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ._register_steps import Fit, cpd_stages, fit_step

log = logging.getLogger("xmodal.pipelines")

#: The models ``transform="auto"`` chooses from, simplest first: (final CPD model, deformable beta in
#: units of the RMS radius R of the fixed cells, lambda in units of 1 / R^2): scale-free, unlike
#: :func:`xmodal.cpd`'s input-unit ``lam`` (the former grid, lambda 2 or 8, was so stiff on the
#: embryos, in pixels, that every deformable fit stayed affine). Chosen on the 6 training embryo
#: pairs (docs/identity.md): lambda 100 and 1000 / R^2 beat the affine fit (0.41-0.45 against
#: 0.38), 10 / R^2 a little worse, 1 / R^2 bends too much. No similarity candidate: a size change
#: is affine too, and its choices were the only ones below rigid (by up to 0.021, embryo pairs).
AUTO_CANDIDATES = (("rigid", None, None), ("affine", None, None),
                   ("deformable", 0.4, 100.0), ("deformable", 0.4, 1000.0),
                   ("deformable", 0.8, 100.0), ("deformable", 0.8, 1000.0))


#: Most cells of each set the model selection of ``transform="auto"`` fits its candidates to
#: (farthest-point subsamples of larger sets).
SELECT_POINTS = 1500

#: ``transform="auto"`` holds out *moving* cells instead of fixed ones when the moving set has fewer
#: than this share of the fixed set's cells: then many fixed cells have no partner, and a flexible
#: model that reaches them wins a fixed-side score while naming fewer cells right. Embryo pairs with
#: 20 % of the moving cells removed: 0.306 -> 0.390 held out (``scripts/eval_selection_side.py``,
#: docs/identity.md); complete pairs (sizes within a few cells) keep the fixed side.
MOVING_HOLDOUT_SHARE = 0.9

#: Fewest cells of each set for which ``transform="auto"`` compares its candidates on held-out
#: cells: below, 20 % held out leaves too few to fit an affine or deformable model (3D affine: 12
#: parameters) or to score it, and the rigid model, with the fewest parameters, is used.
AUTO_MIN_CELLS = 20

#: Iterations of the final fit on all cells when the model was chosen on subsamples: it starts
#: from the chosen candidate's fit, carried to all cells (:func:`refine_step`).
REFINE_ITER = 50


def candidate_label(candidate) -> str:
    """"rigid", "affine", ..., "deformable(beta=0.4R,lam=100/R^2)" for an :data:`AUTO_CANDIDATES`
    entry (R: the RMS radius of the fixed cells)."""
    kind, bf, lam = candidate
    return kind if kind != "deformable" else f"deformable(beta={bf:g}R,lam={lam:g}/R^2)"


@dataclass
class Selection:
    """Outcome of :func:`select_step`: the chosen final model, its deformable options (None unless
    deformable), the record for the result, and, when the candidates were compared on
    subsamples, the chosen candidate's fit there (``warm``, the start of :func:`refine_step`)."""

    model: str
    deformable_options: dict | None
    record: dict
    warm: Fit | None = None


#: The criterion of ``transform="auto"`` (:func:`xmodal.registration.selection.select_model`),
#: chosen on the 6 training embryo pairs (``scripts/eval_selection_criteria.py``): the mean
#: one-to-one matching cost of the held-out cells, averaged over 3 random splits.
SELECT_CRITERION = "matching"

_CRITERION_TEXT = {
    "matching": "held-out matching cost (mean distance of the held-out fixed cells to their partner in the "
                "one-to-one matching of all fixed cells, the unmatched cost if unmatched; input units, "
                "lower is better)",
    "likelihood": "held-out log-likelihood (nats per point, higher is better)",
}


def select_step(moving: np.ndarray, fixed: np.ndarray, *, scale: bool, cpd_options: Mapping | None,
                deformable_options: Mapping | None, nn: float, seed: int, fraction: float = 0.2,
                repeats: int | None = None, radius: float | None = None, criterion: str = SELECT_CRITERION,
                k: int = 30) -> Selection:
    """``transform="auto"``: the model of :data:`AUTO_CANDIDATES` whose fits to 80 % of the fixed
    cells best predict the other 20 % (:func:`xmodal.registration.selection.select_model`); rigid,
    without a comparison, when either set has fewer than :data:`AUTO_MIN_CELLS` cells.

    ``criterion="matching"`` (default, :data:`SELECT_CRITERION`): the moved cells of each fit are
    matched one-to-one to all fixed cells (``k`` nearest neighbours, unmatched cost 3 × the median
    nearest-neighbour distance of the fixed cells compared: ``register_cells``' matching), and the
    mean cost of the held-out cells (distance to their partner, the unmatched cost if unmatched;
    lower is better) is averaged over ``repeats`` random splits (default 3).
    ``criterion="likelihood"``: the likelihood of the held-out cells under the fitted CPD mixture
    (outlier weight 0.1; default 1 split). Both criteria are computed from the same fits and
    recorded; only ``criterion`` chooses. ``radius``: the RMS radius of all fixed cells (the unit of
    the deformable widths; default that of ``fixed``).

    Sets larger than :data:`SELECT_POINTS` are compared on farthest-point subsamples of that many
    cells (the shape of the whole clouds at a fixed cost; the widths stay in physical units);
    the chosen candidate's fit on the subsample (first split) is returned as ``warm``.
    """
    from ..registration.selection import select_model
    from .prealign import median_nn_distance, rms_radius

    radius = rms_radius(fixed) if radius is None else float(radius)
    if min(len(moving), len(fixed)) < AUTO_MIN_CELLS:
        why = (f"too few cells to compare models on held-out cells ({len(moving)} moving, {len(fixed)} fixed; "
               f"at least {AUTO_MIN_CELLS} of each): the rigid model, which has the fewest parameters")
        log.info("register_cells: transform='auto' chose rigid (%s)", why)
        return Selection("rigid", None, {"chosen": "rigid", "criterion": why, "criterion_name": None,
                                         "cells": [len(moving), len(fixed)], "scores": {}, "all_scores": {},
                                         "split_scores": [], "radius": radius})
    caches: dict = {}
    fits: dict = {}

    def options(cand):
        kind, bf, lam = cand
        return None if kind != "deformable" else {"beta": bf * radius, "lam": lam / radius ** 2,
                                                  **(deformable_options or {})}

    def fit(cand, fixed_train):
        # the stages shared by the candidates are fitted once per training split
        key = hashlib.sha1(np.ascontiguousarray(fixed_train).tobytes()).hexdigest()
        cache = caches.setdefault(key, {})
        f = fit_step(moving, fixed_train, transform=cand[0], scale=scale, cpd_options=cpd_options,
                     deformable_options=options(cand), nn=nn, cache=cache, radius=radius)
        if len(caches) == 1:  # the first split's fits: the warm start of the final fit
            fits[cand] = f
        return f.moved, f.sigma2

    side = "moving" if criterion == "matching" and len(moving) < MOVING_HOLDOUT_SHARE * len(fixed) else "fixed"
    subsampled = max(len(moving), len(fixed)) > SELECT_POINTS
    if subsampled:
        from ..registration import farthest_point_centers

        moving = moving[np.sort(farthest_point_centers(moving, min(SELECT_POINTS, len(moving))))]
        fixed = fixed[np.sort(farthest_point_centers(fixed, min(SELECT_POINTS, len(fixed))))]
    # the unmatched cost of register_cells' matching, on the cells compared (a subsample is sparser)
    unmatched = 3.0 * (nn if not subsampled else median_nn_distance(fixed))
    if side == "moving":
        sel = _select_moving_side(moving, fixed, lambda c, m, cache: fit_step(
            m, fixed, transform=c[0], scale=scale, cpd_options=cpd_options, deformable_options=options(c), nn=nn,
            cache=cache, radius=radius), fraction=fraction, seed=seed, repeats=repeats, unmatched=unmatched, k=k, fits=fits)
    else:
        sel = select_model(fixed, fit, AUTO_CANDIDATES, criterion=criterion, fraction=fraction, seed=seed, w=0.1,
                           repeats=repeats, unmatched_cost=unmatched, k=k)

    def labelled(scores):
        return {candidate_label(c): float(v) for c, v in scores.items()}

    record = {"chosen": candidate_label(sel.best), "criterion": _CRITERION_TEXT[sel.criterion],
              "criterion_name": sel.criterion, "cells": [len(moving), len(fixed)],
              "scores": labelled(sel.scores),
              "all_scores": {name: labelled(v) for name, v in sel.all_scores.items()},
              "split_scores": [labelled(v) for v in sel.split_scores],
              "unmatched_cost": sel.unmatched_cost, "k": k,
              "heldout_fraction": fraction, "heldout_side": side, "seed": seed, "repeats": sel.repeats,
              "radius": radius, "final_fit": "refined from the subsample fit" if subsampled else "all cells"}
    log.info("register_cells: transform='auto' chose %s (%s)", record["chosen"], sel.criterion)
    return Selection(sel.best[0], options(sel.best), record, fits.get(sel.best) if subsampled else None)


def _select_moving_side(moving, fixed, fit, *, fraction, seed, repeats, unmatched, k, fits):
    """The matching criterion with *moving* cells held out (see :data:`MOVING_HOLDOUT_SHARE`): each
    candidate is fitted (``fit(candidate, moving_train, cache) -> Fit``; ``cache``: one dict per
    split, for the stages the candidates share) to 80 % of the moving cells, its
    transforms carried to all moving cells, and those matched one-to-one to all fixed cells; the
    score is the held-out moving cells' mean cost (distance to their partner, ``unmatched`` if
    unmatched; lower is better), averaged over ``repeats`` (default 3) splits. The first split's
    fits go into ``fits`` (the warm start of the final fit on subsamples)."""
    from ..registration.selection import ModelSelection, heldout_matching_cost, heldout_split

    repeats = 3 if repeats is None else int(repeats)
    masks = [heldout_split(len(moving), fraction, seed + r) for r in range(repeats)]
    split_scores = []
    for r, mask in enumerate(masks):
        scores, cache = {}, {}
        for cand in AUTO_CANDIDATES:
            f = fit(cand, moving[~mask], cache)
            moved = np.asarray(moving, np.float64)
            for t in f.transforms:
                moved = t.apply(moved)
            if r == 0:
                fits[cand] = Fit(moved=moved, transforms=f.transforms, iterations=f.iterations, sigma2=f.sigma2)
            # the one-to-one matching is symmetric: the fixed cells matched to all moved cells
            scores[cand] = heldout_matching_cost(fixed, moved, mask, unmatched_cost=unmatched, k=k)
        split_scores.append(scores)
    mean = {c: float(np.mean([s[c] for s in split_scores])) for c in AUTO_CANDIDATES}
    best = min(AUTO_CANDIDATES, key=lambda c: mean[c])
    return ModelSelection(best=best, scores=mean, heldout=masks[0], margin=0.0, criterion="matching",
                          all_scores={"matching": mean}, split_scores=split_scores, repeats=repeats,
                          unmatched_cost=unmatched)


def refine_step(moving: np.ndarray, fixed: np.ndarray, warm: Fit, *, transform: str, scale: bool,
                cpd_options: Mapping | None, deformable_options: Mapping | None, landmarks=None,
                max_iter: int | None = None) -> Fit:
    """The final fit of ``transform="auto"`` on large sets, started from the chosen candidate's fit
    on the subsamples (``warm``). A linear model: its subsample fit carried to all moving cells,
    then refined on all cells (at most ``max_iter``, default :data:`REFINE_ITER`, iterations from
    the subsample fit's variance). A deformable model: the subsample's affine stage carried, then
    the deformable stage on all cells (150 iterations from CPD's initial variance; refining the
    carried subsample field instead found 0.58 of the Platynereis partners against 0.63).
    """
    from ..registration import cpd

    stages = cpd_stages(transform, scale)
    stage = stages[-1]
    carried = warm.transforms[:1] if stage == "deformable" else warm.transforms
    moved = np.asarray(moving, dtype=np.float64)
    for t in carried:
        moved = t.apply(moved)
    opts = {"w": 0.1, "tol": 1e-6}
    if stage == "deformable":
        opts.update(max_iter=150, **(deformable_options or {}))
    else:
        if len(stages) == 1:
            opts.update(cpd_options or {})
        opts["max_iter"] = REFINE_ITER if max_iter is None else max_iter
        if np.isfinite(warm.sigma2) and warm.sigma2 > 0:
            opts["sigma2"] = warm.sigma2
    if landmarks is not None:
        opts["landmarks"] = landmarks
    res = cpd(moved, fixed, transform=stage, **opts)
    sub = {f"{k}_subsample": v for k, v in warm.iterations.items()}
    if stage == "deformable":
        sub = {k: v for k, v in sub.items() if not k.startswith("deformable")}
    fit = Fit(moved=np.asarray(res.moved, dtype=np.float64), transforms=list(carried) + [res.transform],
              iterations={**sub, stage: int(res.iterations)}, sigma2=float(res.sigma2))
    log.info("register_cells: %s CPD on all cells from the subsample fit, %d iterations", stage,
             int(res.iterations))
    return fit
