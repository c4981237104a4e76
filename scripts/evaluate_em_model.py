#!/usr/bin/env python
"""Evaluate 2D EM affinity models: settings chosen on ISBI training slices, scores on held-out data.

For every model given (default: the new shipped ``em_affinity_unet`` and the previous
``isbi2012_affinity_unet``), side by side:

1. ``tune`` -- ISBI 2012 slices 20-24 (training slices; never 25-29): the mutex-watershed settings
   (repulsive ``bias``, ``strides``, ``min_size``) and the thresholded-boundary baseline's
   ``threshold`` are chosen by the lowest mean adapted Rand error over these 5 slices.
2. ``heldout`` -- ISBI 2012 slices 25-29 with those settings.
3. ``vnc`` (only with ``--vnc``) -- the Drosophila VNC ssTEM stack of Gerhard et al. (2013), 20
   slices, used only as an unseen test set: nothing is trained, tuned or chosen on it.

Segmentations: (a) mutex watershed (:func:`xmodal.mutex_watershed`) on the predicted affinities
with the chosen bias / strides, then segments under ``min_size`` px merged into their most
attractive neighbour (:func:`xmodal.models.em.mws_segmentation`); (b) the baseline
:func:`xmodal.models.isbi2012.boundary_baseline_segmentation` (4-connected components of
``1 - mean(attractive affinities) < threshold``, grown back by a watershed).

Normalisation, as ``xmodal segment`` would apply it to the stack given: a model whose metadata says
``quantile`` gets ``clip((raw - q01) / (q99 - q01), 0, 1)`` with the global quantiles of the
evaluated stack (slices 20-24, slices 25-29 and the VNC stack each on their own); a ``zscore``
model (the previous one) gets the stack's global mean / standard deviation.

Ground truth: ISBI -- 4-connected components of the non-membrane pixels; VNC -- 4-connected
components of ``label >= 159`` (intracellular, glia / extracellular, mitochondria, synapse),
membrane labels (< 159) become 0. Ground-truth 0 is ignored by every metric (CREMI / ISBI
convention). ARand = adapted Rand error (equal to ``skimage.metrics.adapted_rand_error``), VOI split
/ merge in bits (``xmodal.metrics``), segments per slice = distinct labels in the segmentation.

Example::

    python scripts/evaluate_em_model.py --data /work/shared/data/isbi2012_em_membranes \\
        --vnc /work/shared/data/drosophila_vnc_sstem_gerhard2013 \\
        --out runs/em_mws.json

The defaults stored with the model (every method, including the superpixel route) are chosen and
written by ``scripts/evaluate_em_methods.py --write-defaults``, which reuses this script's grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("evaluate_em_model")

TUNE_SLICES = tuple(range(20, 25))
HELDOUT_SLICES = tuple(range(25, 30))
BIASES = (-0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
STRIDES = (None, (2, 2))
MIN_SIZES = (0, 10, 25, 50, 100, 200, 400)
THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))


def read_vnc(root, *, synapses: str = "merge"):
    """Raw ``(20, 1024, 1024)`` uint8 and instances (4-connected components of label >= 159).

    ``synapses="merge"`` (default, issue 13's definition): the synapse label (223) counts as
    foreground like the rest. The synapse annotations are drawn over the membrane between the pre-
    and the postsynaptic cell, so this joins the partners of every synapse into one instance.
    ``synapses="ignore"``: synapse pixels are left out before the components are taken (label 0,
    ignored by the metrics like the membranes), so each cell is its own instance
    (``scripts/evaluate_vnc_ground_truth.py``)."""
    if synapses not in ("merge", "ignore"):
        raise ValueError(f"synapses: expected 'merge' or 'ignore', got {synapses!r}")
    from PIL import Image
    from skimage.measure import label as cc_label

    root = Path(root) / "stack1"
    raws, gts = [], []
    for i in range(20):
        raws.append(np.asarray(Image.open(root / "raw" / f"{i:02d}.tif")))
        lab = np.asarray(Image.open(root / "labels" / f"labels{i:08d}.png").convert("L"))
        fg = (lab >= 159) & (lab != 223) if synapses == "ignore" else lab >= 159
        gts.append(cc_label(fg, connectivity=1).astype(np.int32))
    raw = np.stack(raws)
    if raw.ndim != 3:
        raise ValueError(f"VNC raw: expected 2D grey slices, got stack shape {raw.shape}")
    return raw, np.stack(gts)


def load_model(spec):
    """``"em"`` / ``"isbi2012"`` (shipped) or a path to a checkpoint of either kind."""
    from xmodal.models import load_isbi2012_affinity_unet
    from xmodal.models.em import _load_checkpoint, load_em_affinity_unet

    if spec == "em":
        return load_em_affinity_unet()
    if spec == "isbi2012":
        return load_isbi2012_affinity_unet()
    meta = _load_checkpoint(spec)["metadata"]
    if meta.get("normalization", {}).get("kind") == "quantile":
        return load_em_affinity_unet(spec)
    return load_isbi2012_affinity_unet(spec)


def predict_stack(model, raw):
    """Affinities ``(n, C, H, W)`` of a slice stack, normalised as the model's metadata says with the
    global statistics of the whole stack (a model with ``metadata["context"]`` also reads each
    section's neighbours in this stack, mirrored at its ends)."""
    from xmodal.models.em import normalize_em, predict_em_affinities

    norm = model.metadata["normalization"]
    if norm["kind"] == "quantile":
        x = normalize_em(raw, q=tuple(norm["quantiles"]))
    else:
        r = raw.astype(np.float64)
        x = ((raw.astype(np.float32) - np.float32(r.mean())) / np.float32(r.std())).astype(np.float32)
    context = int(model.metadata.get("context", 0))
    if context:  # a model that also reads the neighbouring sections of this stack
        from xmodal.models.em import em_context_stack

        x = em_context_stack(x, context)
    return np.stack([predict_em_affinities(model, s) for s in x])


def cached_stack(path, model, raw):
    """:func:`predict_stack` of ``raw``, kept in the ``.npy`` file ``path``: read from it when it
    exists, else predicted and written (atomically: a temporary file renamed)."""
    path = Path(path)
    if path.is_file():
        return np.load(path)
    aff = predict_stack(model, raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, aff)
    tmp.replace(path)
    return aff


def scores(seg, gt) -> dict:
    from xmodal.metrics import adapted_rand_error, contingency_table, variation_of_information

    table = contingency_table(seg, gt)
    voi = variation_of_information(table=table, ignore_gt=(0,))
    return {"arand": float(adapted_rand_error(table=table, ignore_gt=(0,)).error),
            "voi_split": float(voi.split), "voi_merge": float(voi.merge),
            "n_segments": int(len(np.unique(seg)))}


def summarise(per_slice: list[dict], slices) -> dict:
    out = {"slices": [int(s) for s in slices]}
    for k in ("arand", "voi_split", "voi_merge", "n_segments"):
        v = [d[k] for d in per_slice]
        out[k] = v
        out[f"mean_{k}"] = float(np.mean(v))
    worst = int(np.argmax(out["arand"]))
    out["worst_arand"] = float(out["arand"][worst])
    out["worst_slice"] = int(slices[worst])
    return out


def _segment_mws(aff, model, bias, strides, min_size):
    from xmodal.models.em import mws_segmentation

    return mws_segmentation(aff, model.offsets, n_attractive=model.n_attractive, bias=bias,
                            strides=None if strides is None else list(strides), min_size=min_size)


def _segment_baseline(aff, model, threshold):
    from xmodal.models.isbi2012 import boundary_baseline_segmentation

    return boundary_baseline_segmentation(aff, n_attractive=model.n_attractive, threshold=float(threshold))


SMALL_GRID = {"bias": (0.0, 0.2, 0.4), "strides": (None,), "min_size": (0, 50, 200),
              "threshold": (0.2, 0.3, 0.4, 0.5)}
FULL_GRID = {"bias": BIASES, "strides": STRIDES, "min_size": MIN_SIZES, "threshold": THRESHOLDS}


def tune(model, aff, gt, grid=FULL_GRID):
    """Grid search on the tuning slices; returns (choice, table)."""
    from xmodal.models.em import bias_affinities
    from xmodal.segmentation import mutex_watershed, remove_small_segments

    MIN_SIZES = grid["min_size"]
    rows = []
    for bias, strides in itertools.product(grid["bias"], grid["strides"]):
        per = {m: [] for m in MIN_SIZES}
        for a, g in zip(aff, gt):
            lab0 = mutex_watershed(bias_affinities(a, n_attractive=model.n_attractive, bias=bias), model.offsets,
                                   n_attractive=model.n_attractive, strides=None if strides is None else list(strides))
            for m in MIN_SIZES:
                lab = lab0 if m <= 1 else remove_small_segments(lab0, m, affinities=a, offsets=model.offsets,
                                                                n_attractive=model.n_attractive)
                per[m].append(scores(lab, g))
        for m in MIN_SIZES:
            rows.append({"bias": bias, "strides": None if strides is None else list(strides), "min_size": m,
                         "mean_arand": float(np.mean([d["arand"] for d in per[m]])),
                         "mean_voi_split": float(np.mean([d["voi_split"] for d in per[m]])),
                         "mean_voi_merge": float(np.mean([d["voi_merge"] for d in per[m]])),
                         "mean_n_segments": float(np.mean([d["n_segments"] for d in per[m]]))})
        logger.info("  bias %+.2f strides %s: best ARand %.4f", bias, strides,
                    min(r["mean_arand"] for r in rows[-len(MIN_SIZES):]))
    brows = []
    for t in grid["threshold"]:
        per = [scores(_segment_baseline(a, model, t), g) for a, g in zip(aff, gt)]
        brows.append({"threshold": float(t), "mean_arand": float(np.mean([d["arand"] for d in per])),
                      "mean_voi_split": float(np.mean([d["voi_split"] for d in per])),
                      "mean_voi_merge": float(np.mean([d["voi_merge"] for d in per])),
                      "mean_n_segments": float(np.mean([d["n_segments"] for d in per]))})
    best = min(rows, key=lambda r: r["mean_arand"])  # first of equals: grid order
    bbest = min(brows, key=lambda r: r["mean_arand"])
    choice = {"mws": {"bias": best["bias"], "strides": best["strides"], "min_size": best["min_size"],
                      "tune_mean_arand": best["mean_arand"]},
              "baseline": {"threshold": bbest["threshold"], "tune_mean_arand": bbest["mean_arand"]}}
    return choice, {"mws": rows, "baseline": brows}


def apply(model, aff, gt, slices, choice) -> dict:
    c = choice["mws"]
    mws = [scores(_segment_mws(a, model, c["bias"], c["strides"], c["min_size"]), g) for a, g in zip(aff, gt)]
    base = [scores(_segment_baseline(a, model, choice["baseline"]["threshold"]), g) for a, g in zip(aff, gt)]
    # the untuned mutex watershed as `segment` ran it before (no bias, no strides, min_size 200)
    plain = [scores(_segment_mws(a, model, 0.0, None, 200), g) for a, g in zip(aff, gt)]
    return {"mws": summarise(mws, slices), "baseline": summarise(base, slices),
            "mws_bias0_min200": summarise(plain, slices)}


def _model_record(model, spec) -> dict:
    meta = model.metadata
    return {"spec": str(spec), "name": meta.get("name"), "normalization": meta.get("normalization"),
            "n_parameters": meta.get("training", {}).get("n_parameters"),
            "train_slices": meta.get("training", {}).get("train_slices"),
            "offsets": np.asarray(model.offsets).tolist(), "n_attractive": int(model.n_attractive)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 folder (train_image/, train_label/)")
    ap.add_argument("--models", nargs="+", default=["em", "isbi2012"],
                    help="'em', 'isbi2012' (shipped) or checkpoint paths; the first is the model under test")
    ap.add_argument("--stages", default="tune,heldout", help="comma list of tune, heldout (default both)")
    ap.add_argument("--vnc", type=Path, default=None,
                    help="Gerhard et al. 2013 VNC folder: also score the unseen VNC stack (run once, at the end)")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write (default: print only)")
    ap.add_argument("--grid", default="full", choices=["full", "small"],
                    help="tuning grid: full (the shipped choice) or small (quick recipe checks)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    import torch

    from xmodal.models.isbi2012 import read_isbi2012

    torch.set_num_threads(args.threads)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    t_all = time.perf_counter()
    raw_t, gt_t = read_isbi2012(args.data, TUNE_SLICES)
    if "heldout" in stages:
        raw_h, gt_h = read_isbi2012(args.data, HELDOUT_SLICES)
    if args.vnc is not None:
        raw_v, gt_v = read_vnc(args.vnc)
    result = {
        "protocol": {
            "tuning": "ISBI 2012 slices 20-24: MWS bias x strides x min_size grid and baseline threshold "
                      "grid, lowest mean ARand",
            "grid": {k: [None if v is None else (list(v) if isinstance(v, tuple) else (v if isinstance(v, int) else float(v))) for v in vals]
                     for k, vals in (FULL_GRID if args.grid == "full" else SMALL_GRID).items()},
            "heldout": "ISBI 2012 slices 25-29, never used for training, tuning or selection",
            "vnc": "Gerhard et al. 2013 Drosophila VNC ssTEM stack 1 (20 slices, 1024x1024, 4.6 nm px), unseen "
                   "test set; GT = 4-connected components of label >= 159, label < 159 ignored",
            "normalization": "global statistics of each evaluated stack (quantile models: 1st/99th "
                             "percentile; zscore models: mean/std)",
            "metrics": "adapted Rand error; VOI split/merge in bits; GT 0 ignored",
        },
        "models": {},
    }
    first_choice = None
    for spec in args.models:
        model = load_model(spec)
        rec = _model_record(model, spec)
        name = rec["name"] or str(spec)
        logger.info("model %s (%s)", name, spec)
        aff_t = predict_stack(model, raw_t)
        choice, table = tune(model, aff_t, gt_t, FULL_GRID if args.grid == "full" else SMALL_GRID)
        rec["chosen_on_slices_20_24"] = choice
        rec["tuning_table"] = table
        rec["tune_20_24"] = apply(model, aff_t, gt_t, TUNE_SLICES, choice)
        logger.info("  chosen: %s", choice)
        if "heldout" in stages:
            aff_h = predict_stack(model, raw_h)
            rec["isbi_heldout_25_29"] = apply(model, aff_h, gt_h, HELDOUT_SLICES, choice)
            for k, d in rec["isbi_heldout_25_29"].items():
                logger.info("  ISBI 25-29 %-18s ARand %.4f VOI split %.3f merge %.3f segments %.1f", k,
                            d["mean_arand"], d["mean_voi_split"], d["mean_voi_merge"], d["mean_n_segments"])
        if args.vnc is not None:
            aff_v = predict_stack(model, raw_v)
            rec["vnc_unseen"] = apply(model, aff_v, gt_v, tuple(range(20)), choice)
            for k, d in rec["vnc_unseen"].items():
                logger.info("  VNC        %-18s ARand %.4f (worst %.4f, slice %d) VOI split %.3f merge %.3f "
                            "segments %.1f", k, d["mean_arand"], d["worst_arand"], d["worst_slice"],
                            d["mean_voi_split"], d["mean_voi_merge"], d["mean_n_segments"])
        result["models"][name] = rec
        if first_choice is None:
            first_choice = (spec, choice)
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    if args.out is not None:
        from xmodal.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
