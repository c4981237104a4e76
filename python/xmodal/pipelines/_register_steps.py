"""The steps of :func:`xmodal.pipelines.register_cells`, in the order it runs them.

    pre-align (principal axes or an elastix intensity registration)
      -> fit (CPD, coarse to fine)
      -> match (sparse k-NN graph, exact assignment)
      -> post-steps on the result (error estimates, smFISH spot counts, image warp)

Each step takes plain arrays and options and returns what the next one needs; the post-steps take
the :class:`~xmodal.pipelines.CellRegistration` and fill one of its fields. The options are
validated by :func:`register_cells` before the first step runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._validation import as_points
from ..io import load_points

log = logging.getLogger("xmodal.pipelines")


@dataclass
class Images:
    """The two images that drive elastix (intensity pre-alignment, warp) and their voxel sizes."""

    fixed: Any = None
    moving: Any = None
    fixed_spacing: Any = None
    moving_spacing: Any = None
    parameters: Mapping[str, Any] | None = None

    def require(self, why: str) -> None:
        if self.fixed is None or self.moving is None:
            raise ValueError(f"fixed_image, moving_image: {why}")

    def register(self, preset: str, out: Path | None, **points):
        """elastix registration of the moving image onto the fixed one (see :func:`elastix_register`)."""
        from .elastix import elastix_register

        return elastix_register(np.asarray(self.fixed, np.float32), np.asarray(self.moving, np.float32),
                                preset=preset, fixed_spacing=self.fixed_spacing, moving_spacing=self.moving_spacing,
                                parameters=self.parameters, out=out, **points)


class OutputFolder:
    """The run's output folder: checked before any work, staged on first use, committed at the end.

    Files go to the sibling ``<out>.xmodal-partial`` (:func:`xmodal.io.begin_folder`), renamed to
    ``out`` when complete (:func:`xmodal.io.commit_folder`). Without ``out`` nothing is written and
    :meth:`path` is None.
    """

    def __init__(self, out):
        from ..io import check_output_folder

        self.out = None if out is None else check_output_folder(out, name="out")
        self._stage = None

    def path(self, name: str | None = None) -> Path | None:
        """The staging folder (or a path inside it), or None without an output folder."""
        if self.out is None:
            return None
        if self._stage is None:
            from ..io import begin_folder

            self._stage = begin_folder(self.out, name="out")
        return self._stage if name is None else self._stage / name

    def commit(self, result) -> None:
        """Write the registration outputs, rename the folder into place, record the final paths."""
        from ..io import commit_folder
        from ._report import write_registration_outputs

        stage = self.path()
        written = write_registration_outputs(result, stage)
        commit_folder(stage, self.out)
        result.outputs = {k: str(self.out / Path(v).relative_to(stage)) for k, v in written.items()}


# ----------------------------------------------------------------------------------- 1. pre-align

#: Points of each set the orientation search of the pre-alignment works on (farthest-point
#: subsamples of larger sets; the shape of the whole cloud at a fixed cost).
PREALIGN_POINTS = 500

@dataclass
class Prealigned:
    """Outcome of the pre-alignment step: the moving points in (roughly) the fixed frame."""

    moved: np.ndarray
    transform: Any = None  # AffineTransform, or None when the inputs were taken as aligned
    prealign: Any = None  # PrealignResult of the principal-axes search, if it ran


def prealign_step(moving: np.ndarray, fixed: np.ndarray, *, rotations, scale: bool, seed: int,
                  intensity_preset: str | None, images: Images, folder: OutputFolder,
                  allow_reflection: bool = False) -> Prealigned:
    """Principal-axes pre-alignment (``rotations`` "all" / "flips"; mirror images too with
    ``allow_reflection``), an elastix intensity registration (``intensity_preset``), or none
    (``rotations`` False)."""
    from ..registration import AffineTransform

    if intensity_preset is not None:
        reg = images.register(intensity_preset, folder.path("elastix-prealign"))
        matrix, offset = reg.affine_moving_to_fixed()
        return Prealigned(moving @ matrix.T + offset, AffineTransform(matrix, offset))
    if rotations:
        from .prealign import fast_prealign

        pre = fast_prealign(moving, fixed, n_points=PREALIGN_POINTS, rotations=rotations, scale=scale, seed=seed,
                            allow_reflection=allow_reflection)
        return Prealigned(pre.apply(moving), AffineTransform(pre.matrix, pre.offset), pre)
    return Prealigned(moving)


# ----------------------------------------------------------------------------------- 2. fit

@dataclass
class Fit:
    """Outcome of the CPD step: the transforms of its stages and the moving points after them."""

    moved: np.ndarray
    transforms: list = field(default_factory=list)
    iterations: dict = field(default_factory=dict)
    sigma2: float = float("nan")  # CPD variance of the last stage (input units squared)


def cpd_stages(transform: str, scale: bool) -> list[str]:
    """The CPD models run coarse to fine for the final model ``transform``: rigid (similarity with
    ``scale``) for "rigid" and "similarity" (then similarity), affine first for "affine" and
    "deformable" (then deformable).

    An affine or deformable fit starts with the affine stage itself, not with a rigid stage: the
    pre-alignment has already refined the orientation by rigid CPD, and a second rigid fit on all
    cells can turn a good orientation away when the specimens differ in shape (rigid CPD aligns
    the long axes of the two mixtures, not the cells): on the 28 C. elegans embryo pairs, from the
    pose of the true correspondences, rigid -> affine -> deformable names 0.382 of the cells and
    affine -> deformable 0.422 (worst pair 0.07 against 0.25; ``scripts/eval_identity.py``).
    """
    if transform in ("affine", "deformable"):
        return ["affine"] + (["deformable"] if transform == "deformable" else [])
    stages = ["similarity" if scale else "rigid"]
    if transform == "similarity" and not scale:
        stages.append("similarity")
    return stages


#: Default width of the deformable field, in units of the RMS radius of the fixed cells
#: (:func:`xmodal.pipelines.prealign.rms_radius`): a property of the specimen's shape, not of how
#: densely its cells are sampled. On the C. elegans embryos (about 350 cells, RMS radius 4.8
#: median nearest-neighbour distances) it is the former default of 2 nearest-neighbour distances;
#: on 5.7k Platynereis nuclei (radius 21 nn) it is 8.5 nn, where 2 nn bends one side onto the
#: wrong neighbours of the other (docs/identity.md).
DEFORMABLE_BETA = 0.4

#: Default regularisation of the deformable field, in units of 1 / R^2 (R the RMS radius of the
#: fixed cells; :func:`xmodal.cpd` takes ``lam`` in input units, where a fixed value is stiffer the
#: larger the coordinates). Chosen on the 6 training embryo pairs with :data:`DEFORMABLE_BETA`:
#: 10 / R^2: 0.431, 100 / R^2: 0.451, 1000 / R^2: 0.424 of the lineage names (the former lam = 2
#: in pixels, 6.5 x 10^4 / R^2 there: 0.377, the affine fit's).
DEFORMABLE_LAM = 100.0


def fit_step(moving: np.ndarray, fixed: np.ndarray, *, transform: str, scale: bool,
             cpd_options: Mapping | None, deformable_options: Mapping | None, nn: float,
             cache: dict | None = None, landmarks=None, radius: float | None = None) -> Fit:
    """CPD coarse to fine (:func:`cpd_stages`), every stage starting where the previous one ended.

    Defaults: w = 0.1, tol = 1e-6, 100 iterations in a rigid or similarity first stage and 150 in
    an affine first stage and in the others (``cpd_options`` override the first stage's); the
    deformable stage uses ``beta`` = :data:`DEFORMABLE_BETA` × ``radius`` and ``lam`` =
    :data:`DEFORMABLE_LAM` / ``radius``² (``radius``: the RMS radius of the fixed cells; without it
    the former input-unit defaults, ``beta`` = 2 × ``nn``, the median nearest-neighbour distance,
    and ``lam`` = 2); ``deformable_options`` override them (``lam`` in input units, as
    :func:`xmodal.cpd` takes it). The iteration counts are reported per
    stage name (a rigid or similarity first stage as "rigid"). ``cache`` (a dict kept by the caller) reuses the
    stages that several fits of the same points share (the model selection of ``transform="auto"``).
    ``landmarks`` ((k, 2) moving, fixed indices: reviewed pairs) guide every stage.
    """
    from ..registration import cpd

    from .prealign import _trial_fit

    fit = Fit(moved=moving)
    chain = ()
    stages = cpd_stages(transform, scale)
    for i, stage in enumerate(stages):
        opts = {"w": 0.1, "max_iter": 100 if stage in ("rigid", "similarity") and i == 0 else 150, "tol": 1e-6}
        if i == 0:
            opts.update(cpd_options or {})
        elif stage == "deformable":
            opts.update({"beta": 2.0 * nn, "lam": 2.0} if radius is None else
                        {"beta": DEFORMABLE_BETA * radius, "lam": DEFORMABLE_LAM / radius ** 2})
            opts.update(deformable_options or {})
        if landmarks is not None:
            opts["landmarks"] = landmarks
        chain = chain + ((stage, tuple(sorted((k, repr(v)) for k, v in opts.items()))),)
        res = None if cache is None else cache.get(chain)
        if res is None:
            # an earlier stage's iteration cap is deliberate (the next stage goes on from there):
            # only the last stage reports a fit that did not converge
            run = cpd if i == len(stages) - 1 else _trial_fit(cpd)
            res = run(fit.moved, fixed, transform=stage, **opts)
            if cache is not None:
                cache[chain] = res
        fit.transforms.append(res.transform)
        fit.moved = np.asarray(res.moved, dtype=np.float64)
        fit.sigma2 = float(res.sigma2)
        fit.iterations["rigid" if i == 0 and stage in ("rigid", "similarity") else stage] = int(res.iterations)
        log.info("register_cells: %s CPD, %d iterations", stage, int(res.iterations))
    return fit


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
    cells best predict the other 20 % (:func:`xmodal.registration.selection.select_model`).

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

    subsampled = max(len(moving), len(fixed)) > SELECT_POINTS
    if subsampled:
        from ..registration import farthest_point_centers

        moving = moving[np.sort(farthest_point_centers(moving, min(SELECT_POINTS, len(moving))))]
        fixed = fixed[np.sort(farthest_point_centers(fixed, min(SELECT_POINTS, len(fixed))))]
    # the unmatched cost of register_cells' matching, on the cells compared (a subsample is sparser)
    unmatched = 3.0 * (nn if not subsampled else median_nn_distance(fixed))
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
              "heldout_fraction": fraction, "seed": seed, "repeats": sel.repeats,
              "radius": radius, "final_fit": "refined from the subsample fit" if subsampled else "all cells"}
    log.info("register_cells: transform='auto' chose %s (%s)", record["chosen"], sel.criterion)
    return Selection(sel.best[0], options(sel.best), record, fits.get(sel.best) if subsampled else None)


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


# ----------------------------------------------------------------------------------- 3. match

def match_step(moved: np.ndarray, fixed: np.ndarray, *, matching: str, k: int, radius: float | None,
               unmatched_cost: float | None, reviewed=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact assignment on the sparse k-NN graph of the registered points (keeping the accepted
    pairs of ``reviewed`` and never proposing its rejected ones, see
    :func:`xmodal.pipelines._reviewed.constrained_match`).

    Returns the matched moving and fixed row indices and the pair distances (physical units).
    """
    from ..matching import match_points

    if reviewed is not None:
        from ._reviewed import constrained_match

        return constrained_match(moved, fixed, reviewed, k=k, radius=radius, unmatched_cost=unmatched_cost)
    if matching == "cover":
        m = match_points(moved, fixed, k=k, radius=radius, mode="cover")
    else:
        m = match_points(moved, fixed, k=k, radius=radius, unmatched_cost=unmatched_cost, mode="one-to-one")
    mi, fi = np.asarray(m.rows, dtype=np.int64), np.asarray(m.cols, dtype=np.int64)
    return mi, fi, np.linalg.norm(moved[mi] - fixed[fi], axis=1)


def match_confidence(moved: np.ndarray, fixed: np.ndarray, mi: np.ndarray, fi: np.ndarray) -> np.ndarray:
    """Calibrated probability that each matched pair (moving ``mi``, fixed ``fi``) is right: the
    posterior marginal of the pair, its distance, its margin to the closest rival and the spread of
    all pairs, mapped by a logistic calibration fitted once on training embryo pairs (see
    :mod:`xmodal.pipelines._confidence`)."""
    from ._confidence import match_confidence as calibrated

    return calibrated(moved, fixed, mi, fi)


# ----------------------------------------------------------------------------------- 4. post-steps

def add_error_estimates(result) -> None:
    """Rigid and affine fits of the matched pairs with their error estimates at every moving point
    (``result.errors``); skipped with fewer than 2 (d + 1) pairs.

    Per model: the fit, the 95 % prediction regions, the leave-one-out residuals of the pairs; for
    the rigid fit also Fitzpatrick's predicted TRE (FLE from the fit residual).
    """
    from ..registration import uncertainty as u

    src, dst = result.moving_points[result.moving_index], result.fixed_points[result.fixed_index]
    if len(src) < 2 * (src.shape[1] + 1):
        return
    targets = result.moving_points
    out = {}
    for kind in ("rigid", "affine"):
        fit = u.fit_rigid(src, dst) if kind == "rigid" else u.fit_affine(src, dst)
        out[kind] = {
            "fit": fit,
            "region": u.prediction_region(fit, targets, level=0.95),
            "loo": u.leave_one_out_residuals(src, dst, transform=kind),
        }
    out["rigid"]["tre"] = u.fitzpatrick_tre(src, targets, fre=out["rigid"]["fit"].rms)
    result.errors = out


def add_spot_counts(result, spots, max_distance: float, *, spacing) -> None:
    """smFISH spots (moving frame) counted per fixed cell, per replicate and their mean
    (``result.spot_counts``): each spot goes to the nearest fixed cell in the registered frame
    within ``max_distance``."""
    from scipy.spatial import cKDTree

    fixed = result.fixed_points
    items = spots.items() if isinstance(spots, Mapping) else ((f"replicate_{i}", s) for i, s in enumerate(spots))
    tree = cKDTree(fixed)
    counts = {}
    for name, s in items:
        label = f"spots[{name!r}]"
        pts = as_points(s, label) if isinstance(s, np.ndarray) else load_points(s, spacing=spacing, name=label).points
        if pts.shape[1] != fixed.shape[1]:
            raise ValueError(f"{label}: expected {fixed.shape[1]}D points, got {pts.shape[1]}D")
        dist, idx = tree.query(result.transform.apply(pts), distance_upper_bound=max_distance)
        ok = np.isfinite(dist)
        counts[str(name)] = np.bincount(idx[ok], minlength=len(fixed))
    if not counts:
        raise ValueError("spots: expected at least one replicate, got none")
    counts["mean"] = np.mean(np.stack(list(counts.values())), axis=0)
    result.spot_counts = counts


def add_warped_images(result, warp_images: Mapping[str, Any], images: Images, *, preset: str,
                      folder: OutputFolder) -> None:
    """The ``warp_images`` (moving modality) resampled on the fixed image grid by a landmark-guided
    elastix registration of the two images, the matched cells as corresponding points
    (``result.warped``)."""
    from .elastix import elastix_warp

    reg = images.register(preset, folder.path("elastix"),
                          fixed_points=result.fixed_points[result.fixed_index],
                          moving_points=result.moving_points[result.moving_index])
    result.warped = {name: elastix_warp(img, reg, spacing=images.moving_spacing,
                                        labels=np.issubdtype(np.asarray(img).dtype, np.integer))
                     for name, img in warp_images.items()}
