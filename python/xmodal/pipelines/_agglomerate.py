"""Affinities -> labels: the agglomeration and size-filter steps of :func:`xmodal.pipelines.segment`.

The agglomeration is a seam: :data:`SINGLE_SHOT` and :data:`BLOCKWISE` map a method name to a
function, and a new method (another partitioning of the same affinities) is one entry in each.
``SINGLE_SHOT[method](affinities, offsets, **weighting)`` gets the affinities in memory (float32
numpy) and returns labels consecutive from 1; ``BLOCKWISE[method](affinities, offsets, *,
block_shape, halo, out, client, workdir, **weighting)`` reads any sliceable array block by block and
returns ``(labels, number of segments)`` with ``labels = out`` when given. ``weighting`` holds
``n_attractive`` or ``bias``, and ``strides`` (see :func:`xmodal.mutex_watershed`).
"""

from __future__ import annotations

import numpy as np


def _mws_single(affinities, offsets, **kw):
    from ..segmentation import mutex_watershed

    return mutex_watershed(affinities, offsets, **kw)


def _mws_blockwise(affinities, offsets, **kw):
    from ..segmentation import blockwise_mutex_watershed

    res = blockwise_mutex_watershed(affinities, offsets, **kw)
    return res.labels, int(res.n_labels)


SINGLE_SHOT = {"mws": _mws_single}
BLOCKWISE = {"mws": _mws_blockwise}


def agglomerate(affinities, offsets, weighting: dict, *, method: str = "mws", target=None, block_shape=None,
                workdir=None, client=None):
    """Labels from affinities, single-shot (``block_shape`` None) or block by block into ``target``.

    Returns ``(labels, number of segments, affinities for the size filter)``: the affinities are
    read into memory once when single-shot and passed on, else the array itself.
    """
    if method not in SINGLE_SHOT:
        raise ValueError(f"method: expected one of {sorted(SINGLE_SHOT)}, got {method!r}")
    if block_shape is None:
        a = np.asarray(affinities[...], dtype=np.float32)
        labels = SINGLE_SHOT[method](a, offsets, **weighting)
        return labels, int(labels.max(initial=0)), a
    if method not in BLOCKWISE:
        raise ValueError(f"method: {method!r} has no blockwise form; use a volume of at most memory_voxels")
    # at least 1: a face between blocks is stitched from the voxel pairs across it (a 2D model's
    # stack has no offset along z, but its blocks may still split z)
    halo = np.maximum(np.abs(offsets).max(axis=0), 1).tolist()
    return (*BLOCKWISE[method](affinities, offsets, block_shape=block_shape, halo=halo, out=target, client=client,
                               workdir=workdir, **weighting), affinities)


def filter_small(labels, n_segments: int, affinities, offsets, *, n_attractive: int | None, min_size: int,
                 block_shape=None, client=None, invert: bool = False, writer: str = "xmodal.segment"):
    """Segments under ``min_size`` voxels merged into their most attractive neighbour.

    Same definition single-shot and block by block (:func:`xmodal.segmentation.remove_small_segments`,
    identical results on the same labels); a blockwise ``labels`` array is rewritten in place (a
    zarr array is flagged incomplete meanwhile). Returns ``(labels, number of segments)``.
    """
    from ..segmentation._size_filter import _remove_small

    if min_size <= 1:
        return labels, n_segments
    kw = dict(affinities=affinities, offsets=offsets, n_attractive=n_attractive, invert=invert, n_workers=None)
    if block_shape is None:
        return _remove_small(labels, min_size, block_shape=None, out=None, client=None, **kw)
    from ..io import is_zarr_array, mark_complete, mark_incomplete

    if is_zarr_array(labels):
        mark_incomplete(labels, writer)
    labels, n = _remove_small(labels, min_size, block_shape=block_shape, out=labels, client=client, **kw)
    if is_zarr_array(labels):
        mark_complete(labels, writer)
    return labels, n
