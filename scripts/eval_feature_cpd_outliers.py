"""The outlier weight of the CPD stages with features when cells are missing from one side.

    python scripts/eval_feature_cpd_outliers.py [--split train] [--out FILE]

For each embryo pair (one orientation search) and each condition (complete; a random 20 % of the
moving cells removed; of the fixed cells, the draws of ``scripts/eval_missing_cells.py``), the
positions-only ``register_cells`` fit with the features (size, expression) in the matching is
computed once; the CPD stages with features then run from it with the outlier weight w of
``_match_step.FEATURE_CPD_OPTIONS`` set by each rule below, and the cells are matched again:

- ``w0.1``: 0.1, the default;
- ``size``: 0.1 + max(0, 1 - n_moving / n_fixed) (the share of fixed cells that cannot have a
  partner, added to the default);
- ``w0.3``: 0.3.

Accuracy = the share of the names present in both that are matched to each other (names as given).
An exploration on the training pairs (the default ``--split``); nothing in the package uses it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jsonout import prealigned_embryo_pairs, write_json  # noqa: E402

RULES = {"w0.1": lambda n_fixed, n_moving: 0.1,
         "size": lambda n_fixed, n_moving: 0.1 + max(0.0, 1 - n_moving / n_fixed),
         "w0.3": lambda n_fixed, n_moving: 0.3}


def condition_row(fa, fb, start, F, kf, km) -> dict:
    from xmodal.pipelines import _match_step, register_cells
    from xmodal.pipelines.prealign import median_nn_distance, rms_radius

    fix, mov, fc, mc = fa.points[kf], start[km], fa.cells[kf], fb.cells[km]
    shared = len(set(fc) & set(mc))
    res = register_cells(fix, mov, prealign=False, errors=False, fixed_features=F[0][kf], moving_features=F[1][km],
                         feature_cpd=False)
    row = {"n_fixed": len(fix), "n_moving": len(mov),
           "matching_only": float(np.sum(fc[res.fixed_index] == mc[res.moving_index])) / shared}
    feats = _match_step.check_feature_options(F[0][kf], F[1][km], "auto", len(fix), len(mov))
    nn = median_nn_distance(fix)
    default = dict(_match_step.FEATURE_CPD_OPTIONS)
    try:
        for name, rule in RULES.items():
            _match_step.FEATURE_CPD_OPTIONS["w"] = rule(len(fix), len(mov))
            m = _match_step.match_cells(res.moved, fix, feats, ("one-to-one", 30, None, 3 * nn), reviewed=None,
                                        nn=nn, seed=0, feature_cpd=True, radius=rms_radius(fix))
            row[name] = float(np.sum(fc[m.fi] == mc[m.mi])) / shared
    finally:
        _match_step.FEATURE_CPD_OPTIONS.update(default)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    ap.add_argument("--out", help="write the JSON here (default stdout)")
    args = ap.parse_args()
    rows = []
    for i, (fa, fb, split, start) in enumerate(prealigned_embryo_pairs(4)):
        if args.split not in ("all", split):
            continue
        F = [np.column_stack([e.size, e.expression]) for e in (fa, fb)]
        rng = np.random.default_rng(i)  # the draws of eval_missing_cells.py
        row = {"pair": f"{fa.name}|{fb.name}", "split": split,
               "complete": condition_row(fa, fb, start, F, np.arange(len(fa.points)), np.arange(len(fb.points)))}
        for side, n in (("moving", len(fb.points)), ("fixed", len(fa.points))):
            keep = np.sort(rng.choice(n, int(round(0.8 * n)), replace=False))
            kf = keep if side == "fixed" else np.arange(len(fa.points))
            km = keep if side == "moving" else np.arange(len(fb.points))
            row[side] = condition_row(fa, fb, start, F, kf, km)
        rows.append(row)
        print(row["pair"], {c: {k: round(v, 3) for k, v in row[c].items()} for c in ("complete", "moving", "fixed")},
              file=sys.stderr, flush=True)
    summary = {c: {k: {"mean": float(np.mean([r[c][k] for r in rows])),
                       "worst_minus_matching_only": float(min(r[c][k] - r[c]["matching_only"] for r in rows))}
                   for k in ("matching_only", *RULES)} for c in ("complete", "moving", "fixed")}
    write_json({"split": args.split, "rules": list(RULES), "pairs": rows, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
