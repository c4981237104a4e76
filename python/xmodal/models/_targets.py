"""Affinity training targets from instance labels (numpy only)."""

from __future__ import annotations

import numpy as np


def affinity_targets(labels, offsets, *, background: int | None = 0):
    """Merge-probability targets and validity mask for an instance label image.

    Parameters
    ----------
    labels : (*spatial) integer array
        Instance labels. Pixels equal to ``background`` belong to no object (e.g. membranes).
    offsets : (C, ndim) integer array
        Offset of each channel; channel ``c`` at pixel ``p`` relates ``p`` and ``p + offsets[c]``.
    background : int or None
        Label of pixels in no object: a pair involving one gets target 0 (do not merge).
        ``None``: every label, 0 included, is an object.

    Returns
    -------
    targets : (C, *spatial) uint8
        1 where ``p`` and ``p + offset`` carry the same (non-background) label, else 0.
    mask : (C, *spatial) uint8
        1 where ``p + offset`` lies inside the image, else 0 (no target there).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected an integer label image, got dtype {labels.dtype}")
    offsets = np.asarray(offsets)
    if offsets.ndim != 2 or offsets.shape[1] != labels.ndim or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets: expected a (C, {labels.ndim}) integer array, got shape {offsets.shape} "
                         f"and dtype {offsets.dtype}")
    shape = labels.shape
    targets = np.zeros((len(offsets), *shape), dtype=np.uint8)
    mask = np.zeros_like(targets)
    for c, off in enumerate(offsets):
        src, dst = [], []
        for o, n in zip(off, shape):
            o = int(o)
            if abs(o) >= n:
                src = None
                break
            src.append(slice(max(0, -o), n - max(0, o)))
            dst.append(slice(max(0, o), n - max(0, -o)))
        if src is None:
            continue
        a = labels[tuple(src)]
        b = labels[tuple(dst)]
        same = a == b
        if background is not None:
            same &= a != background
        targets[(c, *src)] = same
        mask[(c, *src)] = 1
    return targets, mask


def dihedral_transform(image, k: int):
    """One of the 8 symmetries of the square on the last two axes: ``k`` in 0..7.

    ``k % 4`` quarter turns (``np.rot90``) followed by a left-right flip when ``k >= 4``.
    """
    k = int(k)
    if not 0 <= k < 8:
        raise ValueError(f"k: expected an integer in 0..7, got {k}")
    out = np.rot90(image, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return out
