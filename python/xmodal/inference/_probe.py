"""The safety net of the receptive field walks: a gradient probe of what they could not judge, and
the errors for networks without a usable field.

A walk reads layers; operations written as functions or tensor methods are judged by
:mod:`._mixing` (torch.fx graphs), recorded by name (forward hooks) or read from the graph
(TorchScript). What none of them can judge is checked by measurement: the extent of the input
gradient of the centre output voxel on a window holding the walked field, then on a larger one. An
extent beyond the walked field that grows with the window belongs to an operation that combines
every position (a global field: :class:`GlobalFieldError`); one that does not is a local field the
walk missed, and the measured extent is used. Statistics of per-window normalisations pass no
gradient, inside compiled TorchScript too (:func:`statistics_fixed`); a global verdict at the level
of float32 rounding (an FFT) is probed again in float64; a local one is checked for wrapping around
the window (a circular convolution).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass

import numpy as np

from .._optional import optional_import
from ._layers import eager_kind
from ._measure import eval_mode, extent, fixed_statistics, param_device, param_dtype

log = logging.getLogger("xmodal.inference")

#: largest probe window (voxels): beyond it the probe is skipped and a note says so
_CAP = {2: 1536 * 1536, 3: 128 ** 3}
#: float64 gradients below this fraction of the largest are rounding (a dependence as weak as a mean
#: over the largest probe window, 1 / 1536², is 4e-7)
_ROUNDING64 = 1e-10


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
    exact: bool = False  #: decided in float64 (the float32 gradient's rounding reached the window)
    wraps: bool = False  #: a corner output voxel reads the opposite edge of the window


def probe_field(model, nd: int, in_channels: int, size, factor) -> Probe:
    """Probe ``model`` against the walked field ``size`` (voxels per axis) on the ``factor`` grid.

    The windows hold the field and lie on the factor grid; where the network fails on them (e.g.
    it accepts only multiples of 32 voxels) they are tried on coarser grids (multiples of
    ``lcm(factor, 2**k)``, k up to 6) before the probe is given up. A global verdict whose gradient
    beyond the field is at the level of float32 rounding (an FFT spreads its rounding over the whole
    window) is probed again in float64, where rounding is 1e-10 of the largest gradient; a local
    one is checked for wrapping around the window (:func:`_wrapping`)."""
    torch = optional_import("torch", purpose="receptive field measurement")
    errors: list = []
    for grid in _grids(factor):
        w1, w2 = _windows(nd, size, factor, grid)
        if math.prod(w2) > _CAP[nd]:
            detail = f"the probe windows {w1} and {w2} exceed {_CAP[nd]} voxels"
            return Probe("skipped", None, (w1, w2), "; ".join(_distinct(errors) + [detail]))
        try:
            with eval_mode(model), _frozen(model):
                with statistics_fixed(model, torch) as probed:
                    seen: dict = {}
                    p = _probe_on(_support(probed, in_channels, torch, 0.0, seen), size, w1, w2)
                    if p.verdict in ("local", "wider"):
                        p.wraps = _wrapping(probed, in_channels, p.measured, size, factor, w1, torch, 0.0)
                if p.verdict == "global" and _rounding_level(seen[(w1, 0)], size, factor):  # the model restored
                    p = _in_float64(model, in_channels, size, factor, (w1, w2), torch) or p
                return p
        except Exception as exc:  # noqa: BLE001 - the network's own error on the probe window
            errors.append(f"{w1} and {w2} voxels: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    return Probe("skipped", None, (w1, w2), "; ".join(_distinct(errors)))


def _distinct(errors: list) -> list:
    """The first and the last of the network's errors on the probe windows, and how many windows failed
    (one window's error repeated on every grid would make the note unreadable)."""
    if len(errors) <= 2:
        return list(errors)
    return [errors[0], f"... {len(errors) - 2} more windows failed ...", errors[-1]]


def _in_float64(model, in_channels, size, factor, windows, torch):
    """The probe of a float64 copy of ``model`` (gradients below 1e-10 of the largest are rounding),
    None where the copy does not run."""
    try:
        copy64 = copy.deepcopy(model).double()
        with statistics_fixed(copy64, torch) as probed:
            p = _probe_on(_support(probed, in_channels, torch, _ROUNDING64, {}, torch.float64), size, *windows)
            if p.verdict in ("local", "wider"):
                p.wraps = _wrapping(probed, in_channels, p.measured, size, factor, windows[0], torch, _ROUNDING64)
    except Exception as exc:  # noqa: BLE001 - e.g. float32 constants in a traced graph
        log.info("receptive_field: the float64 probe did not run (%s: %s)", type(exc).__name__, exc)
        return None
    p.exact = True
    return p


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


def _probe_on(support, size, w1, w2) -> Probe:
    """Local when the gradient supports (``support(window, seed)``) of two random inputs on ``w1``
    stay within ``size``; global when beyond it they grow on ``w2``. One input is tried first: a
    support that grows by a quarter of the window with it is global after 3 passes instead of 4."""
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


def _support(model, in_channels, torch, rounding, seen, dtype=None):
    """``support(window, seed)``: where the input gradient of the centre output voxel exceeds
    ``rounding`` times its largest value (magnitudes kept in ``seen``)."""
    def support(shape, seed):
        g = input_gradient(model, in_channels, shape, seed, torch, dtype=dtype)
        seen[(tuple(shape), seed)] = g
        return g > rounding * g.max()
    return support


def input_gradient(model, in_channels, shape, seed, torch, *, at=None, dtype=None):
    """|input gradient| (summed over the input channels, float64 numpy) of output voxel ``at``
    (default the centre; negative positions from the end), its channels weighted at random, the
    statistics of instance / group normalisation passing no gradient (:func:`._measure.fixed_statistics`)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, in_channels) + tuple(shape), generator=gen, dtype=torch.float32)
    x = x.to(device=param_device(model, torch), dtype=dtype or param_dtype(model, torch)).requires_grad_(True)
    with torch.enable_grad(), fixed_statistics(torch):
        y = model(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        pos = tuple(s // 2 for s in y.shape[2:]) if at is None else tuple(at)
        w = torch.rand(y.shape[1], generator=gen).add_(0.5).to(device=y.device, dtype=y.dtype)
        (y[(0, slice(None)) + pos] * w).sum().backward()
    return x.grad.detach().abs().sum(dim=(0, 1)).double().cpu().numpy()


def _rounding_level(g, size, factor) -> bool:
    """Whether the gradient ``g`` beyond the walked field around the centre is at most 1e-4 of its
    largest value (float32 rounding spread by an FFT; a mean over a 64² window is 2.4e-4)."""
    far = np.ones(g.shape, bool)
    far[tuple(slice(max(0, n // 2 - s - f), n // 2 + s + f + 1) for n, s, f in zip(g.shape, size, factor))] = False
    return bool(far.any()) and float(g[far].max()) <= 1e-4 * float(g.max())


def _wrapping(model, in_channels, measured, size, factor, window, torch, rounding) -> bool:
    """Whether the output voxels at the first and the last corner of ``window`` read the opposite edge
    of it (beyond the field from their corner): a circular convolution through the FFT, circular
    padding, a roll."""
    reach = [max(m, s) + f for m, s, f in zip(measured, size, factor)]
    for corner in (0, -1):
        g = input_gradient(model, in_channels, window, 0, torch, at=(corner,) * len(window),
                           dtype=torch.float64 if rounding else None)
        on = g > rounding * g.max()
        for ax, r in enumerate(reach):
            hit = np.flatnonzero(on.any(axis=tuple(a for a in range(on.ndim) if a != ax)))
            if hit.size and (hit.max() >= r if corner == 0 else hit.min() < on.shape[ax] - r):
                return True
    return False


#: TorchScript operators whose statistics the probe cuts from the gradient, with their arguments
_NORM_OPS = (("aten::instance_norm", "%input, %weight, %bias, %rm, %rv, %use, %mom, %eps, %cudnn"),
             ("aten::group_norm", "%input, %groups, %weight, %bias, %eps, %cudnn"))


@contextlib.contextmanager
def statistics_fixed(model, torch):
    """``model`` whose compiled TorchScript parts normalise by statistics that pass no gradient, as
    :func:`._measure.fixed_statistics` does outside TorchScript (where a ``TorchFunctionMode`` cannot
    reach): a TorchScript model is replaced by a module calling a copy of its graph in which the
    result of every ``instance_norm`` / ``group_norm`` is ``y.detach() + (x - x.detach())`` (the same
    values, a gradient of one voxel); TorchScript submodules of an eager model are swapped for such
    modules while the context lasts. The model itself and its graphs are not changed."""
    if isinstance(model, torch.jit.ScriptModule):
        forward = _fixed_forward(model, torch)
        yield model if forward is None else _Calling(torch)(model, forward)
        return
    swapped = []
    for parent in list(model.modules()):
        if isinstance(parent, torch.jit.ScriptModule):
            continue
        for name, child in list(parent._modules.items()):
            forward = _fixed_forward(child, torch) if isinstance(child, torch.jit.ScriptModule) else None
            if forward is not None:
                parent._modules[name] = _Calling(torch)(child, forward)
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


def _fixed_forward(module, torch):
    """``forward(*inputs)`` of TorchScript ``module`` through a copy of its graph with the statistics
    of instance / group normalisation cut from the gradient; None without such operators (or where
    this torch cannot rewrite graphs)."""
    try:
        graph = module.graph.copy()
        torch._C._jit_pass_inline(graph)
        if not _has_norm(graph.nodes()):
            return None
        for op, args in _NORM_OPS:
            torch._C._jit_pass_custom_pattern_based_rewrite_graph(
                f"graph({args}):\n    %r = {op}({args})\n    return (%r)",
                f"graph({args}):\n    %y = {op}({args})\n    %yd = aten::detach(%y)\n    %xd = aten::detach(%input)\n"
                f"    %one : int = prim::Constant[value=1]()\n    %d = aten::sub(%input, %xd, %one)\n"
                f"    %r = aten::add(%yd, %d, %one)\n    return (%r)", graph)
        function = torch._C._create_function_from_graph("xmodal_fixed_statistics", graph)
    except Exception as exc:  # noqa: BLE001 - private API of this torch version
        log.info("receptive_field: cannot hold statistics fixed inside TorchScript (%s: %s)", type(exc).__name__, exc)
        return None
    return lambda *inputs: function(module._c, *inputs)


def _has_norm(nodes) -> bool:
    """Whether ``nodes`` (or their blocks: branches, loops) hold an operator of :data:`_NORM_OPS`."""
    return any(n.kind() in (op for op, _ in _NORM_OPS) or any(_has_norm(b.nodes()) for b in n.blocks())
               for n in nodes)


def _Calling(torch):
    """A module class calling ``forward`` in place of the TorchScript module ``inner`` it holds (its
    parameters stay reachable)."""
    class Calling(torch.nn.Module):
        def __init__(self, inner, forward):
            super().__init__()
            self.inner = inner
            self._call = forward

        def forward(self, *inputs):
            return self._call(*inputs)

    return Calling


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
                                        f"on a {p.windows[-1]} window and grows with the window{_how(p, listed)})"],
                                 factor)
    if p.verdict == "wider":
        size = tuple(max(s, m + f - 1) for s, m, f in zip(size, p.measured, factor))
        notes.append(f"the walk could not judge {listed}; a gradient probe{_how(p)} measured {p.measured} voxels, "
                     f"more than the walked field: the size is the measured extent plus factor - 1")
        log.info("receptive_field: %s", notes[-1])
    elif p.verdict == "local":
        notes.append(f"the walk could not judge {listed}; a gradient probe{_how(p)} on {p.windows[0]} voxels found "
                     f"the field within the walked one")
    else:
        notes.append(f"the walk could not judge {listed} and the gradient probe did not run ({p.detail}): "
                     f"check the field with receptive_field(check=True) or tile_mismatch")
        log.warning("receptive_field: %s", notes[-1])
    _wraps(p, notes)
    return size, p.measured


def _how(p, listed="") -> str:
    """How the probe decided, for the notes and messages."""
    fft = " (an FFT over the window combines every position unless it computes a convolution with a small " \
          "kernel, whose field the probe would have found)" if "fft" in listed.lower() else ""
    if p.exact and p.verdict == "global":
        return f", in float64 too (not float32 rounding){fft}"
    if p.exact:
        return " in float64 (the float32 gradient's rounding, spread by an FFT, reached the whole window)"
    return fft


def _wraps(p, notes) -> None:
    """The note and warning of a probe that found the window's edges wrapped onto each other."""
    if p.wraps:
        notes.append("the output at a corner of the window reads its opposite edge: the network wraps around the "
                     "window (a circular convolution through the FFT, circular padding, a roll), so tiles at the "
                     "image border differ from the whole-volume prediction (tile_mismatch measures by how much)")
        log.warning("model: %s", notes[-1])


def measured_only(model, nd, in_channels, notes, what):
    """(size, measured) of a network without a layer the walk knows (e.g. functional convolutions):
    the probed gradient extent, factor 1; GlobalFieldError for a global field."""
    p = probe_field(model, nd, in_channels, (1,) * nd, (1,) * nd)
    if p.verdict == "global":
        raise global_field_error(what, [f"an operation the walk cannot see (a gradient probe: the input gradient "
                                        f"of the centre output voxel spans {p.measured} voxels on a "
                                        f"{p.windows[-1]} window and grows with the window{_how(p)})"], (1,) * nd)
    if p.verdict == "skipped":
        raise ReceptiveFieldError(f"model: expected a network whose receptive field can be walked or measured, "
                                  f"got {what}: no layer the walk knows and the gradient probe failed "
                                  f"({p.detail}). Give halo= explicitly (voxels of context on each side of a tile)")
    notes.append(f"no known layer found; the size is the measured gradient extent{_how(p)}, factor 1")
    _wraps(p, notes)
    return p.measured, p.measured
