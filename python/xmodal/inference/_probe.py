"""The safety net of the receptive field walks: a gradient probe of what they could not judge, and
the errors for networks without a usable field.

A walk reads layers; operations written as functions or tensor methods are judged by
:mod:`._mixing` (torch.fx graphs), recorded by name (forward hooks) or read from the graph
(TorchScript). What none of them can judge is checked by measurement: the extent of the input
gradient of the centre output voxel on a window holding the walked field, then on a larger one. An
extent beyond the walked field that grows with the window belongs to an operation that combines
every position (a global field: :class:`GlobalFieldError`); one that does not is a local field the
walk missed, and the measured extent is used.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from .._optional import optional_import
from ._layers import eager_kind
from ._measure import eval_mode, extent, gradient_support
from ._ops import PER_WINDOW, acts_pointwise, category, may_mix, normalise

log = logging.getLogger("xmodal.inference")

#: largest probe window (voxels): beyond it the probe is skipped and a note says so
_CAP = {2: 1536 * 1536, 3: 128 ** 3}


class ReceptiveFieldError(ValueError):
    """A network whose receptive field can neither be walked nor measured (give the halo in voxels)."""


class GlobalFieldError(ReceptiveFieldError):
    """A network with operations that combine every position of a spatial axis (global pooling,
    ``x.mean((2, 3))``, normalisation by statistics of the whole input, attention over all
    positions, ``flatten`` then ``Linear``): its receptive field is the whole input, so no halo
    makes tiles equal the whole-volume prediction.

    Attributes
    ----------
    operations : list of str
        The operations found (descriptions naming the function, method or module).
    factor : tuple of int
        The down-sampling factor of the walked layers (tiles are aligned to it when a halo is given).
    """

    def __init__(self, message, *, operations=(), factor=None):
        super().__init__(message)
        self.operations = list(operations)
        self.factor = tuple(factor) if factor is not None else None


def global_field_error(what: str, operations, factor) -> GlobalFieldError:
    """The error for a network (described by ``what``) whose ``operations`` combine every position."""
    ops = list(operations) or ["adaptive (global) pooling"]
    listed = "; ".join(ops[:5]) + (f"; and {len(ops) - 5} more" if len(ops) > 5 else "")
    return GlobalFieldError(
        f"model: expected a network whose outputs depend on a bounded neighbourhood (a finite receptive "
        f"field) for tiled prediction, got {what} with operation(s) that combine every position of a "
        f"spatial axis: {listed}. Its receptive field is the whole input, so no halo makes the tiles equal "
        f"the whole-volume prediction. Predict the image in one tile (tile_shape= its spatial shape, "
        f"halo=0) if it fits in memory, make the operation local (e.g. a pooling with a fixed window), or "
        f"give halo= in voxels to accept tiles that differ from the whole-volume prediction (tile_mismatch "
        f"measures by how much)", operations=ops, factor=factor)


def adaptive_modules(model, torch) -> list:
    """Descriptions of the adaptive pooling modules of ``model`` (for the error message)."""
    found = []
    for name, m in model.named_modules():
        cls = getattr(m, "original_name", None) or type(m).__name__
        if eager_kind(m, torch) == "adaptive" or str(cls).startswith("Adaptive"):
            found.append(f"{cls} module {name!r}")
    return found


@dataclass
class Probe:
    """``verdict``: ``"local"`` (within the walked field), ``"wider"`` (a larger local field),
    ``"global"`` (grows with the window) or ``"skipped"`` (``detail`` says why); ``measured``: the
    gradient extent per axis; ``windows``: the window shapes probed."""

    verdict: str
    measured: tuple | None
    windows: tuple
    detail: str = ""


def probe_field(model, nd: int, in_channels: int, size, factor) -> Probe:
    """Probe ``model`` against the walked field ``size`` (voxels per axis) on the ``factor`` grid.

    The windows hold the field and lie on the factor grid; where the network fails on them (e.g.
    it accepts only multiples of 32 voxels) they are tried on coarser grids (multiples of
    ``lcm(factor, 2**k)``, k up to 6) before the probe is given up."""
    torch = optional_import("torch", purpose="receptive field measurement")
    errors: list = []
    for grid in _grids(factor):
        w1, w2 = _windows(nd, size, factor, grid)
        if math.prod(w2) > _CAP[nd]:
            detail = f"the probe windows {w1} and {w2} exceed {_CAP[nd]} voxels"
            return Probe("skipped", None, (w1, w2), "; ".join(errors + [detail]))
        try:
            with eval_mode(model), _frozen(model):
                return _probe_on(model, in_channels, size, w1, w2, torch)
        except Exception as exc:  # noqa: BLE001 - the network's own error on the probe window
            errors.append(f"{w1} and {w2} voxels: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    return Probe("skipped", None, (w1, w2), "; ".join(errors[:1] + errors[-1:]))


def _grids(factor):
    """The factor grid, then coarser grids ``lcm(factor, 2**k)`` (k = 1..6), each once."""
    out = []
    for k in range(7):
        g = tuple(math.lcm(f, 2 ** k) for f in factor)
        if g not in out:
            out.append(g)
    return out


def _windows(nd, size, factor, grid):
    """Two probe windows on ``grid``: the first holds the field with a margin, the second is larger."""
    base = 64 if nd == 2 else 32
    w1 = tuple(g * math.ceil(max(base, int(s) + 2 * f + 2) / g) for s, f, g in zip(size, factor, grid))
    w2 = tuple(g * math.ceil((w + max(2 * g, w // 2)) / g) for w, g in zip(w1, grid))
    return w1, w2


def _probe_on(model, in_channels, size, w1, w2, torch) -> Probe:
    """Local when the gradient supports of two random inputs on ``w1`` stay within ``size``; global
    when beyond it they grow on ``w2``. One input is tried first: a support that grows by a quarter
    of the window with it is global after 3 passes instead of 4."""
    def support(shape, seed):
        return gradient_support(model, in_channels, shape, seed, torch, fixed=True)

    first = [support(w1, 0)]
    if all(m <= s for m, s in zip(extent(first[0]), size)):
        first.append(support(w1, 1))
        m1 = extent(np.logical_or(*first))
        if all(m <= s for m, s in zip(m1, size)):
            return Probe("local", m1, (w1,))
    second = [support(w2, 0)]
    if any(a > s and b >= a + w // 4 for a, b, s, w in zip(extent(first[0]), extent(second[0]), size, w1)):
        return Probe("global", extent(second[0]), (w1, w2))
    first += [support(w1, 1)] if len(first) == 1 else []
    second.append(support(w2, 1))
    m1, m2 = extent(np.logical_or(*first)), extent(np.logical_or(*second))
    if any(a > s and b > a for a, b, s in zip(m1, m2, size)):
        return Probe("global", m2, (w1, w2))
    return Probe("wider", m1, (w1, w2))


@contextlib.contextmanager
def _frozen(model):
    """Parameters without gradients while probing: the caller's ``.grad`` stay as they were."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def settle(model, nd, in_channels, size, factor, unseen, notes, what):
    """The field size after probing the operations ``unseen`` by the walk, and the measured
    extent (None when the probe could not run); GlobalFieldError for a global field."""
    listed = "; ".join(unseen[:4]) + (f"; and {len(unseen) - 4} more" if len(unseen) > 4 else "")
    p = probe_field(model, nd, in_channels, size, factor)
    if p.verdict == "global":
        raise global_field_error(what, [f"one of {listed} (the walk cannot judge them; a gradient probe: the "
                                        f"input gradient of the centre output voxel spans {p.measured} voxels "
                                        f"on a {p.windows[-1]} window and grows with the window)"], factor)
    if p.verdict == "wider":
        size = tuple(max(s, m + f - 1) for s, m, f in zip(size, p.measured, factor))
        notes.append(f"the walk could not judge {listed}; a gradient probe measured {p.measured} voxels, more "
                     f"than the walked field: the size is the measured extent plus factor - 1")
        log.info("receptive_field: %s", notes[-1])
    elif p.verdict == "local":
        notes.append(f"the walk could not judge {listed}; a gradient probe on {p.windows[0]} voxels found the "
                     f"field within the walked one")
    else:
        notes.append(f"the walk could not judge {listed} and the gradient probe did not run ({p.detail}): "
                     f"check the field with receptive_field(check=True) or tile_mismatch")
        log.warning("receptive_field: %s", notes[-1])
    return size, p.measured


def measured_only(model, nd, in_channels, notes, what):
    """(size, measured) of a network without a layer the walk knows (e.g. functional convolutions):
    the probed gradient extent, factor 1; GlobalFieldError for a global field."""
    p = probe_field(model, nd, in_channels, (1,) * nd, (1,) * nd)
    if p.verdict == "global":
        raise global_field_error(what, [f"an operation the walk cannot see (a gradient probe: the input gradient "
                                        f"of the centre output voxel spans {p.measured} voxels on a "
                                        f"{p.windows[-1]} window and grows with the window)"], (1,) * nd)
    if p.verdict == "skipped":
        raise ReceptiveFieldError(f"model: expected a network whose receptive field can be walked or measured, "
                                  f"got {what}: no layer the walk knows and the gradient probe failed "
                                  f"({p.detail}). Give halo= explicitly (voxels of context on each side of a tile)")
    notes.append("no known layer found; the size is the measured gradient extent, factor 1")
    return p.measured, p.measured


@contextlib.contextmanager
def recording(model, torch):
    """Record (normalised names of) the torch functions and tensor methods a forward pass calls
    outside torch's own modules and the layers the walk applies, and torch's modules the walk does
    not apply; yields ``unseen`` (those that may combine positions) and ``inexact``
    (``instance_norm`` / ``group_norm``: statistics of each window, as the modules; up-sampling with
    ``align_corners=True``), or None where torch cannot record them."""
    mode = getattr(getattr(torch, "overrides", None), "TorchFunctionMode", None)
    if mode is None:
        yield None
        return
    seen = SimpleNamespace(unseen=[], inexact=[])
    depth = [0]

    class Recorder(mode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if depth[0] == 0:
                _record(seen, normalise(getattr(func, "__name__", "")), args, kwargs, torch)
            return func(*args, **kwargs)

    def enter(m, inputs):
        depth[0] += 1
        if depth[0] == 1 and eager_kind(m, torch) is None and not acts_pointwise(m, torch.nn):
            seen.unseen.append(f"{type(m).__name__} module")

    def leave(m, inputs, output):
        depth[0] -= 1

    own = [m for m in model.modules() if not list(m.children())
           and (type(m).__module__.startswith("torch.nn.modules") or eager_kind(m, torch) is not None)]
    hooks = [m.register_forward_pre_hook(enter) for m in own] + [m.register_forward_hook(leave) for m in own]
    try:
        with Recorder():
            yield seen
    finally:
        for h in hooks:
            h.remove()


def _record(seen, name, args, kwargs, torch):
    """Sort one call of the forward pass into ``seen.unseen`` / ``seen.inexact`` (or neither)."""
    if name in ("max", "min") and ("other" in kwargs or (len(args) > 1 and torch.is_tensor(args[1]))):
        return  # element-wise maximum / minimum
    if name in PER_WINDOW:
        stats = kwargs.get("use_input_stats", args[5] if len(args) > 5 else True)
        if name == "group_norm" or stats is not False:
            seen.inexact.append(f"{name}() normalises by statistics of each window")
        return
    if name in ("interpolate", "upsample", "upsample_bilinear"):
        linear = name == "upsample_bilinear" or "nearest" not in str(kwargs.get("mode", args[3] if len(args) > 3
                                                                               else "nearest"))
        corners = name == "upsample_bilinear" or kwargs.get("align_corners", args[4] if len(args) > 4 else None)
        if linear and corners is True:
            seen.inexact.append(f"{name}() with align_corners=True (it places its samples by the length of the axis)")
    if name == "pad" and kwargs.get("mode", args[2] if len(args) > 2 else "constant") == "circular":
        seen.inexact.append("pad() with circular padding (it wraps the window's opposite edge, not the image's)")
    if may_mix(name) or category(name) == "spatial":  # the hook walk applies modules only
        seen.unseen.append(f"{name}()")
