"""Segmentation and matching metrics against ground truth.

All label-image metrics are computed from one sparse contingency table
(:func:`contingency_table`, O(n_voxels), never a dense ``n_seg x n_gt`` matrix), in 2D or 3D:

- :func:`adapted_rand_error` (ARand = 1 - Rand F-score, ISBI 2012 / CREMI),
- :func:`variation_of_information` (split and merge conditional entropies, bits by default),
- :func:`instance_matching` (precision / recall / F1 / AP at IoU thresholds with optimal one-to-one
  matching) and :func:`mean_average_precision` (DSB 2018 / StarDist AP averaged over 0.5:0.05:0.95),
- :func:`symmetric_best_dice` (CVPPP SBD),
- :func:`label_centroids`, :func:`centroid_chamfer_distance`, :func:`chamfer_distance`,
- :func:`evaluate_segmentation` (all of the above at once),
- :func:`matching_accuracy` (fraction of correctly matched names of two point sets).
"""

from ._contingency import ContingencyTable, contingency_table
from .instances import AP_THRESHOLDS, InstanceMatchingResult, instance_matching, mean_average_precision, symmetric_best_dice
from .points import ChamferResult, MatchingAccuracyResult, chamfer_distance, matching_accuracy
from .segmentation import (
    AdaptedRandResult,
    SegmentationScores,
    VariationOfInformationResult,
    adapted_rand_error,
    centroid_chamfer_distance,
    evaluate_segmentation,
    label_centroids,
    variation_of_information,
)

__all__ = [
    "AP_THRESHOLDS",
    "AdaptedRandResult",
    "ChamferResult",
    "ContingencyTable",
    "InstanceMatchingResult",
    "MatchingAccuracyResult",
    "SegmentationScores",
    "VariationOfInformationResult",
    "adapted_rand_error",
    "centroid_chamfer_distance",
    "chamfer_distance",
    "contingency_table",
    "evaluate_segmentation",
    "instance_matching",
    "label_centroids",
    "matching_accuracy",
    "mean_average_precision",
    "symmetric_best_dice",
    "variation_of_information",
]
