"""Building an :class:`~xmodal.atlas.Atlas` from annotated samples.

    annotated samples (points + names [+ features])
      -> pose of every sample: robust Procrustes on the shared names onto a growing mean, starting
         from the sample that shares most names with the others (proper rotations; a mirror image
         only with ``allow_reflection``)
      -> generalised Procrustes: mean position per name over the samples that have it <-> each
         sample re-registered to the mean (rigid / similarity / affine least squares on its names,
         Tukey-reweighted so that mislabelled cells do not pull), until the mean stops moving
      -> deformable stage (``deform="auto"``): a smooth displacement field per sample (Gaussian
         radial basis, regularised least squares) towards the mean, alternated with the mean
      -> frame: centroid and principal axes of the mean shape
      -> per name: mean, covariance (shrunk towards the pooled covariance for names seen in few
         samples), feature mean and covariance, presence frequency
      -> calibration of the confidence: leave one sample out, identify it against an atlas of the
         others, choose the temperature of the posterior marginals that fits the outcomes best
"""

from __future__ import annotations

import inspect
import numbers
import time

import numpy as np

from .._validation import as_spacing, choice, describe, positive_float, positive_int
from ._assemble import KINDS, assemble
from ._calibration import calibrate_atlas
from ._deform import check_deform
from ._inputs import check_features, check_informative, check_names, check_sample_points
from ._model import Atlas


def _check_inputs(samples, names, features, feature_names):
    if isinstance(samples, np.ndarray) or not isinstance(samples, (list, tuple)):
        raise TypeError(f"samples: expected a list of (n_i, d) point arrays, got {describe(samples)}")
    if len(samples) < 2:
        raise ValueError(f"samples: an atlas needs at least 2 annotated samples, got {len(samples)}")
    if isinstance(names, np.ndarray) and names.dtype != object or not isinstance(names, (list, tuple, np.ndarray)):
        raise TypeError(f"names: expected a list of name arrays (one per sample), got {describe(names)}")
    if len(names) != len(samples):
        raise ValueError(f"names: expected {len(samples)} name arrays (one per sample), got {len(names)}")
    pts, nms = [], []
    d = None
    for i, (p, nm) in enumerate(zip(samples, names)):
        q = check_sample_points(p, f"samples[{i}]", d)
        d = q.shape[1]
        if len(q) < d + 1:
            raise ValueError(f"samples[{i}]: expected at least {d + 1} points, got {len(q)}")
        pts.append(q)
        nms.append(check_names(nm, len(q), f"names[{i}]"))
    feats = None
    if features is not None:
        if not isinstance(features, (list, tuple)) or len(features) != len(samples):
            raise ValueError(f"features: expected a list of {len(samples)} (n_i, f) arrays (one per sample), "
                             f"got {describe(features)}")
        feats = []
        nf = None
        for i, (f, q) in enumerate(zip(features, pts)):
            a = check_features(f, len(q), f"features[{i}]", nf)
            nf = a.shape[1]
            feats.append(a)
        if feature_names is None:
            feature_names = [f"feature_{j}" for j in range(nf)]
        if isinstance(feature_names, (str, bytes)) or not isinstance(feature_names, (list, tuple, np.ndarray)):
            raise TypeError(f"feature_names: expected a list of {nf} str (one per feature column), "
                            f"got {describe(feature_names)}")
        feature_names = [str(x) for x in feature_names]
        if len(feature_names) != nf:
            raise ValueError(f"feature_names: expected {nf} names, got {len(feature_names)}")
    elif feature_names is not None:
        raise ValueError("feature_names: given without features")
    return pts, nms, feats, feature_names


def _scale_samples(pts, spacing):
    """The samples times their spacing (:func:`build_atlas`), and the spacings as recorded: None, one
    per-axis list for all samples, or a list of per-sample entries (None or per-axis lists)."""
    if spacing is None:
        return pts, None
    d = pts[0].shape[1]
    flat = isinstance(spacing, (numbers.Real, str)) or (isinstance(spacing, np.ndarray) and spacing.ndim <= 1) or (
        isinstance(spacing, (list, tuple)) and all(isinstance(v, numbers.Real) for v in spacing))
    if flat:
        s = as_spacing(spacing, d, "spacing")
        return [p * s for p in pts], s.tolist()
    if not isinstance(spacing, (list, tuple)) or len(spacing) != len(pts):
        raise ValueError(f"spacing: expected a scale for every sample (a scalar or {d} values) or a list of "
                         f"{len(pts)} per-sample entries (None or {d} values each), got {describe(spacing)}")
    out, rec = [], []
    for i, (p, v) in enumerate(zip(pts, spacing)):
        s = as_spacing(v, d, f"spacing[{i}]")
        out.append(p if s is None else p * s)
        rec.append(None if s is None else s.tolist())
    return out, rec


def _check_relations(relations):
    """``(neighbours, partners, per_axis)``: integers with 1 <= neighbours, 0 <= partners <= neighbours,
    and a bool."""
    def count(v, low):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

    ok = isinstance(relations, (tuple, list)) and len(relations) == 3 and count(relations[0], 1) \
        and count(relations[1], 0) and relations[1] <= relations[0] and isinstance(relations[2], (bool, np.bool_))
    if not ok:
        raise ValueError(f"relations: expected (neighbours >= 1, partners in 0..neighbours, per_axis True/False), "
                         f"got {describe(relations)}")
    return (int(relations[0]), int(relations[1]), bool(relations[2]))


#: Arguments of :func:`identify` that the calibration sets itself.
_RESERVED = ("points", "atlas", "features", "_debug")


def _check_identify_options(identify_options):
    """Keyword arguments of :func:`identify` for the calibration, checked before the build."""
    if identify_options is None:
        return
    if not isinstance(identify_options, dict):
        raise TypeError(f"identify_options: expected a dict or None, got {describe(identify_options)}")
    from ._identify import identify

    known = set(inspect.signature(identify).parameters) - set(_RESERVED)
    bad = sorted(set(map(str, identify_options)) - known)
    if bad:
        raise ValueError(f"identify_options: unknown options {bad}; expected some of {sorted(known)} "
                         f"({', '.join(_RESERVED[:3])} are set by the calibration)")


def build_atlas(samples, *, names, features=None, feature_names=None, spacing=None, transform: str = "affine",
                allow_reflection: bool = False, robust: bool = True, shrinkage: float = 12.0,
                feature_normalization: str = "sample", relations=(10, 5, False), deform="auto", calibrate: bool = True,
                calibration: str = "temperature", identify_options=None,
                max_iter: int = 100, tol: float = 1e-6) -> Atlas:
    """Build an atlas of named cells from two or more annotated samples.

    Parameters
    ----------
    samples : list of (n_i, d) arrays
        Cell positions of each annotated sample (d = 2 or 3), physical units, any pose: the samples
        are registered to each other through their shared names.
    names : list of (n_i,) sequences of str
        The name of every cell; unique within a sample, non-empty. Names need not occur in every
        sample (presence frequencies are kept), but every sample must share at least d + 1 names
        with the others.
    features : list of (n_i, f) arrays, optional
        Per-cell features (colour channels, volume, intensity, ...), same columns in every sample.
    feature_names : list of str, optional
        Names of the feature columns (default ``feature_0``, ...).
    spacing : scalar, (d,) sequence, or a list with one such entry (or None) per sample, optional
        Coordinate scale (e.g. the voxel size, for centroids in voxels): sample ``i`` is at
        ``samples[i] * spacing`` (or ``* spacing[i]``). A flat list of numbers is one per-axis scale
        for every sample; per-sample scalars are given per axis (``[(s0, s0, s0), (s1, s1, s1)]``).
        The atlas is in the scaled units (recorded in ``atlas.parameters["spacing"]``): give new
        samples to :func:`identify` in the same units.
    transform : {"rigid", "similarity", "affine"}
        Transform class of the group-wise registration (each sample onto the mean). "affine" (the
        default) also absorbs differences in overall shape (e.g. a specimen compressed under the
        coverslip), so that the per-name covariances describe the cells' own variability. When the
        samples share too few names for it (fewer than 10 residual degrees of freedom per
        coordinate), "similarity" is used instead (``atlas.transform`` says which).
    allow_reflection : bool
        Allow a sample to be the mirror image of the others (decided per sample by which of the two
        fits the shared names better). Off by default: a mirror image of a bilateral animal is a
        different animal.
    robust : bool
        Tukey-reweighted fits: a cell further than about 7 standard deviations from its name's mean
        (an annotation error) does not pull the registration or the statistics.
    shrinkage : float >= 0
        Pseudo-samples of the pooled covariance in each name's covariance (and feature covariance).
    feature_normalization : {"sample", "none"}
        "sample": standardise each feature within each sample (median, 1.4826 × MAD) first.
    relations : (neighbours, partners, per_axis)
        Names that move together (``atlas.relations``): for every name, the ``partners`` among its
        ``neighbours`` nearest names whose residuals correlate most with its own (correlation of the
        whole residual vectors, or per axis with ``per_axis``); ``partners`` 0: none. Default
        ``(10, 5, False)``.
    deform : "auto", dict or None
        Deformable stage of the group-wise registration: after the affine fits, a smooth
        displacement field per sample (Gaussian radial basis on ``centres`` farthest-point centres
        of the mean, width ``beta`` × the RMS radius of the mean shape, regularisation ``lambda``:
        a Gaussian-process prior of amplitude about 1/sqrt(lambda) residual standard deviations)
        towards the evolving mean, ``iterations`` alternations with the mean. The per-name
        covariances then describe the cells' own variability, not the specimens' bending, and
        :func:`identify` fits such a field to the new sample (``identify_iterations``).
        "auto" (the default): ``{"centres": 40, "beta": 0.8, "lambda": 0.3, "iterations": 3,
        "identify_iterations": 6}`` (chosen once on four leave-one-embryo-out folds of the
        C. elegans embryos, see docs/identity.md); None: affine only (the atlas of before).
    calibrate : bool
        Leave one sample out, identify it against an atlas of the others (with ``identify_options``)
        and choose the temperature of the confidence that fits those outcomes (binary log loss of
        "the given name is right"). The figures go to ``atlas.calibration``.
    calibration : {"temperature", "platt"}
        "temperature": one temperature of the posterior marginals; "platt": then also a Platt
        scaling (two more parameters) of the confidences. On the embryos (leave one embryo out,
        atlases of 7) the temperature alone calibrated as well or better (ECE 0.053 against 0.061).
    identify_options : dict, optional
        Keyword arguments of :func:`identify` used by the calibration (use the same later).
    max_iter, tol : generalised Procrustes iterations and the stopping tolerance (largest change of
        a name mean, relative to the size of the mean shape).

    Returns
    -------
    Atlas
    """
    t_all = time.perf_counter()
    choice(transform, "transform", KINDS)
    choice(feature_normalization, "feature_normalization", ("sample", "none"))
    choice(calibration, "calibration", ("temperature", "platt"))
    shrinkage = positive_float(shrinkage, "shrinkage", allow_zero=True)
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive_float(tol, "tol")
    for flag, label in ((allow_reflection, "allow_reflection"), (robust, "robust"), (calibrate, "calibrate")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{label}: expected True or False, got {describe(flag)}")
    _check_identify_options(identify_options)
    relations = _check_relations(relations)
    pts, nms, feats, feature_names = _check_inputs(samples, names, features, feature_names)
    pts, spacings = _scale_samples(pts, spacing)
    check_informative(feats, feature_names, feature_normalization)
    deform = check_deform(deform)
    opts = dict(transform=transform, allow_reflection=bool(allow_reflection), robust=bool(robust),
                shrinkage=shrinkage, feature_normalization=feature_normalization, max_iter=max_iter, tol=tol,
                relations=relations, deform=deform)
    atlas = assemble(pts, nms, feats, feature_names, **opts)
    t_build = time.perf_counter() - t_all
    atlas.parameters = {**{k: v for k, v in opts.items()}, "gpa_iterations": atlas.parameters["gpa_iterations"],
                        "deform": atlas.parameters["deform"],
                        "calibration": calibration, "identify_options": dict(identify_options or {}),
                        "spacing": spacings}
    if atlas.transform != transform:
        atlas.parameters["transform_note"] = (f"{transform} asked for, {atlas.transform} used: too few names shared "
                                              "between the samples for the per-sample fits")
    if calibrate:
        atlas.calibration = calibrate_atlas(pts, nms, feats, feature_names, atlas, opts, dict(identify_options or {}),
                                       platt=calibration == "platt")
    atlas.parameters["seconds"] = {"build": t_build, "total": time.perf_counter() - t_all}
    return atlas
