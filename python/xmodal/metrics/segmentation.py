"""Segmentation metrics against ground truth, all computed from one sparse contingency table."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from .._validation import as_bool, as_spacing
from ._contingency import (ContingencyTable, _check_labels, _factorize, check_label_pair, contingency_table,
                           isin_labels, labels_tuple, table_of)
from .instances import AP_THRESHOLDS, instance_matching, symmetric_best_dice
from .points import ChamferResult, chamfer_distance

logger = logging.getLogger(__name__)


def _table(segmentation, ground_truth, table, ignore_seg=(), ignore_gt=()) -> ContingencyTable:
    table = table_of(segmentation, ground_truth, table)
    t = table.without(seg_labels=labels_tuple(ignore_seg, "ignore_seg"), gt_labels=labels_tuple(ignore_gt, "ignore_gt"))
    if t.n_voxels == 0:
        raise ValueError("segmentation and ground_truth: no voxels left after removing the ignored labels "
                         f"(ignore_seg={tuple(ignore_seg)}, ignore_gt={tuple(ignore_gt)})")
    return t


# ----------------------------------------------------------------------------- adapted Rand


@dataclass(frozen=True)
class AdaptedRandResult:
    """Adapted Rand error and its pair precision / recall.

    ``error = 1 - F`` with ``F = 2 P R / (P + R)``; see :func:`adapted_rand_error`.
    """

    error: float
    precision: float
    recall: float
    n_voxels: int


def adapted_rand_error(segmentation=None, ground_truth=None, *, table=None, ignore_gt=(0,), ignore_seg=()):
    """Adapted Rand error (ISBI 2012 / CREMI / Arganda-Carreras et al. 2015): 1 - Rand F-score.

    With ``n_ij`` the voxels in segment ``i`` and ground-truth object ``j``, ``s_i`` and ``g_j`` the
    segment and object sizes and ``n`` the counted voxels, counting unordered pairs of distinct
    voxels (so ``x**2 - x`` twice the pairs in a set of ``x``)::

        T = sum_ij n_ij**2 - n        (pairs together in both)
        S = sum_i  s_i**2  - n        (pairs together in the segmentation)
        G = sum_j  g_j**2  - n        (pairs together in the ground truth)
        precision = T / S,  recall = T / G,  error = 1 - 2 T / (S + G).

    Precision is the fraction of the segmentation's same-segment pairs that are also together in
    the ground truth (it drops with false merges); recall the fraction of ground-truth pairs kept
    together (it drops with false splits). 0 is perfect, 1 the worst. The error equals scikit-image's
    ``adapted_rand_error`` (whose ``precision`` and ``recall`` are these two swapped). When no pair
    is together in one segmentation, its ratio is defined as 1 (nothing claimed, nothing wrong).
    The SNEMI3D / CREMI reference scripts differ slightly: they sum ``n_ij**2`` without ``- n`` and
    treat segmentation label 0 as single-voxel segments (here: ``ignore_seg=(0,)`` drops those
    voxels, the default keeps them as one segment); the difference shrinks with object size.
    Pair counts are exact integers, so identical partitions give exactly 0.

    Parameters
    ----------
    segmentation, ground_truth : integer arrays of the same shape (2D or 3D)
        Label images; every label is an object unless ignored.
    table : ContingencyTable, optional
        Precomputed :func:`contingency_table` (then the images are not needed).
    ignore_gt : sequence of int
        Voxels whose ground-truth label is in here are not counted (default ``(0,)``: unlabelled
        ground truth / boundaries, the CREMI and ISBI convention).
    ignore_seg : sequence of int
        Voxels whose segmentation label is in here are not counted (default none: a segmentation
        background label 0 is one big segment).

    Returns
    -------
    AdaptedRandResult
    """
    t = _table(segmentation, ground_truth, table, ignore_seg, ignore_gt)
    n = int(t.n_voxels)
    # exact integer pair counts (so identical partitions give exactly 0, on any BLAS thread count)
    both = _sum_squares(t.counts, n) - n
    seg_pairs = _sum_squares(t.seg_sizes, n) - n
    gt_pairs = _sum_squares(t.gt_sizes, n) - n
    precision = both / seg_pairs if seg_pairs > 0 else 1.0
    recall = both / gt_pairs if gt_pairs > 0 else 1.0
    error = (seg_pairs + gt_pairs - 2 * both) / (seg_pairs + gt_pairs) if seg_pairs + gt_pairs > 0 else 0.0
    return AdaptedRandResult(error=float(error), precision=float(precision), recall=float(recall), n_voxels=t.n_voxels)


def _sum_squares(x: np.ndarray, total: int) -> int:
    """Exact ``sum(x**2)`` of non-negative integers summing to ``total`` (as a Python int)."""
    x = np.asarray(x, dtype=np.int64)
    if x.size == 0:
        return 0
    if int(x.max()) * total < 2**63:  # sum(x**2) <= max(x) * sum(x): int64 cannot overflow
        return int(np.sum(x * x))
    return int(np.sum(x.astype(object) ** 2))


# ----------------------------------------------------------------------------- VOI


@dataclass(frozen=True)
class VariationOfInformationResult:
    """Variation of information split into its two conditional entropies (unit: ``base``)."""

    split: float
    merge: float
    base: float
    n_voxels: int

    @property
    def total(self) -> float:
        return self.split + self.merge


def variation_of_information(segmentation=None, ground_truth=None, *, table=None, ignore_gt=(0,), ignore_seg=(),
                             base: float = 2.0):
    """Variation of information (Meila 2003) as split and merge parts.

    With ``p_ij = n_ij / n`` and marginals ``p_i`` (segmentation), ``q_j`` (ground truth)::

        split = H(S | G) = -sum_ij p_ij log(p_ij / q_j)   (over-segmentation)
        merge = H(G | S) = -sum_ij p_ij log(p_ij / p_i)   (under-segmentation)

    Logarithms to ``base`` (default 2: bits, as in CREMI and scikit-image; ``numpy.e`` for nats).
    0 is perfect. scikit-image's ``variation_of_information(gt, seg)`` returns ``[split, merge]``.

    Parameters
    ----------
    segmentation, ground_truth, table, ignore_gt, ignore_seg
        As in :func:`adapted_rand_error` (ground-truth label 0 ignored by default).
    base : float
        Base of the logarithm, > 1.

    Returns
    -------
    VariationOfInformationResult
    """
    base = float(base)
    if not (np.isfinite(base) and base > 1):
        raise ValueError(f"base: expected a logarithm base > 1, got {base}")
    t = _table(segmentation, ground_truth, table, ignore_seg, ignore_gt)
    p = t.counts / float(t.n_voxels)
    log_b = np.log(base)
    # p_ij / q_j = n_ij / g_j; np.sum (pairwise, single-threaded), not a BLAS dot: the result must
    # not depend on the BLAS thread count
    split = float(-np.sum(p * np.log(t.counts / t.gt_sizes[t.cols])) / log_b)
    merge = float(-np.sum(p * np.log(t.counts / t.seg_sizes[t.rows])) / log_b)
    return VariationOfInformationResult(split=max(split, 0.0) + 0.0, merge=max(merge, 0.0) + 0.0, base=base, n_voxels=t.n_voxels)


# ----------------------------------------------------------------------------- centroids


def label_centroids(labels, *, spacing=None, background=0, return_sizes: bool = False):
    """Centroids of the labelled objects, in physical units.

    Parameters
    ----------
    labels : integer array, 2D or 3D (any nD works)
    spacing : float or sequence of float, optional
        Voxel size per axis (image axis order); default 1 (voxel units).
    background : int or sequence of int
        Labels that are not objects.

    Returns
    -------
    ids : (m,) int64
        Object labels, sorted (uint64 when uint64 labels go beyond 2**63 - 1).
    centroids : (m, ndim) float64
        Mean voxel coordinate of each object times ``spacing``.
    sizes : (m,) int64
        Voxels per object (only with ``return_sizes=True``).
    """
    return_sizes = as_bool(return_sizes, "return_sizes")

    lab = _check_labels(labels, "labels")
    sp = as_spacing(spacing, lab.ndim)
    ids, inv = _factorize(lab.reshape(-1))
    sizes = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    cents = _coordinate_sums(inv, lab.shape, len(ids)) / sizes[:, None]
    if sp is not None:
        cents *= sp
    keep = ~isin_labels(ids, labels_tuple(background, "background"))
    if return_sizes:
        return ids[keep], cents[keep], sizes[keep].astype(np.int64)
    return ids[keep], cents[keep]


def _coordinate_sums(inv: np.ndarray, shape: tuple, n_ids: int) -> np.ndarray:
    """``(n_ids, ndim)`` sums of the voxel coordinates per label index, O(n_voxels + n_ids) time.

    The flat label indices ``inv`` are read in chunks, each with its coordinates from
    ``np.unravel_index``; sums of integers in float64 are exact below 2**53.
    """
    acc = np.zeros((n_ids, len(shape)))
    chunk = max(1 << 20, n_ids // 4)  # a chunk costs O(chunk + n_ids)
    for start in range(0, inv.size, chunk):
        stop = min(start + chunk, inv.size)
        part = inv[start:stop]
        for axis, coord in enumerate(np.unravel_index(np.arange(start, stop), shape)):
            acc[:, axis] += np.bincount(part, weights=coord, minlength=n_ids)
    return acc


def centroid_chamfer_distance(segmentation, ground_truth, *, spacing=None, background=0) -> ChamferResult:
    """:func:`chamfer_distance` between the object centroids of two label images.

    Parameters
    ----------
    segmentation, ground_truth : integer arrays of one shape (2D or 3D)
        Label images; the labels in ``background`` are not objects.
    spacing : float or sequence of float, optional
        Voxel size per axis, in image axis order ((z,) y, x), in the physical unit the distances
        should have (e.g. µm): centroids are voxel indices times ``spacing``, so the distances are
        in that unit. Default: 1 per axis, distances in voxels (wrong for anisotropic voxels).
    background : int or sequence of int
        Labels that are not objects.

    Returns
    -------
    ChamferResult
        Distances in the units of ``spacing``.
    """
    seg, gt = check_label_pair(segmentation, ground_truth)
    _, a = label_centroids(seg, spacing=spacing, background=background)
    _, b = label_centroids(gt, spacing=spacing, background=background)
    for pts, name in ((a, "segmentation"), (b, "ground_truth")):
        if len(pts) == 0:
            raise ValueError(f"{name}: expected at least one object (a label not in background="
                             f"{labels_tuple(background, 'background')}), got none")
    return chamfer_distance(a, b)


# ----------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class SegmentationScores:
    """All segmentation metrics of :func:`evaluate_segmentation`.

    ``arand*`` and ``voi_*`` count voxels whose ground truth is not in ``ignore_gt``; the object
    metrics treat ``background`` as no object. VOI unit: bits (log base 2) unless ``voi_base`` says
    otherwise. ``chamfer`` in the units of ``spacing``; NaN when either image has no object.
    ``n_seg`` / ``n_gt``: objects (labels not in ``background``) in each image.
    """

    arand: float
    arand_precision: float
    arand_recall: float
    voi_split: float
    voi_merge: float
    voi_base: float
    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mean_ap: float
    sbd: float
    chamfer: float
    n_seg: int
    n_gt: int

    def as_dict(self) -> dict:
        """JSON-ready dict (arrays as lists)."""
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def evaluate_segmentation(segmentation, ground_truth, *, ignore_gt=(0,), ignore_seg=(), background=0,
                          thresholds=(0.5, 0.75, 0.9), spacing=None, voi_base: float = 2.0) -> SegmentationScores:
    """ARand, VOI, precision / recall / F1 at IoU thresholds, mean AP, SBD and centroid Chamfer.

    One contingency table serves all table-based metrics. See :func:`adapted_rand_error`,
    :func:`variation_of_information`, :func:`instance_matching`, :func:`mean_average_precision`,
    :func:`symmetric_best_dice` and :func:`centroid_chamfer_distance` for the definitions.

    Parameters
    ----------
    segmentation, ground_truth : integer arrays of one shape (2D or 3D)
        The label images compared.
    ignore_gt, ignore_seg : sequence of int
        Labels whose voxels the ARand and VOI leave out (ground truth: default 0; segmentation).
    background : int or sequence of int
        Labels that are no object in the object metrics (matching, AP, SBD, Chamfer).
    thresholds : sequence of float
        IoU thresholds of ``precision``, ``recall`` and ``f1``.
    spacing : float or sequence of float, optional
        Voxel size per axis, in image axis order ((z,) y, x), in the physical unit wanted (e.g.
        µm). It only sets the unit of ``chamfer`` (centroids are voxel indices times ``spacing``);
        the overlap metrics count voxels. Default: 1 per axis, ``chamfer`` in voxels. ``chamfer``
        is NaN when either image has no object.
    voi_base : float
        Logarithm base of the VOI (2: bits).

    Returns
    -------
    SegmentationScores
    """
    seg, gt = check_label_pair(segmentation, ground_truth)
    as_spacing(spacing, seg.ndim)  # checked even when no centroid is needed
    table = contingency_table(seg, gt)
    ar = adapted_rand_error(table=table, ignore_gt=ignore_gt, ignore_seg=ignore_seg)
    voi = variation_of_information(table=table, ignore_gt=ignore_gt, ignore_seg=ignore_seg, base=voi_base)
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    both = instance_matching(table=table, thresholds=np.concatenate([th, AP_THRESHOLDS]), background=background)
    k = th.size
    sbd = symmetric_best_dice(table=table, background=background)
    n_seg_obj, n_gt_obj = both.n_seg, both.n_gt
    if n_seg_obj and n_gt_obj:
        chamfer = centroid_chamfer_distance(seg, gt, spacing=spacing, background=background).distance
    else:
        chamfer = float("nan")
    return SegmentationScores(
        arand=ar.error, arand_precision=ar.precision, arand_recall=ar.recall,
        voi_split=voi.split, voi_merge=voi.merge, voi_base=voi.base,
        thresholds=th, precision=both.precision[:k], recall=both.recall[:k], f1=both.f1[:k],
        mean_ap=float(both.ap[k:].mean()), sbd=sbd, chamfer=chamfer, n_seg=n_seg_obj, n_gt=n_gt_obj,
    )
