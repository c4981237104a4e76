"""Tensor operations written as functions or tensor methods, sorted by what they do to positions.

The receptive field walks (:mod:`._receptive`) read layers; a network also computes with functions
(``torch.mean``, ``F.softmax``, ``x @ y``) and tensor methods (``x.amax(...)``, ``x.view(...)``).
This module names them by one normalised name (``x.__matmul__`` and ``operator.matmul`` are both
``"matmul"``) and sorts the names into categories:

``pointwise``  value by value (arithmetic, activations, casts): positions are never combined;
``neutral``    sizes and flags (``x.shape``, ``x.size(2)``) and new tensors of given sizes
               (``torch.zeros``): no image values;
``layout``     axes moved, merged, split or indexed (``view``, ``permute``, ``cat``, ``x[..., 1:]``);
``reduce``     a reduction over the axes of a ``dim`` argument (all axes without one);
``along``      an operation along one axis (or a list of axes) that combines all of its positions
               (softmax, cumulative sums, sorting, flips);
``contract``   products that sum over an axis (``matmul``, ``bmm``, ``einsum``, ``linear``,
               attention);
``norm``       normalisations by statistics (``layer_norm``, ``group_norm``, ``instance_norm``,
               ``batch_norm`` in training mode; :data:`PER_WINDOW` of them normalise by statistics
               of each window, the treatment of the InstanceNorm / GroupNorm modules);
``adaptive``   adaptive pooling (its window is a fraction of the input: a global field);
``resize``     ``interpolate`` / ``upsample`` (a fixed output ``size`` is a global field);
``spatial``    the max / average poolings and pixel (un)shuffles the torch.fx walk applies
               (functional convolutions are walked by hooks; other spatial functions are ``unknown``);
``unknown``    anything else.
"""

from __future__ import annotations

import re

_POINTWISE_NAMES = """
add sub mul div truediv floordiv mod remainder fmod pow neg negative pos abs absolute sign sgn
eq ne lt le gt ge and_ or_ xor invert logical_and logical_or logical_not logical_xor bitwise_not
relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu celu gelu silu mish sigmoid sigmoid_ tanh
tanh_ hardtanh hardswish hardsigmoid softplus softsign prelu rrelu logsigmoid tanhshrink
softshrink hardshrink threshold exp exp2 expm1 log log2 log10 log1p sqrt rsqrt square reciprocal
sin cos tan asin acos atan atan2 sinh cosh erf erfc erfinv floor ceil round trunc frac clamp clip
clamp_min clamp_max clamp_ where maximum minimum fmax fmin lerp addcmul addcdiv nan_to_num
masked_fill masked_fill_ add_ sub_ mul_ div_ pow_ neg_ abs_ exp_ log_ sqrt_ copysign hypot
isnan isinf isfinite logit xlogy special_expit special_logit sigmoid_focal heaviside
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
float double half bfloat16 int long bool to type type_as contiguous clone detach detach_ cpu cuda
requires_grad_ fill_ zero_ new_zeros new_ones new_full new_empty zeros_like ones_like full_like
empty_like rand_like randn_like local_response_norm pad data
"""
POINTWISE = frozenset(_POINTWISE_NAMES.split())

NEUTRAL = frozenset("getattr size dim numel ndimension nelement item tolist get len is_floating_point "
                    "is_complex is_contiguous element_size stride data_ptr get_device "
                    # new tensors of given sizes (they hold no image values)
                    "zeros ones empty full arange linspace logspace eye tensor as_tensor from_numpy rand "
                    "randn randint randperm manual_seed".split())

#: attributes of a tensor read with ``x.name`` that are no tensor
NEUTRAL_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout",
                                "is_sparse", "grad_fn"})

LAYOUT = frozenset("view reshape flatten unflatten squeeze unsqueeze view_as reshape_as permute "
                   "transpose swapaxes swapdims movedim moveaxis t expand expand_as broadcast_to getitem "
                   "cat concat concatenate stack hstack vstack chunk split tensor_split unbind narrow "
                   "repeat tile repeat_interleave".split())

#: reductions: name -> (position of the axes argument, counting the input; default axes, None: all)
REDUCE = {
    **{n: (1, None) for n in ("mean", "sum", "nansum", "nanmean", "prod", "amax", "amin", "aminmax", "max",
                              "min", "std", "var", "std_mean", "var_mean", "all", "any", "count_nonzero",
                              "argmax", "argmin", "median", "nanmedian")},
    "logsumexp": (1, None), "special_logsumexp": (1, None), "mode": (1, -1),
    "norm": (2, None), "linalg_vector_norm": (2, None), "linalg_norm": (2, None),
    "linalg_matrix_norm": (2, (-2, -1)), "quantile": (2, None), "nanquantile": (2, None),
    "kthvalue": (2, -1),
}

#: operations combining all positions along their axes: name -> (position of the axis argument,
#: default axis; None: every axis, "softmax": PyTorch's implicit softmax axis)
ALONG = {
    **{n: (1, "softmax") for n in ("softmax", "log_softmax", "softmin")},
    **{n: (1, None) for n in ("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp")},
    "sort": (1, -1), "argsort": (1, -1), "topk": (2, -1), "msort": (1, 0), "normalize": (2, 1),
    "glu": (1, -1), "flip": (1, None), "roll": (2, None), "gumbel_softmax": (4, -1),
}

CONTRACT = frozenset("matmul mm bmm mv dot vdot inner einsum linear bilinear baddbmm addmm addbmm addmv "
                     "tensordot chain_matmul linalg_multi_dot scaled_dot_product_attention "
                     "multi_head_attention_forward _native_multi_head_attention".split())

NORM = frozenset({"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"})

#: normalisations by statistics of the window the network sees (unless ``instance_norm`` uses
#: running statistics): like the InstanceNorm / GroupNorm modules, a warning, not a global field
PER_WINDOW = frozenset({"group_norm", "instance_norm"})

RESIZE = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"})

SPATIAL = re.compile(r"(max|avg)_pool[123]d$|pixel_(un)?shuffle$")
_ADAPTIVE = re.compile(r"adaptive_(avg|max)_pool[123]d(_with_indices)?$")

#: operations returning several tensors (when given an axis)
TUPLE_OUT = frozenset({"max", "min", "median", "nanmedian", "mode", "kthvalue", "aminmax", "std_mean",
                       "var_mean", "sort", "topk", "cummax", "cummin", "chunk", "split", "tensor_split",
                       "unbind"})

_REFLECTED = {"r" + n for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and",
                                "or", "xor", "div")}
_INPLACE = {"i" + n for n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and",
                              "or", "xor", "div")}


def normalise(name: str) -> str:
    """One name per operation: ``__radd__`` and ``__iadd__`` are ``add``, ``__getitem__`` is ``getitem``,
    ``__and__`` is ``and_`` (as :mod:`operator` spells it)."""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name in ("and", "or", "not"):
            name += "_"
    if name in _REFLECTED or name in _INPLACE:  # also operator.iadd, torch.rsub
        name = name[1:]
    return name


def category(name: str) -> str:
    """The category of an operation by its normalised name (see the module docstring)."""
    for cat, names in (("pointwise", POINTWISE), ("neutral", NEUTRAL), ("layout", LAYOUT), ("reduce", REDUCE),
                       ("along", ALONG), ("contract", CONTRACT), ("norm", NORM), ("resize", RESIZE)):
        if name in names:
            return cat
    if _ADAPTIVE.match(name):
        return "adaptive"
    if SPATIAL.match(name):
        return "spatial"
    return "unknown"


def may_mix(name: str) -> bool:
    """Whether an operation may combine positions (its axes decide; the walks cannot tell)."""
    return category(name) in ("reduce", "along", "contract", "norm", "adaptive", "resize", "unknown")


#: modules of torch.nn whose layers act value by value or by the existing policy (activations,
#: batch / instance / group normalisation, dropout, padding)
POINTWISE_MODULES = frozenset(f"torch.nn.modules.{m}" for m in ("activation", "batchnorm", "instancenorm",
                                                                 "normalization", "dropout", "padding"))



def acts_pointwise(m, nn) -> bool:
    """Whether a torch.nn module acts value by value (or by the existing policy of normalisations)."""
    mixing = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU, nn.MultiheadAttention, nn.LayerNorm,
              getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(m, nn.Identity) or (type(m).__module__ in POINTWISE_MODULES and not isinstance(m, mixing))


MISSING = object()


def argument(args, kwargs, pos, names, default=MISSING):
    """The argument at position ``pos`` (counting the input) or under one of ``names``."""
    if len(args) > pos:
        return args[pos]
    for n in names:
        if n in kwargs:
            return kwargs[n]
    return default


def axes(value, rank: int) -> tuple:
    """The axes an axis argument names, in ``range(rank)`` (negative ones counted from the end):
    None means every axis. ValueError when it is no axis (e.g. computed at run time)."""
    if value is None:
        return tuple(range(rank))
    items = value if isinstance(value, (tuple, list)) else (value,)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"axis argument {value!r} is not a constant")
        if not -rank <= v < rank:
            raise ValueError(f"axis {v} out of range for {rank} axes")
        out.append(v % rank)
    return tuple(out)


def softmax_axis(rank: int) -> int:
    """The axis PyTorch's softmax takes without ``dim`` (its deprecated implicit choice)."""
    return 0 if rank in (0, 1, 3) else 1
