"""Tile grid of the output and the input window (tile + halo) of every tile."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np


def align_down(v: int, f: int) -> int:
    return (v // f) * f


def align_up(v: int, f: int) -> int:
    return -(-v // f) * f


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` in the grid, output region ``[start, stop)``, input window ``[wstart, wstop)``."""

    index: tuple
    start: tuple
    stop: tuple
    wstart: tuple
    wstop: tuple

    @property
    def region(self) -> tuple:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def window(self) -> tuple:
        return tuple(slice(a, b) for a, b in zip(self.wstart, self.wstop))

    @property
    def crop(self) -> tuple:
        """Slices of the output region inside the window's prediction."""
        return tuple(slice(a - w, b - w) for a, b, w in zip(self.start, self.stop, self.wstart))

    @property
    def window_shape(self) -> tuple:
        return tuple(b - a for a, b in zip(self.wstart, self.wstop))


def make_tiles(shape, tile, halo, factor) -> list[Tile]:
    """Tiles of ``tile`` voxels covering ``shape``; windows reach ``halo`` further, aligned to ``factor``.

    Tile starts are multiples of ``tile`` (itself a multiple of ``factor``). A window starts at
    ``align_down(start - halo, factor)`` clipped to 0 and stops at ``align_up(stop + halo, factor)``
    clipped to the volume: only real data is read, and every window edge inside the volume lies on
    the factor grid of the whole volume, so pooling and strided layers see the same cells as in a
    whole-volume pass.
    """
    per_axis = []
    for n, t, h, f in zip(shape, tile, halo, factor):
        entries = []
        for i, s in enumerate(range(0, n, t)):
            e = min(s + t, n)
            ws = max(0, align_down(s - h, f))
            we = min(n, align_up(e + h, f))
            entries.append((i, s, e, ws, we))
        per_axis.append(entries)
    tiles = []
    for combo in itertools.product(*per_axis):
        tiles.append(Tile(index=tuple(c[0] for c in combo), start=tuple(c[1] for c in combo),
                          stop=tuple(c[2] for c in combo), wstart=tuple(c[3] for c in combo),
                          wstop=tuple(c[4] for c in combo)))
    return tiles


def blend_weights(tile: Tile, mode: str) -> list[np.ndarray]:
    """Separable float32 weights over the window of ``tile`` (one array per axis).

    ``"linear"``: 1 over the tile, falling linearly to ``1 / (m + 1)`` across a halo margin of
    ``m`` voxels. ``"gaussian"``: ``exp(-d**2 / (2 sigma**2))``, ``d`` the distance to the tile's
    centre, ``sigma = window extent / 8`` (MONAI's default), floored at 1e-3.
    """
    out = []
    for s, e, ws, we in zip(tile.start, tile.stop, tile.wstart, tile.wstop):
        x = np.arange(ws, we, dtype=np.float64)
        if mode == "linear":
            w = np.ones_like(x)
            left = s - ws
            right = we - e
            if left > 0:
                m = x < s
                w[m] = 1.0 - (s - x[m]) / (left + 1)
            if right > 0:
                m = x >= e
                w[m] = 1.0 - (x[m] - (e - 1)) / (right + 1)
        else:
            sigma = max((we - ws) / 8.0, 1e-6)
            c = (s + e - 1) / 2.0
            w = np.maximum(np.exp(-((x - c) ** 2) / (2 * sigma * sigma)), 1e-3)
        out.append(w.astype(np.float32))
    return out


# ----------------------------------------------------------------------------------- blending out of core

def blend_blocks(shape, tile, chunks=None, minimum: int = 32) -> tuple:
    """The accumulator block of out-of-core blending, per spatial axis.

    For a zarr output (its spatial ``chunks``): the smallest multiple of the chunk holding at least
    ``min(minimum, tile)`` voxels, so that every chunk lies in exactly one block (written once, whole)
    and tiny chunks do not multiply the kernel calls; else the tile. Clipped to the image (one block
    then covers the axis, which is aligned too: it ends at the array's end).
    """
    if chunks is None:
        return tuple(min(t, n) for t, n in zip(tile, shape))
    return tuple(min(c * max(1, -(-min(minimum, t) // c)), n) for c, t, n in zip(chunks, tile, shape))


def _slab_rows(shape, tiles, blocks, ax) -> int:
    """Rows along ``ax`` of the open blocks' slab: at most a window plus two blocks (clipped)."""
    win = max(t.wstop[ax] - t.wstart[ax] for t in tiles)
    return min(shape[ax], win + 2 * blocks[ax])


def blend_order(shape, tiles) -> tuple[list[Tile], tuple]:
    """(the tiles in the order blending visits them, the axes from outermost).

    A block of the output is final once every window overlapping it has been added. Sweeping the
    tiles in raster order with axis ``a`` outermost, the open blocks at any time overlap the window
    of the current row of tiles along ``a``: a slab of at most a window plus two blocks along ``a``
    (:func:`slab_voxels`) across the whole of the other axes. The outer axis is the one whose slab,
    counted with tile-sized blocks, is the smallest share of the image (ties: the lower axis, so
    equal grids keep plain raster order). The order depends on the tile grid only, not on the
    output's chunks: a numpy and a zarr output get the same sums in the same order.
    """
    nd = len(shape)
    tile = tuple(max(t.stop[a] - t.start[a] for t in tiles) for a in range(nd))
    share = [_slab_rows(shape, tiles, tile, a) / shape[a] for a in range(nd)]
    outer = min(range(nd), key=lambda a: (share[a], a))
    axes = (outer,) + tuple(a for a in range(nd) if a != outer)
    return sorted(tiles, key=lambda t: tuple(t.index[a] for a in axes)), axes


def slab_voxels(shape, tiles, blocks, outer) -> int:
    """The bound on the voxels of the blocks open at once when sweeping with ``outer`` outermost:
    ``min(shape[outer], largest window + 2 blocks)`` times the other axes' extents."""
    rest = int(np.prod([n for a, n in enumerate(shape) if a != outer]))
    return _slab_rows(shape, tiles, blocks, outer) * rest


class BlockSweep:
    """Blocks of ``blocks`` voxels (a grid from the origin) covering the output, and which windows
    of ``tiles`` overlap each of them. ``axes``: the sweep order of the tiles (outermost first)."""

    def __init__(self, shape, blocks, tiles, axes):
        self.shape, self.blocks, self.axes = tuple(shape), tuple(blocks), tuple(axes)
        wins: list = [{} for _ in shape]
        for t in tiles:
            for a, w in enumerate(wins):
                w[t.index[a]] = (t.wstart[a], t.wstop[a])
        self._ranges = []  # per axis, per block: the tile indices along the axis whose windows overlap it
        for a, (n, b) in enumerate(zip(self.shape, self.blocks)):
            starts = [wins[a][i][0] for i in sorted(wins[a])]  # both non-decreasing along the axis
            stops = [wins[a][i][1] for i in sorted(wins[a])]
            self._ranges.append([range(bisect.bisect_right(stops, lo), bisect.bisect_left(starts, min(lo + b, n)))
                                 for lo in range(0, n, b)])

    def blocks_of(self, tile: Tile):
        """Indices of the blocks the window of ``tile`` overlaps."""
        return itertools.product(*(range(ws // b, -(-we // b)) for ws, we, b in zip(tile.wstart, tile.wstop, self.blocks)))

    def count(self, k) -> int:
        """Number of windows overlapping block ``k``."""
        return int(np.prod([len(r[i]) for r, i in zip(self._ranges, k)]))

    def tiles_of(self, k):
        """Indices of the tiles whose windows overlap block ``k``, in sweep order."""
        for combo in itertools.product(*(self._ranges[a][k[a]] for a in self.axes)):
            index = [0] * len(k)
            for a, i in zip(self.axes, combo):
                index[a] = i
            yield tuple(index)

    @property
    def nblocks(self) -> tuple:
        """Blocks per axis."""
        return tuple(len(r) for r in self._ranges)

    def axis_tiles(self, a, lo, hi) -> range:
        """Tile indices along axis ``a`` whose windows overlap blocks ``lo`` to ``hi - 1`` of that axis
        (contiguous: a window overlapping the span overlaps one of its blocks)."""
        return range(self._ranges[a][lo].start, self._ranges[a][hi - 1].stop)

    def start(self, k) -> tuple:
        return tuple(i * b for i, b in zip(k, self.blocks))

    def region(self, k) -> tuple:
        return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(k, self.blocks, self.shape))

    def contains(self, k) -> bool:
        return len(k) == len(self.shape) and all(0 <= i < len(r) for i, r in zip(k, self._ranges))
