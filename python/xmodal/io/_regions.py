"""Regions of arrays: a block grid over a shape, chunk alignment, checked region writes."""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from ._zarr import is_zarr_array


def _check_block(shape: Sequence[int], block: Sequence[int]) -> None:
    if len(tuple(block)) != len(tuple(shape)) or any(int(b) < 1 for b in block):
        raise ValueError(f"block: expected {len(tuple(shape))} positive integers (one per axis of shape "
                         f"{tuple(int(n) for n in shape)}), got {tuple(block)}")


def iter_blocks(shape: Sequence[int], block: Sequence[int]):
    """Yield the regions (tuples of slices) of a grid of ``block``-sized blocks covering ``shape``, in C
    order; the last block along an axis stops at the array's end. Blocks of the array's chunk
    shape give chunk-aligned regions (see :func:`write_region`). ``block``: one positive integer per
    axis of ``shape`` (ValueError otherwise)."""
    _check_block(shape, block)
    ranges = [range(0, int(n), int(b)) for n, b in zip(shape, block)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + int(b), int(n))) for s, b, n in zip(starts, block, shape))


def check_chunk_aligned(array, region: Sequence[slice], *, name: str = "region") -> None:
    """Raise ValueError unless ``region`` (slices over the array's axes) covers whole chunks.

    A region boundary is aligned when it is a multiple of the chunk extent or equals the array's end.
    """
    chunks = getattr(array, "chunks", None)
    if chunks is None:
        return
    for ax, (s, c, n) in enumerate(zip(region, chunks, array.shape)):
        start = 0 if s.start is None else s.start
        stop = n if s.stop is None else min(s.stop, n)
        if start % c or (stop % c and stop != n):
            raise ValueError(f"{name}: axis {ax} spans [{start}, {stop}), not aligned to chunks of {c} "
                             f"(array extent {n})")


def write_region(array, region: Sequence[slice], data: np.ndarray, *, check_alignment: bool = True) -> None:
    """Write ``data`` into ``array[region]``; for zarr arrays check the region is chunk-aligned first.

    ``data`` must have the region's shape (or be a scalar): ValueError otherwise. zarr itself writes
    the overlapping part of data of another shape without a word.
    """
    region = tuple(region)
    want = tuple(len(range(*s.indices(int(n)))) for s, n in zip(region, array.shape))
    want += tuple(array.shape[len(region):])
    if np.ndim(data) and np.shape(data) != want:
        raise ValueError(f"data: expected shape {want} (the region {region} of an array of shape "
                         f"{tuple(array.shape)}), got {np.shape(data)}")
    if check_alignment and is_zarr_array(array):
        check_chunk_aligned(array, region)
    array[region] = data
