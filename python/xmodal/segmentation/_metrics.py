"""Private segmentation metrics for the tests and benchmarks of the mutex watershed."""

from __future__ import annotations

import numpy as np


def adapted_rand_error(reference, segmentation) -> float:
    """Adapted Rand error (1 - F-score of Rand precision and recall, CREMI / scikit-image).

    Every label value, 0 included, is a segment; 0 = identical partitions, 1 = worst.
    """
    a = np.asarray(reference).ravel()
    b = np.asarray(segmentation).ravel()
    if a.shape != b.shape:
        raise ValueError(f"segmentation: expected {a.size} voxels like reference, got {b.size}")
    n = a.size
    if n <= 1:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    ai = ai.ravel().astype(np.int64)
    bi = bi.ravel().astype(np.int64)
    nb = int(bi.max()) + 1
    _, counts = np.unique(ai * nb + bi, return_counts=True)
    sum_ab = float(np.sum(counts.astype(np.float64) ** 2)) - n
    sum_a = float(np.sum(np.bincount(ai).astype(np.float64) ** 2)) - n
    sum_b = float(np.sum(np.bincount(bi).astype(np.float64) ** 2)) - n
    if sum_a == 0 and sum_b == 0:
        return 0.0  # both all singletons
    precision = sum_ab / sum_b if sum_b else 1.0
    recall = sum_ab / sum_a if sum_a else 1.0
    if precision + recall == 0:
        return 1.0
    return 1.0 - 2.0 * precision * recall / (precision + recall)
