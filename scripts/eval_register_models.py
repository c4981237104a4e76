"""Research for issue 12, item 1: can an out-of-sample criterion pick the transform of register_cells?

For every pair of point sets with ground-truth correspondences this script
  1. pre-aligns once (principal axes + the 24 proper rotations, as register_cells; or the faster
     variant on farthest-point subsamples, --fast-prealign),
  2. fits each candidate model as register_cells chains them (rigid; rigid -> similarity;
     rigid -> affine; rigid -> affine -> deformable for a small beta / lambda grid), once on all
     fixed points (what a user gets: its accuracy is the target) and once with a random 20 % of the
     fixed points held out (for the criteria),
  3. scores every candidate by criteria computed from the data alone:
       hll   mean log-likelihood of the held-out fixed points under the fitted CPD mixture (the
             moved moving points as centres, the fitted sigma2, outlier weight w uniform over the
             bounding box of the fixed points); higher is better
       cvnn  mean distance of each held-out fixed point to the nearest moved moving point,
             truncated at the unmatched cost (3 x the median nearest-neighbour distance of fixed);
             lower is better
       cvm   the same with an optimal partial one-to-one matching between the held-out fixed points
             and the moved moving points (unmatched cost as above) instead of nearest neighbours
     and the selection rules: plain argmax/argmin, and "simplest within a margin" (the simplest
     model whose score is within ``margin`` of the best, margins chosen on the embryos only),
  4. reports per rule: mean / worst accuracy of the chosen models, against the oracle (the best
     model per pair in hindsight) and against rigid only, and on how many pairs the choice is worse
     than rigid by more than 0.02.

Data: the 28 pairs of the built-in C. elegans embryos (lineage names), and the Platynereis
bilateral pairs (left-side nuclei against the right side mirrored through the least-squares plane
of the signed ``distances`` column; 198 curated pairs with one nucleus on each side; accuracy =
share of those pairs whose left nucleus is matched to its partner). The Platynereis data are read
from ``$XMODAL_DATA/platynereis_6dpf_nuclei`` (default ``../shared/data``); development only.

Note: the candidates here are the former ones of register_cells (beta in units of the median
nearest-neighbour distance, lambda in input units, a rigid stage first). register_cells now uses
scale-free settings (beta x the RMS radius R of the fixed cells, lambda / R^2, no similarity
candidate; ``xmodal.pipelines._auto_steps.AUTO_CANDIDATES``); the study of that grid is
``benchmarks/results/identity-pairs-scalefree-grid-2026-11-30.json`` (docs/identity.md).

Usage:
    python scripts/eval_register_models.py embryos [--pairs N] [--out results.json]
    python scripts/eval_register_models.py platynereis [--fast-prealign] [--out results.json]
    python scripts/eval_register_models.py prealign-speed      # Platynereis: full vs subsampled search
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("XMODAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# candidate models: name -> (stage chain, deformable beta factor (x nn), lambda)
CANDIDATES = {
    "rigid": (("rigid",), None, None),
    "similarity": (("rigid", "similarity"), None, None),
    "affine": (("rigid", "affine"), None, None),
    "deformable_b2_l2": (("rigid", "affine", "deformable"), 2.0, 2.0),
    "deformable_b2_l8": (("rigid", "affine", "deformable"), 2.0, 8.0),
    "deformable_b4_l2": (("rigid", "affine", "deformable"), 4.0, 2.0),
    "deformable_b4_l8": (("rigid", "affine", "deformable"), 4.0, 8.0),
}
COMPLEXITY = list(CANDIDATES)  # simplest first
W = 0.1


# ----------------------------------------------------------------------------------------- data
def embryo_pairs(limit=None):
    from xmodal.datasets import celegans_embryos

    emb = celegans_embryos()
    out = []
    for a, b in itertools.combinations(sorted(emb), 2):
        fa, fb = emb[a], emb[b]
        ia = {n: i for i, n in enumerate(fa.cells)}
        truth = np.array([[ia[n], j] for j, n in enumerate(fb.cells) if n in ia])  # (fixed, moving)
        out.append({"name": f"{a}|{b}", "fixed": fa.points, "moving": fb.points, "truth": truth,
                    "denominator": len(truth)})
    return out[:limit]


def platynereis_pair():
    """Left nuclei (fixed) and right nuclei mirrored through the midline plane (moving)."""
    root = DATA / "platynereis_6dpf_nuclei"
    from xmodal.pipelines._inputs import read_table

    t = read_table(root / "distance_from_midline_nuclei_1_0_1.tsv")
    keep = t["label_id"] != 0
    ids = t["label_id"][keep].astype(np.int64)
    pts = np.stack([t["anchor_z"][keep], t["anchor_y"][keep], t["anchor_x"][keep]], 1)
    dist = t["distances"][keep]
    volume = t["n_pixels"][keep].astype(np.float64)  # nucleus volume (voxels), a per-cell feature
    # least-squares plane: distances ~ n . p + c
    X = np.c_[pts, np.ones(len(pts))]
    coef, *_ = np.linalg.lstsq(X, dist, rcond=None)
    n = coef[:3]
    signed = (pts @ n + coef[3]) / np.linalg.norm(n)
    unit = n / np.linalg.norm(n)
    left, right = signed < 0, signed >= 0
    mirrored = pts - 2.0 * signed[:, None] * unit[None, :]
    pairs = read_table(root / "bilateral_pairs_nuclei.csv")
    pos = {int(i): k for k, i in enumerate(ids)}
    li = {int(k): j for j, k in enumerate(np.flatnonzero(left))}
    ri = {int(k): j for j, k in enumerate(np.flatnonzero(right))}
    truth = []
    for a, b in zip(pairs["nucleus_id_a"].astype(int), pairs["nucleus_id_b"].astype(int)):
        ka, kb = pos.get(a), pos.get(b)
        if ka is None or kb is None:
            continue
        if ka in li and kb in ri:
            truth.append((li[ka], ri[kb]))
        elif kb in li and ka in ri:
            truth.append((li[kb], ri[ka]))
    truth = np.array(truth)
    return {"name": "platynereis_bilateral", "fixed": pts[left], "moving": mirrored[right], "truth": truth,
            "denominator": len(truth), "fixed_volume": volume[left], "moving_volume": volume[right]}


# ------------------------------------------------------------------------------------ pipeline
def prealign_pair(fixed, moving, *, fast=False, seed=0):
    from xmodal.pipelines.prealign import prealign

    t0 = time.perf_counter()
    c0 = time.process_time()
    if fast:
        from xmodal.pipelines.prealign import fast_prealign

        pre = fast_prealign(moving, fixed, seed=seed)
    else:
        pre = prealign(moving, fixed, seed=seed)
    pre.cpu_s = time.process_time() - c0  # CPU seconds (a loaded machine inflates wall time)
    return pre, time.perf_counter() - t0


def fit_chain(start, fixed, stages, beta, lam, nn, cache, key_prefix):
    """Coarse-to-fine CPD as register_cells; stage results cached by their chain prefix."""
    from xmodal.registration import cpd

    current = start
    res = None
    for i, stage in enumerate(stages):
        key = (key_prefix, stages[: i + 1], beta if stage == "deformable" else None,
               lam if stage == "deformable" else None)
        if key not in cache:
            opts = {"w": W, "max_iter": 100 if stage == "rigid" else 150, "tol": 1e-6}
            if stage == "deformable":
                opts.update(beta=beta * nn, lam=lam)
            r = cpd(current, fixed, transform=stage, **opts)
            cache[key] = (np.asarray(r.moved, np.float64), float(r.sigma2))
        current, s2 = cache[key]
        res = s2
    return current, res


def accuracy(moved, fixed, truth, denominator, unmatched):
    from xmodal.matching import match_points

    m = match_points(moved, fixed, k=30, unmatched_cost=unmatched)
    partner = dict(zip(m.rows.tolist(), m.cols.tolist()))  # moving -> fixed
    right = sum(partner.get(int(j), -1) == int(i) for i, j in truth)
    return right / denominator


def heldout_loglik(moved, held, sigma2, volume, w=W):
    """Mean log-likelihood of ``held`` points under the CPD mixture of ``moved`` centres."""
    from scipy.spatial import cKDTree

    d = held.shape[1]
    M = len(moved)
    k = min(32, M)
    dist, _ = cKDTree(moved).query(held, k=k)
    dist = dist.reshape(len(held), -1)
    log_g = -0.5 * dist ** 2 / sigma2 - 0.5 * d * math.log(2 * math.pi * sigma2) - math.log(M)
    mx = log_g.max(1)
    lg = mx + np.log(np.exp(log_g - mx[:, None]).sum(1))
    ll = np.logaddexp(math.log(1 - w) + lg, math.log(w) - math.log(volume))
    return float(ll.mean())


def cv_nn(moved, held, cap):
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(moved).query(held)
    return float(np.minimum(dist, cap).mean())


def cv_match(moved, held, cap):
    from xmodal.matching import match_points

    m = match_points(held, moved, k=8, unmatched_cost=cap)
    n_un = len(held) - len(m.rows)
    return float((m.pair_costs.sum() + cap * n_un) / len(held))


def evaluate_pair(pair, *, fast_prealign=False, holdout=0.2, seeds=(0,)):
    from xmodal.pipelines.prealign import median_nn_distance

    fixed, moving = pair["fixed"], pair["moving"]
    nn = median_nn_distance(fixed)
    unmatched = 3.0 * nn
    pre, t_pre = prealign_pair(fixed, moving, fast=fast_prealign)
    start = pre.apply(moving)
    volume = float(np.prod(fixed.max(0) - fixed.min(0)))
    cache = {}
    out = {"name": pair["name"], "prealign_s": t_pre, "models": {}}
    t0 = time.perf_counter()
    for name, (stages, beta, lam) in CANDIDATES.items():
        moved, _ = fit_chain(start, fixed, stages, beta, lam, nn, cache, "all")
        out["models"][name] = {"accuracy": accuracy(moved, fixed, pair["truth"], pair["denominator"], unmatched)}
    out["fit_s"] = time.perf_counter() - t0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        held = rng.random(len(fixed)) < holdout
        for name, (stages, beta, lam) in CANDIDATES.items():
            moved, s2 = fit_chain(start, fixed[~held], stages, beta, lam, nn, cache, f"cv{seed}")
            rec = out["models"][name]
            rec.setdefault("hll", []).append(heldout_loglik(moved, fixed[held], s2, volume))
            rec.setdefault("cvnn", []).append(cv_nn(moved, fixed[held], unmatched))
            rec.setdefault("cvm", []).append(cv_match(moved, fixed[held], unmatched))
    for rec in out["models"].values():
        for c in ("hll", "cvnn", "cvm"):
            rec[c] = float(np.mean(rec[c]))
    out["total_s"] = time.perf_counter() - t0 + t_pre
    return out


# ----------------------------------------------------------------------------------- selection
def choose(models, criterion, margin=0.0, relative=False):
    """Index into COMPLEXITY of the chosen model: the best score, or the simplest model within
    ``margin`` of the best (a fraction of |best| when ``relative``)."""
    sign = 1.0 if criterion == "hll" else -1.0  # larger is better after the sign
    scores = np.array([sign * models[m][criterion] for m in COMPLEXITY])
    best = scores.max()
    tol = margin * abs(best) if relative else margin
    return next(i for i, s in enumerate(scores) if s >= best - tol)


def summarise(results, rules):
    rigid = np.array([r["models"]["rigid"]["accuracy"] for r in results])
    oracle = np.array([max(m["accuracy"] for m in r["models"].values()) for r in results])
    table = {"rigid": {"mean": float(rigid.mean()), "worst": float(rigid.min())},
             "oracle": {"mean": float(oracle.mean()), "worst": float(oracle.min())}}
    for m in COMPLEXITY:
        a = np.array([r["models"][m]["accuracy"] for r in results])
        table[m] = {"mean": float(a.mean()), "worst": float(a.min()),
                    "pairs_worse_than_rigid_by_0.02": int((a < rigid - 0.02).sum())}
    for label, (crit, margin, rel) in rules.items():
        picks = [choose(r["models"], crit, margin, rel) for r in results]
        a = np.array([r["models"][COMPLEXITY[i]]["accuracy"] for r, i in zip(results, picks)])
        table[label] = {"mean": float(a.mean()), "worst": float(a.min()),
                        "pairs_worse_than_rigid_by_0.02": int((a < rigid - 0.02).sum()),
                        "max_loss_vs_rigid": float((rigid - a).max()),
                        "chosen": {m: picks.count(i) for i, m in enumerate(COMPLEXITY) if picks.count(i)}}
    return table


RULES = {
    "hll_best": ("hll", 0.0, False),
    "hll_margin_0.02": ("hll", 0.02, False),
    "hll_margin_0.05": ("hll", 0.05, False),
    "cvnn_best": ("cvnn", 0.0, False),
    "cvnn_margin_2pct": ("cvnn", 0.02, True),
    "cvnn_margin_5pct": ("cvnn", 0.05, True),
    "cvm_best": ("cvm", 0.0, False),
    "cvm_margin_2pct": ("cvm", 0.02, True),
    "cvm_margin_5pct": ("cvm", 0.05, True),
}


# ------------------------------------------------------------------------------------------ main
def set_grid(betas, lams):
    """Replace the deformable candidates by the grid betas x lams (beta in units of the median
    nearest-neighbour distance of the fixed points)."""
    for k in [k for k in CANDIDATES if k.startswith("deformable")]:
        del CANDIDATES[k]
    for b in betas:
        for lam in lams:
            CANDIDATES[f"deformable_b{b:g}_l{lam:g}"] = (("rigid", "affine", "deformable"), float(b), float(lam))
    COMPLEXITY[:] = list(CANDIDATES)


def prealign_speed(fast_only=False):
    """Platynereis: the 24-rotation search on all points (as register_cells, <= 3000 random
    points) against the same search on 500 farthest-point samples, then rigid CPD on all points."""
    from xmodal.pipelines.prealign import median_nn_distance
    from xmodal.registration import cpd

    pair = platynereis_pair()
    fixed, moving = pair["fixed"], pair["moving"]
    unmatched = 3.0 * median_nn_distance(fixed)
    out = {}
    for label, fast in (("fps500", True), ("full", False))[: 1 if fast_only else 2]:
        pre, t = prealign_pair(fixed, moving, fast=fast)
        t0 = time.perf_counter()
        c0 = time.process_time()
        r = cpd(pre.apply(moving), fixed, transform="rigid", w=W, max_iter=100, tol=1e-6)
        t_rigid = time.perf_counter() - t0
        out[label] = {"prealign_s": t, "prealign_cpu_s": pre.cpu_s, "rigid_s": t_rigid,
                      "rigid_cpu_s": time.process_time() - c0, "best_candidate": int(pre.best),
                      "pairs": pair["denominator"],
                      "rigid_accuracy": accuracy(np.asarray(r.moved), fixed, pair["truth"], pair["denominator"],
                                                 unmatched)}
        print(label, out[label], flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["embryos", "platynereis", "prealign-speed"])
    ap.add_argument("--pairs", type=int, default=None, help="first N embryo pairs only")
    ap.add_argument("--fast-prealign", action="store_true")
    ap.add_argument("--seeds", type=int, default=1, help="held-out splits per pair (criteria averaged)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--fast-only", action="store_true", help="prealign-speed: the subsampled search only")
    ap.add_argument("--betas", type=float, nargs="+", default=None,
                    help="deformable beta grid (x median nearest-neighbour distance), default 2 4")
    ap.add_argument("--lams", type=float, nargs="+", default=None, help="deformable lambda grid, default 2 8")
    args = ap.parse_args(argv)
    if args.betas or args.lams:
        set_grid(args.betas or (2.0, 4.0), args.lams or (2.0, 8.0))
    if args.what == "prealign-speed":
        res = prealign_speed(args.fast_only)
    else:
        pairs = embryo_pairs(args.pairs) if args.what == "embryos" else [platynereis_pair()]
        results = []
        for p in pairs:
            r = evaluate_pair(p, fast_prealign=args.fast_prealign, seeds=tuple(range(args.seeds)))
            results.append(r)
            print(json.dumps({"pair": r["name"], **{m: round(v["accuracy"], 3) for m, v in r["models"].items()},
                              "s": round(r["total_s"], 1)}), flush=True)
        res = {"pairs": results, "summary": summarise(results, RULES)}
        print(json.dumps(res["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
