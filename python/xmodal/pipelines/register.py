"""Cross-modal cell registration: the smFISH-to-EM atlas workflow, generalised.

    points or label images (two modalities, physical units)
      -> pre-alignment (principal axes + proper rotations, scored by the matching objective)
      -> CPD (rigid, similarity, affine, or affine then deformable)
      -> sparse k-NN cost matrix -> exact assignment (one-to-one with an unmatched cost, or cover)
      -> registration error estimates (prediction regions, leave-one-out residuals, TRE)
      -> optional smFISH spot counts per matched cell
      -> outputs in one folder (transform JSON, match and cell tables, QC report, provenance)

:func:`register_cells` checks its options, then runs the steps of
:mod:`xmodal.pipelines._register_steps` in this order: ``prealign_step`` -> (``transform="auto"``:
``select_step`` of :mod:`xmodal.pipelines._auto_steps`) -> ``fit_step`` (or ``refine_step``) ->
``match_step`` -> post-steps that take the result (``add_error_estimates``, ``add_spot_counts``,
``add_warped_images``) -> the output folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._progress import timed as _timed
from .._validation import as_bool, choice, positive_float, positive_int
from ..io import load_points
from ..registration.transforms import CompositeTransform
from ._auto_steps import refine_step, select_step
from ._inputs import check_cell_sets, in_fixed_units
from ._register_steps import (
    Images,
    OutputFolder,
    add_error_estimates,
    add_spot_counts,
    add_warped_images,
    fit_step,
    load_spots,
    prealign_step,
)
from ._match_step import add_feature_stage, check_feature_options, match_cells
from .prealign import PrealignResult, median_nn_distance, rms_radius

log = logging.getLogger("xmodal.pipelines")

_TRANSFORMS = ("auto", "rigid", "similarity", "affine", "deformable")


@dataclass
class CellRegistration:
    """Result of :func:`register_cells`.

    Attributes
    ----------
    fixed_index, moving_index : (k,) int arrays
        Matched pairs as row indices into the fixed and moving point sets.
    fixed_ids, moving_ids : (k,) arrays
        The ids of the matched points (table id column, label values, or row numbers).
    fixed_cell_ids, moving_cell_ids : (n_fixed,), (n_moving,) arrays
        The ids of every point, in input order (``fixed_ids == fixed_cell_ids[fixed_index]``).
    transform : CompositeTransform
        Maps moving points (physical units) into the fixed frame; ``transform.apply(new_points)``.
    moved : (n_moving, d) array
        All moving points in the fixed frame.
    distances : (k,) array
        Distance of each matched pair in the fixed frame (physical units).
    confidence : (k,) array in [0, 1]
        Posterior probability of each matched pair (``match_confidence`` in
        :mod:`xmodal.pipelines._register_steps`): low where rival partners are about as close.
    errors : dict or None
        Registration error estimates of a rigid and an affine fit to the matched pairs
        (see :func:`xmodal.registration.uncertainty`): prediction regions at the moving points,
        leave-one-out residuals, Fitzpatrick's TRE.
    spot_counts : dict or None
        Per replicate, spot counts per fixed point (length n_fixed), and their mean.
    warped : dict or None
        The ``warp_images`` resampled on the fixed image grid (name -> array).
    prealign : PrealignResult or None
    model_selection : dict or None
        With ``transform="auto"``: the chosen model (``"chosen"``), the criterion (``"criterion_name"``
        "matching" or "likelihood", ``"criterion"`` in words) and its score for every candidate
        (``"scores"``: mean held-out matching cost in physical units, lower is better, or held-out
        log-likelihood in nats per cell, higher is better), both criteria (``"all_scores"``), the
        scores of each split (``"split_scores"``), the splits, seed and unmatched cost used.
    features : dict or None
        With features: the weight used (``"feature_weight"``), the standardisation and, for
        ``feature_weight="auto"``, the held-out likelihoods that chose it (``"selection"``).
    outputs : dict of output name -> path (when ``out`` was given)
    timings : dict of step -> seconds
    """

    fixed_index: np.ndarray
    moving_index: np.ndarray
    fixed_ids: np.ndarray
    moving_ids: np.ndarray
    transform: CompositeTransform
    moved: np.ndarray
    distances: np.ndarray
    fixed_points: np.ndarray
    moving_points: np.ndarray
    confidence: np.ndarray | None = None
    fixed_cell_ids: np.ndarray | None = None
    moving_cell_ids: np.ndarray | None = None
    errors: dict | None = None
    spot_counts: dict | None = None
    warped: dict | None = None
    prealign: PrealignResult | None = None
    model_selection: dict | None = None
    features: dict | None = None
    cpd_iterations: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    @property
    def n_matched(self) -> int:
        return int(len(self.fixed_index))


def _pair(given, default):
    return default if given is None else tuple(given)


def register_cells(fixed, moving, *, transform: str = "auto", matching: str = "one-to-one", spacing=None,
                   fixed_spacing=None, moving_spacing=None, id_column: str | None = None, prealign: bool | str = True,
                   scale: bool = False, cpd_options: Mapping[str, Any] | None = None,
                   deformable_options: Mapping[str, Any] | None = None, k: int = 30, radius: float | None = None,
                   unmatched_cost: float | str | None = "auto", errors: bool = True,
                   spots: Mapping[str, Any] | Sequence[Any] | None = None, spot_max_distance: float | None = None,
                   warp_images: Mapping[str, Any] | None = None, fixed_image=None, moving_image=None,
                   image_spacing=None, warp_preset: str = "bspline-landmarks", intensity_preset: str | None = None,
                   elastix_parameters: Mapping[str, Any] | None = None, out: str | Path | None = None,
                   seed: int = 0, allow_reflection: bool = False, reviewed=None, fixed_features=None,
                   moving_features=None, feature_weight: float | str = "auto", feature_cpd: bool = True,
                   selection_criterion: str = "matching") -> CellRegistration:
    """Register two sets of cells (points, centroid tables or label images) and match them.

    Parameters
    ----------
    fixed, moving : (n, d) array, table path (.csv, .tsv, .parquet) or label image (array or
        .npy/.tif/.zarr path)
        Cells of the two modalities. Points and tables are in physical units (µm, say), columns
        (z, y, x); label images give their object centroids (``*_spacing`` = voxel size, by
        default the one an OME-Zarr declares, else 1).
    transform : {"auto", "rigid", "similarity", "affine", "deformable"}
        Final CPD model. The CPD stages run coarse to fine, each from where the previous ended:
        rigid (similarity when ``scale``) for "rigid" and "similarity"; affine for "affine", then
        deformable for "deformable". An affine or deformable fit has no rigid stage
        of its own: the pre-alignment refines the orientation by rigid CPD, and a second rigid
        fit can turn it away when the two specimens differ in shape. "auto" chooses among rigid,
        affine and deformable (beta 0.4 or 0.8 × the RMS radius R of ``fixed``, lambda
        100 or 1000 / R²: scale-free, see :data:`~xmodal.pipelines._auto_steps.AUTO_CANDIDATES`)
        by how well each candidate, fitted to 80 % of the fixed cells, places the 20 % held out
        (``selection_criterion``; random splits, seeds from ``seed``; when the moving set has fewer
        than 90 % of the fixed set's cells, 80 % of the *moving* cells are fitted and the other 20 %
        scored, as many fixed cells then have no partner), then fits the chosen model
        to all cells; ``result.model_selection`` (and the provenance) records the choice, the
        criterion and the score of every candidate. Sets larger than 1,500 cells are
        compared on farthest-point subsamples, and the final fit then starts from the chosen
        candidate's fit there (its affine stage carried to all cells; a linear model refined on
        all cells for at most 50 iterations, a deformable stage fitted on all cells).
        The default: the issue's rule is that it never falls more than 0.02 below its own rigid
        fit on any pair of a real data set; figures in ``docs/identity.md``.
    matching : {"one-to-one", "cover"}
        One-to-one with an unmatched cost (partial matching), or the thesis' cover assignment (every
        point of the larger set matched exactly once, every point of the smaller at least once).
    spacing, fixed_spacing, moving_spacing : scalar or sequence, optional
        Voxel size (label images) or coordinate scale (tables, arrays); ``spacing`` sets both. Without
        them a label image's declared voxel size is used, and when both declare length units that
        differ (EM in nm, LM in µm) the moving cells are converted into the fixed cells' unit, the
        unit of every output (``parameters["units"]``, None when undeclared).
    id_column : str, optional
        Column of the tables holding the cell ids.
    prealign : bool or {"all", "flips"}
        Principal-axes pre-alignment with a search over the 24 proper rotations of the axes
        ("all", also True) or sign flips only ("flips"); False when the sets are already roughly
        aligned.
    scale : bool
        Estimate a global scale (similarity) besides the rotation.
    cpd_options : dict, optional
        Keyword arguments for :func:`xmodal.cpd` in the first stage (rigid, similarity or affine).
        Default w = 0.1. Its ``callback`` (else the one of ``deformable_options``) is also called
        after every iteration of the pre-alignment's trial fits (their ``moved`` are subsamples of
        the cells): an exception it raises (a cancel) stops the run within one CPD iteration. The
        parameters record a callable as ``"<callable>"``.
    deformable_options : dict, optional
        Keyword arguments for the deformable stage (``beta`` and ``lam`` in the input units, as
        :func:`xmodal.cpd` takes them). Defaults, scale-free: w = 0.1, beta = 0.4 × the RMS radius
        R of ``fixed`` (physical units), lam = 100 / R² (``DEFORMABLE_BETA``, ``DEFORMABLE_LAM`` of
        :mod:`xmodal.pipelines._register_steps`; chosen on training embryo pairs). With
        ``transform="auto"`` they override every deformable candidate's.
    k, radius : candidate pairs of the matching: the k nearest neighbours both ways, and all pairs
        closer than ``radius`` (physical units).
    unmatched_cost : float, "auto" or None
        Cost of leaving a cell unmatched (physical units, as distances) in one-to-one matching.
        "auto": 3 × the median nearest-neighbour distance within ``fixed``. None: every cell of the
        smaller set must be matched. Not used by cover matching (every cell is matched).
    errors : bool
        Compute registration error estimates from the matched pairs.
    spots : dict of name -> (m, d) array or table path, or a list of them, optional
        smFISH detections (moving frame, physical units), one entry per replicate. Each spot is
        assigned to the nearest fixed cell in the registered frame (within ``spot_max_distance``,
        default ``unmatched_cost``) and counted per cell; counts are averaged over replicates.
    warp_images : dict of name -> array, optional
        Images of the moving modality (label images are recognised by their integer dtype) to warp
        onto the grid of ``fixed_image`` with the landmark-guided elastix B-spline of the thesis
        (:mod:`xmodal.pipelines.elastix`, preset ``warp_preset``): normalised correlation between
        ``fixed_image`` and ``moving_image`` (e.g. the two segmentations) plus the distance of the
        matched cells as corresponding points, weights 1 and 1000. Needs itk-elastix.
    fixed_image, moving_image : arrays, optional
        The images that drive the warp (same grids as the fixed and the moving cells).
    image_spacing : (fixed spacing, moving spacing), optional
        Voxel sizes of ``fixed_image`` and of ``moving_image`` / ``warp_images``; default
        ``fixed_spacing`` and ``moving_spacing``.
    warp_preset, elastix_parameters : elastix preset and parameter overrides for the warp.
    intensity_preset : {"rigid", "similarity", "view-merging"}, optional
        Pre-align the cells by an intensity registration of ``moving_image`` onto ``fixed_image``
        with this elastix preset (the thesis' settings, see :mod:`xmodal.pipelines.elastix`)
        instead of the principal-axes search: its inverse maps the moving cells into the fixed frame
        before CPD. Needs itk-elastix.
    out : path, optional
        Folder for the outputs (transform.json, matches.csv, cells.csv, errors.json, report.html
        with PNG plots, provenance.json). Everything is written into the sibling
        ``<out>.xmodal-partial`` and renamed to ``out`` when complete, replacing a previous output
        there in one step: a killed run leaves the previous complete folder (or none), never a mix
        of two runs. An existing ``out`` must be empty or a previous xmodal output (it has a
        provenance.json); anything else is refused before any work.
    seed : int
        Seed of the subsampling in the pre-alignment search and of the held-out cells of
        ``transform="auto"``.
    allow_reflection : bool
        Let the pre-alignment also try mirror images of the moving cells: for data whose axis
        handedness is unknown (a flipped stack, left against right of a bilateral animal).
        ``result.prealign.reflected`` and the parameters record whether the mirror image won.
    reviewed : path or dict, optional
        Decisions about the pairs of an earlier run (a reviewed table as the napari review widget
        exports it, see :mod:`xmodal.pipelines._reviewed`; or a dict of ``accepted`` / ``rejected``
        (k, 2) (moving_index, fixed_index) arrays; indices are rows of ``moving`` and ``fixed``).
        Accepted (and reassigned) pairs guide every CPD stage as landmarks and are kept by the
        matching; rejected pairs are never proposed again. One-to-one matching only.
    fixed_features, moving_features : (n_fixed, f) and (n_moving, f) arrays, optional
        Per-cell features (colour channels, volume, intensity; a 1-D array is one feature), rows in
        the order of the cells. Put on a common scale (normal scores within each set) and added to the matching
        cost as extra coordinates: cost = sqrt(distance^2 + (feature_weight x nn)^2 x |feature
        difference|^2), nn the median nearest-neighbour distance within ``fixed``
        (:mod:`xmodal.pipelines._features`). With ``reviewed``, its decisions hold here too.
    feature_weight : "auto" or float >= 0
        "auto": the weight of a Gaussian model of the matched pairs' feature differences, fitted on
        80 % of the fixed cells and kept only when it gives the other 20 % a higher likelihood than
        positions alone (else 0); a number fixes it (0: positions only). ``result.features`` and the
        provenance record the weight and the criterion.
    feature_cpd : bool
        With features and a positive weight: an affine and a deformable CPD stage after the fit,
        whose mixture pairs cells that are near *and* look alike (CPD with features,
        :mod:`xmodal.pipelines._match_step`), then the matching again (``result.features["cpd"]``;
        their transforms end ``result.transform``). False: the features enter the matching only.

    selection_criterion : {"matching", "likelihood"}
        How ``transform="auto"`` scores a candidate fitted to 80 % of the fixed cells
        (:func:`xmodal.registration.selection.select_model`). "matching" (default): the moved cells
        are matched one-to-one to all fixed cells as the final matching does (k nearest
        neighbours, unmatched cost 3 × the median nearest-neighbour distance of the fixed cells
        compared) and the mean cost of the held-out cells (distance to their partner, the
        unmatched cost if unmatched; lower is better) is averaged over 3 random splits.
        "likelihood": the held-out cells' log-likelihood under the fitted CPD mixture (1 split; the
        criterion before 2026-12). The matching cost was chosen on the 6 training embryo pairs
        (docs/identity.md). Both scores are recorded (``model_selection["all_scores"]``).

    Returns
    -------
    CellRegistration
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    rotations, matching, unmatched_cost_option = _check_options(
        transform=transform, matching=matching, prealign=prealign, unmatched_cost=unmatched_cost,
        intensity_preset=intensity_preset, warp_images=warp_images, fixed_image=fixed_image, moving_image=moving_image)
    scale, errors = as_bool(scale, "scale"), as_bool(errors, "errors")
    allow_reflection, feature_cpd = as_bool(allow_reflection, "allow_reflection"), as_bool(feature_cpd, "feature_cpd")
    choice(selection_criterion, "selection_criterion", ("matching", "likelihood"))
    k, radius, seed, spot_max_distance = _check_numbers(k, radius, seed, spot_max_distance)
    fixed_spacing = spacing if fixed_spacing is None else fixed_spacing
    moving_spacing = spacing if moving_spacing is None else moving_spacing
    with _timed(timings, "load"):
        fset, mset, fixed_spacing, moving_spacing, units = _load_cells(fixed, moving, fixed_spacing, moving_spacing, id_column)
    fix, mov = fset.points, mset.points
    reviewed = _reviewed(reviewed, matching, len(mov), len(fix))
    feats = check_feature_options(fixed_features, moving_features, feature_weight, len(fix), len(mov))
    spots = None if spots is None else load_spots(spots, spacing=moving_spacing, ndim=mov.shape[1])
    folder = OutputFolder(out)  # refused before any work, not after
    images = Images(fixed_image, moving_image, *_pair(image_spacing, (fixed_spacing, moving_spacing)), elastix_parameters)
    nn = median_nn_distance(fix)
    unmatched_cost = 3.0 * nn if unmatched_cost_option == "auto" else unmatched_cost_option

    callback = _callback(cpd_options, deformable_options)  # the pre-alignment and feature stages call it too
    with _timed(timings, "prealign"):
        pre = prealign_step(mov, fix, rotations=rotations, scale=scale, seed=seed,
                            intensity_preset=intensity_preset, images=images, folder=folder,
                            allow_reflection=allow_reflection, callback=callback)
    log.info("register_cells: %d fixed, %d moving cells; pre-alignment %.2f s", len(fix), len(mov), timings["prealign"])
    fit, selection = _fit(pre.moved, fix, transform, timings, scale=scale, cpd_options=cpd_options,
                          deformable_options=deformable_options, nn=nn, seed=seed, landmarks=_landmarks(reviewed),
                          criterion=selection_criterion, k=k)
    with _timed(timings, "matching"):
        m = match_cells(fit.moved, fix, feats, (matching, k, radius, unmatched_cost), reviewed=reviewed, nn=nn,
                        seed=seed, feature_cpd=feature_cpd, radius=rms_radius(fix), callback=callback)
    mi, fi, dist, confidence, feature_record = m.mi, m.fi, m.dist, m.confidence, m.features
    add_feature_stage(fit, m.refit)
    log.info("register_cells: %s matching, %d pairs, %.2f s", matching, len(mi), timings["matching"])

    chain = ([pre.transform] if pre.transform is not None else []) + fit.transforms
    result = CellRegistration(
        fixed_index=fi, moving_index=mi, fixed_ids=fset.ids[fi], moving_ids=mset.ids[mi],
        transform=CompositeTransform(tuple(chain)), moved=fit.moved, distances=dist, confidence=confidence,
        fixed_points=fix, moving_points=mov, fixed_cell_ids=fset.ids, moving_cell_ids=mset.ids, prealign=pre.prealign,
        model_selection=selection, features=feature_record, cpd_iterations=fit.iterations, timings=timings,
        parameters=dict(transform=transform, model=selection["chosen"] if selection else transform,
                        model_selection=selection, selection_criterion=selection_criterion,
                        allow_reflection=allow_reflection,
                        reflected=bool(getattr(pre.prealign, "reflected", False)), matching=matching,
                        prealign=rotations, scale=scale, features=feature_record, feature_cpd=feature_cpd,
                        cpd_options=_recorded(cpd_options), deformable_options=_recorded(deformable_options),
                        k=k, radius=radius, unmatched_cost=unmatched_cost, seed=seed, fixed=fset.source,
                        reviewed=None if reviewed is None else {k: len(v) for k, v in vars(reviewed).items()},
                        moving=mset.source, fixed_spacing=_per_axis_list(fixed_spacing, fix.shape[1]),
                        moving_spacing=_per_axis_list(moving_spacing, fix.shape[1]), units=units))
    if errors:
        with _timed(timings, "errors"):
            add_error_estimates(result)
    if spots is not None:
        with _timed(timings, "spots"):
            add_spot_counts(result, spots, spot_max_distance or unmatched_cost or 3.0 * nn)
    if warp_images is not None:
        with _timed(timings, "warp"):
            add_warped_images(result, warp_images, images, preset=warp_preset, folder=folder)
    timings["total"] = time.perf_counter() - t_all  # the report shows it; updated after writing
    if folder.out is not None:
        with _timed(timings, "write"):
            folder.commit(result)
    timings["total"] = time.perf_counter() - t_all
    log.info("register_cells: %d of %d moving cells matched in %.2f s", len(mi), len(mov), timings["total"])
    return result


def _fit(moving, fix, transform, timings, *, scale, cpd_options, deformable_options, nn, seed, landmarks,
         criterion="matching", k=30):
    """Model selection (``transform="auto"``) and the CPD fit of the chosen model: (Fit, selection
    record or None). Chosen on subsamples: the final fit goes on from the chosen candidate's fit
    there (``refine_step``); otherwise the chain is fitted from scratch (``fit_step``)."""
    model, selection, fit_deformable, warm = transform, None, deformable_options, None
    radius = rms_radius(fix)
    if transform == "auto":
        with _timed(timings, "model_selection"):
            chosen = select_step(moving, fix, scale=scale, cpd_options=cpd_options,
                                 deformable_options=deformable_options, nn=nn, seed=seed, radius=radius,
                                 criterion=criterion, k=k)
        model, fit_deformable, selection, warm = chosen.model, chosen.deformable_options, chosen.record, chosen.warm
    with _timed(timings, "cpd"):
        if warm is not None:
            fit = refine_step(moving, fix, warm, transform=model, scale=scale, cpd_options=cpd_options,
                              deformable_options=fit_deformable, landmarks=landmarks)
        else:
            fit = fit_step(moving, fix, transform=model, scale=scale, cpd_options=cpd_options,
                           deformable_options=fit_deformable, nn=nn, landmarks=landmarks, radius=radius)
    return fit, selection


def _check_options(*, transform, matching, prealign, unmatched_cost, intensity_preset, warp_images, fixed_image,
                   moving_image):
    """The options that need no data, checked before any work: (rotations searched by the
    pre-alignment or False, matching, unmatched cost: "auto", a positive number or None)."""
    choice(transform, "transform", _TRANSFORMS)
    choice(matching, "matching", ("one-to-one", "cover"))
    if prealign is True:
        prealign = "all"
    if prealign is not False:
        choice(prealign, "prealign", ("all", "flips", True, False))
    if isinstance(unmatched_cost, str):
        choice(unmatched_cost, "unmatched_cost", ("auto",))
    else:
        unmatched_cost = positive_float(unmatched_cost, "unmatched_cost", allow_none=True)
    images = Images(fixed_image, moving_image)
    if intensity_preset is not None:
        choice(intensity_preset, "intensity_preset", ("rigid", "similarity", "view-merging"))
        images.require("intensity_preset needs the two images")
    if warp_images is not None:
        images.require("warp_images needs the two images that drive the warp")
    return prealign, matching, unmatched_cost


def _load_cells(fixed, moving, fixed_spacing, moving_spacing, id_column):
    """Both cell sets as :class:`~xmodal.io.PointSet` (physical units; the moving cells in the fixed
    cells' length unit when both declare one), of one dimension, with enough cells for a registration
    in that dimension, the two spacings (a spacing None: the voxel size an OME-Zarr label image
    declares, if any) and the unit of the outputs (:func:`._inputs.in_fixed_units`)."""
    fset = load_points(fixed, spacing=fixed_spacing, id_column=id_column, name="fixed")
    mset, units = in_fixed_units(fset, load_points(moving, spacing=moving_spacing, id_column=id_column, name="moving"))
    check_cell_sets(fset.points, mset.points)
    return (fset, mset, fset.spacing if fixed_spacing is None else fixed_spacing,
            mset.spacing if moving_spacing is None else moving_spacing, units)


def _check_numbers(k, radius, seed, spot_max_distance):
    """``(k, radius, seed, spot_max_distance)`` of :func:`register_cells`, checked."""
    return (positive_int(k, "k"), positive_float(radius, "radius", allow_none=True),
            positive_int(seed, "seed", minimum=0),
            positive_float(spot_max_distance, "spot_max_distance", allow_none=True))


def _reviewed(reviewed, matching: str, n_moving: int, n_fixed: int):
    """The decisions of ``reviewed`` (checked against the point sets), or None."""
    if reviewed is None:
        return None
    if matching != "one-to-one":
        raise ValueError(f"reviewed: needs matching='one-to-one', got matching={matching!r}")
    from ._reviewed import read_reviewed_matches

    return read_reviewed_matches(reviewed).check(n_moving, n_fixed)


def _callback(cpd_options, deformable_options):
    """The CPD callback of the run (``cpd_options``' ``callback``, else ``deformable_options``'), or
    None: the pre-alignment's trial fits and the CPD stages with features call it too, so that a
    cancel raised there stops them."""
    for options in (cpd_options, deformable_options):
        if options and options.get("callback") is not None:
            return options["callback"]
    return None


def _recorded(options) -> dict:
    """CPD options as the parameters record them: a callable (a ``callback``) as ``"<callable>"``,
    not its repr (a memory address, different in every run)."""
    return {k: "<callable>" if callable(v) else v for k, v in dict(options or {}).items()}


def _landmarks(reviewed):
    return None if reviewed is None or not len(reviewed.accepted) else reviewed.accepted


def _per_axis_list(spacing, d: int):
    return None if spacing is None else np.broadcast_to(spacing, (d,)).tolist()
