"""Global intensity normalisation computed out of core: the one home of xmodal's normalisers.

Statistics are taken over the whole image (block by block, never per tile), and the normalisers
are point-wise and picklable, so a tile normalised alone equals the same region of the whole
normalised image, on dask workers too.

- :func:`global_mean_std` and :class:`Standardize`: ``(x - mean) / std``;
- :func:`quantile_normalizer` and :class:`QuantileNormalizer`: per-channel quantile scaling to
  [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import iter_blocks

N_BINS = 1 << 16


class Standardize:
    """Point-wise ``(x - mean) / std`` as float32 (picklable, so dask workers can use it).

    A constant image (``std == 0``, or a non-finite ``std``) is only centred (divided by 1), so it
    becomes zeros, not NaN.
    """

    def __init__(self, mean: float, std: float):
        std = float(std)
        self.mean, self.std = float(mean), (std if np.isfinite(std) and std > 0 else 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"Standardize(mean={self.mean!r}, std={self.std!r})"


def global_mean_std(image, block_voxels: int = 1 << 24, *, name: str = "raw") -> tuple[float, float]:
    """Mean and standard deviation of a (possibly out-of-core) array, slab by slab along axis 0.

    Memory: one slab of at most ``block_voxels`` values. Sums are taken around the first value
    (shifted sums, float64), so a constant image gives exactly 0. Raises ValueError (naming
    ``name``) for an empty image or non-finite values.
    """
    if int(np.prod(image.shape)) == 0:
        raise ValueError(f"{name}: expected a non-empty image, got shape {tuple(image.shape)}")
    n = 0
    s = 0.0
    s2 = 0.0
    shift = None
    per_row = int(np.prod(image.shape[1:])) if image.ndim > 1 else 1
    step = max(1, block_voxels // max(per_row, 1))
    for start in range(0, image.shape[0], step):
        block = np.asarray(image[start:start + step], dtype=np.float64)
        if shift is None:
            shift = float(block.flat[0])
        if not np.isfinite(block).all():
            raise ValueError(f"{name}: expected finite intensities, found NaN or infinity")
        block = block - shift
        n += block.size
        s += float(block.sum())
        s2 += float(np.square(block).sum())
    mean = s / n
    return shift + mean, float(np.sqrt(max(s2 / n - mean * mean, 0.0)))


@dataclass(frozen=True)
class QuantileNormalizer:
    """``clip((x - low) / (high - low), 0, 1)`` per channel, with global ``low``/``high`` quantiles.

    Point-wise, so it gives the same result on a tile as on the whole volume.
    """

    low: np.ndarray  # (C,)
    high: np.ndarray  # (C,)
    q: tuple = (0.01, 0.98)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalise ``x`` of shape ``(C, *spatial)`` (float32 out)."""
        lo = self.low.reshape((-1,) + (1,) * (x.ndim - 1)).astype(np.float32)
        scale = np.maximum(self.high - self.low, 1e-12).reshape(lo.shape).astype(np.float32)
        y = (x.astype(np.float32, copy=False) - lo) / scale
        np.clip(y, 0.0, 1.0, out=y)
        return y


def _read(image, sl):
    blk = image[sl]
    if hasattr(blk, "compute"):
        blk = blk.compute(scheduler="sync")
    return np.asarray(blk)


def _block_shape(image, spatial_axes, budget_voxels=1 << 23):
    chunks = getattr(image, "chunks", None)
    shape = image.shape
    if chunks is not None and not isinstance(chunks[0], tuple):  # zarr-like
        base = list(chunks)
    elif chunks is not None:  # dask: first chunk of every axis
        base = [c[0] for c in chunks]
    else:
        base = [min(n, 64) for n in shape]
    block = list(base)
    # grow along the spatial axes, slowest first... keep it simple: double the leading axes
    ax_order = list(spatial_axes)
    while np.prod(block) * 2 <= budget_voxels:
        grown = False
        for ax in ax_order:
            if block[ax] < shape[ax] and np.prod(block) * 2 <= budget_voxels:
                block[ax] = min(shape[ax], block[ax] * 2)
                grown = True
        if not grown:
            break
    return tuple(block)


def quantile_normalizer(image, *, channel_axis: int | None, q=(0.01, 0.98)) -> QuantileNormalizer:
    """Global per-channel quantiles of ``image`` (numpy, zarr or dask), read block by block.

    Two passes over blocks of at most 8 Mi voxels: the first finds each channel's min and max, the
    second fills a 65536-bin histogram between them. A quantile is interpolated inside its bin, so it
    is within one bin width, ``(max - min) / 65536``, of the exact order statistic (integer images
    with at most 65536 distinct levels in range: exact up to the interpolation inside a unit bin).
    Memory: one block plus the histogram, whatever the image size.
    """
    shape = image.shape
    nd = len(shape)
    caxis = channel_axis
    spatial_axes = [a for a in range(nd) if a != caxis]
    n_ch = shape[caxis] if caxis is not None else 1
    block = _block_shape(image, spatial_axes)
    lo = np.full(n_ch, np.inf)
    hi = np.full(n_ch, -np.inf)
    for sl in iter_blocks(shape, block):
        b = _read(image, sl)
        b = np.moveaxis(b, caxis, 0) if caxis is not None else b[None]
        b = b.reshape(b.shape[0], -1)
        finite = np.isfinite(b) if b.dtype.kind == "f" else None
        for c in range(b.shape[0]):
            v = b[c][finite[c]] if finite is not None else b[c]
            if v.size:
                lo[c] = min(lo[c], float(v.min()))
                hi[c] = max(hi[c], float(v.max()))
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError("normalize: the image has a channel without finite values")
    hist = np.zeros((n_ch, N_BINS), np.int64)
    width = np.where(hi > lo, (hi - lo) / N_BINS, 1.0)
    for sl in iter_blocks(shape, block):
        b = _read(image, sl)
        b = np.moveaxis(b, caxis, 0) if caxis is not None else b[None]
        b = b.reshape(b.shape[0], -1)
        for c in range(b.shape[0]):
            v = b[c].astype(np.float64)
            v = v[np.isfinite(v)]
            idx = np.clip(((v - lo[c]) / width[c]).astype(np.int64), 0, N_BINS - 1)
            hist[c] += np.bincount(idx, minlength=N_BINS)
    lows, highs = np.empty(n_ch), np.empty(n_ch)
    for c in range(n_ch):
        cdf = np.cumsum(hist[c])
        total = int(cdf[-1])

        def order_statistic(rank):  # value of the rank-th smallest (0-based), within one bin
            k = min(int(np.searchsorted(cdf, rank + 1, side="left")), N_BINS - 1)
            before = int(cdf[k - 1]) if k > 0 else 0
            inside = max(int(hist[c, k]), 1)
            return lo[c] + (k + (rank - before + 0.5) / inside) * width[c] if hi[c] > lo[c] else lo[c]

        vals = []
        for qq in q:  # numpy's default ("linear") definition: position q * (n - 1)
            pos = qq * (total - 1)
            r0 = int(np.floor(pos))
            r1 = min(r0 + 1, total - 1)
            f = pos - r0
            vals.append((1 - f) * order_statistic(r0) + f * order_statistic(r1))
        lows[c], highs[c] = vals
    return QuantileNormalizer(low=lows, high=highs, q=tuple(q))
