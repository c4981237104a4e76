"""How per-cell features enter the matching of ``register_cells``: the 28 built-in embryo pairs.

    python scripts/eval_feature_weights.py [--features size,expression] [--out FILE]

Each pair is registered once by the defaults (positions only, after one orientation search, as
``scripts/eval_identity.py pairs``); the matching of the moved cells is then redone with the
features under four rules and a grid of fixed weights:

- ``mad_likelihood``: the features scaled by the median / MAD of both sets pooled (the scale used
  before 2026-12-01), the weight of ``feature_weight="auto"`` (two-component likelihood model);
- ``mad_discounted``: the same scale, the right-pair variance fitted against the feature
  differences of the *other* spatial candidates (neighbouring cells often share features) and
  the weight ``sigma * sqrt(1 / tau^2 - 1 / nu^2) / nn``;
- ``scores_likelihood``: normal scores within each set (the current default), the auto weight;
- ``scores_discounted``: normal scores, the discounted weight.

Training split: the 6 pairs among the first 4 embryos (sorted); the other 22 are held out.
Accuracy of a pair = share of the shared lineage names whose cells are matched to each other.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from _jsonout import feature_script_args, prealigned_embryo_pairs, split_summary, write_json  # noqa: E402 (scripts/ is on sys.path when run)

TRAIN_EMBRYOS = 4
GRID = (0.0, 0.1, 0.2, 0.3, 0.5)


def _mad_scale(a, b):
    pooled = np.vstack([a, b])
    centre = np.median(pooled, axis=0)
    scale = 1.4826 * np.median(np.abs(pooled - centre), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return (a - centre) / scale, (b - centre) / scale


def _discounted_weight(fg, mg, moved, fixed, mi, fi, sigma2, nn):
    from xmodal.matching import knn_graph
    from xmodal.pipelines._features import _gauss_logpdf

    f = fg.shape[1]
    g = knn_graph(moved, fixed, k=8).tocoo()
    matched = set(zip(mi.tolist(), fi.tolist()))
    other = np.array([(r, c) for r, c in zip(g.row, g.col) if (r, c) not in matched])
    nu2 = float(((mg[other[:, 0]] - fg[other[:, 1]]) ** 2).sum(1).mean() / f)
    diff2 = ((fg[fi] - mg[mi]) ** 2).sum(1)
    pi, tau2 = 0.5, 0.25 * nu2
    wrong = _gauss_logpdf(diff2, nu2, f)
    for _ in range(100):
        right = np.log(pi) + _gauss_logpdf(diff2, tau2, f)
        resp = np.exp(right - np.logaddexp(right, np.log1p(-pi) + wrong))
        pi = float(np.clip(resp.mean(), 1e-3, 1 - 1e-3))
        tau2 = float(np.clip(np.sum(resp * diff2) / max(f * resp.sum(), 1e-12), 1e-4, nu2))
    return float(np.sqrt(sigma2 * max(1 / tau2 - 1 / nu2, 0.0)) / nn)


def evaluate(columns) -> dict:
    from xmodal.matching import match_points
    from xmodal.pipelines import register_cells
    from xmodal.pipelines._features import feature_match, normal_scores, select_feature_weight
    from xmodal.pipelines.prealign import median_nn_distance

    rows = []
    for fa, fb, split, start in prealigned_embryo_pairs(TRAIN_EMBRYOS):
        a, b = fa.name, fb.name
        shared = len(set(fa.cells) & set(fb.cells))
        moved = register_cells(fa.points, start, prealign=False, errors=False).moved
        fixed = fa.points
        nn = median_nn_distance(fixed)
        u = 3.0 * nn
        m = match_points(moved, fixed, k=30, unmatched_cost=u)
        mi, fi = np.asarray(m.rows), np.asarray(m.cols)
        sigma2 = float(np.median(np.linalg.norm(moved[mi] - fixed[fi], axis=1) ** 2)) / 2.3660
        F = [np.column_stack([getattr(e, c) for c in columns]) for e in (fa, fb)]
        scaled = {"mad": _mad_scale(*F), "scores": (normal_scores(F[0]), normal_scores(F[1]))}
        row = {"pair": f"{a}|{b}", "split": split}

        def acc(fg, mg, w):
            r_m, r_f, _ = feature_match(moved, fixed, fg, mg, weight=w, nn=nn, matching="one-to-one", k=30,
                                        radius=None, unmatched_cost=u)
            return float(np.sum(fa.cells[r_f] == fb.cells[r_m])) / shared

        for scale, (fg, mg) in scaled.items():
            w_lik = select_feature_weight(fg, mg, mi, fi, nn=nn, sigma2=sigma2, seed=0)[0]
            w_dis = _discounted_weight(fg, mg, moved, fixed, mi, fi, sigma2, nn)
            for rule, w in (("likelihood", w_lik), ("discounted", w_dis)):
                row[f"{scale}_{rule}"] = acc(fg, mg, w)
                row[f"{scale}_{rule}_weight"] = w
            for w in GRID:
                row[f"{scale}_w{w}"] = acc(fg, mg, w)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    keys_ = [k for k in rows[0] if k not in ("pair", "split") and not k.endswith("_weight")]
    summary = split_summary(rows, keys_)
    return {"features": list(columns), "pairs": rows, "summary": summary}


def main() -> None:
    args = feature_script_args(__doc__)
    write_json(evaluate(args.features), args.out)


if __name__ == "__main__":
    main()
