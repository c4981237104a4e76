"""A small 2D U-Net in torch (imported lazily by :mod:`xmodal.models`).

The network is deliberately plain so that tiled inference is exact: zero-padded 3x3
convolutions, BatchNorm (statistics frozen in eval mode, so no tile-dependent statistics),
ReLU, 2x2 max pooling and 2x2 transposed convolutions. Inputs of any height and width are padded
at the bottom and right to multiples of ``2 ** (levels - 1)`` by repeating the last row / column,
and the output is cropped back; since the padding sits at the image end and depends only on the
last real pixels, a tiled prediction whose windows start on that grid (``xmodal.predict_tiled``)
still equals the whole-image prediction.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet2D", "AffinityEnsemble"]


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    """2D U-Net returning per-pixel logits (no final activation).

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    out_channels : int
        Number of output channels (for an affinity model: one per offset).
    features : sequence of int
        Channels per level, top to bottom; ``len(features)`` levels, so
        ``len(features) - 1`` poolings. Default (16, 32, 64).
    final_activation : {"none", "sigmoid"}
        Applied in :meth:`forward`. The shipped ISBI model uses ``"sigmoid"`` so that its output
        is a merge probability.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, features=(16, 32, 64),
                 final_activation: str = "none"):
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) < 2 or any(f <= 0 for f in features):
            raise ValueError(f"features: expected at least two positive channel counts, got {features}")
        if final_activation not in ("none", "sigmoid"):
            raise ValueError(f"final_activation: expected 'none' or 'sigmoid', got {final_activation!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.features = features
        self.final_activation = final_activation
        self.encoders = nn.ModuleList()
        c = self.in_channels
        for f in features:
            self.encoders.append(_DoubleConv(c, f))
            c = f
        self.pool = nn.MaxPool2d(2)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for f_skip, f_below in zip(features[-2::-1], features[:0:-1]):
            self.upsamples.append(nn.ConvTranspose2d(f_below, f_skip, 2, stride=2))
            self.decoders.append(_DoubleConv(2 * f_skip, f_skip))
        self.head = nn.Conv2d(features[0], self.out_channels, 1)

    @property
    def divisor(self) -> int:
        """The down-sampling factor: other heights and widths are padded to multiples of this."""
        return 2 ** (len(self.features) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected a (batch, {self.in_channels}, height, width) tensor, got shape {tuple(x.shape)}")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if height < 1 or width < 1:
            raise ValueError(f"x: expected a non-empty image, got height and width {(height, width)}")
        pad_h, pad_w = -height % self.divisor, -width % self.divisor
        if pad_h or pad_w:  # bottom / right, repeating the last row / column
            x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < len(self.encoders) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.upsamples, self.decoders):
            x = up(x)
            x = dec(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        if self.final_activation == "sigmoid":
            x = torch.sigmoid(x)
        if pad_h or pad_w:
            x = x[..., :height, :width]
        return x


class AffinityEnsemble(nn.Module):
    """The mean of the outputs of several networks with the same input and output channels.

    Used for an ensemble of affinity U-Nets trained with the same recipe and different seeds: each
    member ends in a sigmoid, so the output is the mean of the members' merge probabilities. Every
    member is exact under tiling (:class:`UNet2D`), so the ensemble is too; ``divisor`` is the largest
    of the members' divisors (all powers of two).

    Parameters
    ----------
    members : sequence of torch.nn.Module
        At least one network; each must have ``in_channels``, ``out_channels`` and ``divisor``, the
        channel counts equal across members.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one network, got none")
        shapes = {(int(m.in_channels), int(m.out_channels)) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"members: expected equal (in_channels, out_channels), got {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        self.in_channels, self.out_channels = shapes.pop()

    @property
    def parallel_members(self) -> list:
        """The members, whose outputs are combined voxel by voxel (so the ensemble's receptive
        field is the widest member's: :func:`xmodal.inference.receptive_field`)."""
        return list(self.members)

    @property
    def divisor(self) -> int:
        """The largest down-sampling factor of the members."""
        return max(int(m.divisor) for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)
