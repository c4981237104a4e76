"""Layouts through operations that move, merge, split or index axes (for :mod:`._mixing_rules`).

A layout has one frozenset of spatial input axes per axis of a tensor. Reshapes (``view``,
``reshape``, ``unflatten``, ``squeeze``) keep the order of the elements, so the axes before and
after fall into groups of equal size products; every axis after takes the union of its group.
Repeats (``repeat``, ``tile``, ``repeat_interleave``) keep the layout; repeating an axis that holds
spatial positions is reported (it is measured). Slices keep an axis, except a slice of a fixed
length (``x[..., :1]``, ``x[:, :, -2:]``, constant bounds on the same side), which picks positions
that depend on where the window lies, as an integer index does.
"""

from __future__ import annotations

from ._ops import argument, axes

EMPTY = frozenset()


class Pieces(list):
    """The layouts of the several results of one operation (all alike: ``chunk``, ``max(dim=...)``)."""

    def __getitem__(self, i):
        return self if isinstance(i, slice) else list.__getitem__(self, 0)


def _union(labels) -> frozenset:
    return frozenset().union(*labels)


def reshaped(ctx, node, name, x, mod=None):
    """``(layout of the result or None, axes of x whose positions are picked or split)``."""
    args, kw = node.args, node.kwargs
    rank = len(x)
    if name == "flatten":
        start = mod.start_dim if mod is not None else ctx.value(argument(args, kw, 1, ("start_dim",), 0))
        end = mod.end_dim if mod is not None else ctx.value(argument(args, kw, 2, ("end_dim",), -1))
        if rank == 0:
            return (EMPTY,), ()
        s, e = axes((start, end), rank)
        return x[:s] + (_union(x[s:e + 1]),) + x[e + 1:], ()
    if name == "unsqueeze":
        at = axes(ctx.value(argument(args, kw, 1, ("dim",))), rank + 1)[0]
        return x[:at] + (EMPTY,) + x[at:], ()
    if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"):
        return tuple(x[k] for k in _order(ctx, name, args, kw, rank)), ()
    if name in ("expand", "expand_as", "broadcast_to"):
        if name == "expand_as":
            n = len(ctx.layout(args[1]) or ctx.shape(args[1]) or ())
        else:
            sizes = args[1:] if name == "expand" else (argument(args, kw, 1, ("size",)),)
            n = len(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else len(sizes)
        return (EMPTY,) * (n - rank) + x if n >= rank else None, ()
    if name == "narrow":
        return x, ()
    if name == "getitem":
        return _index(ctx, x, args[1])
    if name in ("chunk", "split", "tensor_split", "unbind"):
        ax = axes(ctx.value(argument(args, kw, 1 if name == "unbind" else 2, ("dim",), 0)), rank)
        piece = x[:ax[0]] + x[ax[0] + 1:] if name == "unbind" else x
        return Pieces([piece]), tuple(a for a in ax if x[a])
    # view, reshape, unflatten, squeeze, view_as, reshape_as: from the shapes of the forward pass
    before, after = ctx.shape(args[0]), ctx.shape(node)
    if before is None or after is None or len(before) != rank:
        return None, ()
    return regroup(x, before, after), ()


def _order(ctx, name, args, kw, rank) -> list:
    """For axis-moving operations: per axis of the result the axis of the input it comes from."""
    if name == "t":
        return list(range(rank))[::-1]
    if name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:] or kw.get("dims")
        return list(axes(ctx.value(tuple(dims)), rank))
    if name in ("transpose", "swapaxes", "swapdims"):
        a = ctx.value(argument(args, kw, 1, ("dim0", "axis0")))
        b = ctx.value(argument(args, kw, 2, ("dim1", "axis1")))
        a, b = axes((a, b), rank)
        order = list(range(rank))
        order[a], order[b] = b, a
        return order
    src = axes(ctx.value(argument(args, kw, 1, ("source",))), rank)
    dst = axes(ctx.value(argument(args, kw, 2, ("destination",))), rank)
    order = [None] * rank
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(k for k in range(rank) if k not in src)
    return [o if o is not None else next(rest) for o in order]


def repeated(ctx, name, args, kw, x):
    """``(layout, repeated axes that hold spatial positions)`` of ``repeat``, ``tile`` or
    ``repeat_interleave`` of a tensor of layout ``x``."""
    rank = len(x)
    if name == "repeat_interleave":
        dim = ctx.value(argument(args, kw, 2, ("dim",), None))
        if dim is None:  # flattened first
            out, ax = (_union(x),), tuple(range(rank))
        else:
            out, ax = x, axes(dim, rank)
    else:
        reps = args[1:] if name == "repeat" else (argument(args, kw, 1, ("dims",)),)
        reps = reps[0] if len(reps) == 1 and isinstance(reps[0], (tuple, list)) else reps
        reps = [ctx.value(r) for r in reps]
        n = max(len(reps), rank)
        out = (EMPTY,) * (n - rank) + x
        reps = [1] * (n - len(reps)) + reps
        ax = tuple(k for k, r in enumerate(reps) if r != 1)
    return out, tuple(a for a in ax if out[a])


def _fixed_length(ctx, sl) -> bool:
    """Whether slice ``sl`` keeps a fixed number of positions whatever the axis' length (constant
    bounds counted from the same end, or one bound from the end it is open to)."""
    start, stop = sl.start, sl.stop
    if any(isinstance(v, ctx.torch.fx.Node) for v in (start, stop, sl.step)):
        return False  # bounds computed at run time (a crop to another tensor's size): kept
    if start is None:
        return stop is not None and stop >= 0
    if stop is None:
        return start < 0
    return (start < 0) == (stop < 0)


def _index(ctx, x, index):
    """Basic indexing (integers, slices, None, ``...``); ValueError for indexing with tensors."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    out, picked, k = [], [], 0
    for it in items:
        if it is None:
            out.append(EMPTY)
        elif it is Ellipsis:
            n = len(x) - consumed
            out.extend(x[k:k + n])
            k += n
        elif isinstance(it, slice):
            out.append(x[k])
            if x[k] and _fixed_length(ctx, it):
                picked.append(k)
            k += 1
        elif ctx.is_tensor(it) or isinstance(it, (bool, list)):
            if x[k] or not _channel_list(ctx, it, items):
                raise ValueError("indexing with a tensor or a list")
            out.append(x[k])  # channels picked by a list of indices: the same axis
            k += 1
        else:  # one position (a constant or a size computed at run time)
            if x[k]:
                picked.append(k)
            k += 1
    if k > len(x):
        raise ValueError(f"{consumed} indices for {len(x)} axes")
    return tuple(out) + x[k:], tuple(picked)


def _channel_list(ctx, it, items) -> bool:
    """Whether ``it`` is the one advanced index of ``items``, a list of integers or a 1-D tensor."""
    advanced = [v for v in items if isinstance(v, (bool, list)) or ctx.is_tensor(v)]
    if len(advanced) != 1:
        return False
    if isinstance(it, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in it)
    shape = ctx.shape(it) if isinstance(it, ctx.torch.fx.Node) else tuple(getattr(it, "shape", ()))
    dtype = getattr(it, "dtype", None)
    return shape is not None and len(shape) == 1 and dtype is not ctx.torch.bool


def regroup(x, before, after):
    """The layout after a reshape from shape ``before`` to ``after`` (None if they do not match)."""
    ii = [k for k, n in enumerate(before) if n != 1]
    oo = [k for k, n in enumerate(after) if n != 1]
    out = [EMPTY] * len(after)
    a = b = 0
    while a < len(ii) and b < len(oo):
        ga, pa, gb, pb = [ii[a]], before[ii[a]], [oo[b]], after[oo[b]]
        a, b = a + 1, b + 1
        while pa != pb:
            if pa < pb and a < len(ii):
                ga.append(ii[a])
                pa, a = pa * before[ii[a]], a + 1
            elif pb < pa and b < len(oo):
                gb.append(oo[b])
                pb, b = pb * after[oo[b]], b + 1
            else:
                return None
        label = _union(x[k] for k in ga)
        for k in gb:
            out[k] = label
    return tuple(out) if a == len(ii) and b == len(oo) else None


def shape_source(size, nd: int):
    """The graph node of the tensor whose last ``nd`` sizes ``size`` (an argument of
    ``F.interpolate``) is, written ``t.shape[2:]``, ``t.size()[-2:]``, ``(t.size(2), t.size(3))`` or
    ``(t.shape[2], t.shape[3])`` (the caller checks that ``t`` has ``nd + 2`` axes); else None."""
    if hasattr(size, "op"):
        if _called(size, "getitem") and isinstance(size.args[1], slice):
            sl, t = size.args[1], _shape_of(size.args[0])
            whole = sl.stop is None and sl.step in (None, 1) and sl.start in (2, -nd)
            return t if whole else None
        return None
    if not isinstance(size, (tuple, list)) or len(size) != nd:
        return None
    dims = [_dim_of(v) if hasattr(v, "op") else None for v in size]
    if any(d is None for d in dims) or len({d[0] for d in dims}) != 1:
        return None
    ks = [d[1] for d in dims]
    return dims[0][0] if ks in (list(range(2, nd + 2)), list(range(-nd, 0))) else None


def _called(n, name) -> bool:
    return n.op == "call_function" and getattr(n.target, "__name__", "") == name


def _shape_of(n):
    """``t`` of a node ``t.shape`` or ``t.size()``, else None."""
    if not hasattr(n, "op"):
        return None
    if _called(n, "getattr") and tuple(n.args[1:]) == ("shape",):
        return n.args[0]
    if n.op == "call_method" and n.target == "size" and len(n.args) == 1 and not n.kwargs:
        return n.args[0]
    return None


def _dim_of(n):
    """``(t, k)`` of a node ``t.size(k)``, ``t.shape[k]`` or ``t.size()[k]``, else None."""
    if n.op == "call_method" and n.target == "size" and len(n.args) == 2 and isinstance(n.args[1], int):
        return n.args[0], n.args[1]
    if _called(n, "getitem") and isinstance(n.args[1], int) and _shape_of(n.args[0]) is not None:
        return _shape_of(n.args[0]), n.args[1]
    return None
