"""Point-set metrics: Chamfer distance and the accuracy of a name-preserving matching."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .._validation import as_points, describe


@dataclass(frozen=True)
class ChamferResult:
    """Chamfer distance between point sets A and B (units of the coordinates).

    ``a_to_b`` = mean over A of the distance to the nearest point of B, ``b_to_a`` likewise;
    ``distance = (a_to_b + b_to_a) / 2``; ``max_a_to_b`` / ``max_b_to_a`` are the two directed
    Hausdorff distances.
    """

    distance: float
    a_to_b: float
    b_to_a: float
    max_a_to_b: float
    max_b_to_a: float


def chamfer_distance(points_a, points_b) -> ChamferResult:
    """Symmetric Chamfer distance (mean nearest-neighbour distance, averaged both ways).

    Parameters
    ----------
    points_a, points_b : (n, d), (m, d) arrays, d = 2 or 3, at least one point each
        Coordinates in the same physical units and axis order.

    Returns
    -------
    ChamferResult
    """
    a = as_points(points_a, "points_a")
    b = as_points(points_b, "points_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"points_a and points_b: expected the same dimension, got {a.shape[1]} and {b.shape[1]}")
    dab, _ = cKDTree(b).query(a)
    dba, _ = cKDTree(a).query(b)
    return ChamferResult(distance=0.5 * (float(dab.mean()) + float(dba.mean())), a_to_b=float(dab.mean()),
                         b_to_a=float(dba.mean()), max_a_to_b=float(dab.max()), max_b_to_a=float(dba.max()))


@dataclass(frozen=True)
class MatchingAccuracyResult:
    """How many matched pairs join points with the same name.

    Attributes
    ----------
    accuracy : float
        ``n_correct`` divided by the chosen denominator (see :func:`matching_accuracy`); NaN when
        that denominator is 0 (e.g. no name common to both sets).
    n_correct : int
        Pairs whose two names are equal.
    n_pairs : int
        Pairs given.
    n_common : int
        Names present in both sets (the most correct pairs a one-to-one matching can have).
    precision : float
        ``n_correct / n_pairs`` (NaN without pairs).
    denominator : str
    """

    accuracy: float
    n_correct: int
    n_pairs: int
    n_common: int
    precision: float
    denominator: str


def _names(x, name):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of names, got shape {a.shape}")
    return a


def _index(x, name, size, names_arg):
    a = np.asarray(x)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name}: expected a 1-D integer index array, got {describe(x)}")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= size):
        raise ValueError(f"{name}: indices must lie in [0, {size}) (the length of {names_arg}), "
                         f"got values from {int(a.min())} to {int(a.max())}")
    return a


def matching_accuracy(fixed_names, moving_names, fixed_index, moving_index, *, denominator: str = "common"):
    """Fraction of correctly matched names (e.g. lineage names of C. elegans nuclei).

    Pair ``k`` joins fixed point ``fixed_index[k]`` and moving point ``moving_index[k]``; it is correct
    when ``fixed_names[fixed_index[k]] == moving_names[moving_index[k]]``.

    Parameters
    ----------
    fixed_names, moving_names : 1-D arrays
        Name of every point of each set; names must be unique within a set.
    fixed_index, moving_index : 1-D integer arrays of the same length
        The matched pairs; each point may appear at most once (a one-to-one matching).
    denominator : {"common", "fixed", "pairs"}
        ``"common"`` (default): the number of names present in both sets, so a perfect matching of
        everything matchable scores 1; ``"fixed"``: all fixed points; ``"pairs"``: the pairs given
        (= precision).

    Returns
    -------
    MatchingAccuracyResult
    """
    fn = _names(fixed_names, "fixed_names")
    mn = _names(moving_names, "moving_names")
    if denominator not in ("common", "fixed", "pairs"):
        raise ValueError(f"denominator: expected 'common', 'fixed' or 'pairs', got {denominator!r}")
    fi = _index(fixed_index, "fixed_index", len(fn), "fixed_names")
    mi = _index(moving_index, "moving_index", len(mn), "moving_names")
    if fi.shape != mi.shape:
        raise ValueError(f"fixed_index and moving_index: expected the same length, got {fi.size} and {mi.size}")
    for arr, nm in ((fi, "fixed_index"), (mi, "moving_index")):
        if len(np.unique(arr)) != arr.size:
            raise ValueError(f"{nm}: a point appears in more than one pair; expected a one-to-one matching")
    for arr, nm in ((fn, "fixed_names"), (mn, "moving_names")):
        if len(np.unique(arr)) != arr.size:
            raise ValueError(f"{nm}: names must be unique within a set")
    n_correct = int(np.count_nonzero(fn[fi] == mn[mi])) if fi.size else 0
    n_common = int(np.intersect1d(fn, mn).size)
    den = {"common": n_common, "fixed": len(fn), "pairs": fi.size}[denominator]
    acc = n_correct / den if den else float("nan")
    prec = n_correct / fi.size if fi.size else float("nan")
    return MatchingAccuracyResult(accuracy=acc, n_correct=n_correct, n_pairs=int(fi.size), n_common=n_common,
                                  precision=prec, denominator=denominator)
