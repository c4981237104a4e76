"""Object-level segmentation metrics from the sparse contingency table: instance matching at IoU
thresholds (precision, recall, F1, AP), mean average precision and symmetric best Dice."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ..matching import linear_assignment
from ._contingency import isin_labels, labels_tuple, table_of

#: IoU thresholds of the mean average precision: 0.50, 0.55, ..., 0.95.
AP_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


# ----------------------------------------------------------------------------- instance matching


@dataclass(frozen=True)
class InstanceMatchingResult:
    """Object-level detection scores at IoU thresholds (arrays aligned with ``thresholds``).

    ``ap = tp / (tp + fp + fn)`` is the DSB 2018 / StarDist "average precision" at one threshold.
    ``matches[k]`` is a ``(m, 3)`` float64 array of (segmentation label, ground-truth label, IoU) of
    the matched pairs at ``thresholds[k]`` (labels are exact up to 2**53 only, as float64). ``mean_matched_iou`` is the mean IoU of the matched pairs
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
    table = table_of(segmentation, ground_truth, table)
    bg = labels_tuple(background, "background")
    seg_obj = ~isin_labels(table.seg_ids, bg)
    gt_obj = ~isin_labels(table.gt_ids, bg)
    keep = seg_obj[table.rows] & gt_obj[table.cols]
    # sizes over all voxels of an object (its overlap with background included)
    r, c, n = table.rows[keep], table.cols[keep], table.counts[keep]
    iou = n / (table.seg_sizes[r] + table.gt_sizes[c] - n)
    return table, seg_obj, gt_obj, r, c, iou


def _compact(idx):
    """``idx`` renumbered 0..k-1 in increasing order of value, and k (bincount-based, O(n + max))."""
    seen = np.zeros(int(idx.max()) + 1, dtype=bool)
    seen[idx] = True
    return (np.cumsum(seen) - 1)[idx], int(np.count_nonzero(seen))


def _match(r, c, w):
    """Maximum-cardinality, then maximum-weight one-to-one matching on a sparse bipartite graph.

    ``r``, ``c``: row and column indices of the candidate pairs (no pair twice); ``w``: their
    weights (IoU), each in (0, 1]. Returns the indices into ``r``/``c`` of the chosen pairs, sorted.
    Memory and work scale with the number of pairs (no dense ``rows x columns`` array).
    """
    if len(r) == 0:
        return np.zeros(0, dtype=np.int64)
    # A pair whose segment and object have no other candidate is in every optimum (adding it to any
    # matching without it adds a pair) and independent of the rest. When all pairs are such (always
    # for IoU thresholds >= 0.5), nothing is left to solve. (bincount: O(n); np.unique is hash-based
    # and slow on millions of labels in numpy >= 2.3.)
    lone = (np.bincount(r)[r] == 1) & (np.bincount(c)[c] == 1)
    if lone.all():
        return np.arange(len(r))
    rest = np.flatnonzero(~lone)
    ri, nr = _compact(r[rest])
    ci, nc = _compact(c[rest])
    # Exact reduction to xmodal's sparse min-cost partial assignment (linear_assignment with an
    # unmatched cost u per unmatched row and column). A matching X costs
    #     F(X) = -sum_{e in X} w_e + u (nr + nc - 2 |X|).
    # Take u = nu + 1 with nu = min(nr, nc) >= |X| for every matching. If |X| < |Y|, then
    #     F(X) - F(Y) = sum_Y w - sum_X w + 2u (|Y| - |X|) > 0 - |X| + 2 (nu + 1) >= nu + 2 > 0
    # (0 < w <= 1), so every minimum of F has the most pairs; among matchings of one size F is a
    # constant minus the total IoU, so the minimum is the largest total IoU: exactly the order
    # "most pairs, then largest total IoU".
    # Floating point: the costs are -w exactly. (A large constant per pair, -(M + w) with M above
    # the pair count, would round away the IoU digits below ~M * 1e-16.) The pair count is enforced
    # inside the solver: as 2u = 2 nu + 2 exceeds the largest change of matched cost along an
    # augmenting path (< nu here: costs in [-1, 0)), it replaces 2u by that bound plus a margin of
    # at least the spread of the costs and far above the rounding of its label sums (which is
    # ~ p**2 * 2**-53 for p pairs; docs/matching.md, "Partial"), so no sum of IoUs can buy back a
    # pair (tested on a path of 1e6 pairs). Ties between equal optima go to its fixed rule.
    order = np.lexsort((ci, ri))
    indptr = np.zeros(nr + 1, dtype=np.int64)
    np.cumsum(np.bincount(ri, minlength=nr), out=indptr[1:])
    cost = sparse.csr_matrix((-w[rest[order]], ci[order].astype(np.int32), indptr), shape=(nr, nc))
    res = linear_assignment(cost, unmatched_cost=float(min(nr, nc) + 1))
    # back from (row, column) to the pair: position of the key row * nc + column among the sorted keys
    keys = ri[order].astype(np.int64) * nc + ci[order]
    picked = rest[order[np.searchsorted(keys, res.rows * nc + res.cols)]]
    return np.sort(np.concatenate([np.flatnonzero(lone), picked]))


def instance_matching(segmentation=None, ground_truth=None, *, thresholds=(0.5,), background=0, table=None):
    """Precision, recall, F1 and AP of object detection at IoU thresholds, with optimal matching.

    At each threshold ``t`` a segment and a ground-truth object may be matched only if their
    intersection over union (computed in float64) is **strictly greater** than ``t``; among those
    pairs a one-to-one matching with the most pairs (ties: the largest total IoU) is found exactly.
    Pairs whose segment and object have no other candidate are matched directly (for ``t >= 0.5``
    that is every pair: an object can then have at most one candidate). The rest is solved as one
    sparse min-cost partial assignment (:func:`xmodal.linear_assignment`, successive shortest paths
    in C++): cost ``-IoU`` per pair and ``min(n_seg, n_gt) + 1`` per unmatched segment or object,
    which makes any extra pair worth more than every difference of IoU totals (proof in the code).
    Time and memory grow with the number of candidate pairs, never with ``n_seg x n_gt``, also at
    low thresholds where thousands of touching objects form one connected group of candidates.
    Among equally good matchings the solver's fixed tie rule picks one (same input, same pairs).
    Then ``tp`` = matched pairs, ``fp`` = unmatched segments, ``fn`` = unmatched ground-truth
    objects, ``precision = tp/(tp+fp)``, ``recall = tp/(tp+fn)``, ``f1 = 2 tp/(2 tp + fp + fn)``,
    ``ap = tp/(tp+fp+fn)``.

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
