"""Workloads and the C. elegans accuracy evaluation of the CPD benchmarks (not part of the package)."""

from __future__ import annotations

import numpy as np
from _data import data_path

PLATY_DIR = "platynereis_6dpf_nuclei"


def platynereis_nuclei() -> np.ndarray | None:
    """The 11,497 EM nuclei (µm, columns z, y, x) or None when the data set is absent."""
    path = data_path(PLATY_DIR, "nuclei_1_0_1_em_and_prospr_space.tsv")
    if not path.exists():
        return None
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    df = df[df["label_id"] != 0]  # label 0 is the background segment
    return df[["anchor_z", "anchor_y", "anchor_x"]].to_numpy(np.float64)


def perturbed_copy(fixed: np.ndarray, *, displacement_rms: float = 6.0, noise: float = 1.0,
                   missing: float = 0.08, length_scale: float = 60.0, seed: int = 0):
    """Moving set for workload P: a smooth random displacement field (sum of Gaussian bumps of
    width ``length_scale`` with random vectors, scaled to ``displacement_rms``), isotropic noise
    of sd ``noise`` per axis, and a fraction ``missing`` of points dropped.

    Returns ``(moving, kept_idx)``: moving[i] is the perturbed copy of fixed[kept_idx[i]].
    """
    rng = np.random.default_rng(seed)
    n, d = fixed.shape
    centres = fixed[rng.choice(n, size=64, replace=False)]
    vecs = rng.normal(size=(64, d))
    d2 = ((fixed[:, None, :] - centres[None]) ** 2).sum(-1)
    disp = np.exp(-d2 / (2 * length_scale ** 2)) @ vecs
    disp *= displacement_rms / np.sqrt((disp ** 2).sum(1).mean())
    moved = fixed + disp + rng.normal(scale=noise, size=fixed.shape)
    keep = np.sort(rng.choice(n, size=int(round(n * (1 - missing))), replace=False))
    return moved[keep], keep


def _pca_frame(p: np.ndarray):
    c = p.mean(0)
    q = p - c
    evals, evecs = np.linalg.eigh(q.T @ q)
    return c, evecs[:, ::-1]  # columns: principal axes, largest first


def pca_prealign(moving: np.ndarray, fixed: np.ndarray):
    """Candidate pre-alignments of ``moving`` onto ``fixed``: principal axes matched, for each of
    the proper sign flips (det +1) of the axes (4 in 3D). Returns a list of (d, d) rotations R and
    the centres, so that ``(moving - cm) @ R.T + cf`` is a candidate."""
    cm, Em = _pca_frame(moving)
    cf, Ef = _pca_frame(fixed)
    d = moving.shape[1]
    out = []
    for signs in np.array(np.meshgrid(*[[1, -1]] * d)).T.reshape(-1, d):
        S = np.diag(signs)
        R = Ef @ S @ Em.T
        if np.linalg.det(R) > 0:
            out.append(R)
    return out, cm, cf


def celegans_accuracy(*, transform: str = "affine", w: float = 0.1, deformable: bool = False, beta: float = 40.0,
                      lam: float = 2.0, max_iter: int = 100, pairs=None, register=None):
    """Mean fraction of correctly matched lineage names over the JIM767 embryo pairs.

    For each pair: PCA pre-alignment (each proper sign flip tried; the one with the lowest final
    CPD objective kept), CPD (``transform``, then deformable when ``deformable``), then one-to-one
    assignment (scipy.optimize.linear_sum_assignment on Euclidean distances); a match is correct
    when both cells carry the same lineage name. ``register(moving, fixed) -> moved`` overrides
    the registration (None: xmodal.cpd). Returns ``(mean, per_pair list, floor)`` where floor is the
    same evaluation without CPD (pre-alignment with the first sign choice only).
    """
    import xmodal
    from scipy.optimize import linear_sum_assignment

    import xmodal.datasets

    emb = xmodal.datasets.celegans_embryos()
    return _celegans_eval(emb, transform, w, deformable, beta, lam, max_iter, pairs, register,
                          linear_sum_assignment)


def _embryo_points(emb):
    """List of (name, points (n, 3), cell names) from the datasets' return value."""
    out = []
    for key, e in emb.items():
        out.append((key, np.asarray(e.points, float), list(e.cells)))
    return out


def _celegans_eval(emb, transform, w, deformable, beta, lam, max_iter, pairs, register, lsa):
    import itertools

    import xmodal

    items = _embryo_points(emb)
    all_pairs = list(itertools.combinations(range(len(items)), 2)) if pairs is None else pairs
    fr, floor = [], []
    for i, j in all_pairs:
        _, A, na = items[i]
        _, Bp, nb = items[j]
        common = set(na) & set(nb)
        denom = len(common) if common else 1
        Rs, cm, cf = pca_prealign(A, Bp)
        best = None
        for R in Rs:
            Y = (A - cm) @ R.T + cf
            if register is not None:
                moved, score = register(Y, Bp)
            else:
                r = xmodal.cpd(Y, Bp, transform=transform, w=w, max_iter=max_iter)
                moved, score = r.moved, r.objective
                if deformable:
                    r2 = xmodal.cpd(moved, Bp, transform="deformable", w=w, beta=beta, lam=lam, max_iter=max_iter)
                    moved, score = r2.moved, r2.objective
            if best is None or score < best[1]:
                best = (moved, score)
        def frac(P):
            d = np.sqrt(((P[:, None] - Bp[None]) ** 2).sum(-1))
            ri, ci = lsa(d)
            return sum(1 for a, b in zip(ri, ci) if na[a] == nb[b] and na[a] in common) / denom
        fr.append(frac(best[0]))
        floor.append(frac((A - cm) @ Rs[0].T + cf))
    return float(np.mean(fr)), fr, float(np.mean(floor))
