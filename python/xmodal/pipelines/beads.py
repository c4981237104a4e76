"""Fiducial (bead) registration, as in the IMAXT workflow.

Beads visible in both modalities are matched within a radius; an affine transform is fitted to the
matches and refined by re-matching until the number of matches stops growing. Starting
orientations cover the principal axes with every sign flip (mirror images included, since one
modality may image the specimen from the other side).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .._validation import as_bool, as_points, positive_float, positive_int
from .prealign import principal_axes


@dataclass
class BeadRegistration:
    """Result of :func:`register_beads`.

    ``matrix`` and ``offset`` map a moving bead p to ``matrix @ p + offset`` (physical units);
    ``fixed_index`` / ``moving_index`` are the bead pairs matched within ``radius`` under it;
    ``rms`` is their root-mean-square residual; ``reflection`` says whether the map mirrors.
    """

    matrix: np.ndarray
    offset: np.ndarray
    fixed_index: np.ndarray
    moving_index: np.ndarray
    rms: float
    reflection: bool
    iterations: int

    @property
    def n_matched(self) -> int:
        return int(len(self.fixed_index))

    def apply(self, points) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.offset

    def transform(self):
        """As an :class:`xmodal.registration.AffineTransform`."""
        from ..registration import AffineTransform

        return AffineTransform(self.matrix, self.offset)


def _mutual_matches(moved: np.ndarray, fixed: np.ndarray, radius: float):
    from scipy.spatial import cKDTree

    d1, i1 = cKDTree(fixed).query(moved, distance_upper_bound=radius)
    _, i2 = cKDTree(moved).query(fixed, distance_upper_bound=radius)
    m = np.flatnonzero(np.isfinite(d1))
    keep = m[i2[i1[m]] == m]
    return keep, i1[keep]


def _fit_affine(src: np.ndarray, dst: np.ndarray):
    # Centred and scaled by the RMS radius: lstsq's relative rcond then sees a unit-free design
    # (raw coordinates of 1e12 next to the column of ones lost the fit).
    d = src.shape[1]
    centroid = src.mean(axis=0)
    a = src - centroid
    rho = float(np.sqrt((a ** 2).sum(axis=1).mean())) or 1.0
    x = np.hstack([a / rho, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(x, dst, rcond=None)
    mat = sol[:d].T / rho
    return mat, sol[d] - mat @ centroid


def register_beads(fixed, moving, *, radius: float, max_iter: int = 50, reflections: bool = True,
                   min_matches: int | None = None) -> BeadRegistration:
    """Affine registration of two bead (fiducial) point sets by match maximisation.

    Parameters
    ----------
    fixed, moving : (n, d) arrays, d = 2 or 3, physical units
    radius : float
        Beads closer than this (physical units) after the transform can match; matches are mutual
        nearest neighbours.
    max_iter : int
        Re-matching rounds per radius of the coarse-to-fine schedule (six radii from a quarter of
        the fixed set's extent down to ``radius``).
    reflections : bool
        Also try mirrored starting orientations. Starts are every sign flip of the axes as given
        (both modalities share stage axes up to flips) and of the principal axes; with
        ``reflections=False`` only the proper ones.
    min_matches : int, optional
        Fail with ValueError when fewer beads match (default d + 2).
    """
    reflections = as_bool(reflections, "reflections")
    fix = as_points(fixed, "fixed", min_points=3)
    mov = as_points(moving, "moving", min_points=3)
    if fix.shape[1] != mov.shape[1]:
        raise ValueError(f"fixed, moving: expected the same dimension, got {fix.shape[1]}D and {mov.shape[1]}D")
    radius = positive_float(radius, "radius")
    max_iter = positive_int(max_iter, "max_iter")
    d = fix.shape[1]
    min_matches = positive_int(min_matches if min_matches is not None else d + 2, "min_matches")
    cm, am, _ = principal_axes(mov)
    cf, af, _ = principal_axes(fix)
    extent = float(np.linalg.norm(fix.max(axis=0) - fix.min(axis=0)))
    # Radii from coarse to fine: a coarse start tolerates a rough initial orientation.
    radii = np.geomspace(max(radius, 0.25 * extent), radius, num=6)
    starts = []
    for signs in itertools.product((1.0, -1.0), repeat=d):
        q = np.diag(signs)
        if not reflections and np.linalg.det(q) < 0:
            continue
        starts.append(q)  # the frames as they are (same stage axes), up to flips
        starts.append(af @ q @ am.T)  # principal axes, up to flips
    best = None
    for mat0 in starts:
        mat = mat0
        off = cf - mat @ cm
        it = 0
        for r in radii:
            prev = -1
            for _ in range(max_iter):
                it += 1
                mi, fi = _mutual_matches(mov @ mat.T + off, fix, r)
                if len(mi) <= prev or len(mi) < d + 1:
                    break
                prev = len(mi)
                mat, off = _fit_affine(mov[mi], fix[fi])
        mi, fi = _mutual_matches(mov @ mat.T + off, fix, radius)
        if len(mi) == 0:
            continue
        rms = float(np.sqrt(np.mean(np.sum((mov[mi] @ mat.T + off - fix[fi]) ** 2, axis=1))))
        key = (len(mi), -rms)
        if best is None or key > best[0]:
            best = (key, mat, off, mi, fi, rms, it)
    if best is None or best[0][0] < min_matches:
        got = 0 if best is None else best[0][0]
        raise ValueError(f"radius: only {got} bead pairs match within radius {radius} (need {min_matches}); "
                         "increase radius or check that both sets show the same beads")
    _, mat, off, mi, fi, rms, it = best
    return BeadRegistration(mat, off, fi, mi, rms, bool(np.linalg.det(mat) < 0), it)
