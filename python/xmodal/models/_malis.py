"""MALIS edge weights and loss for training affinity networks against false merges and splits.

MALIS (Turaga et al., NIPS 2009) weights each nearest-neighbour edge by the number of ground-truth
voxel pairs whose *maximin* edge it is: the weakest edge on the best path between the two voxels,
the edge a segmentation by thresholding or agglomeration cuts or keeps last. A pair of the same
object whose maximin affinity is low is a false split waiting to happen; a pair of different
objects whose maximin affinity is high is a false merge (a gap in a membrane). The constrained form
of Funke et al. (IEEE TPAMI 2019) computes the two kinds in separate passes: same-object pairs with
every between-object edge forced to 0, different-object pairs with every within-object edge forced
to 1, so each pass only sees the errors of its own kind.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class MalisWeights(NamedTuple):
    """Pair counts of :func:`malis_weights`, each of the affinities' shape (float64)."""

    positive: np.ndarray
    negative: np.ndarray
    n_objects: int


def malis_weights(affinities, targets, mask=None) -> MalisWeights:
    """MALIS pair counts of the nearest-neighbour edges of one 2D or 3D image.

    Parameters
    ----------
    affinities : (ndim, *spatial) float32 or float64 array, ndim = 2 or 3 (1 also works)
        Predicted merge probabilities of the nearest-neighbour edges: channel ``d`` at voxel ``p``
        relates ``p`` and ``p - e_d`` (the offsets ``(-1, 0)``, ``(0, -1)`` in 2D, the first two
        channels of the shipped EM models). Finite values; a network's output is detached first.
    targets : array of the same shape
        Target merge probabilities (1 = same object, 0 = different objects or boundary), as made by
        :func:`affinity_targets` for the same offsets. The ground-truth objects are the connected
        components of the target-1 edges with at least two voxels; voxels without a target-1 edge
        (membranes, background) belong to no object and are in no pair.
    mask : array of the same shape, optional
        0 for an edge without a target (e.g. a simulated missing patch): left out of the graph.

    Returns
    -------
    MalisWeights
        ``positive``: on target-1 edges, the number of same-object voxel pairs whose maximin edge
        it is, with every target-0 edge forced to 0 (raise these affinities). ``negative``: on
        target-0 edges, the number of different-object pairs whose maximin edge it is, with every
        target-1 edge forced to 1 (lower these). ``n_objects``: ground-truth objects found.
        Ties are broken by edge index (channel-major, then raster order), so the result is
        deterministic.

    Raises
    ------
    ValueError
        If the shapes disagree, the channel count is not the number of spatial axes, or an affinity
        in the graph is not finite.
    TypeError
        If ``affinities`` is not float32 / float64.
    """
    from .. import _core

    affinities = np.asarray(affinities)
    if affinities.dtype not in (np.float32, np.float64):
        raise TypeError(f"affinities: expected float32 or float64 values, got dtype {affinities.dtype}")
    targets = np.asarray(targets)
    if targets.shape != affinities.shape:
        raise ValueError(f"targets: expected the shape of affinities {affinities.shape}, got {targets.shape}")
    targets = (targets != 0).astype(np.uint8)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != affinities.shape:
            raise ValueError(f"mask: expected the shape of affinities {affinities.shape}, got {mask.shape}")
        mask = (mask != 0).astype(np.uint8)
    r = _core.malis_weights(affinities, targets, mask)
    return MalisWeights(r["weight_positive"], r["weight_negative"], int(r["n_objects"]))


def malis_loss(logits: Any, targets: Any, mask: Any = None) -> Any:
    """Constrained MALIS loss of a batch: pair-weighted binary cross-entropy, torch in, torch out.

    ``logits``, ``targets``, ``mask``: ``(B, ndim, *spatial)`` torch tensors of the nearest-neighbour
    channels (see :func:`malis_weights`; ``mask`` may be None). Per sample, the loss is
    ``sum(w+ * BCE(logit, 1) + w- * BCE(logit, 0)) / sum(w+ + w-)`` with the pair counts ``w+ / w-``
    of :func:`malis_weights` computed on ``sigmoid(logits)`` (no gradient through the counts); the
    batch loss is the mean over samples with at least one counted pair (0 if none has one).
    """
    import torch
    import torch.nn.functional as F

    prob = torch.sigmoid(logits.detach()).cpu().numpy()
    tgt = targets.detach().cpu().numpy()
    msk = None if mask is None else mask.detach().cpu().numpy()
    losses = []
    for b in range(prob.shape[0]):
        w = malis_weights(prob[b], tgt[b], None if msk is None else msk[b])
        total = float(w.positive.sum() + w.negative.sum())
        if total <= 0:
            continue
        wp = torch.from_numpy((w.positive / total).astype(np.float32)).to(logits.device)
        wn = torch.from_numpy((w.negative / total).astype(np.float32)).to(logits.device)
        lb = logits[b]
        losses.append((wp * F.softplus(-lb) + wn * F.softplus(lb)).sum())
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()
