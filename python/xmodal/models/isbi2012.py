"""ISBI 2012 helpers: read the slices, predict affinities with the shipped model, baseline
segmentation and evaluation on held-out slices.

The baseline is the usual thresholded-boundary connected components: boundary probability
``b = 1 - mean(attractive merge probabilities)``, pixels with ``b < threshold`` are foreground,
4-connected components of the foreground are the objects, optionally grown back over the boundary
pixels by a watershed on ``b`` (so that every pixel gets a label, as the mutex watershed gives).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .._validation import as_bool

logger = logging.getLogger(__name__)

__all__ = ["read_isbi2012", "predict_affinities", "boundary_map", "boundary_baseline_segmentation",
           "grow_small_segments", "evaluate_isbi2012"]


def read_isbi2012(data, indices=range(30)):
    """Raw slices and ground-truth instances of the ISBI 2012 training data.

    Parameters
    ----------
    data : path
        Folder with ``train_image/{i}.png`` and ``train_label/{i}.png`` (255 = cell, 0 = membrane).
    indices : iterable of int
        Slices to read (z order).

    Returns
    -------
    raw : (n, 512, 512) uint8
    instances : (n, 512, 512) int32
        4-connected components of the non-membrane pixels of each slice (membrane = 0).
    """
    from PIL import Image
    from skimage.measure import label as cc_label

    data = Path(data)
    raws, labs = [], []
    for i in indices:
        img_path = data / "train_image" / f"{int(i)}.png"
        lab_path = data / "train_label" / f"{int(i)}.png"
        for p in (img_path, lab_path):
            if not p.is_file():
                raise FileNotFoundError(f"data: expected {p} (ISBI 2012 layout: train_image/, train_label/)")
        raws.append(np.asarray(Image.open(img_path).convert("L"), dtype=np.uint8))
        labs.append(cc_label(np.asarray(Image.open(lab_path).convert("L")) > 127, connectivity=1).astype(np.int32))
    return np.stack(raws), np.stack(labs)


def predict_affinities(model, raw, *, mean: float, std: float) -> np.ndarray:
    """Merge probabilities ``(C, H, W)`` of one 2D slice with a whole-image forward pass.

    The slice is standardised with the given global ``mean`` / ``std`` and reflect-padded to a
    multiple of the model's divisor; the padding is cropped off.
    """
    import torch

    from ..inference._normalize import Standardize

    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"raw: expected a 2D slice, got shape {raw.shape}")
    div = int(getattr(model, "divisor", 1))
    h, w = raw.shape
    ph, pw = (-h) % div, (-w) % div
    x = Standardize(mean, std)(raw.astype(np.float32))
    x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x))[None, None])[0].numpy()
    return out[:, :h, :w]


def boundary_map(affinities, *, n_attractive: int = 2) -> np.ndarray:
    """Boundary probability ``1 - mean(attractive merge probabilities)`` of a ``(C, H, W)`` map.

    The first row / column, whose (-1, 0) / (0, -1) partner is outside the image, takes the other
    attractive channel's value.
    """
    a = np.asarray(affinities, dtype=np.float32)
    if a.ndim != 3 or not 1 <= n_attractive <= a.shape[0]:
        raise ValueError(f"affinities: expected (C, H, W) with C >= n_attractive={n_attractive}, got shape {a.shape}")
    att = a[:n_attractive].copy()
    if n_attractive >= 2:
        att[0, 0, :] = att[1, 0, :]
        att[1, :, 0] = att[0, :, 0]
    return 1.0 - att.mean(axis=0)


def grow_small_segments(labels, boundary, *, min_size: int) -> np.ndarray:
    """Drop segments smaller than ``min_size`` pixels and give their pixels to the neighbouring
    large segments by a watershed on ``boundary`` (used after a mutex watershed, whose boundary
    pixels end up as tiny segments)."""
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    ids, inv, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    keep = sizes >= int(min_size)
    if not keep.any():
        return np.zeros(labels.shape, dtype=np.int32)
    new_ids = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    markers = new_ids[inv.reshape(labels.shape)]
    return watershed(np.asarray(boundary), markers=markers, connectivity=1).astype(np.int32)


def boundary_baseline_segmentation(affinities, *, n_attractive: int = 2, threshold: float = 0.5,
                                   grow: bool = True) -> np.ndarray:
    """Connected components of ``1 - mean(attractive affinities) < threshold`` (2D, 4-connected).

    Parameters
    ----------
    affinities : (C, H, W) merge probabilities, first ``n_attractive`` channels attractive
        (offsets (-1, 0) and (0, -1) for the shipped model; their first row / column has no partner
        and is filled from the other channel).
    threshold : float
        Boundary probability below which a pixel is foreground.
    grow : bool
        Grow the components over the boundary pixels by a watershed on the boundary map.

    Returns
    -------
    (H, W) int32 labels, 0 only where ``grow=False`` left boundary pixels.
    """
    grow = as_bool(grow, "grow")
    from skimage.measure import label as cc_label
    from skimage.segmentation import watershed

    boundary = boundary_map(affinities, n_attractive=n_attractive)
    labels = cc_label(boundary < threshold, connectivity=1).astype(np.int32)
    if grow and labels.max() > 0:
        labels = watershed(boundary, markers=labels, connectivity=1).astype(np.int32)
    return labels


def evaluate_isbi2012(data, *, model=None, indices=range(25, 30), thresholds=(0.3, 0.5, 0.7),
                      segmenters=None) -> dict:
    """ARand and VOI (bits) of segmentations of ISBI 2012 slices against their ground truth.

    Ground truth: 4-connected components of the non-membrane pixels; membrane pixels (label 0)
    are ignored (CREMI / ISBI convention). Affinities come from ``model`` (default the shipped
    :func:`xmodal.models.load_isbi2012_affinity_unet`), normalised with its training statistics.

    Parameters
    ----------
    segmenters : dict name -> callable(affinities, offsets, n_attractive) -> labels, optional
        Extra methods (e.g. a mutex watershed) evaluated next to the baseline.

    Returns
    -------
    dict with, per method (``"baseline_cc_t{threshold}"`` and the extra names), the per-slice and
    mean ``arand``, ``voi_split``, ``voi_merge``, plus the slices used.
    """
    from ..metrics import adapted_rand_error, contingency_table, variation_of_information
    from . import load_isbi2012_affinity_unet

    if model is None:
        model = load_isbi2012_affinity_unet()
    norm = model.metadata["normalization"]
    raw, gt = read_isbi2012(data, indices)
    methods = {f"baseline_cc_t{t:g}": (lambda aff, off, na, t=t: boundary_baseline_segmentation(aff, n_attractive=na, threshold=t))
               for t in thresholds}
    methods.update(segmenters or {})
    out = {"slices": [int(i) for i in indices], "methods": {}}
    per = {name: {"arand": [], "voi_split": [], "voi_merge": [], "n_segments": []} for name in methods}
    for r, g in zip(raw, gt):
        aff = predict_affinities(model, r, mean=norm["mean"], std=norm["std"])
        for name, fn in methods.items():
            seg = np.asarray(fn(aff, model.offsets, model.n_attractive))
            table = contingency_table(seg, g)
            ar = adapted_rand_error(table=table, ignore_gt=(0,))
            voi = variation_of_information(table=table, ignore_gt=(0,))
            per[name]["arand"].append(ar.error)
            per[name]["voi_split"].append(voi.split)
            per[name]["voi_merge"].append(voi.merge)
            per[name]["n_segments"].append(int(len(np.unique(seg))))
    for name, d in per.items():
        out["methods"][name] = {**{k: v for k, v in d.items()},
                                **{f"mean_{k}": float(np.mean(v)) for k, v in d.items()}}
    return out
