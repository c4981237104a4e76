"""Tile grid of the output and the input window (tile + halo) of every tile."""

from __future__ import annotations

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
