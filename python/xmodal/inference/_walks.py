"""The walks of an eager network's layers for :mod:`._receptive`: through its torch.fx graph
(branches merged by maximum, then the layout scan of :mod:`._mixing`) or, when it cannot be traced,
through the execution order of its leaf modules recorded by forward hooks (one chain, an upper
bound; the tensor operations outside modules recorded by :func:`recording`). Both return
``(final state, widest state, layers, Scan)``. Slices with a step on a spatial axis are strided
layers: the torch.fx walk knows which tensors still have the input's axes (:func:`_canonical`), the
hook walk takes a tensor with ``ndim + 2`` axes to have them; a step it cannot place raises
:class:`NotAnalysable` (the field is measured)."""

from __future__ import annotations

import contextlib
import operator
from types import SimpleNamespace

import numpy as np

from ._layers import State as _State
from ._layers import apply_layer, eager_kind, inexact_layer, slice_steps, strided_slice
from ._layers import upsample as _upsample
from ._measure import param_device as _param_device
from ._measure import param_dtype as _param_dtype
from ._mixing import Scan, scan_fx
from ._mixing_layout import shape_source
from ._mixing_rules import node_name
from ._ops import NEUTRAL, NEUTRAL_ATTRIBUTES, PER_WINDOW, TUPLE_OUT, acts_pointwise, category, may_mix, normalise
from ._receptive_jit import NotAnalysable, ScriptWalk, is_script_module
from ._script_axes import keeps_canonical


def apply_module(mod, st: _State, nd: int, torch) -> tuple[_State, bool]:
    """Update the state through ``mod``; return (new state, whether it had a spatial extent)."""
    kind = eager_kind(mod, torch)
    if kind is None:
        return st, False
    return apply_layer(kind, mod, st, nd), True


def _symbolic_trace(model, torch):
    """torch.fx graph of ``model``, with its TorchScript submodules as leaves (fx cannot trace into them)."""
    fx = torch.fx
    if not any(is_script_module(m, torch) for m in model.modules()):
        return fx.symbolic_trace(model)

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return is_script_module(m, torch) or super().is_leaf_module(m, qualname)

    tracer = Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph)


def walk_fx(model, nd, in_channels, torch):
    gm = _symbolic_trace(model, torch)
    modules = dict(gm.named_modules())
    states: dict = {}
    canon: dict = {}  # per node: a tensor with the input's axes (True), other axes (False), no tensor (None)
    n_layers = 0
    best = None
    unseen: list = []  # of the TorchScript submodules and interpolations the walk cannot scale
    inexact: list = []  # of the TorchScript submodules
    global_ops: list = []  # of the TorchScript submodules
    start = _State(np.ones(nd), np.ones(nd), np.zeros(nd))
    for node in gm.graph.nodes:
        ins = [states.get(a) for a in node.all_input_nodes]
        kept = None  # whether a TorchScript submodule keeps the axes
        if node.op == "placeholder":
            st = start if not states else None
        elif node.op == "call_module":
            st = _State.merge(ins, nd)
            mod = modules[node.target]
            if st is not None and is_script_module(mod, torch):  # compiled: walk its TorchScript graph
                walk = ScriptWalk(nd)
                st, inner, k = walk.run(mod, st)
                kept = bool(walk.canon_out and walk.canon_out[0])
                best = _State.merge([best, inner], nd)
                n_layers += k
                unseen += [f"{u} in {node.target!r}" for u in walk.unseen]
                inexact += [f"{u} in {node.target!r}" for u in walk.inexact]
                global_ops += [f"{u} in {node.target!r}" for u in walk.global_ops]
            elif st is not None:
                st, spatial = apply_module(mod, st, nd, torch)
                n_layers += spatial
        elif node.op == "call_function" and node.target in (torch.nn.functional.conv1d, torch.nn.functional.conv2d,
                                                            torch.nn.functional.conv3d):
            raise NotImplementedError("functional convolutions are walked by hooks")
        elif node.op == "call_function":
            st, k = _function_layer(node, states, ins, nd, unseen, inexact, torch)
            if node.target is operator.getitem and st is not None:
                st, k = _sliced(node, st, canon, nd)
            n_layers += k
        else:  # element-wise ops, cat, add, attribute access: pass through, merging branches by maximum
            st = _State.merge(ins, nd)
        states[node] = st
        canon[node] = True if node.op == "placeholder" else _canonical(node, states, canon, modules, nd, torch, kept)
        if st is not None:
            best = st if best is None else _State.merge([best, st], nd)
    out = [n for n in gm.graph.nodes if n.op == "output"]
    final = states.get(out[0]) if out else None
    if final is None:
        final = best
    factor = tuple(max(1, int(round(v))) for v in best.j) if best is not None else (1,) * nd
    scan = scan_fx(gm, model, nd, in_channels, factor, tuple(final.r) if final is not None else (np.inf,) * nd,
                   torch)
    scan.unseen += unseen
    scan.inexact += inexact
    scan.global_ops += global_ops
    return final, best, n_layers, scan


def _function_layer(node, states, ins, nd, unseen, inexact, torch):
    """(state, layers) after a call_function node: interpolation, pixel (un)shuffle, max / average
    pooling; other functions pass the merged state through. Coordinates over a size read from the
    image (``torch.linspace(-1, 1, x.shape[-1])``, CoordConv) are relative to the window: ``inexact``."""
    F = torch.nn.functional
    st = _State.merge(ins, nd)
    if node_name(node) in ("linspace", "arange", "logspace") and any(
            isinstance(a, type(node)) and states.get(a) is not None for a in node.args):
        inexact.append(f"torch.{node_name(node)}() (graph node {node.name!r}) over a size read from the image: "
                       f"coordinates of the window, not of the image")
        return None, 0
    if node.target in (F.interpolate, getattr(F, "upsample", None)):
        return _resized(node, states, ins, nd, unseen)
    if st is None:
        return st, 0
    if node.target in (torch.pixel_shuffle, torch.pixel_unshuffle):
        r = node.kwargs.get("upscale_factor", node.kwargs.get("downscale_factor", node.args[-1]))
        shuffle = node.target is torch.pixel_shuffle
        spec = SimpleNamespace(upscale_factor=r) if shuffle else SimpleNamespace(downscale_factor=r)
        return apply_layer("shuffle" if shuffle else "unshuffle", spec, st, nd), 1
    if node.target in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
        k = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
        s = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None) or k
        return apply_layer("pool", SimpleNamespace(kernel_size=k, stride=s, dilation=1), st, nd), 1
    return st, 0


def _sliced(node, st, canon, nd):
    """(state, layers) after ``x[...]``: a step on a spatial axis of a tensor with the input's axes
    is a strided layer (:func:`._layers.strided_slice`); a step the walk cannot place (a tensor whose
    axes moved, a step or start computed at run time) raises NotAnalysable: the field and the factor
    are measured. Slices of sequences (``torch.split(...)[::2]``, ``x.shape[::2]``) are no layer."""
    src = node.args[0]
    steps = slice_steps(node.args[1], nd + 2)
    if not steps or not isinstance(src, type(node)) or canon.get(src) is None or _sequence(src):
        return st, 0
    if not canon[src] and any(a > 0 for a in steps):
        raise NotAnalysable(f"a slice with a step (graph node {node.name!r}) of a tensor whose axes the walk "
                            f"cannot follow")
    spatial = {a - 2: v for a, v in steps.items() if a >= 2}
    if any(isinstance(v, type(node)) for step in spatial.values() for v in step):
        raise NotAnalysable(f"a slice with a step or start computed at run time (graph node {node.name!r})")
    spec = strided_slice(spatial, nd)
    return (st, 0) if spec is None else (apply_layer(spec.kind, spec, st, nd), 1)


def _sequence(node) -> bool:
    """Whether a node may be a tuple of tensors (``chunk``, ``split``, ``x.max(1)``)."""
    return node_name(node) in TUPLE_OUT


def _canonical(node, states, canon, modules, nd, torch, kept=None):
    """Whether ``node`` is a tensor with the input's axes ``(batch, channel, spatial...)`` (True),
    a tensor whose axes may have moved (False) or no tensor of positions (None: sizes, flags,
    parameters), from its inputs and what it does (the TorchScript walk's rule,
    :func:`._script_axes.keeps_canonical`; layers and torch.nn modules acting value by value keep the
    axes; so does a piece of ``chunk`` / ``split`` along the batch or channel axis)."""
    flags = [canon.get(a) for a in node.all_input_nodes if states.get(a) is not None]
    flags = [f for f in flags if f is not None]
    name = node_name(node)
    if not flags or node.op in ("output", "get_attr") or (name in NEUTRAL and name != "getattr") \
            or (name == "getattr" and len(node.args) > 1 and node.args[1] in NEUTRAL_ATTRIBUTES):
        return None
    if not all(flags):
        return False
    if node.op == "call_module":
        mod = modules[node.target]
        return kept if kept is not None else eager_kind(mod, torch) is not None or acts_pointwise(mod, torch.nn)
    if name == "getitem":
        src, index = node.args[0], node.args[1]
        if isinstance(src, type(node)) and node_name(src) in ("chunk", "split", "tensor_split"):
            return isinstance(index, int)
        items = index if isinstance(index, tuple) else (index,)
        channels = len(items) > 1 and items[0] == slice(None) and isinstance(items[1], list)  # x[:, [2, 1, 0]]
        return all(isinstance(it, slice) or it is Ellipsis or (k == 1 and channels) for k, it in enumerate(items))
    if name in ("chunk", "split", "tensor_split", "repeat_interleave"):
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else None if name == "repeat_interleave" else 0)
        return isinstance(dim, int) and dim % (nd + 2) in (0, 1)
    if name in ("repeat", "tile"):  # along the batch or channel axis only
        reps = node.args[1:] if name == "repeat" else node.args[1:2] or (node.kwargs.get("dims"),)
        reps = tuple(reps[0]) if len(reps) == 1 and isinstance(reps[0], (tuple, list)) else tuple(reps)
        return len(reps) == nd + 2 and all(r == 1 for r in reps[2:])
    if category(name) in ("spatial", "resize"):
        return True
    return keeps_canonical(name, node.kwargs.get("keepdim") is True)


def _resized(node, states, ins, nd, unseen):
    """(state, layers) after ``F.interpolate``: by its scale factor; to the size of a tensor
    (``size=skip.shape[2:]``) by the ratio of the grids of the two tensors; otherwise judged by the
    scan (a fixed size is global, another size computed at run time is probed)."""
    st = _State.merge(ins, nd)
    scale = node.kwargs.get("scale_factor", node.args[2] if len(node.args) > 2 else None)
    mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
    if st is None:
        return st, 0
    if scale is not None:
        return _upsample(st, scale, mode, nd), 1
    size = node.kwargs.get("size", node.args[1] if len(node.args) > 1 else None)
    src, x = states.get(shape_source(size, nd)), states.get(node.args[0])
    if src is None or x is None:
        return st, 0
    ratio = x.j / src.j
    if np.any(ratio < 1) or not np.allclose(ratio, np.round(ratio)):  # not an up-sampling by integers
        unseen.append(f"F.interpolate() (graph node {node.name!r}) to the size of a tensor on a grid "
                      f"{tuple(float(v) for v in ratio)} times as fine")
        return st, 0
    return _upsample(x, tuple(int(round(v)) for v in ratio), mode, nd), 1


def walk_hooks(model, nd, in_channels, torch):
    if any(is_script_module(m, torch) for m in model.modules()):
        raise NotAnalysable("forward hooks cannot record the layers of a TorchScript submodule")
    order = []
    hooks = []
    for m in model.modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    try:
        size = 64 if nd == 2 else 32
        x = torch.zeros((1, in_channels) + (size,) * nd, dtype=_param_dtype(model, torch), device=_param_device(model, torch))
        with torch.inference_mode(), recording(model, torch, order, nd) as seen:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if seen is not None and seen.steps:
        raise NotAnalysable(f"{seen.steps[0]} (the hook walk cannot tell whether its axes are spatial)")
    st = _State(np.ones(nd), np.ones(nd), np.zeros(nd))
    best = st
    n = 0
    inexact = []
    for mod in order:
        if isinstance(mod, SimpleNamespace):  # a strided slice recorded in its place in the chain
            st, n = apply_layer(mod.kind, mod, st, nd), n + 1
            best = _State.merge([best, st], nd)
            continue
        st, spatial = apply_module(mod, st, nd, torch)
        n += spatial
        best = _State.merge([best, st], nd)
        why = inexact_layer(mod, eager_kind(mod, torch))
        if why:
            inexact.append(f"{type(mod).__name__} module {why}")
    if seen is None:
        return st, best, n, Scan(unseen=["tensor operations outside modules (the hook walk cannot see them)"],
                                 inexact=inexact)
    return st, best, n, Scan(unseen=[f"{name} (not seen by the hook walk)" for name in seen.unseen],
                             inexact=inexact + seen.inexact)


@contextlib.contextmanager
def recording(model, torch, order=None, nd=None):
    """Record (normalised names of) the torch functions and tensor methods a forward pass calls
    outside torch's own modules and the layers the walk applies, and torch's modules the walk does
    not apply; yields ``unseen`` (those that may combine positions), ``inexact``
    (``instance_norm`` / ``group_norm``: statistics of each window, as the modules; up-sampling with
    ``align_corners=True``; circular padding) and ``steps`` (slices with a step of a tensor that has
    not the input's number of axes), or None where torch cannot record them. Slices with a step on
    the spatial axes of a tensor with ``nd + 2`` axes are appended to ``order`` as layers
    (:func:`._layers.strided_slice`), in their place among the modules the caller records there."""
    mode = getattr(getattr(torch, "overrides", None), "TorchFunctionMode", None)
    if mode is None:
        yield None
        return
    seen = SimpleNamespace(unseen=[], inexact=[], steps=[])
    depth = [0]

    class Recorder(mode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if depth[0] == 0:
                name = normalise(getattr(func, "__name__", ""))
                _record(seen, name, args, kwargs, torch)
                if name == "getitem" and order is not None and args and torch.is_tensor(args[0]):
                    _record_steps(seen, order, args[0], args[1] if len(args) > 1 else None, nd)
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


def _record_steps(seen, order, x, index, nd):
    """A slice with a step of tensor ``x``: a layer on ``order`` when the steps are on axes 2.. of a
    tensor with the input's ``nd + 2`` axes (taken as ``(batch, channel, spatial...)``, as the hook
    walk takes the inputs of layers; slices of the same tensor one after the other, as the four of a
    space-to-depth, are branches: one layer, the widest); nothing on the batch axis alone; else an
    entry of ``seen.steps`` (axis 1 may be channels or, channels last, positions: measured)."""
    rank = x.dim()
    steps = slice_steps(index, rank)
    if (rank != nd + 2 and any(a > 0 for a in steps)) or 1 in steps:
        seen.steps.append(f"a slice with a step of axis {min(a for a in steps if a > 0)} of a tensor with "
                          f"{rank} axes")
        return
    spec = strided_slice({a - 2: v for a, v in steps.items() if a >= 2}, nd)
    if spec is None:
        return
    last = getattr(seen, "sliced", None)
    if last is not None and last[0] is x and last[1] == len(order) and order[-1].stride == spec.stride:
        spec.kernel_size = tuple(max(a, b) for a, b in zip(order[-1].kernel_size, spec.kernel_size))
        order[-1] = spec
    else:
        order.append(spec)
    seen.sliced = (x, len(order))


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
