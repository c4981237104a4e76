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

import logging

import numpy as np

log = logging.getLogger("xmodal.pipelines")

#: The superpixel (two-stage) methods and the options of theirs that :func:`xmodal.pipelines.segment`
#: passes on (``graph_options`` and a model's ``segmentation_defaults``).
GRAPH_METHODS = ("gasp", "multicut")
GRAPH_OPTIONS = ("beta", "linkage", "threshold", "sigma_seeds", "sigma_weights", "alpha", "superpixel_min_size",
                 "edge_model")


def _mws_single(affinities, offsets, *, repulsive_bias=0.0, **kw):
    from ..segmentation import mutex_watershed

    if repulsive_bias:
        affinities = _biased(affinities, kw["n_attractive"], repulsive_bias)
    return mutex_watershed(affinities, offsets, **kw)


def _mws_blockwise(affinities, offsets, *, repulsive_bias=0.0, **kw):
    from ..segmentation import blockwise_mutex_watershed

    if repulsive_bias:
        affinities = _BiasedView(affinities, kw["n_attractive"], repulsive_bias)
    res = blockwise_mutex_watershed(affinities, offsets, **kw)
    return res.labels, int(res.n_labels)


def _biased(a, n_attractive, bias):
    from ..models.em import bias_affinities

    return bias_affinities(a, n_attractive=n_attractive, bias=bias)


class _BiasedView:
    """Affinities with the repulsive channels shifted by ``bias`` (:func:`xmodal.models.em.bias_affinities`),
    computed per block read: point-wise, so a block equals the same region of the whole biased array."""

    def __init__(self, affinities, n_attractive, bias):
        self.affinities, self.n_attractive, self.bias = affinities, int(n_attractive), float(bias)
        self.shape, self.dtype, self.ndim = tuple(affinities.shape), np.dtype(np.float32), len(affinities.shape)

    def __getitem__(self, sl):
        sl = sl if isinstance(sl, tuple) else (sl,)
        block = np.asarray(self.affinities[(slice(None),) + tuple(sl[1:])], dtype=np.float32)
        return _biased(block, self.n_attractive, self.bias)[sl[0]]


def _graph_single(method):
    def run(affinities, offsets, *, n_attractive, stacked=False, min_size=0, **options):
        from ..segmentation import superpixel_agglomeration

        if stacked and affinities.shape[1] > 1:  # a 2D model's stack: slices on threads, the same labels
            from .. import get_num_threads
            from ..segmentation.slicewise_graph import segment_slices_in_memory

            return segment_slices_in_memory(affinities, offsets, n_attractive=n_attractive,
                                            n_workers=min(get_num_threads(), affinities.shape[1]), method=method,
                                            min_size=min_size, **options)
        return superpixel_agglomeration(affinities=affinities, offsets=offsets, n_attractive=n_attractive,
                                        method=method, stacked=stacked, min_size=min_size, **options)

    return run


def _graph_blockwise(method):
    def run(affinities, offsets, *, block_shape, halo, out, client, workdir, n_attractive, stacked=False,
            min_size=0, writer="xmodal.segment", plane_limit=None, **options):
        from ..segmentation import blockwise_superpixel_agglomeration

        plane = int(np.prod(affinities.shape[-2:]))
        if stacked and (plane_limit is None or plane <= plane_limit):
            # a 2D model's stack: slices in groups, each exactly as in memory (learned weights included)
            return _graph_slicewise(method, affinities, offsets, block_shape=block_shape, out=out, client=client,
                                    workdir=workdir, n_attractive=n_attractive, min_size=min_size, writer=writer,
                                    **options)
        if options.get("edge_model") is not None:
            # learned edge weights need the affinities' link statistics: blocks with a halo, stitched
            return _graph_stitched(method, affinities, offsets, block_shape=block_shape, halo=halo, out=out,
                                   client=client, workdir=workdir, n_attractive=n_attractive, stacked=stacked,
                                   min_size=min_size, writer=writer, **options)
        res = blockwise_superpixel_agglomeration(
            _BoundaryView(affinities, offsets, n_attractive), block_shape=block_shape,
            halo=[max(int(h), 8) for h in halo], out=out, method=method, stacked=stacked, min_size=min_size,
            workdir=None if workdir is None else str(workdir), client=client, **options)
        from ..io import is_zarr_array, mark_complete

        if out is not None and is_zarr_array(out):  # born flagged incomplete (create_ome_zarr_labels)
            mark_complete(out, writer)
        return res.labels, int(res.n_segments)

    return run


def _graph_slicewise(method, affinities, offsets, *, block_shape, out, client, workdir, n_attractive, min_size, writer,
                     **options):
    """The superpixel route on a 2D model's stack, ``prod(block_shape)`` voxels of slices per task."""
    from ..segmentation import slicewise_superpixel_agglomeration

    per_task = max(1, int(np.prod(block_shape)) // int(np.prod(affinities.shape[-2:])))
    if out is not None and getattr(out, "chunks", None) is not None:
        cz = int(out.chunks[0])  # groups write whole chunks along z
        per_task = max(cz, per_task // cz * cz)
    res = slicewise_superpixel_agglomeration(
        affinities, np.asarray(offsets)[:, -2:], n_attractive=n_attractive, slices_per_task=per_task, out=out,
        client=client, workdir=None if workdir is None else str(workdir), method=method, min_size=min_size, **options)
    from ..io import is_zarr_array, mark_complete

    if out is not None and is_zarr_array(out):
        mark_complete(out, writer)
    return res.labels, int(res.n_segments)


#: In-plane halo (pixels) of the stitched route: with it the stitched labels equalled the single-shot
#: ones in 17 of 18 cases on real EM (``xmodal.segmentation.stitched_graph``).
STITCH_HALO = 64


def _graph_stitched(method, affinities, offsets, *, block_shape, halo, out, client, workdir, n_attractive, stacked,
                    min_size, writer, **options):
    """The superpixel route with learned weights block by block (halo :data:`STITCH_HALO`), stitched."""
    from ..io import is_zarr_array, mark_complete
    from ..segmentation import stitched_superpixel_agglomeration

    ndim = len(affinities.shape) - 1
    hal = [1 if (stacked and d == 0) else max(int(h), STITCH_HALO) for d, h in enumerate(halo)][:ndim]
    res = stitched_superpixel_agglomeration(
        affinities, offsets, n_attractive=n_attractive, block_shape=block_shape, halo=hal, out=out, client=client,
        workdir=None if workdir is None else str(workdir), stacked=stacked, method=method, min_size=min_size,
        **options)
    if out is not None and is_zarr_array(out):
        mark_complete(out, writer)
    return res.labels, int(res.n_labels)


class _BoundaryView:
    """The boundary map :func:`xmodal.segmentation.boundaries_from_affinities` of an affinity array,
    computed per block read from the block plus the attractive offsets' reach of context (so a block
    equals the same region of the whole map)."""

    def __init__(self, affinities, offsets, n_attractive):
        self.affinities, self.offsets, self.n_attractive = affinities, np.asarray(offsets), int(n_attractive)
        self.shape, self.dtype = tuple(affinities.shape[1:]), np.dtype(np.float32)
        self.ndim = len(self.shape)
        self.reach = np.abs(self.offsets[:self.n_attractive]).max(axis=0).tolist()

    def __getitem__(self, sl):
        from ..segmentation import boundaries_from_affinities

        sl = sl if isinstance(sl, tuple) else (sl,)
        sl = tuple(sl) + (slice(None),) * (self.ndim - len(sl))
        outer, inner = [], []
        for s, n, r in zip(sl, self.shape, self.reach):
            start, stop, _ = s.indices(n)
            lo, hi = max(0, start - r), min(n, stop + r)
            outer.append(slice(lo, hi))
            inner.append(slice(start - lo, stop - lo))
        a = np.asarray(self.affinities[(slice(0, self.n_attractive),) + tuple(outer)], dtype=np.float32)
        b = boundaries_from_affinities(a, self.offsets[:self.n_attractive], n_attractive=self.n_attractive)
        return b[tuple(inner)]


SINGLE_SHOT = {"mws": _mws_single} | {m: _graph_single(m) for m in GRAPH_METHODS}
BLOCKWISE = {"mws": _mws_blockwise} | {m: _graph_blockwise(m) for m in GRAPH_METHODS}


def resolve_method(model, method, min_size, graph_options):
    """``(method, min_size, weighting additions)`` from the call and the model's stored defaults.

    ``model.segmentation_defaults`` (the shipped EM model's, chosen on ISBI slices 20-24) may hold
    ``method`` and per method its settings: ``min_size``; for ``"mws"`` the ``repulsive_bias``; for
    the superpixel methods :data:`GRAPH_OPTIONS` (``edge_model``: learned edge weights, see
    :mod:`xmodal.segmentation.edge_model`) and ``hand_weighted``, the settings of the same method
    with the plain mean-boundary weights. Those are used when the caller passes
    ``graph_options={"edge_model": None}``. Arguments given by the caller win.
    """
    from .._validation import describe, positive_int

    defaults = getattr(model, "segmentation_defaults", None) or {}
    method = defaults.get("method", "mws") if method is None else method
    if not isinstance(method, str) or method not in SINGLE_SHOT:
        raise ValueError(f"method: expected one of {sorted(SINGLE_SHOT)}, got {describe(method)}")
    if graph_options is None:
        graph_options = {}
    if not isinstance(graph_options, dict):
        raise TypeError(f"graph_options: expected a dict of superpixel options, got {describe(graph_options)}")
    unknown = sorted(set(graph_options) - set(GRAPH_OPTIONS))
    if unknown or (graph_options and method not in GRAPH_METHODS):
        raise ValueError(f"graph_options: expected options among {list(GRAPH_OPTIONS)} for a method in "
                         f"{list(GRAPH_METHODS)}, got {sorted(graph_options)} for method {method!r}")
    stored = dict(defaults.get(method) or {})
    hand = stored.get("hand_weighted") if isinstance(stored.get("hand_weighted"), dict) else None
    plain = "edge_model" in graph_options and graph_options["edge_model"] is None
    if plain and hand is not None:  # the caller turned the learned weights off: the hand-weighted settings
        stored = dict(hand)
    min_size = positive_int(stored.get("min_size", 0) if min_size is None else min_size, "min_size", minimum=0)
    if method in GRAPH_METHODS:
        extra = {k: v for k, v in stored.items() if k in GRAPH_OPTIONS} | dict(graph_options)
        if plain:
            extra.pop("edge_model")
    else:
        extra = {"repulsive_bias": float(stored["repulsive_bias"])} if stored.get("repulsive_bias") else {}
        if stored.get("strides") is not None:
            extra["strides"] = list(stored["strides"])
    return method, min_size, extra


def agglomerate(affinities, offsets, weighting: dict, *, method: str = "mws", target=None, block_shape=None,
                workdir=None, client=None, memory_voxels=None):
    """Labels from affinities, single-shot (``block_shape`` None) or block by block into ``target``.

    Blockwise, the superpixel methods on a 2D model's stack (``weighting["stacked"]``) whose slices
    have at most ``memory_voxels`` voxels run slice group by slice group, exactly as in memory
    (:func:`xmodal.segmentation.slicewise_superpixel_agglomeration`); otherwise on the boundary map
    block by block. Returns ``(labels, number of segments, affinities for the size filter)``: the
    affinities are read into memory once when single-shot and passed on, else the array itself.
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
    extra = {"plane_limit": memory_voxels} if method in GRAPH_METHODS else {}
    return (*BLOCKWISE[method](affinities, offsets, block_shape=block_shape, halo=halo, out=target, client=client,
                               workdir=workdir, **weighting, **extra), affinities)


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
