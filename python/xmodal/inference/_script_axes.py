"""Which axes a reduction or softmax of a TorchScript graph combines (for :mod:`._receptive_jit`).

The TorchScript walk does not follow layouts as the torch.fx scan does (:mod:`._mixing`); it only
knows which tensors are still *canonical*: ``(batch, channel, spatial...)`` as the input is,
carried through layers, element-wise operations, normalisations, concatenation, padding and
slicing (an allow-list: any other operation may have moved the axes). A reduction or an operation
along axes (``aten::mean``, ``aten::softmax``, ``F.softmax``; :data:`._ops.REDUCE` and
:data:`._ops.ALONG`) of a canonical tensor whose axes are constants is judged here: over the batch
or channel axis it is local (a final softmax over the classes, a CBAM channel mean), over a spatial
axis global. Everything else that may combine positions stays for the gradient probe, and so do
operators the walk does not know (:func:`unknown_operator`: an FFT, a gather). Slices of a fixed
length of a spatial axis are global (:func:`fixed_length`), as in the torch.fx walk.

Also here: the (spatial ndim, input channels) of a compiled convolution (:func:`script_signature`).
"""

from __future__ import annotations

import inspect
import re

from ._layers import SCRIPT_KINDS
from ._ops import ALONG, NORM, POINTWISE, REDUCE, category, normalise

#: TorchScript operators and functions of the layers the walk applies
CONV = re.compile(r"aten::(_convolution|convolution|conv[123]d|conv_transpose[123]d)$")
POOL = re.compile(r"aten::(max|avg)_pool[123]d(_with_indices)?$")
UPSAMPLE = re.compile(r"aten::upsample_(nearest|linear|bilinear|bicubic|trilinear)[123]d$")
SHUFFLE = re.compile(r"aten::pixel_(un)?shuffle$")
FN_SPATIAL = re.compile(r"pool|fold|conv|grid|shuffle|upsample|interpolate")

#: torch.nn modules (by ``original_name``) that keep the axes of their input, whatever their graph
#: does for inputs without a batch axis
_KEEP_MODULE = re.compile(r"((Lazy)?(BatchNorm|InstanceNorm)[123]d|SyncBatchNorm|GroupNorm|LocalResponseNorm|"
                          r"(Feature)?(Alpha)?Dropout([123]d)?|Identity|ReLU6?|LeakyReLU|[PR]ReLU|[SC]?ELU|GELU|"
                          r"SiLU|Mish|Sigmoid|Tanh|Hardtanh|Hardswish|Hardsigmoid|Softplus|Softsign|LogSigmoid|"
                          r"(Constant|Reflection|Replication|Zero|Circular)Pad[123]d)$")

#: operations that add an element (the last input) to a list (the first input) in place
MUTATE = frozenset({"aten::append", "aten::insert", "aten::extend", "aten::_set_item"})

#: operations that keep a tensor's axes in place (besides the layers the walk applies)
_KEEP = frozenset("cat concat concatenate slice narrow pad constant_pad_nd reflection_pad1d reflection_pad2d "
                  "reflection_pad3d replication_pad1d replication_pad2d replication_pad3d _pad_circular "
                  "channel_shuffle dropout feature_dropout alpha_dropout contiguous clone to type_as detach "
                  "where masked_fill clamp clamp_min clamp_max hardtanh maximum minimum".split())


def keeps_axes(name: str) -> bool:
    base = name[:-1] if name.endswith("_") else name
    return base in POINTWISE or base in _KEEP or base in NORM or name in POINTWISE


def schema_names(node) -> list:
    """The argument names of an ``aten::`` node, from its schema (empty if it has none)."""
    try:
        text = node.schema()
    except Exception:  # noqa: BLE001 - a node without a schema
        return []
    if "(" not in text:
        return []
    args = text[text.index("(") + 1:text.rindex("->")].rstrip().rstrip(")")
    parts, depth, cur = [], 0, ""
    for ch in args:  # split at the commas outside brackets (defaults such as dim=[-2, -1])
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    names = []
    for part in parts + [cur]:
        part = part.strip().split("=")[0].strip()
        if part and part != "*":
            names.append(part.split()[-1])
    return names


def function_names(name: str) -> list:
    """The parameter names of ``torch.nn.functional.<name>`` (empty if it has none)."""
    import torch.nn.functional as F

    fn = getattr(F, name, None)
    try:
        return list(inspect.signature(fn).parameters) if fn is not None else []
    except (TypeError, ValueError):
        return []


#: an argument whose value is computed at run time
UNKNOWN = object()


def judge(name: str, args: dict, canonical: bool, nd: int):
    """``(verdict, axes)`` of a reduction or along-axes operation ``name`` with the constant
    arguments ``args`` (by name; :data:`UNKNOWN` for a value computed at run time): None when it
    combines only the batch / channel axes, ``"global"`` when a spatial axis, ``"unseen"`` when
    that cannot be told (a tensor whose axes may have moved, an axis computed at run time)."""
    spec = REDUCE.get(name) or ALONG.get(name)
    if not canonical or spec is None:
        return "unseen", None
    dim = args.get("dims", args.get("dim", spec[1]))
    if dim is UNKNOWN or dim == "softmax":  # run-time axis, or PyTorch's implicit softmax axis
        return "unseen", None
    rank = nd + 2
    items = range(rank) if dim is None or dim == [] else (dim if isinstance(dim, (list, tuple)) else [dim])
    if not all(isinstance(a, int) and not isinstance(a, bool) and -rank <= a < rank for a in items):
        return "unseen", None
    axes = tuple(sorted({a % rank for a in items}))
    return ("global" if any(a >= 2 for a in axes) else None), axes


def unknown_operator(name: str, node) -> bool:
    """Whether an operator or function returning a tensor is none the walk knows (an FFT, a gather):
    it may combine positions, the probe decides."""
    base = normalise(name[:-1] if name.endswith("_") and not name.endswith("__") else name)
    return category(base) == "unknown" and not keeps_axes(base) and base != "select" \
        and any(v.type().kind() == "TensorType" for v in node.outputs())


def fixed_length(start, end) -> bool:
    """Whether constant slice bounds keep a fixed number of positions whatever the axis' length (both
    counted from the same end; an open end, None or a traced graph's 2**63 - 1, is not counted)."""
    if start is UNKNOWN or end is UNKNOWN or not isinstance(start, (int, type(None))) \
            or not isinstance(end, (int, type(None))):
        return False
    start = start or 0
    if end is None or end >= 1 << 62:
        return start < 0
    return (start < 0) == (end < 0)


def keeps_canonical(name: str, keepdim) -> bool:
    """Whether the result of operation ``name`` of a canonical tensor is canonical."""
    name = normalise(name)
    if category(name) == "reduce":
        return keepdim is True
    return category(name) == "along" or keeps_axes(name)


def canon(objs, v) -> bool:
    """Whether value ``v`` is a canonical tensor (``(batch, channel, spatial...)``, see
    :mod:`._script_axes`)."""
    return objs.get(("canon", v.unique()), False)


def value(objs, v):
    """The python value of a constant, attribute or list of them; :data:`UNKNOWN` for a value
    computed at run time."""
    if v.node().kind() in ("prim::Constant", "prim::GetAttr"):
        return objs.get(v.unique())
    if v.node().kind() in ("prim::ListConstruct", "prim::TupleConstruct") and objs.get(v.unique()) is not None:
        return objs.get(v.unique())
    return UNKNOWN


def canonical_result(node, objs) -> bool:
    """Whether the results of ``node`` are canonical: a layer, an element-wise operation, a
    normalisation, a softmax or a reduction keeping its axes of a canonical tensor (and lists or
    tuples of canonical tensors, and their elements)."""
    kind = node.kind()
    ins = list(node.inputs())
    if kind in ("prim::ListConstruct", "prim::TupleConstruct"):  # an empty list: as what is appended
        return all(canon(objs, v) for v in ins)
    first = ins[1] if kind == "prim::CallFunction" and len(ins) > 1 else (ins[0] if ins else None)
    if first is None or not canon(objs, first):
        return False
    if kind in ("prim::ListUnpack", "prim::TupleUnpack", "prim::TupleIndex", "aten::__getitem__"):
        return True
    if kind in MUTATE:  # the list itself, after the element was added
        return canon(objs, ins[-1])
    if CONV.match(kind) or POOL.match(kind) or UPSAMPLE.match(kind) or SHUFFLE.match(kind):
        return True
    if kind == "prim::CallFunction":
        name = str(objs.get(ins[0].unique()) or "").rsplit(".", 1)[-1]
        keep = dict(zip(function_names(name), ins[1:])).get("keepdim")
        return FN_SPATIAL.search(name) is not None or keeps_canonical(name, keep is not None and value(objs, keep))
    if not kind.startswith("aten::"):
        return False
    keep = dict(zip(schema_names(node), ins)).get("keepdim")
    return keeps_canonical(kind[6:], keep is not None and value(objs, keep))


def keeps_module(mod) -> bool:
    """Whether a TorchScript module compiled from a torch.nn module keeps the axes of its input."""
    return bool(_KEEP_MODULE.match(str(getattr(mod, "original_name", ""))))


def size_source(v, nd: int):
    """The TorchScript value of the tensor whose last ``nd`` sizes the list ``v`` is (``t.shape[2:]``
    of a scripted graph, a list of ``t.size(k)`` of a traced one), else None."""
    n = v.node()
    if n.kind() == "aten::slice" and n.inputsAt(0).node().kind() == "aten::size":
        base = n.inputsAt(0).node()
        bounds = [_constant_of(n.inputsAt(i)) for i in (1, 2, 3)]
        if len(list(base.inputs())) == 1 and bounds[0] in (2, -nd) and bounds[1] is None and bounds[2] in (None, 1):
            return base.inputsAt(0)
        return None
    if n.kind() != "prim::ListConstruct" or len(list(n.inputs())) != nd:
        return None
    dims = [_dim_source(e) for e in n.inputs()]
    if any(d is None for d in dims) or len({d[0].unique() for d in dims}) != 1:
        return None
    ks = [d[1] for d in dims]
    return dims[0][0] if ks in (list(range(2, nd + 2)), list(range(-nd, 0))) else None


def _dim_source(e):
    """``(t, k)`` of a value ``t.size(k)`` (through the ``aten::Int`` / ``prim::NumToTensor`` of
    traced graphs), else None."""
    n = e.node()
    while n.kind() in ("aten::Int", "prim::NumToTensor", "aten::ScalarImplicit"):
        n = n.inputsAt(0).node()
    if n.kind() == "aten::size" and len(list(n.inputs())) == 2:
        k = _constant_of(n.inputsAt(1))
        return (n.inputsAt(0), k) if isinstance(k, int) else None
    return None


def _constant_of(v):
    """The python value of a constant value, else None."""
    if v.node().kind() != "prim::Constant":
        return None
    try:
        return v.toIValue()
    except Exception:  # noqa: BLE001 - a constant of a type without a python value
        return None


def script_kind(mod):
    """(layer kind or None) of a TorchScript module, from the eager class it was compiled from."""
    return SCRIPT_KINDS.get(getattr(mod, "original_name", None))


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
    """``groups`` of a traced convolution (the constant argument of its operator), 1 if not found
    (also for a traced layer without a forward method: one the trace never called)."""
    try:
        graph = mod.graph
    except RuntimeError:
        return 1
    for node in graph.nodes():
        m = CONV.match(node.kind())
        if m:
            i = 8 if m.group(1) in ("_convolution", "convolution") else 6
            v = node.inputsAt(i)
            if v.node().kind() == "prim::Constant":
                return int(v.toIValue())
    return 1
