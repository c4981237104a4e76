"""Segmentation metrics against ground truth, all computed from one sparse contingency table."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from .._validation import as_bool
from ._contingency import ContingencyTable, check_label_pair, contingency_table
from .points import ChamferResult, chamfer_distance

logger = logging.getLogger(__name__)

#: IoU thresholds of the mean average precision: 0.50, 0.55, ..., 0.95.
AP_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


def _labels_tuple(x, name):
    if x is None:
        return ()
    if np.isscalar(x):
        x = (x,)
    try:
        out = tuple(int(v) for v in x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a sequence of integer labels, got {x!r}") from exc
    return out


def _table(segmentation, ground_truth, table, ignore_seg=(), ignore_gt=()) -> ContingencyTable:
    if table is None:
        if segmentation is None or ground_truth is None:
            raise TypeError("segmentation and ground_truth: both are required unless table= is given")
        table = contingency_table(segmentation, ground_truth)
    elif not isinstance(table, ContingencyTable):
        raise TypeError(f"table: expected a ContingencyTable from xmodal.metrics.contingency_table, got {type(table).__name__}")
    t = table.without(seg_labels=_labels_tuple(ignore_seg, "ignore_seg"), gt_labels=_labels_tuple(ignore_gt, "ignore_gt"))
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
    n = float(t.n_voxels)
    c = t.counts.astype(np.float64)
    s = t.seg_sizes.astype(np.float64)
    g = t.gt_sizes.astype(np.float64)
    both = float(c @ c) - n
    seg_pairs = float(s @ s) - n
    gt_pairs = float(g @ g) - n
    precision = both / seg_pairs if seg_pairs > 0 else 1.0
    recall = both / gt_pairs if gt_pairs > 0 else 1.0
    f = 2.0 * both / (seg_pairs + gt_pairs) if seg_pairs + gt_pairs > 0 else 1.0
    return AdaptedRandResult(error=1.0 - f, precision=precision, recall=recall, n_voxels=t.n_voxels)


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
    n = float(t.n_voxels)
    p = t.counts / n
    p_seg = t.seg_sizes[t.rows] / n
    p_gt = t.gt_sizes[t.cols] / n
    log_b = np.log(base)
    split = float(-(p @ np.log(p / p_gt)) / log_b)
    merge = float(-(p @ np.log(p / p_seg)) / log_b)
    return VariationOfInformationResult(split=max(split, 0.0) + 0.0, merge=max(merge, 0.0) + 0.0, base=base, n_voxels=t.n_voxels)


# ----------------------------------------------------------------------------- instance matching


@dataclass(frozen=True)
class InstanceMatchingResult:
    """Object-level detection scores at IoU thresholds (arrays aligned with ``thresholds``).

    ``ap = tp / (tp + fp + fn)`` is the DSB 2018 / StarDist "average precision" at one threshold.
    ``matches[k]`` is a ``(m, 3)`` array of (segmentation label, ground-truth label, IoU) of the
    matched pairs at ``thresholds[k]``. ``mean_matched_iou`` is the mean IoU of the matched pairs
    (NaN when none). Ratios with an empty denominator are 1 when both sides have no objects, else 0.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    mean_matched_iou: np.ndarray
    n_seg: int
    n_gt: int
    matches: list = field(repr=False)


def _ratio(num, den, both_empty):
    return num / den if den > 0 else (1.0 if both_empty else 0.0)


def _object_table(segmentation, ground_truth, table, background):
    if table is None:
        if segmentation is None or ground_truth is None:
            raise TypeError("segmentation and ground_truth: both are required unless table= is given")
        table = contingency_table(segmentation, ground_truth)
    elif not isinstance(table, ContingencyTable):
        raise TypeError(f"table: expected a ContingencyTable, got {type(table).__name__}")
    bg = _labels_tuple(background, "background")
    seg_obj = ~np.isin(table.seg_ids, bg)
    gt_obj = ~np.isin(table.gt_ids, bg)
    keep = seg_obj[table.rows] & gt_obj[table.cols]
    # sizes over all voxels of an object (its overlap with background included)
    r, c, n = table.rows[keep], table.cols[keep], table.counts[keep]
    iou = n / (table.seg_sizes[r] + table.gt_sizes[c] - n)
    return table, seg_obj, gt_obj, r, c, iou


def _match(r, c, w):
    """Maximum-cardinality, then maximum-weight one-to-one matching on a sparse bipartite graph.

    Solved exactly per connected component with scipy's Hungarian solver on the (small) dense
    block; returns indices into ``r``/``c``.
    """
    if len(r) == 0:
        return np.zeros(0, dtype=np.int64)
    # every node has at most one edge -> nothing to solve (always true for IoU thresholds >= 0.5)
    if len(np.unique(r)) == len(r) and len(np.unique(c)) == len(c):
        return np.arange(len(r))
    ur, ri = np.unique(r, return_inverse=True)
    uc, ci = np.unique(c, return_inverse=True)
    nr = len(ur)
    graph = sparse.coo_array((np.ones(len(r)), (ri, nr + ci)), shape=(nr + len(uc),) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ri]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    chosen = []
    for edges in np.split(order, bounds):
        if len(edges) == 1:
            chosen.append(edges)
            continue
        rr, rinv = np.unique(ri[edges], return_inverse=True)
        cc, cinv = np.unique(ci[edges], return_inverse=True)
        k = min(len(rr), len(cc))
        # one extra match is worth more than any difference of weight sums (weights in [0, 1])
        score = np.zeros((len(rr), len(cc)))
        score[rinv, cinv] = 1.0 + w[edges] / (k + 1.0)
        lut = np.full((len(rr), len(cc)), -1, dtype=np.int64)
        lut[rinv, cinv] = edges
        a, b = linear_sum_assignment(score, maximize=True)
        picked = lut[a, b]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def instance_matching(segmentation=None, ground_truth=None, *, thresholds=(0.5,), background=0, table=None):
    """Precision, recall, F1 and AP of object detection at IoU thresholds, with optimal matching.

    At each threshold ``t`` a segment and a ground-truth object may be matched only if their
    intersection over union is **strictly greater** than ``t``; among those pairs a one-to-one
    matching with the most pairs (ties: the largest total IoU) is found exactly (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``, per connected component of the sparse candidate
    graph). For ``t >= 0.5`` the candidates are already one-to-one. Then ``tp`` = matched pairs,
    ``fp`` = unmatched segments, ``fn`` = unmatched ground-truth objects, ``precision = tp/(tp+fp)``,
    ``recall = tp/(tp+fn)``, ``f1 = 2 tp/(2 tp + fp + fn)``, ``ap = tp/(tp+fp+fn)``.

    IoU uses the whole objects (their voxels on the other image's background included).

    Parameters
    ----------
    segmentation, ground_truth : integer arrays of the same shape (2D or 3D)
    thresholds : float or sequence of float in [0, 1)
    background : int or sequence of int
        Labels that are not objects in either image (default 0).
    table : ContingencyTable, optional
        Precomputed full table (no labels removed).

    Returns
    -------
    InstanceMatchingResult
    """
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if th.ndim != 1 or th.size == 0 or not np.all((th >= 0) & (th < 1)):
        raise ValueError(f"thresholds: expected IoU thresholds in [0, 1), got {thresholds!r}")
    table, seg_obj, gt_obj, r, c, iou = _object_table(segmentation, ground_truth, table, background)
    n_seg, n_gt = int(seg_obj.sum()), int(gt_obj.sum())
    both_empty = n_seg == 0 and n_gt == 0
    out = {k: np.zeros(th.size) for k in ("tp", "fp", "fn", "precision", "recall", "f1", "ap", "mean_matched_iou")}
    matches = []
    for k, t in enumerate(th):
        cand = np.flatnonzero(iou > t)
        picked = cand[_match(r[cand], c[cand], iou[cand])]
        tp = len(picked)
        fp, fn = n_seg - tp, n_gt - tp
        out["tp"][k], out["fp"][k], out["fn"][k] = tp, fp, fn
        out["precision"][k] = _ratio(tp, tp + fp, both_empty)
        out["recall"][k] = _ratio(tp, tp + fn, both_empty)
        out["f1"][k] = _ratio(2 * tp, 2 * tp + fp + fn, both_empty)
        out["ap"][k] = _ratio(tp, tp + fp + fn, both_empty)
        out["mean_matched_iou"][k] = float(iou[picked].mean()) if tp else np.nan
        matches.append(np.column_stack([table.seg_ids[r[picked]], table.gt_ids[c[picked]], iou[picked]]))
    for key in ("tp", "fp", "fn"):
        out[key] = out[key].astype(np.int64)
    return InstanceMatchingResult(thresholds=th, n_seg=n_seg, n_gt=n_gt, matches=matches, **out)


def mean_average_precision(segmentation=None, ground_truth=None, *, thresholds=AP_THRESHOLDS, background=0, table=None):
    """Mean over IoU thresholds 0.50:0.05:0.95 of ``AP(t) = TP / (TP + FP + FN)``.

    The Data Science Bowl 2018 / StarDist definition (not the area under a ranked
    precision-recall curve: segmentations carry no scores). Matching as in
    :func:`instance_matching`.
    """
    return float(np.mean(instance_matching(segmentation, ground_truth, thresholds=thresholds,
                                           background=background, table=table).ap))


# ----------------------------------------------------------------------------- Dice


def symmetric_best_dice(segmentation=None, ground_truth=None, *, background=0, table=None) -> float:
    """Symmetric best Dice (CVPPP leaf segmentation challenge; Scharr et al. 2016).

    ``BD(A, B) = mean over objects a of A of max over objects b of B of Dice(a, b)``, with
    ``Dice(a, b) = 2 |a & b| / (|a| + |b|)``; ``SBD = min(BD(seg, gt), BD(gt, seg))``. Labels in
    ``background`` are not objects. 1 is perfect. When one side has no objects SBD is 0 (1 when
    neither has any).
    """
    table, seg_obj, gt_obj, r, c, _ = _object_table(segmentation, ground_truth, table, background)
    n_seg, n_gt = int(seg_obj.sum()), int(gt_obj.sum())
    if n_seg == 0 or n_gt == 0:
        return 1.0 if n_seg == n_gt else 0.0
    n = table.counts[seg_obj[table.rows] & gt_obj[table.cols]]
    dice = 2.0 * n / (table.seg_sizes[r] + table.gt_sizes[c])
    best_seg = np.zeros(len(table.seg_ids))
    np.maximum.at(best_seg, r, dice)
    best_gt = np.zeros(len(table.gt_ids))
    np.maximum.at(best_gt, c, dice)
    return float(min(best_seg[seg_obj].mean(), best_gt[gt_obj].mean()))


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
        Object labels, sorted.
    centroids : (m, ndim) float64
        Mean voxel coordinate of each object times ``spacing``.
    sizes : (m,) int64
        Voxels per object (only with ``return_sizes=True``).
    """
    return_sizes = as_bool(return_sizes, "return_sizes")
    from .._validation import as_spacing
    from ._contingency import _check_labels, _factorize

    lab = _check_labels(labels, "labels")
    sp = as_spacing(spacing, lab.ndim)
    ids, inv = _factorize(lab.reshape(-1))
    inv = inv.reshape(lab.shape)
    sizes = np.bincount(inv.reshape(-1), minlength=len(ids)).astype(np.float64)
    cents = np.zeros((len(ids), lab.ndim))
    for axis in range(lab.ndim):
        # sum of coordinates per label, one hyperplane at a time (no coordinate grid in memory)
        acc = np.zeros(len(ids))
        for i in range(lab.shape[axis]):
            plane = np.take(inv, i, axis=axis).reshape(-1)
            acc += i * np.bincount(plane, minlength=len(ids))
        cents[:, axis] = acc / sizes
    if sp is not None:
        cents *= sp
    keep = ~np.isin(ids, _labels_tuple(background, "background"))
    if return_sizes:
        return ids[keep], cents[keep], sizes[keep].astype(np.int64)
    return ids[keep], cents[keep]


def centroid_chamfer_distance(segmentation, ground_truth, *, spacing=None, background=0) -> ChamferResult:
    """:func:`chamfer_distance` between the object centroids of two label images (physical units)."""
    seg, gt = check_label_pair(segmentation, ground_truth)
    _, a = label_centroids(seg, spacing=spacing, background=background)
    _, b = label_centroids(gt, spacing=spacing, background=background)
    return chamfer_distance(a, b)


# ----------------------------------------------------------------------------- all at once


@dataclass(frozen=True)
class SegmentationScores:
    """All segmentation metrics of :func:`evaluate_segmentation`.

    ``arand*`` and ``voi_*`` count voxels whose ground truth is not in ``ignore_gt``; the object
    metrics treat ``background`` as no object. VOI unit: bits (log base 2) unless ``voi_base`` says
    otherwise. Chamfer distances in the units of ``spacing``.
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
    """
    seg, gt = check_label_pair(segmentation, ground_truth)
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
