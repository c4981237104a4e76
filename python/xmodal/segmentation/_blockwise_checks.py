"""Argument checks of the blockwise segmentations (:func:`~xmodal.segmentation.blockwise_mutex_watershed`,
:func:`~xmodal.segmentation.stitched_superpixel_agglomeration`, and the ``out`` and ``mask`` checks
that :func:`~xmodal.segmentation.blockwise_superpixel_agglomeration` and the blockwise size filter share)."""

from __future__ import annotations

import numbers

import numpy as np

from .._validation import as_bool, describe, per_axis
from ._values import check_real_dtype
from .mws import _check_mode, _check_offsets


def check_out_capacity(out, n_labels: int) -> None:
    """ValueError naming ``out`` when its integer dtype cannot hold labels up to ``n_labels``."""
    if out is not None and n_labels > np.iinfo(np.dtype(out.dtype)).max:
        raise ValueError(f"out: dtype {out.dtype} cannot hold {n_labels} labels")


def check_block_mask(mask, shape: tuple):
    """``mask`` of the spatial ``shape`` with a boolean or integer dtype (nonzero = foreground), as
    :func:`~xmodal.segmentation.mutex_watershed` requires; an array-like without ``shape`` and
    ``dtype`` (a nested list) becomes a numpy array. Lazily read arrays (zarr) are not read here."""
    if mask is None:
        return None
    if not (hasattr(mask, "shape") and hasattr(mask, "dtype") and hasattr(mask, "__getitem__")):
        mask = np.asarray(mask)
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask: expected shape {shape} (the spatial shape of affinities), got {tuple(mask.shape)}")
    dt = np.dtype(mask.dtype)
    if dt != bool and not np.issubdtype(dt, np.integer):
        raise TypeError(f"mask: expected a boolean mask, got dtype {dt}")
    return mask


def _check_out(out, shape: tuple, bshape: tuple) -> None:
    """``out`` of the spatial ``shape``, integer, and (zarr) chunks dividing the blocks ``bshape``."""
    if tuple(out.shape) != shape:
        raise ValueError(f"out: expected shape {shape}, got {tuple(out.shape)}")
    if not np.issubdtype(np.dtype(out.dtype), np.integer):
        raise TypeError(f"out: expected an integer array, got dtype {out.dtype}")
    chunks = getattr(out, "chunks", None)
    if isinstance(chunks, tuple) and all(isinstance(c, numbers.Integral) for c in chunks):
        if any(b % c and b < s for b, c, s in zip(bshape, chunks, shape)):
            raise ValueError(f"block_shape: expected multiples of the chunks of out {tuple(chunks)}, got {bshape}")


def _check_arguments(affinities, offsets, *, block_shape, halo, out, mask, merge_threshold, n_attractive, strides,
                     randomize_strides, invert, seed, bias):
    """Every argument of :func:`blockwise_mutex_watershed` checked: (shape, offsets, blocks, halo, mws kwargs,
    mask: None, the given array, or a numpy array of a nested list)."""
    if not (hasattr(affinities, "shape") and hasattr(affinities, "dtype") and hasattr(affinities, "__getitem__")):
        raise TypeError(f"affinities: expected an array-like of shape (C, *spatial), got {describe(affinities)}")
    ashape = tuple(int(s) for s in affinities.shape)
    if len(ashape) not in (3, 4):
        raise ValueError(f"affinities: expected shape (C, y, x) or (C, z, y, x), got {ashape}")
    check_real_dtype(affinities.dtype, "affinities", "merge probabilities")  # blocks converted as mutex_watershed does
    C, shape = ashape[0], ashape[1:]
    ndim = len(shape)
    o = _check_offsets(offsets, C, ndim)
    bias_arr, na, st = _check_mode(bias, n_attractive, strides, C, ndim)
    bshape = per_axis(block_shape, ndim, "block_shape", minimum=1)
    hal = per_axis(halo, ndim, "halo")
    bshape = tuple(min(b, s) for b, s in zip(bshape, shape))
    for d in range(ndim):
        if bshape[d] < shape[d] and hal[d] < 1:
            raise ValueError(f"halo: expected >= 1 along axis {d}, which is split into blocks, got {hal[d]}")
    if isinstance(merge_threshold, (bool, np.bool_)) or not (isinstance(merge_threshold, numbers.Real)
                                                            and 0.0 <= float(merge_threshold) < 1.0):
        raise ValueError(f"merge_threshold: expected a number in [0, 1), got {describe(merge_threshold)}")
    if bias_arr is not None and float(merge_threshold) != 0.5:
        raise ValueError("merge_threshold: not used with bias (a mutex watershed of the blocks' fragments joins "
                         f"them); leave it at 0.5, got {merge_threshold!r}")
    mask = check_block_mask(mask, shape)
    if out is not None:
        _check_out(out, shape, bshape)
    if randomize_strides and st is None:
        raise ValueError("randomize_strides: requires strides")
    mws_kwargs = {"n_attractive": na, "strides": st, "randomize_strides": as_bool(randomize_strides, "randomize_strides"),
                  "invert": as_bool(invert, "invert"), "seed": seed, "bias": None if bias_arr is None else bias_arr.tolist()}
    return shape, o, bshape, hal, mws_kwargs, mask


def check_join(join, mws_kwargs: dict, offsets, merge_threshold) -> str:
    """``join`` of :func:`~xmodal.segmentation.blockwise_mutex_watershed` resolved: ``"votes"`` or
    ``"fragments"``. Default (None): the fragment graph with ``bias`` (the only join there) or when a
    channel among the first ``n_attractive`` joins voxels that do not share a face (long-range or
    diagonal offsets: the votes see face-adjacent voxel pairs only), else the votes."""
    if join is not None and join not in ("votes", "fragments"):
        raise ValueError(f"join: expected 'votes', 'fragments' or None (chosen from the offsets), got {describe(join)}")
    bias = mws_kwargs.get("bias") is not None
    if join is None:
        attractive = np.abs(np.asarray(offsets))[:0 if bias else mws_kwargs["n_attractive"]]
        join = "fragments" if bias or bool((attractive.sum(axis=1) > 1).any()) else "votes"
    if join == "votes" and bias:
        raise ValueError("join: 'votes' is not available with bias (any channel may attract, so pieces joined only "
                         "by long-range edges would stay apart); use 'fragments' or None")
    if join == "fragments" and float(merge_threshold) != 0.5:
        raise ValueError("merge_threshold: used by join='votes' only (a mutex watershed of the blocks' fragments "
                         f"joins them here); leave it at 0.5 or give join='votes', got {merge_threshold!r}")
    return join
