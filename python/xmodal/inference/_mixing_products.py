"""Rules of :mod:`._mixing_rules` for products that sum over axes: ``matmul`` and its relatives,
``linear`` / ``nn.Linear``, ``einsum`` and ``scaled_dot_product_attention``. A product is global
when an axis it sums over holds spatial positions."""

from __future__ import annotations

from ._ops import argument

EMPTY = frozenset()


def _union(labels) -> frozenset:
    return frozenset().union(*labels)


def broadcast(lays):
    """The layout of operands broadcast together (aligned at their last axes)."""
    if any(not isinstance(v, tuple) for v in lays):
        return None
    rank = max((len(v) for v in lays), default=0)
    return tuple(_union(v[k - rank + len(v)] for v in lays if k - rank + len(v) >= 0) for k in range(rank))


def contract(ctx, node, name, what):
    """Products summing over axes (matmul, linear, einsum): global when a summed axis holds
    spatial positions."""
    args = node.args
    if name == "einsum":
        return _einsum(ctx, args, what)
    if name == "scaled_dot_product_attention":
        return _attention(ctx, node, what)
    if name in ("baddbmm", "addmm", "addbmm", "addmv"):
        out, verdict, what = contract(ctx, Call("matmul", args[1:3]), "matmul", what)
        return broadcast([out, ctx.layout(args[0])]), verdict, what
    lays = [ctx.layout(a) for a in args[:3 if name == "bilinear" else 2]]
    if any(not isinstance(v, tuple) for v in lays) or name in ("tensordot", "chain_matmul", "linalg_multi_dot",
                                                               "multi_head_attention_forward",
                                                               "_native_multi_head_attention"):
        return None, "unseen", what
    if name in ("linear", "bilinear"):
        summed = _union(v[-1] for v in lays[:2 if name == "bilinear" else 1])
        out = broadcast([v[:-1] for v in lays[:2 if name == "bilinear" else 1]]) + (EMPTY,)
    else:
        a, b = lays
        if not a or not b:
            return None, "unseen", what
        b_sum = b[-2] if len(b) >= 2 and name not in ("inner", "dot", "vdot") else b[-1]
        summed = a[-1] | b_sum
        out = broadcast([a[:-2], b[:-2]]) + (a[-2:-1] if len(a) >= 2 else ()) + (b[-1:] if len(b) >= 2 else ())
    if summed:
        return out, "global", f"{what} summing over an axis that holds spatial positions"
    return out, None, what


def _attention(ctx, node, what):
    """``F.scaled_dot_product_attention(q, k, v)``: sums over the key positions (and features)."""
    q, k, v = (ctx.layout(argument(node.args, node.kwargs, i, (n,), None))
               for i, n in enumerate(("query", "key", "value")))
    if any(not isinstance(t, tuple) or len(t) < 2 for t in (q, k, v)):
        return None, "unseen", what
    out = broadcast([q[:-2], k[:-2], v[:-2]]) + (q[-2], v[-1])
    if q[-1] | k[-1] | k[-2] | v[-2]:
        return out, "global", f"{what} summing over an axis that holds spatial positions"
    return out, None, what


class Call:
    """The arguments of a product inside ``baddbmm`` / ``addmm``."""

    def __init__(self, name, args):
        self.args, self.kwargs, self.name = tuple(args), {}, name


def _einsum(ctx, args, what):
    eq, ops = args[0], list(args[1:])
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = list(ops[0])
    lays = [ctx.layout(o) for o in ops]
    if not isinstance(eq, str) or any(not isinstance(v, tuple) for v in lays):
        return None, "unseen", what
    lhs, arrow, rhs = eq.replace(" ", "").partition("->")
    labels: dict = {}
    counts: dict = {}
    n_ell = 0
    for term, lay in zip(lhs.split(","), lays):
        letters = _expand_ellipsis(term, len(lay))
        n_ell = max(n_ell, len(letters) - len(term.replace("...", "")))
        for ch, lab in zip(letters, lay):
            labels[ch] = labels.get(ch, EMPTY) | lab
            counts[ch] = counts.get(ch, 0) + 1
    if not arrow:
        rhs = "..." + "".join(sorted(c for c, n in counts.items() if n == 1 and c.isalpha()))
    out_letters = _expand_ellipsis(rhs, n_ell + len(rhs.replace("...", "")))
    summed = _union(labels[c] for c in labels if c not in out_letters)
    out = tuple(labels.get(c, EMPTY) for c in out_letters)
    if summed:
        return out, "global", f"{what} ({eq!r}) summing over an axis that holds spatial positions"
    return out, None, what


def _expand_ellipsis(term: str, rank: int) -> list:
    """The letters of an einsum term, ``...`` replaced by one placeholder per axis, aligned right."""
    if "..." not in term:
        return list(term)
    head, _, tail = term.partition("...")
    n = rank - len(head) - len(tail)
    return list(head) + [f"#{n - 1 - i}" for i in range(n)] + list(tail)
