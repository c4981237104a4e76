"""The torch part of :mod:`._tta`: :class:`DihedralTTA`, a ``torch.nn.Module``.

Imported on first use of the name (``xmodal.inference.DihedralTTA``), so that ``xmodal.inference``
imports without torch; without torch this import raises ImportError naming the ``xmodal[torch]`` extra.
"""

from __future__ import annotations

import numpy as np

from .._optional import optional_import
from .._validation import describe
from ._tta import dihedral_channel_maps

torch = optional_import("torch", purpose="DihedralTTA (test-time augmentation)")

__all__ = ["DihedralTTA"]


class DihedralTTA(torch.nn.Module):
    """A 2D affinity network averaged over the 8 dihedral transforms of its input.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, Cin, H, W)`` to ``(B, C, H, W)`` affinities for ``offsets`` (values used as
        given; averaging suits probabilities). A 90-degree rotation swaps H and W, so the network
        must accept both orders (a fully convolutional network with H, W multiples of its
        down-sampling factor does).
    offsets : array_like of int, shape (C, 2), optional
        The output channels' offsets ``(dy, dx)``; closed under the dihedral group up to sign.
        Default: the model's ``offsets`` attribute (a ValueError when it has none).
    transforms : int
        1 (identity only, the plain network), 2 (identity and the flip of x), 4 (the flips of y,
        x and both) or 8 (all, default).

    Attributes ``offsets``, ``n_attractive``, ``metadata``, ``segmentation_defaults`` and
    ``divisor`` of ``model`` are carried over when present. Output pixels whose reversed pair
    leaves the window average over fewer transforms (at least the identity).
    """

    def __init__(self, model, offsets=None, *, transforms: int = 8):
        super().__init__()
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
