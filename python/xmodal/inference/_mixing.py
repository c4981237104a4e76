"""Which positions a torch.fx graph combines beyond its layers.

The walk of :mod:`._receptive` applies convolutions, poolings and up-samplings; this second pass
follows what every tensor's axes hold (a *layout*: per axis the set of spatial input axes whose
positions it indexes; the input is ``(batch, channel, z, y, x)`` -> ``({}, {}, {0}, {1}, {2})``)
through the functions, tensor methods and modules of the graph, and reports the operations that
combine positions along an axis holding spatial positions: reductions (``x.mean((2, 3))``,
``torch.amax(x, -1)``, ``x.std()``), softmax and other operations along such an axis, products
summing over one (``q @ k.transpose(1, 2)`` of flattened positions, ``flatten`` then ``Linear``),
adaptive pooling, interpolation to a fixed size, normalisations over spatial axes. These make the
receptive field the whole input: :class:`Scan` ``global_ops``. Operations it cannot judge (unknown
functions, axes computed at run time, a convolution of a reshaped tensor) are ``unseen``: the
caller checks the network with a gradient probe (:mod:`._probe`). Operations after which tiles
cannot equal the whole-volume prediction exactly although the field is finite (``F.instance_norm``
/ ``F.group_norm``: statistics of each window, as the modules; ``align_corners=True`` sampling) are
``inexact``: the caller warns.

Layout changes (``view``, ``flatten``, ``permute``, ``x[:, None]``) are followed; reshapes use the
shapes of one small forward pass, run only when a reshape is met.
"""

from __future__ import annotations

import math

from ._measure import eval_mode, param_device, param_dtype
from ._mixing_rules import EMPTY, Context, module_rule, node_name, operation_rule
from ._ops import NEUTRAL, NEUTRAL_ATTRIBUTES


class Scan:
    """What a walk saw besides its layers: ``global_ops`` (operations combining all positions of a
    spatial axis, which reach the output: the field is the whole input), ``unseen`` (operations
    the walk cannot judge: to be checked by measurement) and ``inexact`` (local operations that
    tiles cannot reproduce exactly: a warning), as readable descriptions."""

    def __init__(self, global_ops=(), unseen=(), inexact=()):
        self.global_ops = list(dict.fromkeys(global_ops))
        self.unseen = list(dict.fromkeys(unseen))
        self.inexact = list(dict.fromkeys(inexact))

    def __repr__(self):
        return f"Scan(global_ops={self.global_ops!r}, unseen={self.unseen!r}, inexact={self.inexact!r})"


def scan_fx(gm, model, nd: int, in_channels: int, factor, size, torch) -> Scan:
    """Follow the layouts through graph module ``gm`` (traced from ``model``); ``factor`` and
    ``size`` (the walked down-sampling factor and field) size the forward pass for the shapes."""
    ctx = Context(gm, nd, torch, lambda: _shapes(gm, model, nd, in_channels, factor, size, torch))
    taints: dict = {"global": {}, "unseen": {}, "inexact": {}}  # per verdict: node -> what reaches it
    outputs: list = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if not ctx.lay:
                ctx.lay[node] = (EMPTY, EMPTY) + tuple(frozenset({a}) for a in range(nd))
                for t in taints.values():
                    t[node] = frozenset()
            continue
        ins = [a for a in node.all_input_nodes if a in ctx.lay]
        if node.op == "output":
            outputs = ins
            break
        if not ins or node.op == "get_attr" or _is_neutral(node):
            continue
        try:
            out, verdict, what = (module_rule(ctx, node, ctx.modules[node.target]) if node.op == "call_module"
                                  else operation_rule(ctx, node))
        except Exception as exc:  # noqa: BLE001 - arguments the rules cannot read: measured instead
            out, verdict, what = None, "unseen", f"{ctx.describe(node)} (its arguments could not be read: {exc})"
        ctx.lay[node] = ctx.checked(node, out)
        if ctx.lay[node] is None and isinstance(out, tuple) and verdict is None:  # the rule was wrong
            verdict, what = "unseen", f"{what} (its axes could not be followed)"
        for v, t in taints.items():
            t[node] = frozenset().union(*(t[a] for a in ins))
            if verdict == v:
                t[node] |= {(ctx.order(node), what)}
    found = {v: [w for _, w in sorted(frozenset().union(*(t[a] for a in outputs)))] for v, t in taints.items()}
    return Scan(found["global"], found["unseen"], found["inexact"])


def _is_neutral(node) -> bool:
    """Sizes, flags and attributes that are no tensor (``x.shape``, ``x.size(2)``, ``x.dim()``)."""
    name = node_name(node)
    if name == "getattr":
        return len(node.args) > 1 and node.args[1] in NEUTRAL_ATTRIBUTES
    return name in NEUTRAL


def _shapes(gm, model, nd, in_channels, factor, size, torch) -> dict:
    """Per node a summary of its value in one forward pass (``("tensor", shape)``, ``("seq",
    [shapes])`` or ``("value", python value)``): on a small input on the factor grid, else on one
    holding the walked field; an empty dict when the network runs on neither."""
    small = 32 if nd == 2 else 16
    sizes = [tuple(f * max(2, math.ceil(small / f)) for f in factor)]
    if all(math.isfinite(s) for s in size):
        sizes.append(tuple(f * math.ceil((s + 2 * f) / f) for s, f in zip(size, factor)))
    for shape in sizes:
        if math.prod(shape) > (1 << 20 if nd == 2 else 1 << 21):
            break
        meta: dict = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                meta[n] = _summary(out, torch)
                return out

        x = torch.randn((1, in_channels) + shape, generator=torch.Generator().manual_seed(0))
        try:
            with eval_mode(model), torch.no_grad():
                Recorder(gm).run(x.to(device=param_device(model, torch), dtype=param_dtype(model, torch)))
        except Exception:  # noqa: BLE001 - the network's own error at this size: try the next
            continue
        return meta
    return {}


def _summary(value, torch):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape))
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return ("seq", [tuple(v.shape) for v in value])
    if isinstance(value, int) or (isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)):
        return ("value", tuple(value) if isinstance(value, (tuple, list)) else value)
    return ("other", None)

