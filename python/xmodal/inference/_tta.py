"""Test-time augmentation of an affinity network by the 8 dihedral transforms of the plane.

:class:`DihedralTTA` wraps a 2D network that predicts affinities for a set of ``offsets`` (channel
``c`` at pixel ``p``: a value about the pixel pair ``(p, p + offsets[c])``, e.g. a merge
probability). It runs the network on each transformed input (rotations by 0, 90, 180, 270 degrees,
each with and without a flip of the last axis), maps every output back to the input's frame and
averages.

Mapping back needs care with affinities: a transform ``g`` turns the pair ``(p, p + o)`` into
``(g(p), g(p) + L o)`` with ``L`` the transform's linear part (a signed permutation of the axes).
When ``L o`` is one of the offsets, ``o_d``, the value is channel ``d`` of the back-transformed
output at ``p``. When ``L o = -o_d`` (the pair is stored the other way round) it is channel ``d``
of the back-transformed output at ``p + o``; where ``p + o`` lies outside the window that
transform contributes nothing, and each pixel averages over the transforms that contributed (at
least the identity). The offsets must therefore be closed under the dihedral group up to sign,
which holds for the usual axis and diagonal offsets; other sets are refused at construction.

This module is the torch-free part (the channel maps); the class, a ``torch.nn.Module``, is in
:mod:`._tta_torch`, imported on first use of ``xmodal.inference.DihedralTTA`` so that
``xmodal.inference`` imports without torch.
"""

from __future__ import annotations

import numpy as np

from .._validation import describe

__all__ = ["dihedral_channel_maps"]  # DihedralTTA, a torch.nn.Module: in ._tta_torch (imported on first use)

#: (rotations by 90 degrees, flip of the last axis) of the 8 transforms; the identity first.
TRANSFORMS = tuple((k, f) for f in (False, True) for k in range(4))


def _apply_np(a, k, flip):
    """The array transform ``T``: flip of the last axis, then ``k`` rotations in the last two axes."""
    if flip:
        a = a[..., ::-1]
    return np.rot90(a, k, axes=(-2, -1))


def _linear_part(k, flip, offset):
    """``L o`` for the transform ``(k, flip)``, found by tracking two marked pixels."""
    r = int(np.abs(offset).max()) + 1
    size = 2 * r + 1
    grid = np.zeros((size, size), np.int8)
    grid[r, r] = 1
    grid[r + offset[0], r + offset[1]] = 2
    t = _apply_np(grid, k, flip)
    p = np.argwhere(t == 1)[0]
    q = np.argwhere(t == 2)[0]
    return tuple(int(v) for v in (q - p))


def dihedral_channel_maps(offsets) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """For each of the 8 transforms ``(k, flip, channel, sign)``: channel ``d`` of the transformed
    prediction that holds channel ``c``'s pair, and ``sign[c]`` = +1 (stored as ``o_d``) or -1
    (stored reversed, read at ``p + o_c``).

    Raises ValueError when a transformed offset is not among ``offsets`` up to sign.
    """
    o = np.asarray(offsets)
    if o.ndim != 2 or o.shape[1] != 2 or o.shape[0] == 0 or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"offsets: expected a non-empty (C, 2) integer array of 2D offsets, got {describe(offsets)}")
    if (np.abs(o).sum(axis=1) == 0).any():
        raise ValueError("offsets: a zero offset joins a pixel to itself; expected non-zero offsets")
    index = {tuple(int(v) for v in row): i for i, row in enumerate(o)}
    maps = []
    for k, flip in TRANSFORMS:
        chan = np.empty(len(o), np.int64)
        sign = np.empty(len(o), np.int64)
        for c, row in enumerate(o):
            lo = _linear_part(k, flip, row)
            neg = tuple(-v for v in lo)
            if lo in index:
                chan[c], sign[c] = index[lo], 1
            elif neg in index:
                chan[c], sign[c] = index[neg], -1
            else:
                raise ValueError(f"offsets: test-time augmentation needs offsets closed under rotations and flips "
                                 f"(up to sign); offset {tuple(int(v) for v in row)} becomes {lo}, which is not "
                                 f"among them")
        maps.append((k, flip, chan, sign))
    return maps
