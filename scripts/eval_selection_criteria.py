"""Out-of-sample criteria for ``register_cells(transform="auto")``, compared on the C. elegans
embryo pairs (issue 12, pairwise part).

    python scripts/eval_selection_criteria.py collect [--split train] [--repeats 3] [--out FILE.jsonl]
    python scripts/eval_selection_criteria.py summary FILE.jsonl [--out FILE.json]

``collect``: per embryo pair of the split (training split: the 6 pairs among the first 4 embryos,
as ``eval_identity.py``), one orientation search (as ``register_cells``), then every candidate of
``AUTO_CANDIDATES`` fitted to all fixed cells (its accuracy, the same one-to-one matching as
``register_cells``) and to 80 % of them for ``--repeats`` random splits (default 3; seeds 0 .. n-1), with these
criteria on the 20 % held out (u = the unmatched cost, 3 median nearest-neighbour distances):

    hll            held-out log-likelihood, fitted sigma2, outlier weight 0.1 (the shipped criterion)
    hll_prof       the same, sigma2 profiled (best of 0.1-10 x the fitted one)
    hll_w0         the same without the outlier component
    cvnn           mean min(distance to the nearest moved cell, u)
    cvm            one-to-one matching of the held-out cells alone to the moved cells, mean cost
    cvm_n          its share of held-out cells matched
    cvmfull        one-to-one matching of the moved cells to all fixed cells: mean cost of the
                   held-out cells (u if unmatched)
    cvmfull_n      share of held-out cells matched there
    cvmfull_close  share of held-out cells matched there within one nearest-neighbour distance

``summary``: every criterion with 1, 3, 5 and 8 splits (those collected): mean / worst accuracy of its choices and the
largest loss against the rigid model. Run with one thread on a shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from _jsonout import write_json  # noqa: E402 (scripts/ is on sys.path when run)

SIGN = {"hll": 1, "hll_prof": 1, "hll_w0": 1, "cvnn": -1, "cvm": -1, "cvm_n": 1, "cvmfull": -1,
        "cvmfull_n": 1, "cvmfull_close": 1}


def _criteria(mv, s2, fix, mask, vol, nn, uc) -> dict:
    from scipy.spatial import cKDTree

    from xmodal.matching import match_points
    from xmodal.registration.selection import heldout_log_likelihood

    held = fix[mask]
    cr = {"hll": heldout_log_likelihood(mv, held, s2, w=0.1, volume=vol),
          "hll_prof": max(heldout_log_likelihood(mv, held, s2 * f, w=0.1, volume=vol)
                          for f in np.geomspace(0.1, 10, 21)),
          "hll_w0": heldout_log_likelihood(mv, held, s2, w=0.0, volume=vol)}
    dd, _ = cKDTree(mv).query(held)
    cr["cvnn"] = float(np.mean(np.minimum(dd, uc)))
    m = match_points(mv, held, k=30, unmatched_cost=uc)
    dm = np.linalg.norm(mv[np.asarray(m.rows)] - held[np.asarray(m.cols)], axis=1)
    cr["cvm"] = float((dm.sum() + uc * (len(held) - len(dm))) / len(held))
    cr["cvm_n"] = float(len(dm) / len(held))
    m = match_points(mv, fix, k=30, unmatched_cost=uc)
    rows, cols = np.asarray(m.rows), np.asarray(m.cols)
    dist = np.linalg.norm(mv[rows] - fix[cols], axis=1)
    h = mask[cols]
    cr["cvmfull"] = float((dist[h].sum() + uc * (mask.sum() - h.sum())) / mask.sum())
    cr["cvmfull_n"] = float(h.sum() / mask.sum())
    cr["cvmfull_close"] = float(np.sum(dist[h] < nn) / mask.sum())
    return cr


def pair_record(fa, fb, start, repeats: int = 3) -> dict:
    from xmodal.pipelines._auto_steps import AUTO_CANDIDATES, candidate_label
    from xmodal.pipelines._register_steps import fit_step, match_step
    from xmodal.pipelines.prealign import median_nn_distance, rms_radius
    from xmodal.registration.selection import heldout_split

    fix = fa.points
    radius, nn = rms_radius(fix), median_nn_distance(fix)
    uc, shared = 3 * nn, len(set(fa.cells) & set(fb.cells))
    vol = float(np.prod(fix.max(0) - fix.min(0)))

    def fit(c, pts, cache):
        opts = None if c[0] != "deformable" else {"beta": c[1] * radius, "lam": c[2] / radius ** 2}
        return fit_step(start, pts, transform=c[0], scale=False, cpd_options=None, deformable_options=opts,
                        nn=nn, cache=cache, radius=radius)

    row = {"acc": {}, "crit": {}}
    cache: dict = {}
    for c in AUTO_CANDIDATES:
        ft = fit(c, fix, cache)
        mi, fi, _ = match_step(ft.moved, fix, matching="one-to-one", k=30, radius=None, unmatched_cost=uc)
        row["acc"][candidate_label(c)] = float(np.sum(fa.cells[fi] == fb.cells[mi])) / shared
    for seed in range(repeats):
        mask, cache = heldout_split(len(fix), 0.2, seed), {}
        for c in AUTO_CANDIDATES:
            ft = fit(c, fix[~mask], cache)
            for k, v in _criteria(ft.moved, ft.sigma2, fix, mask, vol, nn, uc).items():
                row["crit"].setdefault(candidate_label(c), {}).setdefault(k, []).append(v)
    return row


def collect(split_name: str, out, repeats: int = 3) -> None:
    from xmodal.datasets import celegans_embryos
    from xmodal.pipelines._register_steps import PREALIGN_POINTS
    from xmodal.pipelines.prealign import fast_prealign

    emb = celegans_embryos()
    train = set(sorted(emb)[:4])
    for a, b in itertools.combinations(sorted(emb), 2):
        sp = "train" if a in train and b in train else "heldout"
        if split_name != "all" and sp != split_name:
            continue
        fa, fb = emb[a], emb[b]
        start = fast_prealign(fb.points, fa.points, n_points=PREALIGN_POINTS, rotations="all",
                              seed=0).apply(fb.points)
        row = {"pair": f"{a}|{b}", "split": sp, **pair_record(fa, fb, start, repeats)}
        out.write(json.dumps(row) + "\n")
        out.flush()


def summary(rows) -> dict:
    labels = list(rows[0]["acc"])  # simplest first
    table = {}
    for crit in SIGN:
        available = min(len(r["crit"][labels[0]][crit]) for r in rows)
        for nrep in sorted({1, 3, 5, 8, available} & set(range(1, available + 1))):
            accs, loss = [], []
            for r in rows:
                sc = {lab: SIGN[crit] * np.mean(r["crit"][lab][crit][:nrep]) for lab in labels}
                pick = max(labels, key=lambda lab: (sc[lab], -labels.index(lab)))
                accs.append(r["acc"][pick])
                loss.append(r["acc"]["rigid"] - r["acc"][pick])
            table[f"{crit}_splits{nrep}"] = {"mean": float(np.mean(accs)), "worst": float(np.min(accs)),
                                             "max_loss_vs_rigid": float(np.max(loss))}
    single = {lab: float(np.mean([r["acc"][lab] for r in rows])) for lab in labels}
    oracle = float(np.mean([max(r["acc"].values()) for r in rows]))
    return {"pairs": len(rows), "criteria": table, "single_models_mean": single, "oracle_mean": oracle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["collect", "summary"])
    ap.add_argument("path", nargs="?", help="summary: a collect result (JSON lines)")
    ap.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    ap.add_argument("--repeats", type=int, default=3, help="collect: held-out splits per candidate (seeds 0..n-1)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.what == "collect":
        with (open(args.out, "a") if args.out else sys.stdout) as out:
            collect(args.split, out, args.repeats)
        return
    rows = [json.loads(line) for line in Path(args.path).read_text().splitlines() if line.strip()]
    write_json(summary(rows), args.out)


if __name__ == "__main__":
    main()
