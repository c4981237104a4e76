"""Does the positions-only model that ``transform="auto"`` chooses matter once features are used?

    python scripts/eval_feature_start.py [--features size,expression] [--split train] [--out FILE]

``register_cells`` with features chooses its positions-only model without them, then fits the
feature weight, and (``feature_cpd=True``) runs the affine and deformable CPD stages with features
from that model's fit. This script asks how much a model selection that knew the features could
gain: for each embryo pair (one orientation search, then ``prealign=False``) it registers with
``transform="auto"`` and with every candidate of ``AUTO_CANDIDATES`` forced, each with the
features in the matching only and with the CPD stages, and reports the accuracy (names as given)
of each, the per-pair best candidate ("oracle": what a perfect choice of the start would give)
and the auto choice. Nothing is chosen from these numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jsonout import prealigned_embryo_pairs, split_summary, write_json  # noqa: E402


def pair_row(fa, fb, start, F) -> dict:
    from xmodal.pipelines import register_cells
    from xmodal.pipelines._auto_steps import AUTO_CANDIDATES, candidate_label
    from xmodal.pipelines.prealign import rms_radius

    shared = len(set(fa.cells) & set(fb.cells))
    R = rms_radius(fa.points)
    row = {}
    for cand in ("auto", *AUTO_CANDIDATES):
        kw, label = {}, cand
        if cand != "auto":
            kw, label = {"transform": cand[0]}, candidate_label(cand)
            if cand[0] == "deformable":
                kw["deformable_options"] = {"beta": cand[1] * R, "lam": cand[2] / R ** 2}
        for stages in (False, True):
            res = register_cells(fa.points, start, prealign=False, errors=False, fixed_features=F[0],
                                 moving_features=F[1], feature_cpd=stages, **kw)
            row[f"{label}|{'cpd' if stages else 'matching'}"] = float(
                np.sum(fa.cells[res.fixed_index] == fb.cells[res.moving_index])) / shared
        if cand == "auto":
            row["auto_chose"] = res.model_selection["chosen"]
    for stages in ("matching", "cpd"):
        row[f"oracle|{stages}"] = max(v for k, v in row.items() if k.endswith("|" + stages) and k[:4] != "auto")
    return row


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="size,expression", help="Embryo attributes, comma-separated")
    ap.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    ap.add_argument("--out", help="write the JSON here (default stdout)")
    args = ap.parse_args()
    rows = []
    for fa, fb, split, start in prealigned_embryo_pairs(4, args.split):
        F = [np.column_stack([getattr(e, c) for c in args.features.split(",")]) for e in (fa, fb)]
        row = {"pair": f"{fa.name}|{fb.name}", "split": split, **pair_row(fa, fb, start, F)}
        rows.append(row)
        print(row["pair"], {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, file=sys.stderr,
              flush=True)
    keys = [k for k in rows[0] if "|" in k and k != "pair"]
    summary = split_summary(rows, keys)
    write_json({"features": args.features.split(","), "pairs": rows, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
