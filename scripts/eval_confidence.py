"""Issue 12 item 4: calibration of ``register_cells``'s match confidence.

    python scripts/eval_confidence.py collect --cache DIR   # register the 28 embryo pairs (default and
                                                            # rigid transform) and the Platynereis
                                                            # bilateral pair; keep what the confidence needs
    python scripts/eval_confidence.py fit --cache DIR [--labels swap_undone]   # fit the map on the training pairs
    python scripts/eval_confidence.py report --cache DIR [--out FILE]   # figures before / after
    python scripts/eval_confidence.py sizes --cache DIR [--out FILE]    # nucleus size as a feature

Embryos: the 8 JIM767 embryos of :func:`xmodal.datasets.celegans_embryos`, 28 pairs. Training split:
the 6 pairs among the first 4 embryos (sorted names, as ``eval_identity.py``); the other 22 pairs are
held out. Every pair is registered twice (``register_cells`` defaults, and ``transform="rigid"``: a
worse registration, so that the map sees good and poor fits); a match is right when the two cells
carry the same lineage name. Platynereis (``$XMODAL_DATA/platynereis_6dpf_nuclei``, never used for
fitting): left nuclei against the mirrored right nuclei (``eval_register_models.platynereis_pair``);
a match of a curated moving nucleus is right when its partner is the curated one (other matches have
no ground truth and are left out). Figures: ECE (10 equal-width bins), accuracy and share of matches
at confidence >= 0.9 (:func:`xmodal.atlas._calibration.calibration_figures`).

The shipped constants (:data:`xmodal.pipelines._confidence.COEFFICIENTS`) are the ``fit`` output
(rounded to 4 digits); ``report`` scores them (first fit: ``benchmarks/results/register-confidence-
2026-11-30-confidence.json``; the current one, to the scale-free ``auto`` registrations:
``register-confidence-refit-scalefree-2026-11-30.json``), ``sizes`` the nucleus size as a feature
(``register-features-2026-11-30-confidence.json``). When the registration defaults change, run
``collect`` (into a new DIR) and ``fit`` again and update the constants: the map is fitted to the
registrations the defaults produce. Run with one thread (OMP_NUM_THREADS=1 XMODAL_NUM_THREADS=1)
and XMODAL_DATA pointing at the folder holding platynereis_6dpf_nuclei.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from _jsonout import write_json  # noqa: E402 (scripts/ is on sys.path when run)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_atlas import SWAPPED, _swap_abp  # noqa: E402

TRAIN_EMBRYOS = 4
METHODS = ("default", "rigid")


def collect(cache: Path, platy: bool = True) -> None:
    from xmodal.datasets import celegans_embryos
    from xmodal.pipelines import register_cells
    from xmodal.pipelines._register_steps import PREALIGN_POINTS
    from xmodal.pipelines.prealign import fast_prealign

    cache.mkdir(parents=True, exist_ok=True)
    emb = celegans_embryos()
    train = set(sorted(emb)[:TRAIN_EMBRYOS])
    for a, b in itertools.combinations(sorted(emb), 2):
        fa, fb = emb[a], emb[b]
        start = None
        for method in METHODS:
            f = cache / f"embryo_{a}_{b}_{method}.npz"
            if f.exists():
                continue
            t0 = time.perf_counter()
            if start is None:
                # the orientation search once per pair, as register_cells runs it; every method
                # then starts from the same pre-aligned cells (what register_cells does after it)
                start = fast_prealign(fb.points, fa.points, n_points=PREALIGN_POINTS, rotations="all",
                                      seed=0).apply(fb.points)
            kw = {} if method == "default" else {"transform": method}
            res = register_cells(fa.points, start, errors=False, prealign=False, **kw)
            correct = fa.cells[res.fixed_index] == fb.cells[res.moving_index]
            ca, cb = (_swap_abp(e.cells) if e.name == SWAPPED else e.cells for e in (fa, fb))
            np.savez(f, moved=res.moved, fixed=res.fixed_points, mi=res.moving_index, fi=res.fixed_index,
                     correct=correct, correct_swap_undone=ca[res.fixed_index] == cb[res.moving_index],
                     confidence=res.confidence, fixed_size=fa.size, moving_size=fb.size,
                     split="train" if a in train and b in train else "heldout",
                     seconds=time.perf_counter() - t0)
            print(a, b, method, f"{correct.mean():.3f}", f"{time.perf_counter() - t0:.1f}s", file=sys.stderr,
                  flush=True)
    if platy:
        collect_platynereis(cache)


def collect_platynereis(cache: Path) -> None:
    from xmodal.pipelines import register_cells

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_register_models import platynereis_pair

    f = cache / "platynereis_default.npz"
    if f.exists():
        return
    p = platynereis_pair()
    t0 = time.perf_counter()
    res = register_cells(p["fixed"], p["moving"], errors=False)
    truth = dict((int(j), int(i)) for i, j in p["truth"])  # moving -> fixed
    keep = np.array([int(m) in truth for m in res.moving_index])
    correct = np.array([truth.get(int(m), -1) == int(x) for m, x in zip(res.moving_index, res.fixed_index)])
    np.savez(f, moved=res.moved, fixed=res.fixed_points, mi=res.moving_index, fi=res.fixed_index,
             correct=correct, evaluated=keep, confidence=res.confidence, split="platynereis",
             seconds=time.perf_counter() - t0)
    print("platynereis", f"{correct[keep].mean():.3f}", f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)


def _load(cache: Path):
    """Per registration: split, method, features, correctness, the uncalibrated confidence."""
    from xmodal.pipelines._confidence import match_features

    recs = []
    for f in sorted(cache.glob("*.npz")):
        z = np.load(f)
        keep = z["evaluated"] if "evaluated" in z.files else np.ones(len(z["mi"]), bool)
        feats = match_features(z["moved"], z["fixed"], z["mi"], z["fi"])
        undone = z["correct_swap_undone"] if "correct_swap_undone" in z.files else z["correct"]
        recs.append({"name": f.stem, "split": str(z["split"]), "method": f.stem.rsplit("_", 1)[1],
                     "features": feats[keep], "correct": z["correct"][keep].astype(float),
                     "correct_swap_undone": undone[keep].astype(float), "before": z["confidence"][keep]})
    return recs


def relabel(recs, labels: str):
    """The records with ``correct`` against the names as given ("as_given") or with the ABpl/ABpr
    swap of embryo 20241009_L5 undone ("swap_undone"; a cache collected since 2026-12-01)."""
    if labels == "as_given":
        return recs
    return [{**r, "correct": r["correct_swap_undone"]} for r in recs]


def fit_map(recs, ridge: float = 1e-3) -> dict:
    """Logistic regression of correctness on the features of the training registrations (binary log
    loss + ``ridge`` x squared coefficients, intercept not penalised)."""
    from scipy.optimize import minimize

    from xmodal.pipelines._confidence import FEATURES

    train = [r for r in recs if r["split"] == "train"]
    X = np.concatenate([r["features"] for r in train])
    y = np.concatenate([r["correct"] for r in train])
    A = np.c_[np.ones(len(X)), X]

    def loss(w):
        q = A @ w
        val = np.sum(np.logaddexp(0.0, q) - y * q) / len(y) + ridge * np.sum(w[1:] ** 2)
        s = 1.0 / (1.0 + np.exp(-q))
        grad = A.T @ (s - y) / len(y) + 2 * ridge * np.r_[0.0, w[1:]]
        return val, grad

    res = minimize(loss, np.zeros(A.shape[1]), jac=True, method="L-BFGS-B")
    coef = {"intercept": float(res.x[0]), **{n: float(v) for n, v in zip(FEATURES, res.x[1:])}}
    return {"coefficients": coef, "train_log_loss": float(res.fun), "train_matches": int(len(y)),
            "train_registrations": len(train), "ridge": ridge}


def report(recs, coefficients=None) -> dict:
    from xmodal.atlas._calibration import calibration_figures
    from xmodal.pipelines._confidence import calibrate

    out = {}
    parts = {"train": lambda r: r["split"] == "train", "heldout": lambda r: r["split"] == "heldout",
             "all_embryo_pairs": lambda r: r["split"] in ("train", "heldout"),
             "heldout_default_only": lambda r: r["split"] == "heldout" and r["method"] == "default",
             "platynereis": lambda r: r["split"] == "platynereis"}
    for part, sel in parts.items():
        rs = [r for r in recs if sel(r)]
        if not rs:
            continue
        y = np.concatenate([r["correct"] for r in rs])
        before = np.concatenate([r["before"] for r in rs])
        after = calibrate(np.concatenate([r["features"] for r in rs]), coefficients)
        out[part] = {"registrations": len(rs), "before": calibration_figures(before, y),
                     "after": calibration_figures(after, y)}
    return out


def size_features(cache: Path) -> dict:
    """Embryo pairs (the default registrations of the cache): matching with the nucleus size as a
    feature (``feature_weight="auto"``) against positions only; accuracy = share of the shared
    lineage names matched to each other (as ``eval_identity.py``)."""
    from xmodal.datasets import celegans_embryos
    from xmodal.pipelines import _register_steps as steps
    from xmodal.pipelines._confidence import match_confidence
    from xmodal.pipelines._features import match_with_features
    from xmodal.pipelines.prealign import median_nn_distance

    emb = celegans_embryos()
    rows = []
    for a, b in itertools.combinations(sorted(emb), 2):
        z = np.load(cache / f"embryo_{a}_{b}_default.npz")
        fa, fb = emb[a], emb[b]
        shared = len(set(fa.cells) & set(fb.cells))
        moved, fixed = z["moved"], z["fixed"]
        nn = median_nn_distance(fixed)

        def spatial():
            return steps.match_step(moved, fixed, matching="one-to-one", k=30, radius=None, unmatched_cost=3 * nn)

        mi, fi, _ = spatial()
        row = {"pair": f"{a}|{b}", "positions": float(np.sum(fa.cells[fi] == fb.cells[mi])) / shared}
        feats = (np.log(fa.size)[:, None], np.log(fb.size)[:, None])
        mi, fi, _, mc, fc, rec = match_with_features(moved, fixed, feats, "auto", nn=nn, matching="one-to-one",
                                                     k=30, radius=None, unmatched_cost=3 * nn, seed=0,
                                                     spatial_match=spatial)
        ok = fa.cells[fi] == fb.cells[mi]
        row.update(with_size=float(np.sum(ok)) / shared, feature_weight=rec["feature_weight"],
                   heldout=rec["selection"], confidence_mean=float(np.mean(match_confidence(mc, fc, mi, fi))),
                   matched_right=float(ok.mean()))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    pos, siz = np.array([r["positions"] for r in rows]), np.array([r["with_size"] for r in rows])
    return {"pairs": rows, "summary": {"positions_mean": float(pos.mean()), "with_size_mean": float(siz.mean()),
                                       "with_size_minus_positions_worst": float((siz - pos).min()),
                                       "pairs_better": int((siz > pos).sum()), "pairs": len(rows)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["collect", "platynereis", "fit", "report", "sizes"])
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--out")
    ap.add_argument("--labels", default="as_given", choices=["as_given", "swap_undone"],
                    help="fit / report: the names the map is fitted to (figures are given for both)")
    args = ap.parse_args()
    if args.what == "collect":
        collect(args.cache, platy=False)
    elif args.what == "platynereis":
        collect_platynereis(args.cache)
    elif args.what == "sizes":
        write_json(size_features(args.cache), args.out)
    else:
        recs = _load(args.cache)
        fitted = fit_map(relabel(recs, args.labels))
        out = {"fit": fitted, "fitted_to": args.labels}
        if args.what == "report":
            from xmodal.pipelines._confidence import COEFFICIENTS

            out.update(coefficients=COEFFICIENTS, refit_now=fitted,
                       figures={lab: report(relabel(recs, lab)) for lab in ("as_given", "swap_undone")})
        else:
            out["figures_with_fit"] = {lab: report(relabel(recs, lab), fitted["coefficients"])
                                       for lab in ("as_given", "swap_undone")}
        text = json.dumps(out, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            print(text)


if __name__ == "__main__":
    main()
