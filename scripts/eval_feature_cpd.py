"""CPD with features in ``register_cells`` (``feature_cpd=True``): how the stage was chosen.

    python scripts/eval_feature_cpd.py [--features size,expression] [--out FILE]

The 28 built-in embryo pairs (one orientation search per pair, then ``register_cells(...,
prealign=False)`` with the given ``Embryo`` attributes as features and ``feature_cpd=False``, as
``scripts/eval_identity.py pairs``); from that fit, variants of the extra deformable CPD stage with
features are run and the cells matched again with the same feature weight. Fraction of the names
the two embryos share that are matched right (names as given):

- ``base``: no stage (the feature matching of the positions-only fit);
- ``A``: deformable stage, register_cells' default field, feature Gaussian of the fitted ``tau``,
  CPD's own initial variance (the first choice, among A-G);
- ``B_tau0.7`` / ``C_tau1.5``: a narrower / wider feature Gaussian;
- ``D_reselect``: A, then the feature weight chosen again on the new fit;
- ``E_round2``: D, then a second stage with the new ``tau``;
- ``F_chosen``: A with the field of the model ``transform="auto"`` chose;
- ``G_sigma_nn``: A started from sigma^2 = nn^2 (nn the median nearest-neighbour distance);
- ``H_affine_first``: an affine stage with features, then A's deformable stage (what
  ``feature_cpd=True`` runs: the best of all on the training pairs);
- ``I_from_prealign``: H started from the pre-aligned cells instead of the positions-only fit.

The choice is made on the 6 training pairs (among the first 4 embryos, sorted); the 22 others are
held out.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _jsonout import feature_script_args, prealigned_embryo_pairs, split_summary, write_json  # noqa: E402

VARIANTS = ("base", "A", "B_tau0.7", "C_tau1.5", "D_reselect", "E_round2", "F_chosen", "G_sigma_nn", "H_affine_first",
            "I_from_prealign")


def _stage(moved, fixed, fg, mg, tau, beta, lam, sigma2=None, transform="deformable"):
    from xmodal.pipelines._match_step import FEATURE_CPD_OPTIONS
    from xmodal.registration import cpd

    extra = {"beta": beta, "lam": lam} if transform == "deformable" else {}
    r = cpd(moved, fixed, transform=transform, sigma2=sigma2, moving_features=mg, fixed_features=fg,
            feature_sigma=tau, **extra, **FEATURE_CPD_OPTIONS)
    return np.asarray(r.moved, np.float64)


def pair_row(fa, fb, split, start, columns) -> dict:
    from xmodal.pipelines import register_cells
    from xmodal.pipelines._features import match_with_features, standardise
    from xmodal.pipelines._register_steps import match_step
    from xmodal.pipelines.prealign import median_nn_distance, rms_radius

    F = [np.column_stack([getattr(e, c) for c in columns]) for e in (fa, fb)]
    t0 = time.perf_counter()
    res = register_cells(fa.points, start, prealign=False, errors=False, fixed_features=F[0], moving_features=F[1],
                         feature_cpd=False)
    seconds = time.perf_counter() - t0
    shared = len(set(fa.cells) & set(fb.cells))
    fg, mg, _ = standardise(*F)
    w, tau = res.features["feature_weight"], res.features.get("selection", {}).get("tau")
    nn, R = median_nn_distance(fa.points), rms_radius(fa.points)
    opts = dict(nn=nn, matching="one-to-one", k=30, radius=None, unmatched_cost=3 * nn, seed=0)

    def match(moved, weight):
        spatial = (lambda: match_step(moved, fa.points, matching="one-to-one", k=30, radius=None,  # noqa: E731
                                      unmatched_cost=3 * nn, reviewed=None))
        mi, fi, _, _, _, rec = match_with_features(moved, fa.points, F, weight, spatial_match=spatial, **opts)
        return float(np.sum(fa.cells[fi] == fb.cells[mi]) / shared), rec

    row = {"pair": f"{fa.name}|{fb.name}", "split": split, "weight": w, "tau": tau, "model": res.parameters["model"],
           "seconds_fit": seconds, "base": match(res.moved, w)[0]}
    if w <= 0:
        return {**row, **{v: row["base"] for v in VARIANTS[1:]}}
    beta, lam = 0.4 * R, 100 / R ** 2
    t0 = time.perf_counter()
    mA = _stage(res.moved, fa.points, fg, mg, tau, beta, lam)
    row["seconds_stage"] = time.perf_counter() - t0
    row["A"] = match(mA, w)[0]
    row["B_tau0.7"] = match(_stage(res.moved, fa.points, fg, mg, 0.7 * tau, beta, lam), w)[0]
    row["C_tau1.5"] = match(_stage(res.moved, fa.points, fg, mg, 1.5 * tau, beta, lam), w)[0]
    row["D_reselect"], rec = match(mA, "auto")
    w2, tau2 = rec["feature_weight"], rec.get("selection", {}).get("tau")
    row["E_round2"] = match(_stage(mA, fa.points, fg, mg, tau2, beta, lam), w2)[0] if w2 > 0 else row["D_reselect"]
    m = re.match(r"deformable\(beta=([0-9.]+)R,lam=([0-9.]+)/R\^2\)", res.parameters["model"])
    row["F_chosen"] = (match(_stage(res.moved, fa.points, fg, mg, tau, float(m.group(1)) * R,
                                    float(m.group(2)) / R ** 2), w)[0] if m else row["A"])
    row["G_sigma_nn"] = match(_stage(res.moved, fa.points, fg, mg, tau, beta, lam, sigma2=nn ** 2), w)[0]
    for key, first in (("H_affine_first", res.moved), ("I_from_prealign", start)):
        aff = _stage(first, fa.points, fg, mg, tau, beta, lam, transform="affine")
        row[key] = match(_stage(aff, fa.points, fg, mg, tau, beta, lam), w)[0]
    return row


def main() -> None:
    args = feature_script_args(__doc__)
    rows = []
    for fa, fb, split, start in prealigned_embryo_pairs(4):
        rows.append(pair_row(fa, fb, split, start, args.features))
        print(rows[-1]["pair"], {k: round(rows[-1][k], 3) for k in VARIANTS}, file=sys.stderr, flush=True)
    summary = split_summary(rows, VARIANTS)
    chosen = max(VARIANTS[1:], key=lambda v: (round(summary["train"][v]["mean"], 4), v == "A"))
    write_json({"features": args.features, "pairs": rows, "summary": summary,
                "best_on_training_pairs": chosen, "shipped": "H_affine_first"}, args.out)


if __name__ == "__main__":
    main()
