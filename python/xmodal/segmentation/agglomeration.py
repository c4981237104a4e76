"""Two-stage segmentation (PlantSeg's route): superpixels -> region graph -> agglomeration.

1. **Superpixels**: distance-transform watershed of a boundary map
   (:func:`~xmodal.segmentation.distance_transform_watershed`), or given by the caller.
2. **Region adjacency graph** of the superpixels with per-edge statistics of the boundary map (or
   of ``1 - affinity`` over the affinity links that cross each face):
   :func:`~xmodal.segmentation.region_adjacency_graph`, :func:`~xmodal.segmentation.edge_features`.
   The edge boundary value ``b_e`` is one statistic (``feature``: mean by default, or a quantile).
3. **Agglomeration** of the graph, by one of

   - ``"gasp"``: :func:`~xmodal.segmentation.gasp` with signed weights ``w_e = (1 - b_e) - beta``,
     face sizes as edge sizes (``linkage="mean"``, PlantSeg's default, is average linkage);
   - ``"multicut"``: bioimage-cpp's solvers (optional) with costs
     ``log((1 - b_e) / b_e) + log((1 - beta) / beta)`` (:func:`~xmodal.segmentation.probabilities_to_costs`);
   - ``"mws"``: :func:`~xmodal.segmentation.mutex_watershed_graph` with the edges ``w_e > 0``
     attractive (weight ``w_e``) and the others mutex (weight ``-w_e``): the same partition as GASP
     with ``linkage="abs_max", cannot_link=True``.

4. Optional size filter on the graph: a segment smaller than ``min_size`` voxels is merged into the
   neighbouring segment with the lowest (face-size weighted mean) boundary value, smallest
   segments first; then the node labels are projected to the voxels.

``beta`` is the boundary bias of every method: larger ``beta`` gives more, smaller segments; 0.5 is
neutral.
"""

from __future__ import annotations

import heapq
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from .._validation import describe
from ._values import as_float_values
from ._gasp import LINKAGES, gasp
from .rag import edge_features, region_adjacency_graph
from .superpixels import _as_mask, _relabel_first_occurrence, distance_transform_watershed

__all__ = ["AgglomerationInfo", "superpixel_agglomeration", "boundaries_from_affinities", "agglomerate_graph"]

METHODS = ("gasp", "multicut", "mws")


@dataclass
class AgglomerationInfo:
    """Diagnostics of :func:`superpixel_agglomeration`.

    Attributes
    ----------
    method : str
    n_superpixels : int
    n_edges : int
        Edges of the region adjacency graph.
    n_segments : int
        Segments in the result.
    seconds : dict
        Wall-clock seconds of ``superpixels``, ``graph`` (RAG and edge statistics),
        ``agglomeration``, ``size_filter`` and ``project``.
    superpixels : ndarray
        The superpixel label image.
    node_labels : ndarray of uint32
        Segment of every superpixel id (index = superpixel id; 0 for id 0).
    """

    method: str
    n_superpixels: int
    n_edges: int
    n_segments: int
    seconds: dict = field(default_factory=dict)
    superpixels: np.ndarray | None = field(default=None, repr=False)
    node_labels: np.ndarray | None = field(default=None, repr=False)


def boundaries_from_affinities(affinities, offsets, *, n_attractive=None, invert=False):
    """Per-voxel boundary probability ``1 - mean(merge probability)`` over the attractive links that
    touch each voxel (as source or as target; links leaving the volume are skipped).

    ``affinities`` (C, *spatial) are merge probabilities (``invert=True``: boundary probabilities);
    the first ``n_attractive`` channels (default ndim) are used.
    """
    from .mws import _check_affinities, _check_finite, _check_n_attractive, _check_offsets

    a = _check_affinities(affinities)
    spatial = a.shape[1:]
    o = _check_offsets(offsets, a.shape[0], len(spatial))
    na = _check_n_attractive(n_attractive, a.shape[0], len(spatial))
    if na == 0:
        raise ValueError("n_attractive: expected at least one attractive channel, got 0")
    _check_finite(a[:na])
    acc = np.zeros(spatial, np.float64)
    cnt = np.zeros(spatial, np.float64)
    for c in range(na):
        src, dst = [], []
        for size, off in zip(spatial, o[c]):
            src.append(slice(max(0, -off), size - max(0, off)))
            dst.append(slice(max(0, off), size - max(0, -off)))
        v = a[c][tuple(src)].astype(np.float64)
        if invert:
            v = 1.0 - v
        acc[tuple(src)] += v
        cnt[tuple(src)] += 1
        acc[tuple(dst)] += v
        cnt[tuple(dst)] += 1
    merge = np.divide(acc, cnt, out=np.ones(spatial, np.float64), where=cnt > 0)
    return (1.0 - merge).astype(np.float32)


def _check_beta(beta, *, open_interval: bool) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta: expected a number in (0, 1), got {describe(beta)}")
    b = float(beta)
    inside = (0.0 < b < 1.0) if open_interval else (0.0 <= b <= 1.0)
    if not inside:
        raise ValueError(f"beta: expected a number in {'(0, 1)' if open_interval else '[0, 1]'}, got {b}")
    return b


def _feature_quantiles(feature) -> tuple:
    """Quantile levels the edge statistic ``feature`` needs; ValueError for an unknown name."""
    if feature in ("mean", "min", "max"):
        return ()
    if feature == "median":
        return (0.5,)
    if isinstance(feature, str) and feature.startswith("q"):
        try:
            level = float(feature[1:]) / 100.0
        except ValueError:
            level = None
        if level is not None and 0.0 <= level <= 1.0:
            return (level,)
    raise ValueError(f"feature: expected 'mean', 'min', 'max', 'median' or 'qNN' (NN in [0, 100]), got {feature!r}")


def agglomerate_graph(n_nodes, edges, edge_boundary, edge_sizes, *, method="gasp", beta=0.5,
                      linkage="mean", cannot_link=False, solver="kernighan-lin", size_exponent=None):
    """Agglomerate a region graph whose edges carry a boundary value in [0, 1].

    Parameters
    ----------
    n_nodes, edges : int, (E, 2) ints
        The graph.
    edge_boundary : (E,) float in [0, 1]
        Boundary value of each edge (e.g. mean boundary probability along the face). NaN, infinite
        or out-of-range values raise ValueError naming the first such edge.
    edge_sizes : (E,) positive float
        Face sizes (GASP mean linkage weights; multicut size weighting).
    method : {"gasp", "multicut", "mws"}
    beta : float
        Boundary bias (see the module docstring).
    linkage, cannot_link : GASP options.
    solver, size_exponent : multicut options (``size_exponent=None``: no size weighting).

    Returns
    -------
    ndarray of uint32, shape (n_nodes,)
        Consecutive labels from 1 in node order of first occurrence.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    b = as_float_values(edge_boundary, "edge_boundary", "boundary values in [0, 1]", dtype=np.float64)
    bad = np.flatnonzero(~((b >= 0.0) & (b <= 1.0)))
    if bad.size:
        raise ValueError(f"edge_boundary: expected finite boundary values in [0, 1], edge {int(bad[0])} has "
                         f"{b.ravel()[bad[0]]!r} ({bad.size} such edges)")
    if method == "multicut":
        from ._multicut import multicut, probabilities_to_costs

        beta = _check_beta(beta, open_interval=True)
        costs = probabilities_to_costs(b, beta=beta, edge_sizes=None if size_exponent is None else edge_sizes,
                                       size_exponent=1.0 if size_exponent is None else size_exponent)
        return multicut(n_nodes, edges, costs, solver=solver)
    beta = _check_beta(beta, open_interval=False)
    w = (1.0 - b) - beta
    if method == "gasp":
        return gasp(n_nodes, edges, w, linkage=linkage, cannot_link=cannot_link, edge_sizes=edge_sizes)
    from .mws import mutex_watershed_graph

    uv = np.asarray(edges).reshape(-1, 2)
    att = w > 0
    return mutex_watershed_graph(n_nodes, uv[att], w[att], uv[~att], -w[~att])


def _merge_small_segments(seg, node_size, uv, b, size, min_size):
    """Graph-level size filter: merge segments below min_size into their best neighbour."""
    n_seg = int(seg.max()) + 1 if seg.size else 1
    seg_size = np.bincount(seg, weights=node_size, minlength=n_seg)
    seg_size[0] = 0
    small = np.flatnonzero((seg_size > 0) & (seg_size < min_size))
    if small.size == 0 or uv.shape[0] == 0:
        return seg
    su, sv = seg[uv[:, 0]], seg[uv[:, 1]]
    keep = (su != sv) & (su > 0) & (sv > 0)
    lo, hi = np.minimum(su[keep], sv[keep]), np.maximum(su[keep], sv[keep])
    key = lo.astype(np.int64) * n_seg + hi
    uk, inv = np.unique(key, return_inverse=True)
    wsum = np.bincount(inv, weights=b[keep] * size[keep], minlength=uk.size)
    wcnt = np.bincount(inv, weights=size[keep], minlength=uk.size)
    adj = [dict() for _ in range(n_seg)]
    for x, y, s_, c_ in zip((uk // n_seg).tolist(), (uk % n_seg).tolist(), wsum.tolist(), wcnt.tolist()):
        cell = [s_, c_]
        adj[x][y] = cell
        adj[y][x] = cell
    parent = np.arange(n_seg)
    sizes = seg_size.copy()
    heap = [(float(sizes[s]), int(s)) for s in small]
    heapq.heapify(heap)
    while heap:
        sz, s = heapq.heappop(heap)
        if parent[s] != s or sizes[s] != sz or sizes[s] >= min_size or not adj[s]:
            continue
        best = min(adj[s].items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[0]))[0]
        for nb, cell in adj[s].items():
            del adj[nb][s]
            if nb == best:
                continue
            cur = adj[best].get(nb)
            if cur is None:
                adj[best][nb] = cell
                adj[nb][best] = cell
            else:
                cur[0] += cell[0]
                cur[1] += cell[1]
        adj[s] = {}
        parent[s] = best
        sizes[best] += sizes[s]
        if sizes[best] < min_size:
            heapq.heappush(heap, (float(sizes[best]), int(best)))
    for i in range(n_seg):  # resolve chains
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent[seg]


def _boundary_map(boundaries, affinities, offsets, n_attractive, invert):
    """(affinities, offsets, n_attractive, boundary map); the first three None with ``boundaries``."""
    if affinities is not None:
        from .mws import _check_affinities, _check_n_attractive, _check_offsets

        if offsets is None:
            raise ValueError("offsets: required with affinities")
        a = _check_affinities(affinities)
        o = _check_offsets(offsets, a.shape[0], a.ndim - 1)
        na = _check_n_attractive(n_attractive, a.shape[0], a.ndim - 1)
        return a, o, na, boundaries_from_affinities(a, o, n_attractive=na, invert=invert)
    from .superpixels import _as_height

    return None, None, None, _as_height(boundaries, "boundaries")


def _superpixels(bmap, superpixels, m, **options):
    """Given superpixels checked and masked, or distance-transform watershed superpixels of ``bmap``."""
    if superpixels is None:
        return distance_transform_watershed(bmap, mask=m, **options)
    sp = np.asarray(superpixels)
    if sp.shape != bmap.shape:
        raise ValueError(f"superpixels: expected shape {bmap.shape}, got {sp.shape}")
    if sp.dtype == bool or not np.issubdtype(sp.dtype, np.integer):
        raise TypeError(f"superpixels: expected integer labels, got dtype {sp.dtype}")
    if m is not None:
        sp = np.where(m, sp, 0)
    return sp


def _weighted_graph(sp, bmap, a, o, na, *, invert, channels, long_range, feature, levels):
    """Region adjacency graph of the superpixels with one boundary value and size per sampled edge."""
    if a is not None:
        sel = slice(0, na) if channels == "attractive" else slice(None)
        lr_off = o[na:] if (long_range and o.shape[0] > na) else None
        rag = region_adjacency_graph(sp, ignore_label=0, offsets=lr_off)
        vals = a[sel] if invert else 1.0 - a[sel]
        feats = edge_features(rag, sp, affinities=vals.astype(a.dtype, copy=False), offsets=o[sel],
                              quantiles=levels)
        be = feats.get(feature)
        sizes = feats.count.astype(np.float64)
        if lr_off is not None and channels == "attractive":
            # edges found only through long-range links: statistics of those links
            lr_vals = a[na:] if invert else 1.0 - a[na:]
            lr = edge_features(rag, sp, affinities=lr_vals.astype(a.dtype, copy=False), offsets=o[na:],
                               quantiles=levels)
            only = (sizes == 0) & (lr.count > 0)
            be = np.where(only, lr.get(feature), be)
            sizes = np.where(only, lr.count, sizes).astype(np.float64)
    else:
        rag = region_adjacency_graph(sp, ignore_label=0)
        feats = edge_features(rag, sp, bmap, quantiles=levels)
        be = feats.get(feature)
        sizes = feats.count.astype(np.float64)
    be = np.clip(np.nan_to_num(be, nan=1.0), 0.0, 1.0)
    ok = sizes > 0  # edges without samples carry no evidence
    return rag, rag.edges[ok], be[ok], sizes[ok]


def _learned_graph(sp, a, o, na, *, invert, edge_model):
    """Region graph with the boundary value ``1 - p_merge`` of a learned edge classifier."""
    from .edge_model import edge_feature_matrix, edge_feature_names

    merge = 1.0 - a if invert else a
    ranks = any(str(n).startswith("rank_") for n in edge_model.feature_names)
    shape = any(str(n).startswith("shared_") for n in edge_model.feature_names)
    names = edge_feature_names(o, na, ranks=ranks, shape=shape)
    missing = [n for n in edge_model.feature_names if n not in names]
    if missing:
        raise ValueError(f"edge_model: trained on features {list(edge_model.feature_names)}, these affinities' "
                         f"offsets give {names} (missing {missing})")
    rag, X, count = edge_feature_matrix(sp, merge, o, n_attractive=na, ranks=ranks, shape=shape)
    be = 1.0 - edge_model.merge_probability(X, names)
    sizes = count.astype(np.float64)
    ok = sizes > 0
    return rag, rag.edges[ok], np.clip(be[ok], 0.0, 1.0), sizes[ok]


def superpixel_agglomeration(boundaries=None, *, affinities=None, offsets=None, n_attractive=None,
                             invert=False, method="gasp", superpixels=None, mask=None, beta=0.5,
                             feature="mean", channels="attractive", long_range=False, linkage="mean",
                             cannot_link=False, solver="kernighan-lin", size_exponent=None,
                             threshold=0.5, sigma_seeds=1.0, sigma_weights=2.0, alpha=1.0,
                             superpixel_min_size=100, stacked=False, spacing=None, min_size=0,
                             edge_model=None, return_info=False):
    """Segment a boundary map (or affinities) by superpixels + region-graph agglomeration.

    Parameters
    ----------
    boundaries : ndarray of float, 2D or 3D, optional
        Boundary probabilities (1 = boundary). Give this or ``affinities``.
    affinities : ndarray of float, shape (C, *spatial), optional
        Merge probabilities (xmodal convention; ``invert=True`` for boundary probabilities), channel
        ``c`` joining ``p`` and ``p + offsets[c]``. The superpixels grow on
        :func:`boundaries_from_affinities`; the edge statistics are taken over the links that cross
        between adjacent superpixels.
    offsets : array_like of int, shape (C, ndim)
        With ``affinities``.
    n_attractive : int, optional
        Attractive (short-range) channels, default ndim.
    invert : bool
        ``affinities`` are boundary probabilities.
    method : {"gasp", "multicut", "mws"}
        Agglomeration (see the module docstring).
    superpixels : ndarray of int, optional
        Use these superpixels (0 = background) instead of computing them.
    mask : ndarray of bool, optional
        Voxels outside are background (label 0).
    beta : float
        Boundary bias; larger gives more segments (default 0.5, neutral).
    feature : str
        Edge statistic of the boundary values: ``"mean"`` (default), ``"median"``, ``"min"``,
        ``"max"`` or ``"qNN"`` (quantile at NN %, e.g. ``"q10"``).
    channels : {"attractive", "all"}
        With affinities: which channels' links feed the edge statistics (default the attractive
        ones: better on the ISBI 2012 training slices 20-24 with the shipped model, ARand 0.026 vs
        0.031).
    long_range : bool
        With affinities: superpixel pairs joined only by long-range links (the channels after
        ``n_attractive``) become edges too, with the statistics of those links.
    linkage, cannot_link : GASP options (:func:`~xmodal.segmentation.gasp`).
    solver, size_exponent : multicut options (:func:`~xmodal.segmentation.multicut`,
        :func:`~xmodal.segmentation.probabilities_to_costs`).
    threshold, sigma_seeds, sigma_weights, alpha, superpixel_min_size, stacked, spacing
        Superpixel options (:func:`~xmodal.segmentation.distance_transform_watershed`,
        ``superpixel_min_size`` is its ``min_size``).
    min_size : int
        Graph-level size filter of the result in voxels (0: none).
    edge_model : EdgeClassifier, BoostedEdgeClassifier or their dict form, optional
        Learned edge weights (:mod:`xmodal.segmentation.edge_model`): the edge boundary value is
        ``1 - p_merge`` of the classifier on :func:`~xmodal.segmentation.edge_feature_matrix`
        (face edges only), instead of ``feature``. Needs ``affinities`` whose offsets give the
        classifier's features (a ValueError names the mismatch); ``feature``, ``channels`` and
        ``long_range`` are then unused.
    return_info : bool
        Also return an :class:`AgglomerationInfo`.

    Returns
    -------
    labels : ndarray of uint32, spatial shape
        Consecutive from 1 in raster order of first occurrence; 0 outside the mask.
    info : AgglomerationInfo
        Only with ``return_info=True``.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if (boundaries is None) == (affinities is None):
        raise ValueError("boundaries, affinities: give exactly one of them")
    if channels not in ("all", "attractive"):
        raise ValueError(f"channels: expected 'all' or 'attractive', got {channels!r}")
    if linkage not in LINKAGES:
        raise ValueError(f"linkage: expected one of {', '.join(map(repr, LINKAGES))}, got {linkage!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(f"min_size: expected a non-negative integer, got {describe(min_size)}")
    _check_beta(beta, open_interval=method == "multicut")
    levels = _feature_quantiles(feature)
    classifier = None
    if edge_model is not None:
        from .edge_model import edge_classifier_from_dict

        classifier = edge_classifier_from_dict(edge_model)
        if affinities is None:
            raise ValueError("edge_model: learned edge weights need affinities (their features), got boundaries")
    seconds = {}
    t0 = time.perf_counter()
    a, o, na, bmap = _boundary_map(boundaries, affinities, offsets, n_attractive, invert)
    spatial = bmap.shape
    m = _as_mask(mask, spatial)
    sp = _superpixels(bmap, superpixels, m, threshold=threshold, sigma_seeds=sigma_seeds,
                      sigma_weights=sigma_weights, alpha=alpha, min_size=superpixel_min_size, stacked=stacked,
                      spacing=spacing)
    seconds["superpixels"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if edge_model is not None:
        rag, uv, be, sizes = _learned_graph(sp, a, o, na, invert=invert, edge_model=classifier)
    else:
        rag, uv, be, sizes = _weighted_graph(sp, bmap, a, o, na, invert=invert, channels=channels,
                                             long_range=long_range, feature=feature, levels=levels)
    seconds["graph"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    node_labels = agglomerate_graph(rag.n_nodes, uv, be, sizes, method=method, beta=beta, linkage=linkage,
                                    cannot_link=cannot_link, solver=solver, size_exponent=size_exponent)
    node_labels = node_labels.astype(np.int64)
    node_labels[0] = 0  # background / ignore label
    seconds["agglomeration"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if min_size > 0:
        node_size = np.bincount(sp.ravel().astype(np.int64), minlength=rag.n_nodes).astype(np.float64)
        node_labels = _merge_small_segments(node_labels, node_size, uv.astype(np.int64), be, sizes, int(min_size))
    seconds["size_filter"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    labels, n_seg = _relabel_first_occurrence(node_labels[sp.astype(np.int64, copy=False)])
    labels = labels.astype(np.uint32 if n_seg < (1 << 32) - 1 else np.uint64)
    seconds["project"] = time.perf_counter() - t0
    if return_info:
        return labels, AgglomerationInfo(method=method, n_superpixels=int(len(np.unique(sp[sp > 0]))),
                                         n_edges=int(uv.shape[0]), n_segments=n_seg, seconds=seconds,
                                         superpixels=sp, node_labels=node_labels)
    return labels
