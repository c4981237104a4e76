"""The tiling-artifact metric: disagreement of independently predicted overlapping tiles."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .._validation import per_axis
from ._grid import align_down, align_up
from ._model import Runner, kept_state
from ._normalize import quantile_normalizer
from ._plan import geometry, as_image, layout, read_window


@dataclass
class TileMismatch:
    """Result of :func:`tile_mismatch`.

    Attributes
    ----------
    max_abs_diff : float
        max |O1 - O2| over the valid overlaps of all pairs (0 when the tiles agree).
    median_one_minus_dice : float
        Median over pairs of 1 - Dice of the binarised outputs (``> threshold``) in the valid
        overlap (a pair where both are empty counts as Dice 1).
    pair_max_abs_diff, pair_one_minus_dice : numpy.ndarray
        The per-pair values.
    pairs : list of (tuple, tuple)
        Grid indices of the pairs (face neighbours).
    tile_shape, stride, halo : tuple
        The windows, their spacing and the margin removed from overlaps (voxels).
    """

    max_abs_diff: float
    median_one_minus_dice: float
    pair_max_abs_diff: np.ndarray
    pair_one_minus_dice: np.ndarray
    pairs: list
    tile_shape: tuple
    stride: tuple
    halo: tuple


def tile_mismatch(model, image, *, tile_shape, overlap=None, halo="auto", threshold=0.5, normalize=None,
                  channel_axis=0, device="auto") -> TileMismatch:
    """Disagreement between overlapping tiles predicted independently (the tiling-artifact metric).

    Windows of ``tile_shape`` are placed every ``tile_shape - overlap`` voxels (starts on the
    down-sampling grid, the last window flush with the volume's end) and each is predicted on its
    own, without halo cropping. For every pair of face-neighbouring windows the *valid overlap* is
    their intersection minus ``halo`` voxels from each window edge that lies inside the volume (the
    zone where zero padding at a window edge changes the output even for a perfect network). There
    the two predictions O1, O2 should agree; the metric is ``max |O1 - O2|`` and the median over
    pairs of ``1 - Dice(O1 > threshold, O2 > threshold)``. For an eval-mode BatchNorm network both
    are 0 (up to float rounding); per-window statistics (InstanceNorm, per-tile normalisation) make
    them positive.

    Parameters
    ----------
    model, image, channel_axis, device, normalize
        As for :func:`predict_tiled` (``normalize`` "quantile" uses global statistics; a callable
        is applied per window, which is how per-tile normalisation artefacts can be studied).
    tile_shape : sequence of int
        Window shape (voxels), a multiple of the down-sampling factor.
    overlap : int or sequence of int, optional
        Overlap of neighbouring windows; default ``2 * halo + factor`` (the smallest with a valid
        overlap), rounded to the factor.
    halo : "auto" or int or sequence of int
        Margin removed from overlaps; ``"auto"``: half the receptive field (:func:`receptive_field`).
    threshold : float
        Binarisation threshold of the outputs for Dice (0.5 for probabilities, 0 for logits).

    Returns
    -------
    TileMismatch
        Predictions are kept in memory: meant for study-sized images.
    """
    image = as_image(image)
    nd, caxis, _ = layout(model, image, channel_axis)
    shape = tuple(int(s) for i, s in enumerate(image.shape) if i != caxis)
    factor, halo = geometry(model, nd, int(image.shape[caxis]) if caxis is not None else 1, halo)
    tile = per_axis(tile_shape, nd, "tile_shape", minimum=1)
    if any(t % f for t, f in zip(tile, factor)):
        raise ValueError(f"tile_shape: must be a multiple of the down-sampling factor {factor}, got {tile}")
    if overlap is None:
        overlap = tuple(align_up(2 * h + f, f) for h, f in zip(halo, factor))
    overlap = per_axis(overlap, nd, "overlap")
    stride = tuple(t - o for t, o in zip(tile, overlap))
    if any(s < f for s, f in zip(stride, factor)):
        raise ValueError(f"overlap: must leave a stride of at least the factor {factor}; tile {tile}, overlap {overlap}")
    if any(s % f for s, f in zip(stride, factor)):
        raise ValueError(f"overlap: tile - overlap must be a multiple of the factor {factor}, got stride {stride}")
    if any(t > n for t, n in zip(tile, shape)):
        raise ValueError(f"tile_shape: {tile} exceeds the image's spatial shape {shape}")
    if any(o <= 2 * h for o, h in zip(overlap, halo)):
        raise ValueError(f"overlap: must exceed 2 * halo = {tuple(2 * h for h in halo)} for a valid overlap, got {overlap}")
    normalizer = quantile_normalizer(image, channel_axis=caxis) if normalize == "quantile" else normalize
    runner = Runner(model, device)
    preds = {}
    with kept_state(model):  # a model in training mode gets its buffers (BatchNorm statistics) back
        for idx, start in _window_starts(shape, tile, stride, factor):
            window = tuple(slice(s, s + t) for s, t in zip(start, tile))
            preds[idx] = (start, runner(read_window(image, caxis, window, normalizer)[None])[0])
    pair_diff, pair_dice, pairs = [], [], []
    for idx, (s1, p1) in preds.items():
        for ax in range(nd):
            nb = idx[:ax] + (idx[ax] + 1,) + idx[ax + 1:]
            if nb not in preds:
                continue
            s2, p2 = preds[nb]
            region = _valid_overlap(s1, s2, tile, halo, shape)
            if region is None:
                continue
            diff, one_minus_dice = _disagreement(p1[_relative(region, s1)], p2[_relative(region, s2)], threshold)
            pair_diff.append(diff)
            pair_dice.append(one_minus_dice)
            pairs.append((idx, nb))
    if not pairs:
        raise ValueError("tile_shape: the image holds no pair of overlapping windows with a valid overlap")
    d = np.asarray(pair_diff)
    e = np.asarray(pair_dice)
    return TileMismatch(max_abs_diff=float(d.max()), median_one_minus_dice=float(np.median(e)),
                        pair_max_abs_diff=d, pair_one_minus_dice=e, pairs=pairs, tile_shape=tile,
                        stride=stride, halo=halo)


def _window_starts(shape, tile, stride, factor):
    """(grid index, start) of every window: every ``stride`` voxels, the last flush with the end
    (start on the factor grid)."""
    starts_axis = []
    for n, t, s, f in zip(shape, tile, stride, factor):
        st = list(range(0, max(n - t, 0) + 1, s))
        last = align_down(n - t, f)
        if st[-1] != last and last > st[-1]:
            st.append(last)
        starts_axis.append(st)
    for idx in itertools.product(*[range(len(s)) for s in starts_axis]):
        yield idx, tuple(starts_axis[a][i] for a, i in enumerate(idx))


def _valid_overlap(s1, s2, tile, halo, shape):
    """The intersection of two windows minus ``halo`` next to every window edge inside the volume,
    as (lo, hi) per axis, or None when nothing is left."""
    lo, hi = [], []
    for a in range(len(shape)):
        a0 = max(s1[a], s2[a])
        a1 = min(s1[a] + tile[a], s2[a] + tile[a])
        for s in (s1[a], s2[a]):
            if s > 0:
                a0 = max(a0, s + halo[a])
            if s + tile[a] < shape[a]:
                a1 = min(a1, s + tile[a] - halo[a])
        lo.append(a0)
        hi.append(a1)
    return None if any(b <= a for a, b in zip(lo, hi)) else (lo, hi)


def _relative(region, start):
    """The region (lo, hi) in the coordinates of the prediction of the window at ``start``."""
    lo, hi = region
    return (slice(None),) + tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))


def _disagreement(o1, o2, threshold) -> tuple[float, float]:
    """(max |o1 - o2|, 1 - Dice of the binarised outputs; both empty counts as Dice 1)."""
    b1, b2 = o1 > threshold, o2 > threshold
    denom = int(b1.sum()) + int(b2.sum())
    dice = 1.0 if denom == 0 else 2.0 * int(np.logical_and(b1, b2).sum()) / denom
    return float(np.max(np.abs(o1 - o2))), 1.0 - dice
