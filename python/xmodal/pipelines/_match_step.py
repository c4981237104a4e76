"""The matching step of :func:`xmodal.pipelines.register_cells`: positions only, or with per-cell
features, where a CPD with features (:func:`feature_cpd_step`) refines the registration before the
final matching.

CPD with features ("colour" CPD): once the feature weight is known (``feature_weight="auto"``
gives the spread ``tau`` of a right pair's standardised feature differences), two more CPD stages
run from the positions-only fit, an affine one and then a deformable one (the default field of
``register_cells``), with a mixture whose components are the product of the spatial Gaussian and
a feature Gaussian of standard deviation ``tau`` (:func:`xmodal.cpd` with ``moving_features`` /
``fixed_features``): a moving cell is pulled towards fixed cells that are near *and* look alike.
Then the cells are matched again with the same feature cost. Chosen on the 6 training embryo
pairs (nucleus diameter and reporter intensity) among 9 variants (``scripts/eval_feature_cpd.py``:
a deformable stage alone, narrower and wider feature Gaussians, the chosen model's field, a second
round, other starts): the feature matching goes from 0.440 to 0.494 on the training pairs and from
0.445 to 0.507 on the 22 held-out pairs (docs/identity.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._register_steps import DEFORMABLE_BETA, DEFORMABLE_LAM, match_confidence, match_step

#: Options of both CPD stages with features (affine, then deformable with the default field of
#: ``register_cells``: beta = DEFORMABLE_BETA x RMS radius, lam = DEFORMABLE_LAM / radius^2):
#: outlier weight 0.1, each from CPD's own initial variance (the mean squared distance of all
#: pairs, so the features can move a cell past a nearer neighbour that looks different).
FEATURE_CPD_OPTIONS = {"w": 0.1, "max_iter": 150, "tol": 1e-6}


class Matched(NamedTuple):
    """Outcome of :func:`match_cells`."""

    mi: np.ndarray  # matched moving rows
    fi: np.ndarray  # matched fixed rows
    dist: np.ndarray  # spatial distances of the pairs (physical units)
    confidence: np.ndarray
    features: dict | None  # the feature record (None without features)
    refit: list | None  # the CPDResults of the CPD stages with features (affine, deformable), or None


def check_feature_options(fixed_features, moving_features, feature_weight, n_fixed: int, n_moving: int):
    """The checked ((fixed, moving) feature arrays, weight option), or None without features;
    checked before any work."""
    from ._features import check_features, check_weight

    feats = check_features(fixed_features, moving_features, n_fixed, n_moving)
    feature_weight = check_weight(feature_weight)
    return None if feats is None else (feats, feature_weight)


def feature_sigma(record: dict, dist: np.ndarray, nn: float, d: int) -> float:
    """The feature Gaussian's standard deviation (standardised units): the fitted ``tau`` of
    ``feature_weight="auto"``; for a given weight w, the tau it implies, sigma / (w nn), with sigma
    the spread of the matched pairs' displacements (as :func:`select_feature_weight` defines w)."""
    tau = record.get("selection", {}).get("tau")
    if tau is not None:
        return float(tau)
    chi2_median = {2: 1.3863, 3: 2.3660}.get(d, d * (1 - 2 / (9 * d)) ** 3)
    sigma = np.sqrt(max(float(np.median(dist ** 2)) / chi2_median if len(dist) else nn ** 2, (1e-6 * nn) ** 2))
    return float(sigma / (record["feature_weight"] * nn))


def feature_cpd_step(moved, fixed, fg, mg, *, tau: float, radius: float, landmarks=None, callback=None) -> list:
    """CPD with features (see the module) from ``moved``: an affine stage, then a deformable stage
    from its end (``landmarks``: the accepted pairs of a review, as in the positions-only stages;
    ``callback``: :func:`xmodal.cpd`'s per-iteration callback, e.g. a cancel check).
    Returns both CPDResults, in order."""
    from ..registration import cpd

    feats = dict(moving_features=mg, fixed_features=fg, feature_sigma=tau, landmarks=landmarks,
                 callback=callback, **FEATURE_CPD_OPTIONS)
    affine = cpd(moved, fixed, transform="affine", **feats)
    deformable = cpd(np.asarray(affine.moved, np.float64), fixed, transform="deformable",
                     beta=DEFORMABLE_BETA * radius, lam=DEFORMABLE_LAM / radius ** 2, **feats)
    return [affine, deformable]


def add_feature_stage(fit, refit) -> None:
    """Append the CPD stages with features (``refit``: their CPDResults, or None) to ``fit`` (a
    ``_register_steps.Fit``): their transforms, the moved points after the last one and the
    iterations (as "features_affine", "features_deformable")."""
    for res in refit or ():
        fit.transforms.append(res.transform)
        fit.moved = np.asarray(res.moved, np.float64)
        fit.iterations[f"features_{res.info.get('transform', type(res.transform).__name__)}"] = int(res.iterations)


def match_cells(moved, fix, feats, match_options, *, reviewed, nn, seed, feature_cpd: bool = True,
                radius: float | None = None, callback=None) -> Matched:
    """The match step (with the features ``feats`` = ((fixed, moving) arrays, weight option) when
    given; with ``feature_cpd`` and a positive weight, refined by :func:`feature_cpd_step` first)
    and the pairs' confidence. ``match_options``: (matching, k, radius, unmatched_cost); ``callback``
    goes to the CPD stages with features."""
    matching, k, kradius, unmatched_cost = match_options

    def spatial():
        return match_step(moved, fix, matching=matching, k=k, radius=kradius, unmatched_cost=unmatched_cost,
                          reviewed=reviewed)

    if feats is None:
        mi, fi, dist = spatial()
        return Matched(mi, fi, dist, match_confidence(moved, fix, mi, fi), None, None)
    from ._features import match_with_features, standardise

    opts = dict(nn=nn, matching=matching, k=k, radius=kradius, unmatched_cost=unmatched_cost, seed=seed)
    mi, fi, dist, moved_c, fixed_c, record = match_with_features(moved, fix, feats[0], feats[1],
                                                                 spatial_match=spatial, reviewed=reviewed, **opts)
    refit, weight = None, record["feature_weight"]
    if feature_cpd and weight > 0:
        fg, mg, _ = standardise(*feats[0])
        tau = feature_sigma(record, dist, nn, fix.shape[1])
        landmarks = None if reviewed is None or not len(reviewed.accepted) else reviewed.accepted
        refit = feature_cpd_step(moved, fix, fg, mg, tau=tau, radius=radius if radius is not None else 5.0 * nn,
                                 landmarks=landmarks, callback=callback)
        mi, fi, dist, moved_c, fixed_c, _ = match_with_features(np.asarray(refit[-1].moved, np.float64), fix,
                                                                feats[0], weight, spatial_match=None,
                                                                reviewed=reviewed, **opts)
        record["cpd"] = {"stages": ["affine with features", "deformable with features"], "feature_sigma": tau,
                         "iterations": [int(r.iterations) for r in refit],
                         "converged": [bool(r.converged) for r in refit]}
    else:
        record["cpd"] = None
    conf = match_confidence(moved_c, fixed_c, mi, fi, with_features=weight > 0)
    return Matched(mi, fi, dist, conf, record, refit)
