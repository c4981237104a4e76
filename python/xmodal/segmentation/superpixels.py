"""Superpixels from a boundary map: distance-transform watershed (the PlantSeg / elf recipe).

1. Pixels with boundary probability ``> threshold`` are boundary; every other pixel gets its
   Euclidean distance to the nearest boundary pixel (``spacing`` gives the physical pixel size).
2. Seeds: local maxima (3 x 3 (x 3) neighbourhood, plateaus included) of the distance transform
   smoothed with a Gaussian of ``sigma_seeds`` pixels, on non-boundary pixels; connected maxima
   (face connectivity) form one seed.
3. Height map ``alpha * smooth(boundaries, sigma_weights) + (1 - alpha) * (1 - dt / max(dt))``,
   flooded from the seeds by a seeded watershed (4 / 6 neighbourhood), which labels every pixel
   inside the mask that a seed can reach (boundary pixels included).
4. Segments smaller than ``min_size`` pixels are removed and the others flooded into their place.

``stacked=True`` runs 2D superpixels slice by slice on a 3D volume (ids unique across slices), as
for anisotropic EM stacks. Only scipy.ndimage and xmodal's native seeded watershed are used; the
result is deterministic. Labels are consecutive from 1 in raster order of first occurrence;
0 outside ``mask``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._validation import as_spacing, describe
from ._values import as_float_values

__all__ = ["seeded_watershed", "distance_transform_watershed"]


def _core():
    from .. import _core

    return _core


def _as_height(x, name: str) -> np.ndarray:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        x = np.asarray(x)
    a = as_float_values(x, name, "an image")  # any real dtype; float32 / float64 kept, others float32
    if a.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D or 3D image, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values")
    return a


def _as_mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"mask: expected shape {tuple(shape)}, got {m.shape}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise TypeError(f"mask: expected a boolean mask, got dtype {m.dtype}")
    return np.ascontiguousarray(m != 0)


def _flood(height: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    shape = height.shape
    h3 = np.ascontiguousarray(height).reshape((1,) + shape if height.ndim == 2 else shape)
    s3 = np.ascontiguousarray(seeds, dtype=np.uint32).reshape(h3.shape)
    m3 = None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8).reshape(h3.shape)
    return _core().seeded_watershed(h3, s3, m3)["labels"].reshape(shape)


def seeded_watershed(height, seeds, *, mask=None):
    """Seeded watershed (priority flood) of a 2D or 3D height map.

    Parameters
    ----------
    height : ndarray of float, 2D or 3D
        Height map (e.g. a boundary probability); lower is flooded first.
    seeds : ndarray of int, shape of height
        Seed labels (0 = unseeded); values must be < 2^32.
    mask : ndarray of bool, shape of height, optional
        Voxels outside the mask stay 0.

    Returns
    -------
    ndarray of uint32, shape of height
        Every masked-in voxel reachable from a seed gets the label of the seed that reaches it first
        (lowest height first; ties: first queued, seeds in raster order); the seed values are kept.
        4-neighbourhood in 2D, 6 in 3D.
    """
    h = _as_height(height, "height")
    s = np.asarray(seeds)
    if s.shape != h.shape:
        raise ValueError(f"seeds: expected shape {h.shape}, got {s.shape}")
    if s.dtype == bool or not np.issubdtype(s.dtype, np.integer):
        raise TypeError(f"seeds: expected integer labels, got dtype {s.dtype}")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= 1 << 32):
        raise ValueError(f"seeds: expected labels in [0, 2^32), got range [{int(s.min())}, {int(s.max())}]")
    if h.size >= (1 << 32) - 1:
        raise ValueError(f"height: at most 2^32 - 2 voxels per call, got {h.size}")
    return _flood(h, s, _as_mask(mask, h.shape))


def _check_real(x, name: str, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not np.isfinite(float(x)):
        raise TypeError(f"{name}: expected a finite number, got {describe(x)}")
    v = float(x)
    if v < minimum or (maximum is not None and v > maximum):
        rng = f"[{minimum:g}, {maximum:g}]" if maximum is not None else f">= {minimum:g}"
        raise ValueError(f"{name}: expected a number {rng}, got {v}")
    return v


def _relabel_first_occurrence(labels: np.ndarray, offset: int = 0) -> tuple[np.ndarray, int]:
    """Consecutive labels offset+1.. in raster order of first occurrence; 0 stays 0."""
    flat = labels.ravel()
    uniq, first, inv = np.unique(flat, return_index=True, return_inverse=True)
    nz = uniq != 0
    order = np.argsort(first[nz], kind="stable")
    rank = np.zeros(uniq.size, np.int64)
    idx = np.flatnonzero(nz)
    rank[idx[order]] = np.arange(1, idx.size + 1) + offset
    return rank[inv].reshape(labels.shape), int(idx.size)


def _dt_watershed_one(b, threshold, sigma_seeds, sigma_weights, alpha, min_size, spacing, mask):
    from scipy import ndimage

    boundary = b > threshold
    if mask is not None:
        boundary = boundary | ~mask
    if boundary.all():
        return np.zeros(b.shape, np.int64)
    if boundary.any():
        dt = ndimage.distance_transform_edt(~boundary, sampling=spacing)
    else:
        dt = np.ones(b.shape)
    dt_s = ndimage.gaussian_filter(dt, sigma_seeds, mode="nearest") if sigma_seeds > 0 else dt
    peaks = (dt_s == ndimage.maximum_filter(dt_s, size=3, mode="nearest")) & ~boundary
    seeds, _ = ndimage.label(peaks)
    bs = ndimage.gaussian_filter(b.astype(np.float64), sigma_weights, mode="nearest") if sigma_weights > 0 else b
    if alpha < 1.0:
        dmax = float(dt.max())
        height = alpha * bs + (1.0 - alpha) * (1.0 - (dt / dmax if dmax > 0 else dt))
    else:
        height = bs
    height = np.ascontiguousarray(height, dtype=np.float64)
    ws = _flood(height, seeds, mask)
    if min_size > 1:
        sizes = np.bincount(ws.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any() and (~small[1:]).any():
            ws = np.where(small[ws], 0, ws).astype(np.uint32)
            ws = _flood(height, ws, mask)
    return ws


def distance_transform_watershed(boundaries, *, threshold=0.5, sigma_seeds=1.0, sigma_weights=2.0,
                                 alpha=1.0, min_size=100, stacked=False, spacing=None, mask=None):
    """Superpixels of a boundary map by a distance-transform watershed (PlantSeg's ``dt_watershed``).

    Parameters
    ----------
    boundaries : ndarray of float, 2D (y, x) or 3D (z, y, x)
        Boundary probabilities (1 = boundary).
    threshold : float
        Pixels with ``boundaries > threshold`` are boundary for the distance transform (PlantSeg
        default 0.5).
    sigma_seeds : float
        Gaussian smoothing (pixels) of the distance transform before the seeds are taken as its
        local maxima; larger gives fewer seeds (default 1.0). 0 disables smoothing.
    sigma_weights : float
        Gaussian smoothing (pixels) of the boundary map used as watershed height (default 2.0).
    alpha : float in [0, 1]
        Height = ``alpha * smoothed boundaries + (1 - alpha) * (1 - normalised distance)``
        (default 1.0: boundaries only).
    min_size : int
        Superpixels smaller than this (pixels, per slice when stacked) are flooded over by their
        neighbours (default 100; 0 keeps all).
    stacked : bool
        For 3D input: 2D superpixels per z slice (ids unique across slices).
    spacing : float or sequence of float, optional
        Pixel size per axis for the distance transform (e.g. anisotropic voxels).
    mask : ndarray of bool, optional
        Pixels outside the mask are label 0 (treated as boundary for the distance transform).

    Returns
    -------
    ndarray of uint32 (uint64 if needed)
        Superpixels, consecutive from 1 in raster order of first occurrence; every pixel inside the
        mask that belongs to a region with a seed is labelled.
    """
    b = _as_height(boundaries, "boundaries")
    threshold = _check_real(threshold, "threshold", minimum=-np.inf)
    sigma_seeds = _check_real(sigma_seeds, "sigma_seeds")
    sigma_weights = _check_real(sigma_weights, "sigma_weights")
    alpha = _check_real(alpha, "alpha", maximum=1.0)
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size: expected a non-negative integer, got {describe(min_size)}")
    if not isinstance(stacked, (bool, np.bool_)):
        raise TypeError(f"stacked: expected a bool, got {describe(stacked)}")
    if stacked and b.ndim != 3:
        raise ValueError(f"stacked: needs a 3D boundary map, got shape {b.shape}")
    m = _as_mask(mask, b.shape)
    sp = as_spacing(spacing, b.ndim)
    if sp is not None and stacked:
        sp = sp[1:]
    if b.size >= (1 << 32) - 1 and not stacked:
        raise ValueError(f"boundaries: at most 2^32 - 2 voxels per call, got {b.size}")
    if stacked:
        out = np.zeros(b.shape, np.int64)
        total = 0
        for z in range(b.shape[0]):
            ws = _dt_watershed_one(b[z], threshold, sigma_seeds, sigma_weights, alpha, int(min_size), sp,
                                   None if m is None else m[z])
            out[z], n = _relabel_first_occurrence(ws, total)
            total += n
    else:
        ws = _dt_watershed_one(b, threshold, sigma_seeds, sigma_weights, alpha, int(min_size), sp, m)
        out, total = _relabel_first_occurrence(ws)
    return out.astype(np.uint32 if total < (1 << 32) - 1 else np.uint64)
