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


def gradient_support(model, in_channels, shape, seed, torch, *, fixed=False):
    """Where the input gradient of the centre output voxel (its channels weighted at random) is
    non-zero.

    ``fixed``: normalisations by statistics of each window (``instance_norm`` / ``group_norm``, the
    functions and the InstanceNorm / GroupNorm modules, outside compiled TorchScript) run with
    statistics that pass no gradient (:func:`fixed_statistics`): the probes of the walks measure
    the field of the layers, the statistics' reach over the window is warned about instead."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, in_channels) + tuple(shape), generator=gen, dtype=torch.float32)
    x = x.to(device=param_device(model, torch), dtype=param_dtype(model, torch)).requires_grad_(True)
    with torch.enable_grad(), (fixed_statistics(torch) if fixed else contextlib.nullcontext()):
        y = model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        centre = tuple(s // 2 for s in y.shape[2:])
        # channels weighted at random, not summed: a sum that is constant (softmax over channels)
        # has no gradient at all
        w = torch.rand(y.shape[1], generator=gen).add_(0.5).to(device=y.device, dtype=y.dtype)
        (y[(0, slice(None)) + centre] * w).sum().backward()
    return (x.grad.detach().abs().sum(dim=(0, 1)) > 0).cpu().numpy()


@contextlib.contextmanager
def fixed_statistics(torch):
    """Within: ``instance_norm`` / ``group_norm`` (torch or functional) normalise by statistics
    without gradient (their values unchanged); a no-op without ``TorchFunctionMode``."""
    mode = getattr(getattr(torch, "overrides", None), "TorchFunctionMode", None)
    if mode is None:
        yield
        return
    F = torch.nn.functional
    instance = {F.instance_norm: (1, 2, 3, 4), torch.instance_norm: (3, 4, 1, 2)}  # running mean, var, w, b
    group = (F.group_norm, torch.group_norm)

    class Fixed(mode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in group:
                return _fixed_norm(args[0], _arg(args, kwargs, 1, "num_groups"), _arg(args, kwargs, 2, "weight"),
                                   _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5))
            if func in instance and _arg(args, kwargs, 5, "use_input_stats", True) is not False:
                _, _, w, b = instance[func]
                x = args[0]
                return _fixed_norm(x, x.shape[1], _arg(args, kwargs, w, "weight"), _arg(args, kwargs, b, "bias"),
                                   _arg(args, kwargs, 7, "eps", 1e-5))
            return func(*args, **kwargs)

    with Fixed():
        yield


def _arg(args, kwargs, pos, name, default=None):
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def _fixed_norm(x, groups, weight, bias, eps):
    """Group normalisation of ``x`` (instance normalisation: one group per channel) by detached
    statistics, then the per-channel affine."""
    g = x.reshape(x.shape[0], int(groups), -1)
    mean = g.mean(-1, keepdim=True).detach()
    var = g.var(-1, unbiased=False, keepdim=True).detach()
    y = ((g - mean) / (var + eps).sqrt()).reshape(x.shape)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


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
