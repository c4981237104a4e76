"""Receptive field of a TorchScript module (``torch.jit.script`` or ``torch.jit.trace``, e.g. from
``torch.jit.load``), which forward hooks and torch.fx cannot walk.

The walk follows the module's TorchScript graph as a data flow, like the torch.fx walk of eager
modules (branches merge by maximum): a call of a submodule compiled from a known layer
(``original_name`` Conv2d, MaxPool3d, Upsample, ...) applies that layer with the attributes a
scripted module keeps; other submodules, and traced layers (which keep no attributes), are walked
through their own graphs, whose convolution, pooling and up-sampling operators carry their
parameters as constants. Anything the walk cannot read (a kernel or a scale computed at run time, a
layer inside a loop) raises :class:`NotAnalysable`; :func:`xmodal.inference.receptive_field` then
measures the field instead.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np

from ._layers import State, apply_layer, inexact_layer, strided_slice, upsample
from ._ops import category, normalise
from ._script_axes import (CONV, FN_SPATIAL, MUTATE, POOL, SHUFFLE, UNKNOWN, UPSAMPLE, canon,
                           canonical_result, fixed_length, function_names, judge, keeps_module, schema_names,
                           script_kind, size_source, unknown_operator, value)

_ADAPTIVE = re.compile(r"aten::adaptive_(max|avg)_pool[123]d$")
_CIRCULAR = re.compile(r"aten::(_pad_circular|circular_pad[123]d)$")
_FN_POOL = re.compile(r"_?max_pool[123]d(_with_indices)?$")
# spatial operators and functions the walk has no rule for: their networks are measured instead
_UNHANDLED = re.compile(r"aten::(im2col|col2im|unfold|grid_sampler\w*|fractional_max_pool\w*|max_unpool\w*)$")
# modules normalising by statistics of each window (warned about by the plan, by module)
_PER_WINDOW_MODULE = re.compile(r"(InstanceNorm[123]d|GroupNorm)$")
# operations that may combine positions along an axis (which one is not known in the graph): the
# walk lists them in ``unseen`` and the caller probes the network (normalisations by statistics
# of InstanceNorm / GroupNorm / BatchNorm modules keep the eager modules' treatment, and so do
# instance_norm / group_norm outside them: listed in ``inexact``, a warning)
_MIXING = ("reduce", "along", "contract")


def _may_mix(name: str, node=None) -> bool:
    name = normalise(name)
    if name in ("max", "min") and node is not None and len(list(node.inputs())) > 1 \
            and node.inputsAt(1).type().kind() == "TensorType":
        return False  # element-wise maximum / minimum
    return category(name) in _MIXING or name in ("layer_norm", "rms_norm")


class NotAnalysable(Exception):
    """The TorchScript graph holds a layer whose parameters are not known before it runs."""


def is_script_module(model, torch) -> bool:
    """Whether ``model`` is compiled TorchScript (``torch.jit.script``, ``torch.jit.trace``, ``torch.jit.load``)."""
    return isinstance(model, torch.jit.ScriptModule)


def _has_attributes(mod, kind) -> bool:
    """Whether a module keeps the attributes of its layer (scripted ones do, traced ones do not)."""
    names = {"upsample": ("scale_factor", "mode"), "adaptive": (), "shuffle": ("upscale_factor",),
             "unshuffle": ("downscale_factor",)}.get(kind, ("kernel_size", "stride"))
    return all(hasattr(mod, n) for n in names)


class ScriptWalk:
    """Data-flow walk of a TorchScript module: ``(final state, widest state, layers)``."""

    def __init__(self, nd: int):
        self.nd = nd
        self.layers = 0
        self.best = None
        self.unseen: list = []  # operations that may combine positions (see _MIXING)
        self.global_ops: list = []  # reductions / softmax over a spatial axis of a canonical tensor
        self.inexact: list = []  # statistics of each window, align_corners=True sampling
        self._in_norm = 0  # inside a module warned about by its class (InstanceNorm, GroupNorm)
        self.canon_out: list = []  # whether the outputs of the graph walked last are canonical

    def run(self, model, start=None):
        outs = self.graph(model.graph, [model], [None, start if start is not None else State.start(self.nd)],
                          [False, True])
        final = State.merge(outs)
        return (final if final is not None else self.best), self.best, self.layers

    def graph(self, g, arg_objs, arg_states, arg_canon=()):
        """Walk graph ``g`` whose inputs hold ``arg_objs`` (python values, when known),
        ``arg_states`` and are canonical (``arg_canon``, see :mod:`._script_axes`); return the
        states of its outputs (``self.canon_out``: whether they are canonical)."""
        objs, states = {}, {}
        for i, v in enumerate(g.inputs()):
            objs[v.unique()] = arg_objs[i] if i < len(arg_objs) else None
            states[v.unique()] = arg_states[i] if i < len(arg_states) else None
            objs[("canon", v.unique())] = bool(arg_canon[i]) if i < len(arg_canon) else False
        self.block(g.nodes(), objs, states)
        self.canon_out = [canon(objs, v) for v in g.outputs()]
        return [states.get(v.unique()) for v in g.outputs()]

    def block(self, nodes, objs, states):
        for node in nodes:
            ins = [states.get(v.unique()) for v in node.inputs()]
            blocks = list(node.blocks())
            if blocks:
                outs = self.branches(node, blocks, objs, states, State.merge(ins))
            else:
                outs = self.node(node, objs, ins, states)
                if node.kind() != "prim::CallMethod":
                    flag = canonical_result(node, objs)
                    for v in node.outputs():
                        objs[("canon", v.unique())] = flag
            for v, st in zip(node.outputs(), outs):
                states[v.unique()] = st
                if st is not None:
                    self.best = st if self.best is None else State.merge([self.best, st])

    def branches(self, node, blocks, objs, states, st_in):
        """``prim::If`` and ``prim::Loop``: every block walked from the inputs, outputs merged; an
        ``If`` whose condition is known (``self.training``, a flag attribute) walks its taken block."""
        before = self.layers
        cond = objs.get(node.inputsAt(0).unique()) if node.kind() == "prim::If" else None
        if isinstance(cond, bool):
            taken = blocks[0] if cond else blocks[1]
            self.block(taken.nodes(), objs, states)
            for v, w in zip(node.outputs(), taken.outputs()):
                objs[v.unique()] = objs.get(w.unique())
                objs[("canon", v.unique())] = canon(objs, w)
            return [states.get(w.unique()) for w in taken.outputs()]
        outs = [st_in] * len(list(node.outputs()))
        for b in blocks:
            for v in b.inputs():
                states[v.unique()] = st_in
            self.block(b.nodes(), objs, states)
            outs = [State.merge([o, states.get(v.unique())]) for o, v in zip(outs, b.outputs())]
        if node.kind() == "prim::If":  # canonical when every branch gives a canonical value
            for i, v in enumerate(node.outputs()):
                objs[("canon", v.unique())] = all(canon(objs, list(b.outputs())[i]) for b in blocks)
        if node.kind() == "prim::Loop" and self.layers > before:
            raise NotAnalysable("a layer with a spatial extent inside a loop")
        return outs

    def node(self, node, objs, ins, states):
        """The states of ``node``'s outputs (and the python values of constants and attributes)."""
        kind = node.kind()
        n_out = len(list(node.outputs()))
        st = State.merge(ins)
        if kind == "prim::Constant":
            objs[node.output().unique()] = _constant(node.output())
            return [None]
        if kind == "prim::GetAttr":
            owner = objs.get(node.input().unique())
            objs[node.output().unique()] = getattr(owner, node.s("name"), None) if owner is not None else None
            return [st]
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            vals = [objs.get(v.unique()) for v in node.inputs()]
            objs[node.output().unique()] = vals if all(x is not None for x in vals) else None
            objs[("items", node.output().unique())] = list(ins)  # the states of the elements
            return [st]
        if kind == "prim::CallMethod":
            return self.call_method(node, objs, ins)
        listed = self._list_op(node, objs, ins, states)
        if listed is not None:
            return listed
        if st is None:
            return [None] * n_out
        resized = self.resized(node, objs, ins, states)
        if resized is not None:
            return resized
        spec = self.operator(node, objs)
        if spec is not None:
            self.layers += 1
            return [apply_layer(spec.kind, spec, st, self.nd)] + [st] * (n_out - 1)
        if kind in ("aten::instance_norm", "aten::group_norm"):
            self._per_window(kind, kind == "aten::instance_norm" and objs.get(node.inputsAt(5).unique()) is False)
        elif kind.startswith("aten::") and _may_mix(kind[6:], node):
            args = {n: value(objs, node.inputsAt(i)) for i, n in enumerate(schema_names(node))}
            self._mixing(kind, normalise(kind[6:]), args, canon(objs, node.inputsAt(0)))
        elif kind == "aten::select" and node.inputsAt(0).type().kind() == "TensorType":
            self._select(node, objs)
        elif kind.startswith("aten::") and unknown_operator(kind[6:], node):
            self.unseen.append(f"{kind} (TorchScript)")
        return [st] * n_out  # element-wise, cat, add, shapes: pass through, branches merged by maximum

    def call_method(self, node, objs, ins):
        args = list(node.inputs())
        mod = objs.get(args[0].unique())
        name = node.s("name")
        if mod is None:
            raise NotAnalysable(f"a call of method {name!r} on an unknown object")
        kind = script_kind(mod)
        st = State.merge(ins[1:])
        if name == "forward" and kind is not None and _has_attributes(mod, kind):
            for v in node.outputs():  # a layer keeps the axes
                objs[("canon", v.unique())] = canon(objs, args[1]) if len(args) > 1 else False
            if st is None:
                return [None]
            self.layers += 1
            self._corners(getattr(mod, "align_corners", None), getattr(mod, "mode", ""), mod.original_name)
            why = inexact_layer(mod, kind)
            if why and "circular" in why:
                self.inexact.append(f"{mod.original_name} module (TorchScript) {why}")
            return [apply_layer(kind, mod, st, self.nd)]
        method = mod.graph if name == "forward" else getattr(mod, name).graph
        norm = bool(_PER_WINDOW_MODULE.match(str(getattr(mod, "original_name", ""))))
        self._in_norm += norm
        try:
            outs = self.graph(method, [objs.get(v.unique()) for v in args], [None] + ins[1:],
                              [canon(objs, v) for v in args])
        finally:
            self._in_norm -= norm
        keep = keeps_module(mod) and len(args) > 1 and canon(objs, args[1])
        for v, flag in zip(node.outputs(), self.canon_out):
            objs[("canon", v.unique())] = flag or keep
        return outs

    def _list_op(self, node, objs, ins, states):
        """Lists of tensors element by element (``features.append(x)``, ``features[1]``,
        ``features[::-1]``, unpacking): the states of the outputs, or None for other nodes."""
        kind = node.kind()
        if kind not in MUTATE and kind not in ("aten::__getitem__", "aten::slice", "prim::ListUnpack"):
            return None
        target = node.inputsAt(0)
        items = objs.get(("items", target.unique()))
        if kind in MUTATE:  # in place: the list holds the new element's state from now on
            states[target.unique()] = State.merge([states.get(target.unique()), ins[-1]])
            objs[("canon", target.unique())] = canon(objs, target) and canon(objs, node.inputsAt(len(ins) - 1))
            at = value(objs, node.inputsAt(1)) if kind in ("aten::insert", "aten::_set_item") else None
            if items is not None and kind == "aten::append":
                items.append(ins[-1])
            elif items is not None and isinstance(at, int) and -len(items) <= at <= len(items):
                items.insert(at, ins[-1]) if kind == "aten::insert" else items.__setitem__(at, ins[-1])
            else:
                objs[("items", target.unique())] = None
            return [states[target.unique()]] * len(list(node.outputs()))
        if items is None:
            return None
        if kind == "prim::ListUnpack" and len(items) == len(list(node.outputs())):
            return list(items)
        if kind == "aten::__getitem__":
            i = value(objs, node.inputsAt(1))
            return [items[i]] if isinstance(i, int) and -len(items) <= i < len(items) else None
        if kind == "aten::slice":
            bounds = [value(objs, node.inputsAt(k)) for k in (1, 2, 3)]
            if all(b is None or (isinstance(b, int) and b is not UNKNOWN) for b in bounds):
                part = items[slice(*bounds)]
                objs[("items", node.output().unique())] = part
                return [State.merge(part)]
        return None

    def resized(self, node, objs, ins, states):
        """The state after an up-sampling to the size of a tensor on a grid an integer factor finer
        (``F.interpolate(x, size=skip.shape[2:])``): by that factor; else None."""
        kind = node.kind()
        fn = str(objs.get(node.inputsAt(0).unique()) or "").rsplit(".", 1)[-1] if kind == "prim::CallFunction" \
            else ""
        if UPSAMPLE.match(kind):
            at, mode = 0, UPSAMPLE.match(kind).group(1)
        elif fn in ("interpolate", "upsample") and value(objs, node.inputsAt(4)) is not UNKNOWN:
            at, mode = 1, value(objs, node.inputsAt(4)) or "nearest"
        else:
            return None
        src = size_source(node.inputsAt(at + 1), self.nd)
        x, t = ins[at], states.get(src.unique()) if src is not None else None
        if x is None or t is None:
            return None
        ratio = x.j / t.j
        if np.any(ratio < 1) or not np.allclose(ratio, np.round(ratio)):
            return None
        corners = value(objs, node.inputsAt(2 if at == 0 else 5)) if mode != "nearest" else None
        self._corners(corners, mode, kind if at == 0 else f"F.{fn}")
        self.layers += 1
        return [upsample(x, tuple(int(round(r)) for r in ratio), mode, self.nd)]

    def _mixing(self, what, name, args, canonical):
        """Judge a reduction / softmax by its axes (:func:`._script_axes.judge`): local, global or
        left to the gradient probe."""
        verdict, axes = judge(name, args, canonical, self.nd)
        if verdict == "global":
            over = "all axes" if len(axes) == self.nd + 2 else f"axes {axes}, which hold spatial positions"
            self.global_ops.append(f"{what} (TorchScript) over {over}")
        elif verdict == "unseen":
            self.unseen.append(f"{what} (TorchScript)")

    def _select(self, node, objs):
        """``x[:, :, 0]``: one position of a spatial axis of a tensor with the input's axes is global
        (a position fixed in the window, as a slice of a fixed length); of its batch or channel axis
        local; of another tensor left to the probe."""
        dim = value(objs, node.inputsAt(1))
        if not canon(objs, node.inputsAt(0)) or not isinstance(dim, int) or isinstance(dim, bool):
            self.unseen.append("aten::select (TorchScript)")
        elif dim % (self.nd + 2) >= 2:
            self.global_ops.append(f"aten::select (TorchScript) of axis {dim}, which holds spatial positions: one "
                                   f"position fixed in the window")

    def _per_window(self, what, running):
        """Record a normalisation by statistics of each window (not one of a module of that kind, nor
        one with running statistics)."""
        if not self._in_norm and not running:
            self.inexact.append(f"{what} (TorchScript) normalises by statistics of each window")

    def _corners(self, align_corners, mode, what):
        if align_corners is True and "nearest" not in str(mode):
            self.inexact.append(f"{what} (TorchScript) with align_corners=True (it places its samples by the "
                                f"length of the axis)")

    def operator(self, node, objs):
        """A layer spec (``kind`` and the module attributes) of a spatial operator, else None."""
        kind = node.kind()

        def const(i):
            return objs.get(node.inputsAt(i).unique()) if i < len(list(node.inputs())) else None

        if CONV.match(kind):
            weight = const(1)
            if getattr(weight, "shape", None) is None:
                raise NotAnalysable(f"{kind} with a weight computed at run time")
            transposed = "transpose" in kind or (kind.endswith("convolution") and bool(const(6)))
            dilation = const(7) if "conv_transpose" in kind else const(5)
            return _spec("convt" if transposed else "conv", tuple(weight.shape[2:]), const(3), dilation)
        if POOL.match(kind):
            return _spec("pool", const(1), const(2) or const(1), const(4) if kind.startswith("aten::max") else 1)
        if _ADAPTIVE.match(kind):
            return SimpleNamespace(kind="adaptive")
        m = UPSAMPLE.match(kind)
        if m:
            rest = [const(i) for i in range(2, len(list(node.inputs())))]
            self._corners(rest[0] if m.group(1) != "nearest" and rest else None, m.group(1), kind)
            return _upsample_spec(m.group(1), rest)
        if SHUFFLE.match(kind):
            factor = const(1)
            if factor is None:
                raise NotAnalysable(f"{kind} with a factor computed at run time")
            if "unshuffle" in kind:
                return SimpleNamespace(kind="unshuffle", downscale_factor=factor)
            return SimpleNamespace(kind="shuffle", upscale_factor=factor)
        if kind == "aten::slice" and node.inputsAt(0).type().kind() == "TensorType":
            return self._slice(node, objs)
        if _CIRCULAR.match(kind) or (kind == "aten::pad" and const(2) == "circular"):
            self.inexact.append(f"{kind} (TorchScript) with circular padding (it wraps the window's opposite edge, "
                                f"not the image's)")
        if kind == "prim::CallFunction":
            return self.function(node, const, objs)
        if _UNHANDLED.match(kind):
            raise NotAnalysable(f"{kind} has no receptive field rule")
        return None

    def _slice(self, node, objs):
        """``aten::slice(x, dim, start, end, step)`` of a tensor with the input's axes: a fixed length of
        a spatial axis (``x[..., :1]``, ``x[:, :, -2:]``) is global, as in the torch.fx walk; a step on
        one a strided layer (:func:`._layers.strided_slice`). A step the walk cannot place (a tensor
        whose axes may have moved, a run-time axis, step or start) raises NotAnalysable."""
        dim, start, end, step = (value(objs, node.inputsAt(i)) for i in (1, 2, 3, 4))
        rank = self.nd + 2
        axes = canon(objs, node.inputsAt(0)) and isinstance(dim, int) and not isinstance(dim, bool)
        if axes and dim % rank >= 2 and fixed_length(start, end):
            bounds = f"{'' if start is None else start}:{'' if end is None or end >= 1 << 62 else end}"
            self.global_ops.append(f"aten::slice (TorchScript) [{bounds}] of axis {dim}, which holds spatial "
                                   f"positions: a fixed length, positions fixed in the window")
        if step is not UNKNOWN and (step is None or step == 1):
            return None
        if axes and dim % rank < 2:
            return None  # the batch or channel axis
        if not axes or step is UNKNOWN or start is UNKNOWN:
            raise NotAnalysable("a slice with a step (aten::slice) of a tensor whose axes the walk cannot follow, "
                                "or with a step computed at run time")
        return strided_slice({dim % rank - 2: (step, start)}, self.nd)

    def function(self, node, const, objs):
        """Scripted calls of ``torch.nn.functional`` (``F.max_pool2d``, ``F.interpolate``; activations,
        normalisations, padding pass through). Other scripted functions cannot be looked into."""
        qualified = str(const(0) or "")
        name = qualified.rsplit(".", 1)[-1]
        if "torch.nn.functional." not in qualified:
            if not any(v.type().kind() == "TensorType" for v in node.outputs()):
                return None  # a helper returning numbers or flags: no spatial extent
            raise NotAnalysable(f"a call of the scripted function {name!r}")
        if _FN_POOL.match(name):
            return _spec("pool", const(2), const(3) or const(2), const(5))
        if name.startswith("adaptive_"):
            return SimpleNamespace(kind="adaptive")
        if name in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
            scale = const(3)
            mode = {"upsample_nearest": "nearest", "upsample_bilinear": "bilinear"}.get(name, const(4) or "nearest")
            if scale is None:
                raise NotAnalysable(f"F.{name} to a size computed at run time (give scale_factor)")
            self._corners(True if name == "upsample_bilinear" else const(5), mode, f"F.{name}")
            return SimpleNamespace(kind="upsample", scale_factor=scale, mode=mode)
        if FN_SPATIAL.search(name):
            raise NotAnalysable(f"F.{name} has no receptive field rule")
        if name == "pad" and const(3) == "circular":
            self.inexact.append("F.pad (TorchScript) with circular padding (it wraps the window's opposite edge, "
                                "not the image's)")
        if name in ("instance_norm", "group_norm"):
            self._per_window(f"F.{name}", name == "instance_norm" and const(6) is False)
        elif _may_mix(name):
            inputs = list(node.inputs())[1:]
            args = {n: value(objs, v) for n, v in zip(function_names(name), inputs)}
            self._mixing(f"F.{name}", name, args, bool(inputs) and canon(objs, inputs[0]))
        elif unknown_operator(name, node):
            self.unseen.append(f"F.{name} (TorchScript)")
        return None


def _constant(value):
    """The python value of a constant (a function's qualified name for a function), None if unreadable."""
    if value.type().kind() == "FunctionType":
        return str(value.type())
    try:
        return value.toIValue()
    except Exception:  # noqa: BLE001 - a constant of a type without a python value
        return None


def _spec(kind, kernel, stride, dilation):
    if kernel is None or stride is None or dilation is None:
        raise NotAnalysable(f"a {kind} layer with parameters computed at run time")
    return SimpleNamespace(kind=kind, kernel_size=kernel, stride=stride, dilation=dilation)


def _upsample_spec(mode, rest):
    """``aten::upsample_*(input, output_size, [align_corners,] scale_factors)`` (or per-axis scales)."""
    lists = [r for r in rest if isinstance(r, (list, tuple))]
    floats = [r for r in rest if isinstance(r, float)]
    scale = lists[-1] if len(lists) > 1 or (lists and all(isinstance(x, float) for x in lists[-1])) else \
        (floats or None)
    if scale is None:
        raise NotAnalysable("up-sampling to a fixed size has no fixed receptive field")
    return SimpleNamespace(kind="upsample", scale_factor=[float(s) for s in scale],
                           mode="nearest" if mode == "nearest" else "linear")
