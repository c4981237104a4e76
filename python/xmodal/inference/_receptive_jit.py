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

from ._layers import SCRIPT_KINDS, State, apply_layer
from ._ops import category, normalise

_CONV = re.compile(r"aten::(_convolution|convolution|conv[123]d|conv_transpose[123]d)$")
_POOL = re.compile(r"aten::(max|avg)_pool[123]d(_with_indices)?$")
_ADAPTIVE = re.compile(r"aten::adaptive_(max|avg)_pool[123]d$")
_UPSAMPLE = re.compile(r"aten::upsample_(nearest|linear|bilinear|bicubic|trilinear)[123]d$")
_FN_POOL = re.compile(r"_?max_pool[123]d(_with_indices)?$")
# spatial operators and functions the walk has no rule for: their networks are measured instead
_UNHANDLED = re.compile(r"aten::(pixel_(un)?shuffle|im2col|col2im|unfold|grid_sampler\w*|fractional_max_pool\w*|"
                        r"max_unpool\w*)$")
_FN_SPATIAL = re.compile(r"pool|fold|conv|grid|shuffle|upsample|interpolate")
# operations that may combine positions along an axis (which one is not known in the graph): the
# walk lists them in ``unseen`` and the caller probes the network (normalisations by statistics
# of InstanceNorm / GroupNorm / BatchNorm modules keep the eager modules' treatment)
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


def script_kind(mod):
    """(layer kind or None) of a TorchScript module, from the eager class it was compiled from."""
    return SCRIPT_KINDS.get(getattr(mod, "original_name", None))


def _has_attributes(mod, kind) -> bool:
    """Whether a module keeps the attributes of its layer (scripted ones do, traced ones do not)."""
    names = {"upsample": ("scale_factor", "mode"), "adaptive": ()}.get(kind, ("kernel_size", "stride"))
    return all(hasattr(mod, n) for n in names)


class ScriptWalk:
    """Data-flow walk of a TorchScript module: ``(final state, widest state, layers)``."""

    def __init__(self, nd: int):
        self.nd = nd
        self.layers = 0
        self.best = None
        self.unseen: list = []  # operations that may combine positions (see _MIXING)

    def run(self, model, start=None):
        outs = self.graph(model.graph, [model], [None, start if start is not None else State.start(self.nd)])
        final = State.merge(outs)
        return (final if final is not None else self.best), self.best, self.layers

    def graph(self, g, arg_objs, arg_states):
        """Walk graph ``g`` whose inputs hold ``arg_objs`` (python values, when known) and
        ``arg_states``; return the states of its outputs."""
        objs, states = {}, {}
        for i, v in enumerate(g.inputs()):
            objs[v.unique()] = arg_objs[i] if i < len(arg_objs) else None
            states[v.unique()] = arg_states[i] if i < len(arg_states) else None
        self.block(g.nodes(), objs, states)
        return [states.get(v.unique()) for v in g.outputs()]

    def block(self, nodes, objs, states):
        for node in nodes:
            ins = [states.get(v.unique()) for v in node.inputs()]
            blocks = list(node.blocks())
            if blocks:
                outs = self.branches(node, blocks, objs, states, State.merge(ins))
            else:
                outs = self.node(node, objs, ins)
            for v, st in zip(node.outputs(), outs):
                states[v.unique()] = st
                if st is not None:
                    self.best = st if self.best is None else State.merge([self.best, st])

    def branches(self, node, blocks, objs, states, st_in):
        """``prim::If`` and ``prim::Loop``: every block walked from the inputs, outputs merged."""
        before = self.layers
        outs = [st_in] * len(list(node.outputs()))
        for b in blocks:
            for v in b.inputs():
                states[v.unique()] = st_in
            self.block(b.nodes(), objs, states)
            outs = [State.merge([o, states.get(v.unique())]) for o, v in zip(outs, b.outputs())]
        if node.kind() == "prim::Loop" and self.layers > before:
            raise NotAnalysable("a layer with a spatial extent inside a loop")
        return outs

    def node(self, node, objs, ins):
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
            return [st]
        if kind == "prim::CallMethod":
            return self.call_method(node, objs, ins)
        if st is None:
            return [None] * n_out
        spec = self.operator(node, objs)
        if spec is not None:
            self.layers += 1
            return [apply_layer(spec.kind, spec, st, self.nd)] + [st] * (n_out - 1)
        if kind.startswith("aten::") and _may_mix(kind[6:], node):
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
            if st is None:
                return [None]
            self.layers += 1
            return [apply_layer(kind, mod, st, self.nd)]
        method = mod.graph if name == "forward" else getattr(mod, name).graph
        return self.graph(method, [objs.get(v.unique()) for v in args], [None] + ins[1:])

    def operator(self, node, objs):
        """A layer spec (``kind`` and the module attributes) of a spatial operator, else None."""
        kind = node.kind()

        def const(i):
            return objs.get(node.inputsAt(i).unique()) if i < len(list(node.inputs())) else None

        if _CONV.match(kind):
            weight = const(1)
            if getattr(weight, "shape", None) is None:
                raise NotAnalysable(f"{kind} with a weight computed at run time")
            transposed = "transpose" in kind or (kind.endswith("convolution") and bool(const(6)))
            dilation = const(7) if "conv_transpose" in kind else const(5)
            return _spec("convt" if transposed else "conv", tuple(weight.shape[2:]), const(3), dilation)
        if _POOL.match(kind):
            return _spec("pool", const(1), const(2) or const(1), const(4) if kind.startswith("aten::max") else 1)
        if _ADAPTIVE.match(kind):
            return SimpleNamespace(kind="adaptive")
        m = _UPSAMPLE.match(kind)
        if m:
            return _upsample_spec(m.group(1), [const(i) for i in range(2, len(list(node.inputs())))])
        if kind == "prim::CallFunction":
            return self.function(node, const)
        if _UNHANDLED.match(kind):
            raise NotAnalysable(f"{kind} has no receptive field rule")
        return None

    def function(self, node, const):
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
            return SimpleNamespace(kind="upsample", scale_factor=scale, mode=mode)
        if _FN_SPATIAL.search(name):
            raise NotAnalysable(f"F.{name} has no receptive field rule")
        if _may_mix(name):
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


def script_signature(mod) -> tuple[int | None, int | None]:
    """(spatial ndim, input channels) of a TorchScript module compiled from a 2-D or 3-D
    convolution (by ``original_name``; traced ones from their weight), else (None, None)."""
    kind = script_kind(mod)
    name = getattr(mod, "original_name", "")
    if kind not in ("conv", "convt") or name[-2:] not in ("2d", "3d"):
        return None, None
    nd = int(name[-2])
    if hasattr(mod, "in_channels"):
        return nd, int(mod.in_channels)
    weight = getattr(mod, "weight", None)
    if weight is None:
        return None, None
    if kind == "convt":
        return nd, int(weight.shape[0])
    return nd, int(weight.shape[1]) * _traced_groups(mod)


def _traced_groups(mod) -> int:
    """``groups`` of a traced convolution (the constant argument of its operator), 1 if not found."""
    for node in mod.graph.nodes():
        m = _CONV.match(node.kind())
        if m:
            i = 8 if m.group(1) in ("_convolution", "convolution") else 6
            v = node.inputsAt(i)
            if v.node().kind() == "prim::Constant":
                return int(v.toIValue())
    return 1
