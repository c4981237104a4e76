"""Cell identity against an atlas: leave-one-embryo-out on the built-in C. elegans embryos.

The 8 JIM767 embryos of :func:`xmodal.datasets.celegans_embryos` (first time point with >= 350
nuclei, lineage names as ground truth, imaged in different orientations). Each embryo in turn is
held out, an atlas is built from the others (:func:`xmodal.atlas.build_atlas`, its confidence
calibrated by leave-one-out among those others only) and the held-out embryo is identified
(:func:`xmodal.atlas.identify`) from its raw coordinates.

Accuracy of an embryo = fraction of its cells given their own lineage name, a cell whose name is
not in the atlas counting as right only when left unnamed. Calibration figures pool the held-out
cells of all folds: expected calibration error (10 equal-width bins) and the accuracy of the cells
with confidence >= 0.9.

Reference points: the naive atlas of the issue (mean position per name of the training embryos,
each registered to one reference embryo by ``register_cells``, Mahalanobis cost, Hungarian) and
``register_cells`` pairwise (28 pairs, ``bench_pipelines.py``).

Note on the ground truth: in embryo ``20241009_JIM767_25_L5`` the names of the two AB
sub-lineages ABpl and ABpr are exchanged (all 128 descendants; with the two prefixes swapped back
it fits the other embryos like they fit each other), most likely a tracking swap at the 8-cell
stage. Accuracies are reported against the ground truth as given; ``per_embryo_corrected`` repeats
that embryo's figure with the swap undone, for information only.

Model choice (v2): the deformable stage of the atlas (``build_atlas(deform="auto")``) and its
settings were chosen on the folds holding out embryos 0-3 (sorted order) only; ``mean_folds_4_7``
is the figure on folds no setting was chosen on. ``loo7_affine`` is the atlas without it. v3
(shrinkage 12, 6 field rounds in identify) was chosen the same way (docs/identity.md).

``XMODAL_BENCH_QUICK=1``: 2 held-out embryos, no baseline.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

QUICK = os.environ.get("XMODAL_BENCH_QUICK", "") not in ("", "0")
SWAPPED = "20241009_JIM767_25_L5"


def _embryos():
    from xmodal.datasets import celegans_embryos

    emb = celegans_embryos()
    return emb, sorted(emb)


def _swap_abp(names):
    out = []
    for n in names:
        if n.startswith("ABpl"):
            n = "ABpr" + n[4:]
        elif n.startswith("ABpr"):
            n = "ABpl" + n[4:]
        out.append(n)
    return np.array(out)


#: Per-cell features of the embryos: nucleus diameter, and diameter + reporter intensity (the
#: pair chosen on the folds holding out embryos 0-3, docs/identity.md).
FEATURES = {"size": ("size",), "size+expression": ("size", "expression")}


def _features(embryo, features):
    if not features:
        return None
    cols = FEATURES["size" if features is True else features]
    return np.column_stack([getattr(embryo, c) for c in cols])


def identify_loo(*, n_train: int | None = None, features=None, held_out=None, build_options=None,
                 identify_options=None) -> dict:
    """Hold out each embryo, build an atlas of ``n_train`` others (default all 7: the n_train
    embryos following it in sorted order), identify it. ``features``: None (positions only) or a
    key of :data:`FEATURES`. Returns per-embryo accuracy, pooled calibration figures and timings."""
    from xmodal.atlas import build_atlas, identify
    from xmodal.atlas._calibration import calibration_figures

    emb, keys = _embryos()
    held_out = range(len(keys)) if held_out is None else held_out
    n_train = len(keys) - 1 if n_train is None else n_train
    per, per_corr, conf, ok, ok_corr, t_build, t_id, temps, loo_cal = {}, {}, [], [], [], [], [], [], []
    for s in held_out:
        train = [keys[(s + 1 + j) % len(keys)] for j in range(n_train)]
        e = emb[keys[s]]
        t0 = time.perf_counter()
        atlas = build_atlas([emb[k].points for k in train], names=[emb[k].cells for k in train],
                            features=[_features(emb[k], features) for k in train] if features else None,
                            identify_options=identify_options, **(build_options or {}))
        t_build.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = identify(e.points, atlas, features=_features(e, features), **(identify_options or {}))
        t_id.append(time.perf_counter() - t0)
        right = res.index == atlas.index(e.cells)
        per[keys[s]] = float(right.mean())
        right_corr = right
        if keys[s] == SWAPPED:
            right_corr = res.index == atlas.index(_swap_abp(e.cells))
            per_corr[keys[s]] = float(right_corr.mean())
        conf.append(res.confidence)
        ok.append(right)
        ok_corr.append(right_corr)
        temps.append(atlas.calibration.get("temperature"))
        loo_cal.append(atlas.calibration.get("loo_ece"))
    conf, ok, ok_corr = np.concatenate(conf), np.concatenate(ok), np.concatenate(ok_corr)
    acc = np.array(list(per.values()))
    # the split of the model choice: settings new in v2 (deformable stage) were chosen on the
    # folds holding out embryos 0-3; folds 4-7 are the held-out report
    split = {f"mean_folds_{a}_{b}": float(np.mean([per[keys[i]] for i in range(a, b + 1) if keys[i] in per]))
             for a, b in ((0, 3), (4, 7)) if any(keys[i] in per for i in range(a, b + 1))}
    figs = calibration_figures(conf, ok)
    figs_corr = calibration_figures(conf, ok_corr)
    return {"n_train": n_train, "features": features, "mean": float(acc.mean()), "worst": float(acc.min()),
            "per_embryo": per, "per_embryo_corrected": per_corr, **split,
            "mean_corrected": float(np.mean([per_corr.get(k, v) for k, v in per.items()])),
            "ece": figs["ece"], "accuracy_at_0.9": figs["accuracy_at_0.9"], "share_at_0.9": figs["share_at_0.9"],
            "reliability": figs["reliability"], "temperatures": temps, "atlas_loo_ece": loo_cal,
            "ece_corrected": figs_corr["ece"], "accuracy_at_0.9_corrected": figs_corr["accuracy_at_0.9"],
            "reliability_corrected": figs_corr["reliability"],
            "seconds_build": float(np.mean(t_build)), "seconds_identify": float(np.mean(t_id))}


def naive_atlas_baseline(held_out=None) -> dict:
    """The issue's naive atlas: the training embryos registered to one reference (the first of
    them) by ``register_cells`` (deformable, as in the issue), mean position and covariance per name (covariance shrunk to the
    pooled one), the held-out embryo registered to the reference too, Mahalanobis cost, Hungarian."""
    from scipy.optimize import linear_sum_assignment
    from xmodal.pipelines import register_cells

    emb, keys = _embryos()
    held_out = range(len(keys)) if held_out is None else held_out
    per = {}
    for s in held_out:
        train = [keys[(s + 1 + j) % len(keys)] for j in range(len(keys) - 1)]
        ref = emb[train[0]].points
        pos = {}
        for k in train:
            e = emb[k]
            moved = e.points if k == train[0] else register_cells(
                ref, e.points, transform="deformable", errors=False).transform.apply(e.points)
            for n, p in zip(e.cells, moved):
                pos.setdefault(n, []).append(p)
        names = sorted(pos)
        mu = np.array([np.mean(pos[n], 0) for n in names])
        res = [np.asarray(pos[n]) - m for n, m in zip(names, mu)]
        pooled = sum(r.T @ r for r in res) / max(sum(len(r) - 1 for r in res), 1)
        covs = np.array([(r.T @ r + 3 * pooled) / (len(r) - 1 + 3) for r in res])
        prec = np.linalg.inv(covs)
        e = emb[keys[s]]
        y = register_cells(ref, e.points, transform="deformable", errors=False).transform.apply(e.points)
        diff = y[:, None, :] - mu[None]
        cost = np.einsum("nmi,mij,nmj->nm", diff, prec, diff)
        r, c = linear_sum_assignment(cost)
        given = np.full(len(y), "", dtype=object)
        given[r] = np.array(names)[c]
        per[keys[s]] = float(np.mean(given.astype(str) == e.cells))
    acc = np.array(list(per.values()))
    return {"mean": float(acc.mean()), "worst": float(acc.min()), "per_embryo": per}


def identify_speed(n_cells: int = 400, repeats: int = 3) -> dict:
    """Seconds to identify a 400-cell sample (an embryo of ~350 nuclei plus spurious detections
    inside its bounding box) against an atlas of the other 7 embryos."""
    from xmodal.atlas import build_atlas, identify

    emb, keys = _embryos()
    train = keys[1:]
    atlas = build_atlas([emb[k].points for k in train], names=[emb[k].cells for k in train], calibrate=False)
    pts = emb[keys[0]].points
    rng = np.random.default_rng(0)
    extra = rng.uniform(pts.min(0), pts.max(0), size=(n_cells - len(pts), 3))
    sample = np.vstack([pts, extra])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        identify(sample, atlas)
        times.append(time.perf_counter() - t0)
    return {"cells": len(sample), "seconds": float(np.min(times)), "all": times}


def build_speed() -> dict:
    """Seconds to build (and calibrate) an atlas of all 8 embryos."""
    from xmodal.atlas import build_atlas

    emb, keys = _embryos()
    t0 = time.perf_counter()
    atlas = build_atlas([emb[k].points for k in keys], names=[emb[k].cells for k in keys])
    total = time.perf_counter() - t0
    return {"seconds": total, "calibration": {k: v for k, v in atlas.calibration.items() if k != "loo_reliability"}}


# ----------------------------------------------------------------------------- pytest-benchmark
HELD = [0, 3] if QUICK else None


def test_identify_embryos_atlas_of_7(benchmark):
    out = benchmark.pedantic(identify_loo, kwargs={"held_out": HELD}, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["mean"] > 0.47  # the naive atlas of the issue


@pytest.mark.parametrize("features", list(FEATURES))
def test_identify_embryos_atlas_of_7_with_features(benchmark, features):
    out = benchmark.pedantic(identify_loo, kwargs={"held_out": HELD, "features": features}, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["mean"] > 0.47


@pytest.mark.parametrize("features", [None, "size+expression"])
@pytest.mark.parametrize("n_train", [3, 5])
def test_identify_embryos_small_atlases(benchmark, n_train, features):
    out = benchmark.pedantic(identify_loo, kwargs={"held_out": HELD, "n_train": n_train, "features": features},
                             rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["mean"] > 0.3


def test_identify_400_cells_speed(benchmark):
    out = benchmark.pedantic(identify_speed, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["seconds"] < 5.0


def test_build_atlas_8_embryos_speed(benchmark):
    out = benchmark.pedantic(build_speed, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["seconds"] < 300.0


@pytest.mark.skipif(QUICK, reason="the baseline registers 56 embryo pairs")
def test_naive_atlas_baseline(benchmark):
    out = benchmark.pedantic(naive_atlas_baseline, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["mean"] > 0.2


if __name__ == "__main__":  # python benchmarks/bench_atlas.py [what...] -> JSON on stdout
    import json
    import sys

    runs = {"loo7": lambda: identify_loo(), "loo7_size": lambda: identify_loo(features="size"),
            "loo7_size_expression": lambda: identify_loo(features="size+expression"),
            "loo5_size_expression": lambda: identify_loo(n_train=5, features="size+expression"),
            "loo3_size_expression": lambda: identify_loo(n_train=3, features="size+expression"),
            "loo7_affine": lambda: identify_loo(build_options={"deform": None}),
            "loo5": lambda: identify_loo(n_train=5), "loo3": lambda: identify_loo(n_train=3),
            "speed_identify": identify_speed, "speed_build": build_speed, "baseline": naive_atlas_baseline}
    for what in sys.argv[1:] or list(runs):
        print(json.dumps({what: runs[what]()}), flush=True)
