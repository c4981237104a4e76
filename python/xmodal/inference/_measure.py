"""Measuring a network from its input gradients and its outputs (where its layers cannot be read)."""

from __future__ import annotations

import contextlib

import numpy as np


def param_dtype(model, torch):
    """The dtype of the model's first floating parameter (float32 without one)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def param_device(model, torch):
    """The device of the model's first parameter (the CPU without one)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def gradient_support(model, in_channels, shape, seed, torch):
    """Where the input gradient of the centre output voxel (all channels summed) is non-zero."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, in_channels) + tuple(shape), generator=gen, dtype=torch.float32)
    x = x.to(device=param_device(model, torch), dtype=param_dtype(model, torch)).requires_grad_(True)
    with torch.enable_grad():
        y = model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        centre = tuple(s // 2 for s in y.shape[2:])
        y[(0, slice(None)) + centre].sum().backward()
    return (x.grad.detach().abs().sum(dim=(0, 1)) > 0).cpu().numpy()


def extent(g) -> tuple:
    """Per axis the extent (first to last voxel) of the true voxels of the boolean array ``g``."""
    out = []
    for ax in range(g.ndim):
        other = tuple(a for a in range(g.ndim) if a != ax)
        nz = np.flatnonzero(g.any(axis=other))
        out.append(int(nz[-1] - nz[0] + 1) if nz.size else 0)
    return tuple(out)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode, its modules' training flags restored afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, t in flags.items():
            m.training = t


def measure_factor(model, ndim, in_channels, size, margin, torch, max_factor=32) -> tuple:
    """Per axis the smallest shift of the input that shifts the output alike (away from the borders by
    ``margin``): the network's down-sampling factor, from shift equivariance."""
    gen = torch.Generator().manual_seed(1)
    dev, dtype = param_device(model, torch), param_dtype(model, torch)
    factor = []
    for ax in range(ndim):
        shape = [size] * ndim
        shape[ax] += max_factor
        x = torch.randn((1, in_channels) + tuple(shape), generator=gen).to(device=dev, dtype=dtype)
        with torch.inference_mode():
            y0 = model(x.narrow(2 + ax, 0, size))
            y0 = (y0[0] if isinstance(y0, (tuple, list)) else y0).float()
            tol = 1e-4 * float(y0.abs().max()) + 1e-12
            for o in range(1, max_factor + 1):
                n = size - 2 * margin[ax] - o
                if n < 1:
                    raise ValueError(f"a {size}-voxel window is too small for a field of {margin[ax]} voxels")
                y = model(x.narrow(2 + ax, o, size))
                y = (y[0] if isinstance(y, (tuple, list)) else y).float()
                if torch.allclose(y0.narrow(2 + ax, margin[ax] + o, n), y.narrow(2 + ax, margin[ax], n),
                                  rtol=1e-4, atol=tol):
                    factor.append(o)
                    break
            else:
                raise ValueError(f"no shift up to {max_factor} voxels along axis {ax} shifts the output alike")
    return tuple(factor)
