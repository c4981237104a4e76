"""The fit check of :func:`~xmodal.atlas.identify`: how well a registered sample fits the atlas,
beside the atlas's own leave-one-out samples (a failed registration: wrong units, axis order)."""

from __future__ import annotations

import warnings

import numpy as np

from ._model import Atlas


#: A sample fits badly when its median squared Mahalanobis distance exceeds this factor times the
#: largest one of the atlas's leave-one-out samples (chosen on the embryo folds holding out embryos
#: 0-3: correct fits 1.6-2.3, their own training samples up to ~2.8; wrong units 5.2-6.5).
FIT_FACTOR = 1.5
#: The check needs a reference of at least this many leave-one-out samples and a sample of at least
#: this many cells (a median of a handful of distances, or a reference of two samples, is too noisy:
#: a 6-cell sample against a 2-sample atlas was flagged although every name was right).
FIT_MIN_SAMPLES, FIT_MIN_CELLS = 3, 20


def fit_statistic(y, index, atlas: Atlas) -> float | None:
    """Median over the named cells of the squared Mahalanobis distance of each cell (``y``, atlas
    frame) to its name's atlas mean under the name's covariance (about ``d`` - 2/3 for a sample
    drawn from the atlas; large when the registration failed). None without named cells."""
    sel = np.asarray(index) >= 0
    if not sel.any():
        return None
    r = y[sel] - atlas.means[index[sel]]
    prec = np.linalg.inv(atlas.covariances[index[sel]])
    return float(np.median(np.einsum("ni,nij,nj->n", r, prec, r)))


def fit_check(y, index, atlas: Atlas) -> dict:
    """The fit statistic of a sample beside those of the atlas's leave-one-out samples
    (``atlas.calibration["loo_fit_median_d2"]``); ``ok`` False (and a UserWarning) when it exceeds
    :data:`FIT_FACTOR` times their largest, or when no cell is named at all; None for an atlas
    without them, with fewer than :data:`FIT_MIN_SAMPLES` of them, or for a sample of fewer than
    :data:`FIT_MIN_CELLS` cells (a sample of which no cell is named still gets the warning)."""
    value = fit_statistic(y, index, atlas)
    ref = atlas.calibration.get("loo_fit_median_d2")
    out = {"median_d2": value, "loo_median_d2": ref, "factor": FIT_FACTOR, "ok": None, "n_cells": len(index)}
    applies = bool(ref) and len(ref) >= FIT_MIN_SAMPLES and len(index) >= FIT_MIN_CELLS
    if value is None and len(index):
        out["ok"] = False if applies else None
        warnings.warn(
            f"points: no cell of the sample was named (all {len(index)} left unnamed): the registration has "
            "probably failed, or the unmatched cost is below every name's cost. Check that the coordinates are "
            "in the atlas's units (spacing) and axis order, and the handedness (allow_reflection).",
            UserWarning, stacklevel=3)
    elif applies and value is not None:
        limit = FIT_FACTOR * max(ref)
        out["ok"] = bool(value <= limit)
        if not out["ok"]:
            warnings.warn(
                f"points: the sample fits the atlas much worse than its training samples did (median squared "
                f"Mahalanobis distance {value:.2f}, theirs {min(ref):.2f}-{max(ref):.2f}, limit {limit:.2f}): the "
                "registration has probably failed, and the names and confidences are not reliable. Check that "
                "the coordinates are in the atlas's units (spacing) and axis order, and the handedness "
                "(allow_reflection).", UserWarning, stacklevel=3)
    return out
