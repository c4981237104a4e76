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
"""

from __future__ import annotations

import numpy as np

from .._validation import describe

__all__ = ["DihedralTTA", "dihedral_channel_maps"]

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


def _torch_module_base():
    import torch

    return torch.nn.Module


class DihedralTTA(_torch_module_base()):
    """A 2D affinity network averaged over the 8 dihedral transforms of its input.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, Cin, H, W)`` to ``(B, C, H, W)`` affinities for ``offsets`` (values used as
        given; averaging suits probabilities). A 90-degree rotation swaps H and W, so the network
        must accept both orders (a fully convolutional network with H, W multiples of its
        down-sampling factor does).
    offsets : array_like of int, shape (C, 2)
        The output channels' offsets ``(dy, dx)``; closed under the dihedral group up to sign.
    transforms : int
        1 (identity only, the plain network), 2 (identity and the flip of x), 4 (the flips of y,
        x and both) or 8 (all, default).

    Attributes ``offsets``, ``n_attractive``, ``metadata``, ``segmentation_defaults`` and
    ``divisor`` of ``model`` are carried over when present. Output pixels whose reversed pair
    leaves the window average over fewer transforms (at least the identity).
    """

    def __init__(self, model, offsets=None, *, transforms: int = 8):
        super().__init__()
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
        if offsets is None:
            offsets = getattr(model, "offsets", None)
            if offsets is None:
                raise ValueError("offsets: expected the (C, 2) offsets of the model's output channels, got None")
        if isinstance(transforms, bool) or transforms not in (1, 2, 4, 8):
            raise ValueError(f"transforms: expected 1, 2, 4 or 8, got {describe(transforms)}")
        self.model = model
        maps = dihedral_channel_maps(offsets)
        if transforms == 8:
            chosen = maps
        else:
            keep = {1: [(0, False)], 2: [(0, False), (0, True)],
                    4: [(0, False), (0, True), (2, False), (2, True)]}[transforms]
            chosen = [m for m in maps if (m[0], m[1]) in keep]
        self._maps = chosen
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.transforms = int(transforms)
        for name in ("offsets", "n_attractive", "metadata", "segmentation_defaults", "divisor"):
            if hasattr(model, name):
                object.__setattr__(self, name, getattr(model, name))
        self.train(model.training)  # the wrapper is in the wrapped network's mode (eval for prediction)

    def widen(self, inner):
        """The :class:`~xmodal.inference.ReceptiveField` of the wrapper from the inner network's
        ``inner``: a value read at ``p + o`` widens the field by the offsets' reach on each side."""
        import dataclasses
        import math

        reach = np.abs(self._offsets).max(axis=0)
        size = tuple(int(s + 2 * r) for s, r in zip(inner.size, reach))
        halo = tuple(int(math.ceil(math.ceil(s / 2) / f) * f) for s, f in zip(size, inner.factor))
        plantseg = tuple(int(h + r) for h, r in zip(inner.plantseg_halo, reach))
        measured = None if inner.measured is None else tuple(int(m + 2 * r) for m, r in zip(inner.measured, reach))
        return dataclasses.replace(inner, size=size, halo=halo, plantseg_halo=plantseg, measured=measured,
                                   notes=list(inner.notes) + [f"dihedral test-time augmentation: inner field "
                                                              f"widened by the offsets' reach {reach.tolist()}"])

    def forward(self, x):
        import torch

        if x.ndim != 4:
            raise ValueError(f"x: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        acc = None
        cnt = None
        for k, flip, chan, sign in self._maps:
            xt = torch.flip(x, dims=(-1,)) if flip else x
            xt = torch.rot90(xt, k, dims=(-2, -1))
            y = self.model(xt)
            y = torch.rot90(y, -k, dims=(-2, -1))
            if flip:
                y = torch.flip(y, dims=(-1,))
            if acc is None:
                acc = torch.zeros((y.shape[0], len(chan), h, w), dtype=torch.float64, device=y.device)
                cnt = torch.zeros((1, len(chan), h, w), dtype=torch.float64, device=y.device)
            for c in range(len(chan)):
                d = int(chan[c])
                if sign[c] > 0:
                    acc[:, c] += y[:, d]
                    cnt[:, c] += 1
                    continue
                dy, dx = (int(v) for v in self._offsets[c])
                if abs(dy) >= h or abs(dx) >= w:  # no p + o_c inside the window (negative slice ends wrap)
                    continue
                # value at p = y_d[p + o_c], where p + o_c is inside the window
                ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
                xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
                acc[:, c, ys, xs] += y[:, d, yd, xd]
                cnt[:, c, ys, xs] += 1
        return (acc / cnt).to(x.dtype if x.is_floating_point() else torch.float32)
