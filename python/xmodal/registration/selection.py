"""Helpers for choosing how to register two point sets: a faster pre-alignment search for large
sets, and out-of-sample criteria that compare fitted models on held-out points.

These are building blocks for ``register_cells(transform="auto")`` (issue 12); see
``scripts/eval_register_models.py`` for how they were evaluated.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import as_points, positive_float, positive_int

__all__ = ["fast_prealign", "heldout_log_likelihood", "heldout_split"]


def fast_prealign(moving, fixed, *, n_points: int = 500, seed: int = 0, **options):
    """:func:`xmodal.pipelines.prealign.prealign` run on farthest-point subsamples.

    The rotation search scores every candidate by CPD refinements and a matching on the points it
    is given; on large sets (thousands of cells) that dominates the registration. Farthest-point
    sampling keeps the shape of the whole cloud with ``n_points`` points (evenly spread, unlike a
    random subsample), so the search gives the same orientation at a fraction of the cost. The
    result applies to the full sets (``result.apply(moving)``).

    Parameters
    ----------
    moving, fixed : (n, d) arrays, physical units
    n_points : int
        Points of each set used by the search (sets no larger are used whole).
    seed : int
        Passed on (sets are no longer subsampled at random inside).
    **options
        Further keyword arguments of ``prealign`` (``rotations``, ``scale``, ``refine_iter``,
        ``score_affine``, ``unmatched_cost``).
    """
    from ..pipelines.prealign import prealign
    from . import farthest_point_centers

    mov = as_points(moving, "moving")
    fix = as_points(fixed, "fixed")
    n_points = positive_int(n_points, "n_points", minimum=4)
    ms = mov if len(mov) <= n_points else mov[np.sort(farthest_point_centers(mov, n_points))]
    fs = fix if len(fix) <= n_points else fix[np.sort(farthest_point_centers(fix, n_points))]
    return prealign(ms, fs, seed=seed, max_points=max(len(ms), len(fs)), **options)


def heldout_split(n: int, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean mask of the held-out points: a random ``fraction`` (at least one point, at most
    n - 1), reproducible from ``seed``."""
    n = positive_int(n, "n", minimum=2)
    fraction = positive_float(fraction, "fraction")
    if fraction >= 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    k = int(np.clip(round(fraction * n), 1, n - 1))
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).choice(n, k, replace=False)] = True
    return mask


def heldout_log_likelihood(moved, held, sigma2: float, *, w: float = 0.1, volume: float | None = None,
                           k: int = 32) -> float:
    """Mean log-likelihood of held-out fixed points under a fitted CPD mixture.

    The mixture of CPD: equal-weight isotropic Gaussians of variance ``sigma2`` at the ``moved``
    points, plus a uniform outlier component of weight ``w`` over ``volume`` (default the
    bounding box of ``held`` and ``moved`` together). Fit the model on the other fixed points, then
    compare models by this score (higher is better): a transform that bends to fit noise gets a
    small sigma2 and pays for it on points it has not seen. Only the ``k`` nearest centres of each
    held-out point enter the sum (the others are negligible at the fitted sigma2).
    """
    moved = as_points(moved, "moved")
    held = as_points(held, "held")
    sigma2 = positive_float(sigma2, "sigma2")
    d = held.shape[1]
    if volume is None:
        both = np.vstack([held, moved])
        volume = float(np.prod(np.maximum(both.max(0) - both.min(0), 1e-12)))
    from scipy.spatial import cKDTree

    kk = min(k, len(moved))
    dist, _ = cKDTree(moved).query(held, k=kk)
    dist = np.asarray(dist).reshape(len(held), kk)
    log_g = -0.5 * dist ** 2 / sigma2 - 0.5 * d * math.log(2 * math.pi * sigma2) - math.log(len(moved))
    mx = log_g.max(1)
    lg = mx + np.log(np.exp(log_g - mx[:, None]).sum(1))
    ll = np.logaddexp(math.log1p(-w) + lg, math.log(w) - math.log(volume)) if w > 0 else lg
    return float(ll.mean())
