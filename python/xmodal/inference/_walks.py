"""The walks of an eager network's layers for :mod:`._receptive`: through its torch.fx graph
(branches merged by maximum, then the layout scan of :mod:`._mixing`) or, when it cannot be traced,
through the execution order of its leaf modules recorded by forward hooks (one chain, an upper
bound; the tensor operations outside modules recorded by :func:`._probe.recording`). Both return
``(final state, widest state, layers, Scan)``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ._layers import State as _State
from ._layers import apply_layer, eager_kind, inexact_layer
from ._layers import as_tuple as _tuple
from ._layers import upsample as _upsample
from ._measure import param_device as _param_device
from ._measure import param_dtype as _param_dtype
from ._mixing import Scan, scan_fx
from ._mixing_layout import shape_source
from ._probe import recording
from ._receptive_jit import NotAnalysable, ScriptWalk, is_script_module


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
    F = torch.nn.functional
    states: dict = {}
    n_layers = 0
    best = None
    unseen: list = []  # of the TorchScript submodules and interpolations the walk cannot scale
    inexact: list = []  # of the TorchScript submodules
    global_ops: list = []  # of the TorchScript submodules
    start = _State(np.ones(nd), np.ones(nd), np.zeros(nd))
    for node in gm.graph.nodes:
        ins = [states.get(a) for a in node.all_input_nodes]
        if node.op == "placeholder":
            st = start if not states else None
        elif node.op == "call_module":
            st = _State.merge(ins, nd)
            mod = modules[node.target]
            if st is not None and is_script_module(mod, torch):  # compiled: walk its TorchScript graph
                walk = ScriptWalk(nd)
                st, inner, k = walk.run(mod, st)
                best = _State.merge([best, inner], nd)
                n_layers += k
                unseen += [f"{u} in {node.target!r}" for u in walk.unseen]
                inexact += [f"{u} in {node.target!r}" for u in walk.inexact]
                global_ops += [f"{u} in {node.target!r}" for u in walk.global_ops]
            elif st is not None:
                st, spatial = apply_module(mod, st, nd, torch)
                n_layers += spatial
        elif node.op == "call_function" and node.target in (F.interpolate, getattr(F, "upsample", None)):
            st, k = _resized(node, states, ins, nd, unseen)
            n_layers += k
        elif node.op == "call_function" and node.target in (torch.pixel_shuffle, torch.pixel_unshuffle):
            st = _State.merge(ins, nd)
            if st is not None:
                r = node.kwargs.get("upscale_factor", node.kwargs.get("downscale_factor", node.args[-1]))
                shuffle = node.target is torch.pixel_shuffle
                spec = SimpleNamespace(upscale_factor=r) if shuffle else SimpleNamespace(downscale_factor=r)
                st = apply_layer("shuffle" if shuffle else "unshuffle", spec, st, nd)
                n_layers += 1
        elif node.op == "call_function" and node.target in (F.max_pool1d, F.max_pool2d, F.max_pool3d,
                                                            F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            st = _State.merge(ins, nd)
            if st is not None:
                k = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
                s = node.kwargs.get("stride", node.args[2] if len(node.args) > 2 else None) or k
                k = np.array(_tuple(k, nd), float)
                s = np.array(_tuple(s, nd), float)
                st = _State(st.r + (k - 1) * st.j, st.j * s, st.p)
                n_layers += 1
        elif node.op == "call_function" and node.target in (F.conv1d, F.conv2d, F.conv3d):
            raise NotImplementedError("functional convolutions are walked by hooks")
        else:  # element-wise ops, cat, add, attribute access: pass through, merging branches by maximum
            st = _State.merge(ins, nd)
        states[node] = st
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
        with torch.inference_mode(), recording(model, torch) as seen:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    st = _State(np.ones(nd), np.ones(nd), np.zeros(nd))
    best = st
    n = 0
    inexact = []
    for mod in order:
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
