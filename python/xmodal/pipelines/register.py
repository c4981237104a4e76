"""Cross-modal cell registration: the smFISH-to-EM atlas workflow, generalised.

    points or label images (two modalities, physical units)
      -> pre-alignment (principal axes + proper rotations, scored by the matching objective)
      -> CPD (rigid first; then similarity / affine / deformable)
      -> sparse k-NN cost matrix -> exact assignment (one-to-one with an unmatched cost, or cover)
      -> registration error estimates (prediction regions, leave-one-out residuals, TRE)
      -> optional smFISH spot counts per matched cell
      -> outputs in one folder (transform JSON, match and cell tables, QC report, provenance)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import as_bool, as_points, choice, positive_float, positive_int
from ._inputs import PointSet, load_points
from ._transforms import CompositeTransform
from .prealign import PrealignResult, median_nn_distance, prealign as _prealign

log = logging.getLogger("xmodal.pipelines")

_TRANSFORMS = ("rigid", "similarity", "affine", "deformable")


@dataclass
class CellRegistration:
    """Result of :func:`register_cells`.

    Attributes
    ----------
    fixed_index, moving_index : (k,) int arrays
        Matched pairs as row indices into the fixed and moving point sets.
    fixed_ids, moving_ids : (k,) arrays
        The ids of the matched points (table id column, label values, or row numbers).
    transform : CompositeTransform
        Maps moving points (physical units) into the fixed frame; ``transform.apply(new_points)``.
    moved : (n_moving, d) array
        All moving points in the fixed frame.
    distances : (k,) array
        Distance of each matched pair in the fixed frame (physical units).
    errors : dict or None
        Registration error estimates of a rigid and an affine fit to the matched pairs
        (see :func:`xmodal.registration.uncertainty`): prediction regions at the moving points,
        leave-one-out residuals, Fitzpatrick's TRE.
    spot_counts : dict or None
        Per replicate, spot counts per fixed point (length n_fixed), and their mean.
    warped : dict or None
        The ``warp_images`` resampled on the fixed image grid (name -> array).
    prealign : PrealignResult or None
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
    errors: dict | None = None
    spot_counts: dict | None = None
    warped: dict | None = None
    prealign: PrealignResult | None = None
    cpd_iterations: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    @property
    def n_matched(self) -> int:
        return int(len(self.fixed_index))


def _run_cpd(moving: np.ndarray, fixed: np.ndarray, transform: str, options: Mapping[str, Any]):
    from ..registration import cpd

    return cpd(moving, fixed, transform=transform, **dict(options))


def register_cells(
    fixed,
    moving,
    *,
    transform: str = "deformable",
    matching: str = "one-to-one",
    spacing=None,
    fixed_spacing=None,
    moving_spacing=None,
    id_column: str | None = None,
    prealign: bool | str = True,
    scale: bool = False,
    cpd_options: Mapping[str, Any] | None = None,
    deformable_options: Mapping[str, Any] | None = None,
    k: int = 30,
    radius: float | None = None,
    unmatched_cost: float | str | None = "auto",
    errors: bool = True,
    spots: Mapping[str, Any] | Sequence[Any] | None = None,
    spot_max_distance: float | None = None,
    warp_images: Mapping[str, Any] | None = None,
    fixed_image=None,
    moving_image=None,
    image_spacing=None,
    warp_preset: str = "bspline-landmarks",
    intensity_preset: str | None = None,
    elastix_parameters: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
) -> CellRegistration:
    """Register two sets of cells (points, centroid tables or label images) and match them.

    Parameters
    ----------
    fixed, moving : (n, d) array, table path (.csv, .tsv, .parquet) or label image (array or
        .npy/.tif/.zarr path)
        Cells of the two modalities. Points and tables are in physical units (µm, say), columns
        (z, y, x); label images give their object centroids (``*_spacing`` = voxel size).
    transform : {"rigid", "similarity", "affine", "deformable"}
        Final CPD model. The CPD stages run coarse to fine, each from where the previous ended:
        rigid (similarity when ``scale``), then affine for "affine" and "deformable", then
        deformable.
    matching : {"one-to-one", "cover"}
        One-to-one with an unmatched cost (partial matching), or the thesis' cover assignment (every
        point of the larger set matched exactly once, every point of the smaller at least once).
    spacing, fixed_spacing, moving_spacing : scalar or sequence, optional
        Voxel size (label images) or coordinate scale (tables, arrays); ``spacing`` sets both.
    id_column : str, optional
        Column of the tables holding the cell ids.
    prealign : bool or {"all", "flips"}
        Principal-axes pre-alignment with a search over the 24 proper rotations of the axes
        ("all", also True) or sign flips only ("flips"); False when the sets are already roughly
        aligned.
    scale : bool
        Estimate a global scale (similarity) besides the rotation.
    cpd_options : dict, optional
        Keyword arguments for :func:`xmodal.cpd` in the first (rigid) stage. Default w = 0.1.
    deformable_options : dict, optional
        Keyword arguments for the deformable stage. Defaults: w = 0.1, lam = 2, beta = 2 × the
        median nearest-neighbour distance within ``fixed`` (physical units): a smooth field on the
        scale of a few cells.
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
        Seed of the subsampling in the pre-alignment search.

    Returns
    -------
    CellRegistration
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    choice(transform, "transform", _TRANSFORMS)
    choice(matching, "matching", ("one-to-one", "cover"))
    scale, errors = as_bool(scale, "scale"), as_bool(errors, "errors")
    if prealign is True:
        prealign = "all"
    if prealign is not False:
        choice(prealign, "prealign", ("all", "flips", True, False))
    k = positive_int(k, "k")
    radius = positive_float(radius, "radius", allow_none=True)
    if fixed_spacing is None:
        fixed_spacing = spacing
    if moving_spacing is None:
        moving_spacing = spacing

    t0 = time.perf_counter()
    fset = load_points(fixed, spacing=fixed_spacing, id_column=id_column, name="fixed")
    mset = load_points(moving, spacing=moving_spacing, id_column=id_column, name="moving")
    fix, mov = fset.points, mset.points
    if fix.shape[1] != mov.shape[1]:
        raise ValueError(f"fixed, moving: expected points of the same dimension, got {fix.shape[1]}D and "
                         f"{mov.shape[1]}D")
    d = fix.shape[1]
    for name, p in (("fixed", fix), ("moving", mov)):
        if len(p) < d + 1:
            raise ValueError(f"{name}: expected at least {d + 1} cells for a {d}D registration, got {len(p)}")
    timings["load"] = time.perf_counter() - t0
    if out is not None:
        from ..io import check_output_folder

        out = check_output_folder(out, name="out")  # refused before any work, not after
    stage = None

    def staging():  # the folder receiving this run's files until they are complete
        nonlocal stage
        if stage is None:
            from ..io import begin_folder

            stage = begin_folder(out, name="out")
        return stage

    nn = median_nn_distance(fix)
    if isinstance(unmatched_cost, str):
        choice(unmatched_cost, "unmatched_cost", ("auto",))
        unmatched_cost = 3.0 * nn
    else:
        unmatched_cost = positive_float(unmatched_cost, "unmatched_cost", allow_none=True)

    chain = []
    t0 = time.perf_counter()
    pre = None
    elastix_pre = None
    if intensity_preset is not None:
        choice(intensity_preset, "intensity_preset", ("rigid", "similarity", "view-merging"))
        if fixed_image is None or moving_image is None:
            raise ValueError("fixed_image, moving_image: intensity_preset needs the two images")
        from ..registration import AffineTransform
        from .elastix import elastix_register

        fsp, msp = image_spacing if image_spacing is not None else (fixed_spacing, moving_spacing)
        elastix_pre = elastix_register(np.asarray(fixed_image, np.float32), np.asarray(moving_image, np.float32),
                                       preset=intensity_preset, fixed_spacing=fsp, moving_spacing=msp,
                                       parameters=elastix_parameters,
                                       out=None if out is None else staging() / "elastix-prealign")
        matrix, offset = elastix_pre.affine_moving_to_fixed()
        chain.append(AffineTransform(matrix, offset))
        current = mov @ matrix.T + offset
    elif prealign:
        pre = _prealign(mov, fix, rotations=prealign, scale=scale, seed=seed)
        from ..registration import AffineTransform

        chain.append(AffineTransform(pre.matrix, pre.offset))
        current = pre.apply(mov)
    else:
        current = mov
    timings["prealign"] = time.perf_counter() - t0
    log.info("register_cells: %d fixed, %d moving cells; pre-alignment %.2f s", len(fix), len(mov),
             timings["prealign"])

    iterations = {}
    t0 = time.perf_counter()
    first = {"w": 0.1, "max_iter": 100, "tol": 1e-6}
    first.update(cpd_options or {})
    res = _run_cpd(current, fix, "similarity" if scale else "rigid", first)
    chain.append(res.transform)
    current = np.asarray(res.moved, dtype=np.float64)
    iterations["rigid"] = int(res.iterations)
    # Coarse to fine: every stage starts where the previous one ended.
    stages = []
    if transform == "similarity" and not scale:
        stages.append("similarity")
    if transform in ("affine", "deformable"):
        stages.append("affine")
    if transform == "deformable":
        stages.append("deformable")
    for stage in stages:
        opts = {"w": 0.1, "max_iter": 150, "tol": 1e-6}
        if stage == "deformable":
            # Kernel width and regularisation relative to the cloud: a smooth field on the scale of a
            # few cells (beta in physical units = 2 x the median nearest-neighbour distance).
            opts.update({"beta": 2.0 * nn, "lam": 2.0})
            opts.update(deformable_options or {})
        res = _run_cpd(current, fix, stage, opts)
        chain.append(res.transform)
        current = np.asarray(res.moved, dtype=np.float64)
        iterations[stage] = int(res.iterations)
        log.info("register_cells: %s CPD, %d iterations", stage, iterations[stage])
    timings["cpd"] = time.perf_counter() - t0
    composite = CompositeTransform(tuple(chain))

    t0 = time.perf_counter()
    from ..matching import match_points

    if matching == "cover":
        m = match_points(current, fix, k=k, radius=radius, mode="cover")
    else:
        m = match_points(current, fix, k=k, radius=radius, unmatched_cost=unmatched_cost, mode="one-to-one")
    mi, fi = np.asarray(m.rows, dtype=np.int64), np.asarray(m.cols, dtype=np.int64)
    dist = np.linalg.norm(current[mi] - fix[fi], axis=1)
    timings["matching"] = time.perf_counter() - t0
    log.info("register_cells: %s matching, %d pairs, %.2f s", matching, len(mi), timings["matching"])

    err = None
    if errors and len(mi) >= 2 * (d + 1):
        t0 = time.perf_counter()
        err = _error_estimates(mov[mi], fix[fi], mov)
        timings["errors"] = time.perf_counter() - t0

    counts = None
    if spots is not None:
        t0 = time.perf_counter()
        counts = _count_spots(spots, composite, fix, spot_max_distance or unmatched_cost or 3.0 * nn,
                              spacing=moving_spacing)
        timings["spots"] = time.perf_counter() - t0

    warped = None
    if warp_images is not None:
        t0 = time.perf_counter()
        if fixed_image is None or moving_image is None:
            raise ValueError("fixed_image, moving_image: warp_images needs the two images that drive the warp")
        from .elastix import elastix_register, elastix_warp

        fsp, msp = image_spacing if image_spacing is not None else (fixed_spacing, moving_spacing)
        el = elastix_register(np.asarray(fixed_image, np.float32), np.asarray(moving_image, np.float32),
                              preset=warp_preset, fixed_spacing=fsp, moving_spacing=msp,
                              fixed_points=fix[fi], moving_points=mov[mi], parameters=elastix_parameters,
                              out=None if out is None else staging() / "elastix")
        warped = {name: elastix_warp(img, el, spacing=msp, labels=np.issubdtype(np.asarray(img).dtype, np.integer))
                  for name, img in warp_images.items()}
        timings["warp"] = time.perf_counter() - t0

    result = CellRegistration(
        fixed_index=fi, moving_index=mi, fixed_ids=fset.ids[fi], moving_ids=mset.ids[mi],
        transform=composite, moved=current, distances=dist, fixed_points=fix, moving_points=mov,
        errors=err, spot_counts=counts, warped=warped, prealign=pre, cpd_iterations=iterations, timings=timings,
        parameters={
            "transform": transform, "matching": matching, "prealign": prealign, "scale": scale,
            "cpd_options": dict(cpd_options or {}), "deformable_options": dict(deformable_options or {}),
            "k": k, "radius": radius, "unmatched_cost": unmatched_cost, "seed": seed,
            "fixed": fset.source, "moving": mset.source,
            "fixed_spacing": None if fixed_spacing is None else np.broadcast_to(fixed_spacing, (d,)).tolist(),
            "moving_spacing": None if moving_spacing is None else np.broadcast_to(moving_spacing, (d,)).tolist(),
        },
    )
    if out is not None:
        from ..io import commit_folder
        from ._report import write_registration_outputs

        t0 = time.perf_counter()
        written = write_registration_outputs(result, staging())
        commit_folder(stage, out)
        result.outputs = {k: str(out / Path(v).relative_to(stage)) for k, v in written.items()}
        timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    log.info("register_cells: %d of %d moving cells matched in %.2f s", len(mi), len(mov), timings["total"])
    return result


def _error_estimates(src: np.ndarray, dst: np.ndarray, targets: np.ndarray) -> dict:
    """Rigid and affine fits of the matched pairs with their error estimates at ``targets``.

    Per model: the fit, the 95 % prediction regions at every moving point, the leave-one-out
    residuals of the pairs; for the rigid fit also Fitzpatrick's predicted TRE at every moving
    point (FLE from the fit residual).
    """
    from ..registration import uncertainty as u

    out = {}
    for kind in ("rigid", "affine"):
        fit = u.fit_rigid(src, dst) if kind == "rigid" else u.fit_affine(src, dst)
        out[kind] = {
            "fit": fit,
            "region": u.prediction_region(fit, targets, level=0.95),
            "loo": u.leave_one_out_residuals(src, dst, transform=kind),
        }
    out["rigid"]["tre"] = u.fitzpatrick_tre(src, targets, fre=out["rigid"]["fit"].rms)
    return out


def _count_spots(spots, transform, fixed: np.ndarray, max_distance: float, *, spacing) -> dict:
    from scipy.spatial import cKDTree

    items = spots.items() if isinstance(spots, Mapping) else ((f"replicate_{i}", s) for i, s in enumerate(spots))
    tree = cKDTree(fixed)
    counts = {}
    for name, s in items:
        ps = load_points(s, spacing=spacing, name=f"spots[{name!r}]") if not isinstance(s, np.ndarray) else None
        pts = ps.points if ps is not None else as_points(s, f"spots[{name!r}]")
        if pts.shape[1] != fixed.shape[1]:
            raise ValueError(f"spots[{name!r}]: expected {fixed.shape[1]}D points, got {pts.shape[1]}D")
        dist, idx = tree.query(transform.apply(pts), distance_upper_bound=max_distance)
        ok = np.isfinite(dist)
        counts[str(name)] = np.bincount(idx[ok], minlength=len(fixed))
    if not counts:
        raise ValueError("spots: expected at least one replicate, got none")
    counts["mean"] = np.mean(np.stack(list(counts.values())), axis=0)
    return counts
