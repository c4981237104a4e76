"""The evaluation step of :func:`xmodal.pipelines.segment`: the ground truth checked before any work
(:func:`check_ground_truth`) and the metrics after the segmentation (:func:`evaluate`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_ground_truth(ground_truth, spatial: tuple):
    """The ground truth (None, an array, or a path) checked against the image's ``spatial`` shape
    before the run does any work; returns what :func:`evaluate` reads (a lazily read handle, or the
    path again for a file that loads into memory, so that it is not held during the run)."""
    if ground_truth is None:
        return None
    from ._inputs import read_image

    is_path = isinstance(ground_truth, (str, Path))
    gt = read_image(ground_truth) if is_path else ground_truth
    if not hasattr(gt, "shape"):
        gt = np.asarray(gt)
    if tuple(gt.shape) != tuple(spatial):
        raise ValueError(f"ground_truth: expected the shape of the image {tuple(spatial)}, got {tuple(gt.shape)}")
    if is_path and type(gt) is np.ndarray:  # a TIFF read into memory: read again at the end
        return ground_truth
    return gt


def evaluate(labels, ground_truth, *, per_slice: bool, spacing) -> dict:
    """Step 7 of :func:`xmodal.pipelines.segment`: metrics against the ground truth (per slice and
    their mean for a 2D model on a stack). A slice whose ground truth is all 0 (no object) is listed
    as skipped and left out of the mean (``scored_slices`` counts the others); a metric that is NaN
    on a slice (the Chamfer distance without segments) is averaged over the slices that have it."""
    from ..metrics import evaluate_segmentation
    from ._inputs import read_image

    labels = np.asarray(labels)
    gt = np.asarray(read_image(ground_truth) if isinstance(ground_truth, (str, Path)) else ground_truth)
    if labels.shape != gt.shape:
        raise ValueError(f"ground_truth: expected the shape of the image {labels.shape}, got {gt.shape}")
    if not per_slice:
        return evaluate_segmentation(labels, gt, spacing=spacing).as_dict()
    plane = None if spacing is None else tuple(spacing)[1:]  # Chamfer distances in the units of the (y, x) spacing
    slices, scored = [], []
    for z in range(labels.shape[0]):
        if not np.any(gt[z]):  # nothing annotated (0 is background): no score, left out of the mean
            slices.append({"slice": z, "skipped": "no ground-truth object (all 0)"})
            continue
        slices.append(evaluate_segmentation(labels[z], gt[z], spacing=plane).as_dict())
        scored.append(slices[-1])
    if not scored:
        raise ValueError("ground_truth: no slice holds an object (every voxel is 0, the background)")
    keys = [k for k, v in scored[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    # mean over the scored slices; a value a slice cannot have (the Chamfer distance of a slice
    # without segments is NaN) is left out of that key's mean
    mean = {}
    for k in keys:
        v = np.array([s[k] for s in scored], dtype=float)
        mean[k] = float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")
    return {"per_slice": slices, "mean": mean, "scored_slices": len(scored)}
