"""Multicut (correlation clustering) of region graphs through bioimage-cpp's solvers.

xmodal does not implement a multicut solver: it calls the well-kept solvers of bioimage-cpp (the
C++ core behind elf), an optional dependency (``pip install 'xmodal[multicut]'``).

Conventions: a **positive cost attracts** (cutting the edge costs that much), a negative cost
repels; the multicut minimises the summed cost of the cut edges. Costs from boundary probabilities
``p`` use the usual log-odds transform with a bias ``beta`` (elf / PlantSeg):

    cost = log((1 - p) / p) + log((1 - beta) / beta),   p clipped to [eps, 1 - eps]

``beta > 0.5`` favours cutting (more, smaller segments), ``beta < 0.5`` merging. Optionally the
costs are weighted by ``(edge_size / max(edge_size)) ** size_exponent``.
"""

from __future__ import annotations

import numbers

import numpy as np

from .._optional import optional_import
from .._validation import describe, positive_int
from ._gasp import _as_edge_values, _as_edges, _as_n_nodes
from ._values import as_float_values

__all__ = ["multicut", "probabilities_to_costs", "MULTICUT_SOLVERS"]

#: solver names accepted by :func:`multicut`
MULTICUT_SOLVERS = ("kernighan-lin", "greedy-additive", "greedy-fixation", "fusion-moves")


def probabilities_to_costs(probabilities, *, beta=0.5, edge_sizes=None, size_exponent=1.0, eps=1e-6):
    """Multicut costs from boundary probabilities (log-odds with bias ``beta``).

    Parameters
    ----------
    probabilities : array_like of float in [0, 1], shape (E,)
        Probability that each edge lies on a boundary (e.g. the mean boundary probability along
        the face between two superpixels).
    beta : float in (0, 1)
        Boundary bias: ``log((1 - beta) / beta)`` is added to every cost; 0.5 adds nothing.
    edge_sizes : array_like of float, shape (E,), optional
        Multiply the costs by ``(edge_sizes / edge_sizes.max()) ** size_exponent`` (long faces count
        more).
    size_exponent : float
        Exponent of the size weighting.
    eps : float
        Probabilities are clipped to ``[eps, 1 - eps]``.

    Returns
    -------
    ndarray of float64, shape (E,)
        Positive = attractive.
    """
    p = as_float_values(probabilities, "probabilities", "boundary probabilities", dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probabilities: expected a 1-D array, got shape {p.shape}")
    if not np.isfinite(p).all() or (p.size and (p.min() < 0 or p.max() > 1)):
        raise ValueError("probabilities: expected finite values in [0, 1]")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 < float(beta) < 1.0:
        raise ValueError(f"beta: expected a number in (0, 1), got {describe(beta)}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < float(eps) < 0.5:
        raise ValueError(f"eps: expected a number in (0, 0.5), got {describe(eps)}")
    p = np.clip(p, eps, 1.0 - eps)
    costs = np.log((1.0 - p) / p) + np.log((1.0 - float(beta)) / float(beta))
    if edge_sizes is not None:
        s = _as_edge_values(edge_sizes, "edge_sizes", p.size, positive=True)
        if isinstance(size_exponent, bool) or not isinstance(size_exponent, numbers.Real):
            raise TypeError(f"size_exponent: expected a number, got {describe(size_exponent)}")
        if s.size:
            costs = costs * (s / s.max()) ** float(size_exponent)
    return costs


def _relabel_nodes(labels: np.ndarray) -> np.ndarray:
    """Consecutive from 1 in node order of first occurrence."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
    return rank[inv].astype(np.uint32)


def multicut(n_nodes, edges, costs, *, solver="kernighan-lin", seed=0, n_threads=1):
    """Multicut of a graph with bioimage-cpp's solvers (optional dependency).

    Parameters
    ----------
    n_nodes : int
        Number of nodes.
    edges : array_like of int, shape (E, 2)
        Undirected edges ``(u, v)``, no repeats, no self-loops.
    costs : array_like of float, shape (E,)
        Positive = attractive (see :func:`probabilities_to_costs`).
    solver : {"kernighan-lin", "greedy-additive", "greedy-fixation", "fusion-moves"}
        ``"greedy-additive"``: greedy additive edge contraction (GAEC, Keuper et al. 2015);
        ``"kernighan-lin"`` (default, as in elf / PlantSeg): GAEC then Kernighan-Lin moves;
        ``"greedy-fixation"``; ``"fusion-moves"``: GAEC then fusion moves with watershed proposals
        (Beier et al. 2015), the slowest and best.
    seed : int
        Seed of the randomised proposals of ``"fusion-moves"``.
    n_threads : int
        Threads of ``"fusion-moves"``.

    Returns
    -------
    ndarray of uint32, shape (n_nodes,)
        Consecutive labels from 1 in node order of first occurrence.

    Raises
    ------
    ImportError
        If bioimage-cpp is not installed (``pip install 'xmodal[multicut]'``).
    """
    n = _as_n_nodes(n_nodes)
    uv = _as_edges(edges, n)
    c = _as_edge_values(costs, "costs", uv.shape[0])
    if solver not in MULTICUT_SOLVERS:
        raise ValueError(f"solver: expected one of {', '.join(map(repr, MULTICUT_SOLVERS))}, got {solver!r}")
    n_threads = positive_int(n_threads, "n_threads")
    if n == 0:
        return np.zeros(0, np.uint32)
    if uv.shape[0]:
        lo, hi = np.minimum(uv[:, 0], uv[:, 1]), np.maximum(uv[:, 0], uv[:, 1])
        key = lo * np.uint64(n) + hi
        if np.unique(key).size != key.size:
            raise ValueError("edges: expected no repeated (u, v) pairs")
    bgraph = optional_import("bioimage_cpp.graph", purpose="multicut")
    mc = optional_import("bioimage_cpp.graph.multicut", purpose="multicut")
    graph = bgraph.UndirectedGraph.from_edges(n, uv)
    objective = mc.MulticutObjective(graph, c)
    if solver == "greedy-additive":
        s = mc.GreedyAdditiveMulticut()
    elif solver == "greedy-fixation":
        s = mc.GreedyFixationMulticut()
    elif solver == "kernighan-lin":
        s = mc.KernighanLinMulticut()
    else:
        mc.GreedyAdditiveMulticut().optimize(objective)
        s = mc.FusionMoveMulticut(proposal_generator=mc.WatershedProposalGenerator(seed=int(seed)),
                                  number_of_threads=n_threads)
    labels = np.asarray(s.optimize(objective))
    return _relabel_nodes(labels)
