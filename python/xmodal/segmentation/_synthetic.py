"""Synthetic affinities for tests and benchmarks (private).

Noisy affinities of a random Voronoi partition: channel ``c`` at voxel ``p`` is 1 where ``p`` and
``p + offsets[c]`` lie in the same Voronoi cell and 0 otherwise, plus Gaussian noise, clipped to
[0, 1]. Edges that leave the volume get affinity 0 (they are dropped by the mutex watershed anyway).
"""

from __future__ import annotations

import numpy as np

#: The 12 offsets of the benchmark (z, y, x): 3 attractive nearest neighbours, then 9 repulsive
#: long-range offsets (the Platynereis set of 3- and 9-voxel offsets with a shorter z step, plus two
#: diagonals).
BENCH_OFFSETS_3D = (
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    (-2, 0, 0), (0, -3, 0), (0, 0, -3),
    (-3, 0, 0), (0, -9, 0), (0, 0, -9),
    (-4, -9, 0), (0, -9, -9), (0, 9, -9),
)


def voronoi_labels(shape, n_cells: int, seed: int = 0) -> np.ndarray:
    """Label each voxel of ``shape`` by its nearest of ``n_cells`` random points (1-based, int32)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.random((n_cells, len(shape))) * np.asarray(shape)
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T
    _, nearest = cKDTree(points).query(grid, workers=1)
    return (nearest.astype(np.int32) + 1).reshape(shape)


def affinities_from_labels(labels: np.ndarray, offsets, *, dtype=np.float32) -> np.ndarray:
    """Exact merge affinities of ``labels``: 1 where p and p + offset share a label, else 0."""
    labels = np.asarray(labels)
    shape = labels.shape
    out = np.zeros((len(offsets),) + shape, dtype=dtype)
    for c, off in enumerate(offsets):
        src, dst = [], []
        ok = True
        for size, o in zip(shape, off):
            if abs(o) >= size:
                ok = False
                break
            src.append(slice(max(0, -o), size - max(0, o)))
            dst.append(slice(max(0, o), size - max(0, -o)))
        if ok:
            out[(c,) + tuple(src)] = labels[tuple(src)] == labels[tuple(dst)]
    return out


def noisy_affinities(labels: np.ndarray, offsets, *, sigma: float = 0.25, seed: int = 0,
                     dtype=np.float32) -> np.ndarray:
    """Affinities of ``labels`` plus N(0, sigma) noise, clipped to [0, 1]."""
    affs = affinities_from_labels(labels, offsets, dtype=dtype)
    rng = np.random.default_rng(seed)
    for c in range(affs.shape[0]):  # channel by channel keeps the temporary small
        affs[c] += rng.normal(0.0, sigma, size=affs.shape[1:]).astype(dtype)
    np.clip(affs, 0.0, 1.0, out=affs)
    return affs
