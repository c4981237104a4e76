"""The rules of :mod:`._mixing`: per operation of a torch.fx graph, the layout of its result and
whether it combines positions along an axis that holds spatial positions.

A rule returns ``(layout, verdict, description)``: the layout is a tuple with one frozenset of
spatial input axes per axis of the result (a list of them for an operation returning several
tensors; None when it cannot be followed), the verdict None, ``"global"``, ``"unseen"`` or
``"inexact"`` (local, but tiles cannot reproduce the whole-volume prediction exactly: statistics of
each window, ``align_corners=True`` sampling; a warning).
"""

from __future__ import annotations

import functools

from ._layers import eager_kind, inexact_layer
from ._mixing_layout import Pieces, repeated, reshaped, shape_source
from ._mixing_products import Call, broadcast, contract
from ._ops import (ALONG, MISSING, PER_WINDOW, POINTWISE_MODULES, REDUCE, TUPLE_OUT, acts_pointwise, argument,
                   axes, category, normalise, softmax_axis)
from ._receptive_jit import is_script_module

EMPTY = frozenset()


def node_name(node) -> str:
    """The normalised name of a call_function / call_method node (``"mean"``, ``"matmul"``)."""
    if node.op == "call_method":
        return normalise(str(node.target))
    if node.op == "call_function":
        return normalise(getattr(node.target, "__name__", str(node.target)))
    return ""


def _union(labels) -> frozenset:
    return frozenset().union(*labels)


class Context:
    """The graph, the layouts found so far and (on demand) the values of one forward pass."""

    def __init__(self, gm, nd, torch, shapes):
        self.gm, self.nd, self.torch = gm, nd, torch
        self.modules = dict(gm.named_modules())
        self.lay: dict = {}
        self._shapes, self._meta = shapes, None
        self._order = {n: i for i, n in enumerate(gm.graph.nodes)}

    def order(self, node) -> int:
        return self._order[node]

    def summary(self, node, run=True):
        if self._meta is None and run:
            self._meta = self._shapes()
        return (self._meta or {}).get(node)

    def shape(self, a, run=True):
        """The shape of a tensor argument: a parameter's, or from the forward pass; else None."""
        if a.op == "get_attr":
            value = functools.reduce(getattr, str(a.target).split("."), self.gm)
            return tuple(value.shape) if isinstance(value, self.torch.Tensor) else None
        s = self.summary(a, run)
        return s[1] if s is not None and s[0] == "tensor" else None

    def is_tensor(self, v) -> bool:
        if not isinstance(v, self.torch.fx.Node):
            return isinstance(v, self.torch.Tensor)
        if v in self.lay or v.op == "get_attr":
            return True
        s = self.summary(v)
        return s is not None and s[0] in ("tensor", "seq")

    def value(self, v):
        """The python value of an argument; a node's from the forward pass (ValueError if none)."""
        if isinstance(v, self.torch.fx.Node):
            s = None if v in self.lay else self.summary(v)
            if s is None or s[0] != "value":
                raise ValueError(f"{v.name!r} is computed at run time")
            return s[1]
        if isinstance(v, (tuple, list)):
            return type(v)(self.value(x) for x in v)
        return v

    def layout(self, a):
        """The layout of a tensor argument; one holding no input position for anything else."""
        if isinstance(a, self.torch.fx.Node):
            if a in self.lay:
                return self.lay[a]
            shape = self.shape(a, run=False)
            return (EMPTY,) * len(shape) if shape is not None else ()
        if isinstance(a, self.torch.Tensor):
            return (EMPTY,) * a.dim()
        return ()

    def checked(self, node, out):
        """``out``, or None when the forward pass (if run) gave the result another number of axes."""
        s = self.summary(node, run=False)
        if isinstance(out, tuple) and s is not None and s[0] == "tensor" and len(s[1]) != len(out):
            return None
        return out

    def describe(self, node) -> str:
        if node.op == "call_module":
            return f"{type(self.modules[node.target]).__name__} module {node.target!r}"
        call = f"x.{node.target}()" if node.op == "call_method" else _function_call(node)
        stack = list(node.meta.get("nn_module_stack", {}).values())
        where = ""
        if stack:
            path, cls = stack[-1] if isinstance(stack[-1], tuple) else (str(stack[-1]), "")
            where = f" in {path!r} ({getattr(cls, '__name__', cls)})" if path else ""
        return f"{call} (graph node {node.name!r}{where})"


def _function_call(node) -> str:
    """How a call_function node reads in the source: ``F.softmax()``, ``torch.mean()``, ``x @ y``."""
    name = node_name(node)
    module = getattr(node.target, "__module__", None) or ""
    if module in ("_operator", "operator"):
        return {"matmul": "x @ y", "getitem": "x[...]"}.get(name, f"operator.{name}")
    if module.startswith("torch.nn.functional"):
        return f"F.{name}()"
    return f"torch.{getattr(node.target, '__name__', name)}()"


def operation_rule(ctx, node):
    """The rule of a call_function / call_method node."""
    name = node_name(node)
    cat = category(name)
    what = ctx.describe(node)
    x = ctx.layout(node.args[0]) if node.args else None
    if name == "getattr":
        attr = node.args[1]
        if isinstance(x, list):  # .values / .indices of max(dim=...), sort, topk, ...
            return x[0], None, what
        if attr in ("T", "mT") and isinstance(x, tuple):
            return (x[::-1] if attr == "T" else x[:-2] + x[-2:][::-1]), None, what
        return (x if attr == "data" else None), (None if attr == "data" else "unseen"), what
    if cat == "pointwise":
        out = broadcast([ctx.layout(a) for a in node.all_input_nodes])
        if name == "pad" and ctx.value(argument(node.args, node.kwargs, 2, ("mode",), "constant")) == "circular" \
                and (out is None or _union(out)):
            why = "with circular padding (it wraps the window's opposite edge, not the image's)"
            return out, "inexact", f"{what} {why}"
        return out, None, what
    if cat == "layout":
        return _layout_rule(ctx, node, name, x, what)
    if cat == "spatial":
        return _layer(ctx, x, what)
    if cat == "contract":
        return contract(ctx, node, name, what)
    if not isinstance(x, tuple):  # the operations below read axes of their input
        return None, "unseen", f"{what} on a tensor whose axes could not be followed"
    if cat == "reduce":
        return _reduce(ctx, node, name, x, what)
    if cat == "along":
        return _along(ctx, node, name, x, what)
    if cat == "norm":
        return _norm(ctx, node, name, x, what)
    if cat == "adaptive":
        return x, "global", what
    if cat == "resize":
        return _resize(ctx, node, name, x, what)
    return _same_shape(ctx, node, x), "unseen", what


def _seq(v):
    return v if isinstance(v, (tuple, list)) else (v,)


def _resize(ctx, node, name, x, what):
    """``interpolate`` / ``upsample``: by a scale factor, or to the size of a tensor on a finer grid
    (``size=skip.shape[2:]``), a layer the walk applies; to a fixed size global; to another size
    computed at run time unseen. ``align_corners=True`` with a linear mode is inexact."""
    args, kw = node.args, node.kwargs
    size = argument(args, kw, 1, ("size",), None)
    mode = "bilinear" if name == "upsample_bilinear" else ctx.value(argument(args, kw, 3, ("mode",), "nearest"))
    corners = name == "upsample_bilinear" or ctx.value(argument(args, kw, 4, ("align_corners",), None)) is True
    if size is not None:
        src = shape_source(size, ctx.nd)
        if src is not None and not canonical(ctx, ctx.layout(src)):
            src = None
        if src is None and (isinstance(size, ctx.torch.fx.Node) or any(isinstance(v, ctx.torch.fx.Node)
                                                                         for v in _seq(size))):
            return x, "unseen", f"{what} to a size computed at run time"
        if src is None:
            return x, "global", f"{what} to the fixed size {size}"
    out, verdict, what = _layer(ctx, x, what)
    if verdict is None and corners and "nearest" not in str(mode):
        return out, "inexact", f"{what} with align_corners=True (it places its samples by the length of the axis)"
    return out, verdict, what


def canonical(ctx, lay) -> bool:
    """Whether layout ``lay`` is the input's: (batch, channel, spatial axes in order)."""
    return isinstance(lay, tuple) and lay == (EMPTY, EMPTY) + tuple(frozenset({a}) for a in range(ctx.nd))


def _same_shape(ctx, node, x):
    """``x``'s layout when the result has the shape of the node's first input, else None."""
    first = node.all_input_nodes[0] if node.all_input_nodes else None
    if first is None or not isinstance(x, tuple):
        return None
    before, after = ctx.shape(first), ctx.shape(node)
    return x if before is not None and before == after else None


def _layer(ctx, x, what):
    """A convolution, pooling or up-sampling: it reads (batch, channel, spatial...) axes (on a tensor
    whose axes were lost, the operation that lost them is what is reported)."""
    if x is None:
        return None, None, what
    if not isinstance(x, tuple) or len(x) != ctx.nd + 2 or x[0] or x[1]:
        return None, "unseen", f"{what} on a tensor whose axes are not (batch, channel, spatial)"
    return x, None, what


def _verdict(x, what, ax):
    """``(verdict, description)`` of an operation combining the positions of axes ``ax`` of ``x``."""
    if not _union(x[a] for a in ax):
        return None, what
    over = "all axes" if len(set(ax)) == len(x) > 1 else f"axes {tuple(ax)}, which hold spatial positions"
    return "global", f"{what} over {over}"


def _reduce(ctx, node, name, x, what):
    pos, default = REDUCE[name]
    given = argument(node.args, node.kwargs, pos, ("dim", "axis"), MISSING)
    if name in ("max", "min") and ("other" in node.kwargs or (given is not MISSING and ctx.is_tensor(given))):
        return broadcast([ctx.layout(a) for a in node.all_input_nodes]), None, what  # element-wise
    ax = axes(ctx.value(default if given is MISSING else given), len(x))
    s = ctx.summary(node, run=False)
    rank = len(s[1]) if s is not None and s[0] == "tensor" else (len(s[1][0]) if s and s[0] == "seq" else None)
    if rank is None:  # keepdim follows the axes (std / var: after ``unbiased``)
        at = pos + (2 if name in ("std", "var", "std_mean", "var_mean") else 1)
        flag = argument(node.args, node.kwargs, at, ("keepdim",), False)
        keep = flag if isinstance(flag, bool) else bool(node.kwargs.get("keepdim", False))
    else:
        keep = rank == len(x)
    out = tuple(EMPTY if k in ax else v for k, v in enumerate(x)) if keep else \
        tuple(v for k, v in enumerate(x) if k not in ax)
    if name in TUPLE_OUT and (given is not MISSING or name in ("aminmax", "std_mean", "var_mean", "mode")):
        out = Pieces([out])
    verdict, what = _verdict(x, what, ax)
    return out, verdict, what


def _along(ctx, node, name, x, what):
    pos, default = ALONG[name]
    given = argument(node.args, node.kwargs, pos, ("dim", "dims", "axis"), default)
    ax = (softmax_axis(len(x)),) if given == "softmax" or given is None and default == "softmax" else \
        axes(ctx.value(given), len(x))
    out = Pieces([x]) if name in TUPLE_OUT else x
    verdict, what = _verdict(x, what, ax)
    return out, verdict, what


def _norm(ctx, node, name, x, what):
    """Normalisations by statistics: over the last axes (layer / RMS norm), over every axis but the
    channels (batch norm in training mode) or over all axes past the batch (group / instance norm)."""
    if name in ("layer_norm", "rms_norm"):
        shape = ctx.value(argument(node.args, node.kwargs, 1, ("normalized_shape",)))
        ax = tuple(range(len(x) - len(_seq(shape)), len(x)))
    elif name == "batch_norm":
        training = ctx.value(argument(node.args, node.kwargs, 5, ("training",), False))
        if not training:
            return x, None, what
        ax = tuple(k for k in range(len(x)) if k != 1)
    else:
        ax = tuple(range(1, len(x)))
    verdict, what = _verdict(x, what, ax)
    if verdict and name in PER_WINDOW:  # as the InstanceNorm / GroupNorm modules: a warning
        stats = ctx.value(argument(node.args, node.kwargs, 5, ("use_input_stats",), True))
        if name == "instance_norm" and stats is False:  # running statistics
            return x, None, what
        return x, "inexact", f"{ctx.describe(node)} normalises by statistics of each window"
    return x, verdict, what


def _layout_rule(ctx, node, name, x, what):
    """Axes moved, merged, split or indexed (layout None when they cannot be followed); selecting
    one position of a spatial axis, or splitting one into pieces, depends on where the window lies."""
    args, kw = node.args, node.kwargs
    if name in ("cat", "concat", "concatenate", "hstack", "vstack", "stack"):
        held = ctx.layout(args[0]) if isinstance(args[0], ctx.torch.fx.Node) else None
        parts = list(held) if isinstance(held, list) else [ctx.layout(t) for t in _seq(args[0])]
        if any(not isinstance(v, tuple) for v in parts):
            return None, None, what  # a part whose axes were lost: the operation that lost them is reported
        if len({len(v) for v in parts}) != 1:
            return None, "unseen", f"{what} of tensors whose axes could not be matched"
        joined = tuple(_union(col) for col in zip(*parts))
        if name != "stack":
            return joined, None, what
        at = axes(ctx.value(argument(args, kw, 1, ("dim",), 0)), len(joined) + 1)[0]
        return joined[:at] + (EMPTY,) + joined[at:], None, what
    if isinstance(x, list):  # an element of the result of max(dim=...), chunk, split, ...
        index = ctx.value(args[1]) if name == "getitem" else None
        if isinstance(index, (int, slice)):
            return x[index], None, what
        return None, "unseen", f"{what} of several results whose axes could not be followed"
    if not isinstance(x, tuple):
        return None, None, what
    if name in ("repeat", "tile", "repeat_interleave"):
        out, spatial = repeated(ctx, name, args, kw, x)
        if spatial:
            return out, "unseen", f"{what} repeating axes {spatial}, which hold spatial positions"
        return out, None, what
    out, picked = reshaped(ctx, node, name, x)
    if picked:
        return out, "global", f"{what} selecting or splitting positions of axes {picked}, which hold spatial positions"
    return (out, None, what) if out is not None else (None, "unseen", f"{what} whose shapes could not be read")


def module_rule(ctx, node, mod):
    """The rule of a leaf module the walk does not apply (linear layers, attention, softmax, ...)."""
    nn, torch = ctx.torch.nn, ctx.torch
    what = ctx.describe(node)
    x = ctx.layout(node.args[0]) if node.args else None
    kind = eager_kind(mod, torch)
    if kind == "adaptive":
        return x, "global", what
    if kind is not None:
        out, verdict, what = _layer(ctx, x, what)
        why = inexact_layer(mod, kind)
        return (out, "inexact", f"{what} {why}") if verdict is None and why else (out, verdict, what)
    if is_script_module(mod, torch):  # walked through its TorchScript graph by the walk
        return _same_shape(ctx, node, x), None, what
    if isinstance(mod, (nn.Linear, nn.LazyLinear, nn.Bilinear)):
        name = "bilinear" if isinstance(mod, nn.Bilinear) else "linear"
        return contract(ctx, Call(name, node.args), name, what)
    if acts_pointwise(mod, nn) and not isinstance(x, tuple):
        return None, None, what  # value by value: the operation that lost the axes is reported
    if not isinstance(x, tuple):
        return None, "unseen", f"{what} on a tensor whose axes could not be followed"
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU)):
        dim = -3 if isinstance(mod, nn.Softmax2d) else mod.dim
        ax = (softmax_axis(len(x)),) if dim is None else axes(dim, len(x))
        return (x, *_verdict(x, what, ax))
    if isinstance(mod, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        ax = tuple(range(len(x) - len(_seq(mod.normalized_shape)), len(x)))
        return (x, *_verdict(x, what, ax))
    if isinstance(mod, (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
                        nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)):
        ax = tuple(range(len(x) - 1))  # a sequence model combines every position of its sequence axis
        verdict, what = _verdict(x, what, ax)
        return ([x, None] if isinstance(mod, (nn.MultiheadAttention, nn.RNNBase)) else x), verdict, what
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        out, _ = reshaped(ctx, node, "flatten" if isinstance(mod, nn.Flatten) else "unflatten", x, mod)
        return (out, None, what) if out is not None else (None, "unseen", f"{what} whose shapes could not be read")
    if type(mod).__module__ in POINTWISE_MODULES or isinstance(mod, nn.Identity):
        return x, None, what  # activations, normalisations of the existing policy, dropout, padding
    return _same_shape(ctx, node, x), "unseen", what
