"""``register_cells`` when cells are missing from one side: the 28 embryo pairs with a random 20 %
of one embryo's cells removed (as when a segmentation misses nuclei or a data set has unnamed
detections).

    python scripts/eval_missing_cells.py [--features size,expression] [--out FILE]

For each pair (one orientation search, then ``register_cells(..., prealign=False)``, as
``scripts/eval_identity.py pairs``) and each side ("moving": 20 % of the moving embryo's cells
removed; "fixed": of the fixed one's; a seeded random draw per pair), the fraction of the names
still present in both that are matched right (names as given), by:

- ``rigid``: ``transform="rigid"``, positions only;
- ``auto``: the defaults (``transform="auto"``), positions only;
- ``features_matching_only``: the defaults with the features, ``feature_cpd=False``;
- ``features``: the defaults with the features (CPD stages with features).

The 6 training pairs (among the first 4 embryos, sorted) and the 22 held-out pairs are summarised
apart. Nothing is chosen from these numbers: they check the defaults chosen on the complete pairs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jsonout import feature_script_args, prealigned_embryo_pairs, split_summary, write_json  # noqa: E402

METHODS = ("rigid", "auto", "features_matching_only", "features")
REMOVED = 0.2


def side_scores(fa, fb, start, F, keep_fixed, keep_moving) -> dict:
    from xmodal.pipelines import register_cells

    fc, mc = fa.cells[keep_fixed], fb.cells[keep_moving]
    shared = len(set(fc) & set(mc))
    out = {"shared": shared}
    for method in METHODS:
        kw = {"transform": method} if method in ("rigid", "auto") else {
            "fixed_features": F[0][keep_fixed], "moving_features": F[1][keep_moving],
            "feature_cpd": method == "features"}
        t0 = time.perf_counter()
        res = register_cells(fa.points[keep_fixed], start[keep_moving], prealign=False, errors=False, **kw)
        out[f"seconds_{method}"] = time.perf_counter() - t0
        out[method] = float(np.sum(fc[res.fixed_index] == mc[res.moving_index])) / shared
    return out


def main() -> None:
    args = feature_script_args(__doc__)
    rows = []
    for i, (fa, fb, split, start) in enumerate(prealigned_embryo_pairs(4)):
        F = [np.column_stack([getattr(e, c) for c in args.features]) for e in (fa, fb)]
        rng = np.random.default_rng(i)
        row = {"pair": f"{fa.name}|{fb.name}", "split": split}
        for side, n in (("moving", len(fb.points)), ("fixed", len(fa.points))):
            keep = np.sort(rng.choice(n, int(round((1 - REMOVED) * n)), replace=False))
            kf = keep if side == "fixed" else np.arange(len(fa.points))
            km = keep if side == "moving" else np.arange(len(fb.points))
            row[side] = side_scores(fa, fb, start, F, kf, km)
        rows.append(row)
        print(row["pair"], {s: {m: round(row[s][m], 3) for m in METHODS} for s in ("moving", "fixed")},
              file=sys.stderr, flush=True)
    per_side = {side: split_summary(rows, METHODS, lambda r, m, side=side: r[side][m]) for side in ("moving", "fixed")}
    summary = {}
    for part in ("train", "heldout", "all"):
        sel = [r for r in rows if part == "all" or r["split"] == part]
        summary[part] = {side: per_side[side][part] for side in ("moving", "fixed")}
        for side in ("moving", "fixed"):
            summary[part][side]["auto_minus_rigid_worst"] = float(min(r[side]["auto"] - r[side]["rigid"] for r in sel))
            summary[part][side]["features_minus_matching_only_worst"] = float(
                min(r[side]["features"] - r[side]["features_matching_only"] for r in sel))
        summary[part]["pairs"] = len(sel)
    write_json({"features": args.features, "removed_fraction": REMOVED, "pairs": rows, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
