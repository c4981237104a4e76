"""The classic join of :func:`xmodal.segmentation.blockwise_mutex_watershed` (``join="votes"``):
what a block stores of its faces (pass 1) and the votes of the voxel pairs across each face (pass 2),
module docstring of :mod:`xmodal.segmentation.blockwise`."""

from __future__ import annotations

import numpy as np


def face_members(plan, bid: int, rel, ext, local) -> dict:
    """Per face shared with a neighbour: the labels of the block's boundary slice and whether each
    boundary voxel and its neighbour across the face (in the halo) ended in one segment of the run."""
    faces = {}
    idx = plan.index(bid)
    for d in range(plan.ndim):
        for side in ("lo", "hi"):
            if side == "lo" and idx[d] == 0:
                continue
            if side == "hi" and idx[d] == plan.grid[d] - 1:
                continue
            # boundary slice of the inner block (in ext coordinates) and the slice across the face
            b_in = rel[d].start if side == "lo" else rel[d].stop - 1
            b_out = b_in - 1 if side == "lo" else b_in + 1
            sl_in = list(rel)
            sl_out = list(rel)
            sl_in[d] = slice(b_in, b_in + 1)
            sl_out[d] = slice(b_out, b_out + 1)
            loc_sl = [slice(None)] * plan.ndim
            loc_sl[d] = slice(0, 1) if side == "lo" else slice(local.shape[d] - 1, local.shape[d])
            faces[f"{side}{d}_lab"] = local[tuple(loc_sl)]
            faces[f"{side}{d}_conn"] = ext[tuple(sl_in)] == ext[tuple(sl_out)]
    return faces


def stitch_votes(plan, counts, merge_threshold: float):
    """Pass 2: provisional ids, face votes, connected components -> mapping (final id per id)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(np.sum(counts))
    us, vs = [], []
    for bid in plan.block_ids():
        idx = plan.index(bid)
        for d in range(plan.ndim):
            if idx[d] == plan.grid[d] - 1:
                continue
            nidx = list(idx)
            nidx[d] += 1
            nbid = int(np.ravel_multi_index(nidx, plan.grid))
            with np.load(plan.path("blocks", bid) + ".npz") as za, np.load(plan.path("blocks", nbid) + ".npz") as zb:
                la, ca = za[f"hi{d}_lab"].ravel(), za[f"hi{d}_conn"].ravel()
                lb, cb = zb[f"lo{d}_lab"].ravel(), zb[f"lo{d}_conn"].ravel()
            valid = (la > 0) & (lb > 0)
            if not valid.any():
                continue
            la, lb = la[valid].astype(np.int64), lb[valid].astype(np.int64)
            agree = (ca & cb)[valid]
            base = np.int64(lb.max() + 1)  # keys of block-local labels: no int64 overflow for any total
            uniq, inv = np.unique(la * base + lb, return_inverse=True)
            inv = inv.ravel()
            n_total = np.bincount(inv, minlength=len(uniq))
            n_agree = np.bincount(inv, weights=agree, minlength=len(uniq))
            keep = n_agree > merge_threshold * n_total
            us.append(uniq[keep] // base + offsets[bid])
            vs.append(uniq[keep] % base + offsets[nbid])
    u = np.concatenate(us) if us else np.zeros(0, np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(u), np.int8), (u, v)), shape=(total + 1, total + 1))
    _, comp = connected_components(graph, directed=False)
    # Components are numbered in order of their smallest node: node 0 (background) is component 0.
    n_labels = int(comp.max()) if comp.size else 0
    dtype = np.uint32 if n_labels < 2**32 else np.uint64
    return offsets, comp.astype(dtype), n_labels, int(len(u))
