"""Reviewed match tables: what a person decided about the pairs of a registration, written as a CSV
(by the napari review widget, or by hand) and read back by :func:`register_cells` (``reviewed=``)
and :func:`xmodal.atlas.read_samples` (to build an atlas from the corrected pairs).

The table has one row per pair:

    pair, fixed_index, moving_index, fixed_id, moving_id, distance, confidence, status, name,
    z, y, x (the moving cell, moving frame), fixed_z, fixed_y, fixed_x (its fixed partner)

``status`` is ``unreviewed``, ``accepted``, ``rejected`` or ``reassigned`` (accepted with another
fixed partner than the registration proposed). ``name`` is the fixed partner's id for every pair
that is kept and empty for rejected pairs, so that ``read_annotated_table(csv, names_column="name")``
gives the moving cells named by their partners and, with ``columns=("fixed_z", "fixed_y",
"fixed_x")``, the fixed cells under the same names: two annotated samples for :func:`build_atlas`.
(2D tables have no z columns.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUSES = ("unreviewed", "accepted", "rejected", "reassigned")
_AXES = ("z", "y", "x")


@dataclass
class ReviewedMatches:
    """Decisions read from a reviewed table: ``accepted`` and ``rejected`` are (k, 2) int arrays of
    (moving_index, fixed_index) pairs; accepted includes reassigned pairs."""

    accepted: np.ndarray
    rejected: np.ndarray

    def check(self, n_moving: int, n_fixed: int) -> "ReviewedMatches":
        """Refuse indices outside the point sets and accepted pairs sharing a cell."""
        for label, a in (("accepted", self.accepted), ("rejected", self.rejected)):
            if len(a) and (a[:, 0].min() < 0 or a[:, 0].max() >= n_moving or a[:, 1].min() < 0
                           or a[:, 1].max() >= n_fixed):
                raise ValueError(f"reviewed: {label} pairs must index {n_moving} moving and {n_fixed} fixed cells, "
                                 f"got moving {a[:, 0].min()}..{a[:, 0].max()}, fixed {a[:, 1].min()}..{a[:, 1].max()}")
        for col, side in ((0, "moving"), (1, "fixed")):
            u, c = np.unique(self.accepted[:, col], return_counts=True)
            if (c > 1).any():
                raise ValueError(f"reviewed: accepted pairs must not share a {side} cell; "
                                 f"{side} indices {u[c > 1][:5].tolist()} appear twice")
        return self


def write_reviewed_matches(path, *, fixed, moving, fixed_index, moving_index, fixed_ids, moving_ids, distance,
                           confidence, status):
    """Write a reviewed table (see the module docstring) atomically; returns the path."""
    from ..io import write_csv

    fixed, moving = np.asarray(fixed, float), np.asarray(moving, float)
    fi, mi = np.asarray(fixed_index, np.int64), np.asarray(moving_index, np.int64)
    status = np.asarray(status, dtype=object)
    bad = sorted(set(status.tolist()) - set(STATUSES))
    if bad:
        raise ValueError(f"status: expected values among {STATUSES}, got {bad}")
    fid = np.asarray(fixed_ids, dtype=object)[fi] if len(fi) else np.zeros(0, object)
    mid = np.asarray(moving_ids, dtype=object)[mi] if len(mi) else np.zeros(0, object)
    names = np.array([("" if s == "rejected" else str(f)) for s, f in zip(status, fid)], dtype=object)
    axes = _AXES[-fixed.shape[1]:]
    header = ["pair", "fixed_index", "moving_index", "fixed_id", "moving_id", "distance", "confidence", "status",
              "name", *axes, *(f"fixed_{a}" for a in axes)]
    cols = [np.arange(len(fi)), fi, mi, fid, mid, distance, confidence, status, names]
    cols += [moving[mi, j] for j in range(len(axes))] + [fixed[fi, j] for j in range(len(axes))]
    return write_csv(path, header, cols)


def read_reviewed_matches(source) -> ReviewedMatches:
    """The decisions of a reviewed table (path), or of a dict with ``accepted`` / ``rejected``
    (k, 2) (moving_index, fixed_index) arrays."""
    if isinstance(source, dict):
        acc = np.asarray(source.get("accepted", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
        rej = np.asarray(source.get("rejected", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
        return ReviewedMatches(acc, rej)
    from ..io import read_table

    table = read_table(source)
    missing = [c for c in ("fixed_index", "moving_index", "status") if c not in table]
    if missing:
        raise ValueError(f"reviewed: table {source} lacks columns {missing} (it has {list(table)})")
    status = np.asarray([str(s) for s in np.asarray(table["status"]).tolist()], dtype=object)
    bad = sorted(set(status.tolist()) - set(STATUSES))
    if bad:
        raise ValueError(f"reviewed: column status of {source} must hold {STATUSES}, got {bad}")
    pairs = np.stack([np.asarray(table["moving_index"], float), np.asarray(table["fixed_index"], float)], axis=1)
    if len(pairs) and not np.array_equal(pairs, np.round(pairs)):
        raise ValueError(f"reviewed: fixed_index and moving_index of {source} must be integers")
    pairs = pairs.astype(np.int64).reshape(-1, 2)
    keep = np.isin(status, ("accepted", "reassigned"))
    return ReviewedMatches(pairs[keep], pairs[status == "rejected"])


def constrained_match(moved, fixed, reviewed: ReviewedMatches, *, k: int, radius, unmatched_cost,
                      cost_points=None):
    """One-to-one matching that keeps the accepted pairs and never proposes a rejected one: the
    accepted cells are set aside, the others matched exactly on their k-NN graph without the
    rejected pairs (unmatched cost as in :func:`register_cells`). ``cost_points``: (moving, fixed)
    points whose distances are the pair costs instead (the points augmented with weighted
    features; the candidates stay the spatial k-NN graph). Returns moving, fixed indices and the
    spatial distances like the plain match step."""
    from ..matching import knn_graph, linear_assignment

    n, m = len(moved), len(fixed)
    acc = reviewed.accepted
    rows = np.setdiff1d(np.arange(n), acc[:, 0])
    cols = np.setdiff1d(np.arange(m), acc[:, 1])
    mi, fi = [acc[:, 0]], [acc[:, 1]]
    if len(rows) and len(cols):
        g = knn_graph(moved[rows], fixed[cols], k=max(1, min(k, len(rows), len(cols))), radius=radius).tocoo()
        r, c = rows[g.row], cols[g.col]
        forbidden = {(int(a), int(b)) for a, b in reviewed.rejected}
        keep = np.array([(int(a), int(b)) not in forbidden for a, b in zip(r, c)], dtype=bool)
        import scipy.sparse as sp

        data = g.data
        if cost_points is not None:  # a zero cost would be dropped by the sparse matrix: keep it positive
            ma, fa = cost_points
            data = np.linalg.norm(ma[r] - fa[c], axis=1) + 1e-12 * max(float(np.max(data, initial=0.0)), 1.0)
        cost = sp.csr_matrix((data[keep], (g.row[keep], g.col[keep])), shape=(len(rows), len(cols)))
        res = linear_assignment(cost, unmatched_cost=unmatched_cost)
        mi.append(rows[res.rows])
        fi.append(cols[res.cols])
    mi, fi = np.concatenate(mi).astype(np.int64), np.concatenate(fi).astype(np.int64)
    order = np.argsort(mi, kind="stable")
    mi, fi = mi[order], fi[order]
    return mi, fi, np.linalg.norm(moved[mi] - fixed[fi], axis=1)
