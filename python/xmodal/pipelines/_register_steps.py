"""The steps of :func:`xmodal.pipelines.register_cells`, in the order it runs them.

    pre-align (principal axes or an elastix intensity registration)
      -> [transform="auto": model selection, :mod:`xmodal.pipelines._auto_steps`]
      -> fit (CPD, coarse to fine)
      -> match (sparse k-NN graph, exact assignment)
      -> post-steps on the result (error estimates, smFISH spot counts, image warp)

Each step takes plain arrays and options and returns what the next one needs; the post-steps take
the :class:`~xmodal.pipelines.CellRegistration` and fill one of its fields. The options are
validated by :func:`register_cells` before the first step runs.
"""

from __future__ import annotations

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
                  allow_reflection: bool = False, callback=None) -> Prealigned:
    """Principal-axes pre-alignment (``rotations`` "all" / "flips"; mirror images too with
    ``allow_reflection``), an elastix intensity registration (``intensity_preset``), or none
    (``rotations`` False). ``callback``: called after every iteration of the search's CPD fits
    (:func:`xmodal.cpd`'s ``callback``; an exception it raises stops the search); the elastix
    intensity registration does not call it."""
    from ..registration import AffineTransform

    if intensity_preset is not None:
        reg = images.register(intensity_preset, folder.path("elastix-prealign"))
        matrix, offset = reg.affine_moving_to_fixed()
        return Prealigned(moving @ matrix.T + offset, AffineTransform(matrix, offset))
    if rotations:
        from .prealign import fast_prealign

        pre = fast_prealign(moving, fixed, n_points=PREALIGN_POINTS, rotations=rotations, scale=scale, seed=seed,
                            allow_reflection=allow_reflection, callback=callback)
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


def match_confidence(moved: np.ndarray, fixed: np.ndarray, mi: np.ndarray, fi: np.ndarray,
                     with_features: bool = False) -> np.ndarray:
    """Calibrated probability that each matched pair (moving ``mi``, fixed ``fi``) is right: the
    posterior marginal of the pair, its distance, its margin to the closest rival and the spread of
    all pairs, mapped by a logistic calibration fitted once on training embryo pairs (see
    :mod:`xmodal.pipelines._confidence`; ``with_features``: the points carry weighted per-cell
    features, the map fitted to such matchings is used)."""
    from ._confidence import COEFFICIENTS_FEATURES
    from ._confidence import match_confidence as calibrated

    return calibrated(moved, fixed, mi, fi, coefficients=COEFFICIENTS_FEATURES if with_features else None)


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


def load_spots(spots, *, spacing, ndim: int) -> dict:
    """The smFISH spot replicates as ``{name: (m, ndim) points}``, read and checked before any work
    (a missing table fails at once, not after the registration)."""
    items = spots.items() if isinstance(spots, Mapping) else ((f"replicate_{i}", s) for i, s in enumerate(spots))
    out = {}
    for name, s in items:
        label = f"spots[{name!r}]"
        pts = as_points(s, label) if isinstance(s, np.ndarray) else load_points(s, spacing=spacing, name=label).points
        if pts.shape[1] != ndim:
            raise ValueError(f"{label}: expected {ndim}D points, got {pts.shape[1]}D")
        out[str(name)] = pts
    if not out:
        raise ValueError("spots: expected at least one replicate, got none")
    return out


def add_spot_counts(result, spots: dict, max_distance: float) -> None:
    """smFISH spots (moving frame; :func:`load_spots`) counted per fixed cell, per replicate and
    their mean (``result.spot_counts``): each spot goes to the nearest fixed cell in the registered
    frame within ``max_distance``."""
    from scipy.spatial import cKDTree

    fixed = result.fixed_points
    tree = cKDTree(fixed)
    counts = {}
    for name, pts in spots.items():
        dist, idx = tree.query(result.transform.apply(pts), distance_upper_bound=max_distance)
        ok = np.isfinite(dist)
        counts[name] = np.bincount(idx[ok], minlength=len(fixed))
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
