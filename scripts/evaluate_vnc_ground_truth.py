#!/usr/bin/env python
"""The Drosophila VNC figures of issue 13 under two ground-truth definitions, every method side by side.

Issue 13 scores the unseen VNC stack (Gerhard et al. 2013, stack 1, 20 sections of 1024², 4.6 nm
pixels) against the 4-connected components of ``label >= 159``. That foreground includes the
synapse label (223), which the annotators drew *over* the membrane between the pre- and the
postsynaptic cell: every synapse joins its partners into one ground-truth "instance", and a
segmentation that separates the two cells is counted as a false split. This script measures how
much of the score that is, then scores every method against both definitions:

- ``issue``: components of ``label >= 159`` (synapses included; the figures reported so far);
- ``cells``: components of ``label >= 159`` without the synapse pixels, which are left at 0 and
  ignored by the metrics like the membranes (``evaluate_em_model.read_vnc(synapses="ignore")``).

Bridges: an ``issue`` instance is *bridged* when removing its synapse pixels leaves two or more
components of at least ``--min-part`` pixels each (default 200, about 0.004 µm²: a cell profile, not
a fragment of the synapse's rim); the share of the ground truth's same-instance pixel pairs that lie
in bridged instances is reported per section.

Oracle: the ``cells`` ground truth itself as a segmentation (each synapse pixel given to the
nearest cell, :func:`oracle_cells`), scored against both definitions: a perfect cell segmentation's
score under the issue's definition.

Nothing is chosen here: every setting is the one stored with each network (chosen on ISBI 2012
slices 20-24); the VNC stack is read only to be scored. Methods, shipped network (``em``): the
``segment`` default (superpixels + GASP mean with the learned edge classifier), multicut with its
learned classifier, hand-weighted GASP, pixel mutex watershed (stored repulsive bias and size
filter), the thresholded-boundary baseline (stored threshold 0.2); previous network (``isbi2012``):
its settings chosen on 20-24 (``em_affinity_unet.eval.json``) and the old ``segment`` default
(mutex watershed, no bias, size filter 200 px). Affinities are predicted once per network and
cached as in ``evaluate_em_methods.py`` (``aff_vnc_new.npy`` / ``aff_vnc_old.npy``).

Example::

    OMP_NUM_THREADS=2 python scripts/evaluate_vnc_ground_truth.py \\
        --vnc /work/shared/data/drosophila_vnc_sstem_gerhard2013 --cache runs/cache \\
        --out benchmarks/results/segment-vnc-ground-truth-2026-12-02.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_em_edges as ee  # noqa: E402
import evaluate_em_model as ev  # noqa: E402
from _jsonout import run_record  # noqa: E402

logger = logging.getLogger("evaluate_vnc_ground_truth")
EVAL_JSON = Path(__file__).resolve().parents[1] / "python" / "xmodal" / "models" / "em_affinity_unet.eval.json"


def bridge_stats(gt_issue, gt_cells, min_part: int) -> dict:
    """Per section: instances of ``gt_issue`` that split into >= 2 parts of ``min_part`` px in
    ``gt_cells``, and the share of ``gt_issue``'s same-instance pixel pairs inside them."""
    out = {"n_instances": [], "n_bridged": [], "pair_share_bridged": []}
    for gi, gc in zip(gt_issue, gt_cells):
        fg = gc > 0
        big = {}
        pairs = np.unique(np.stack([gi[fg], gc[fg]]), axis=1, return_counts=True)
        for (i, _), n in zip(pairs[0].T, pairs[1]):
            if n >= min_part:
                big[int(i)] = big.get(int(i), 0) + 1
        bridged = np.array(sorted(i for i, k in big.items() if k >= 2), dtype=np.int64)
        size = np.bincount(gi.ravel(), minlength=int(gi.max()) + 1).astype(np.float64)
        size[0] = 0.0
        out["n_instances"].append(int((size > 0).sum()))
        out["n_bridged"].append(int(len(bridged)))
        out["pair_share_bridged"].append(float((size[bridged] ** 2).sum() / (size ** 2).sum()))
    return out


def oracle_cells(gt_issue, gt_cells):
    """The ground truth itself as a segmentation, each cell its own segment: every pixel of the
    issue's foreground (``gt_issue > 0``) gets the label of the nearest ``gt_cells`` pixel (a synapse
    pixel: one of the two cells it lies between), the rest 0. Scored against the issue's definition it
    measures what separating the partners of every synapse costs a perfect cell segmentation."""
    from scipy import ndimage as ndi

    out = np.zeros_like(gt_cells)
    for k, (gi, gc) in enumerate(zip(gt_issue, gt_cells)):
        if not (gc > 0).any():
            continue
        idx = ndi.distance_transform_edt(gc == 0, return_distances=False, return_indices=True)
        out[k] = np.where(gi > 0, gc[tuple(idx)], 0)
    return out


def _segmenters(spec, model, stored):
    """{name: function(affinities of one section) -> labels} with the settings stored for ``spec``."""
    from xmodal.models.isbi2012 import boundary_baseline_segmentation

    def baseline(t):
        return lambda a: boundary_baseline_segmentation(a, n_attractive=model.n_attractive, threshold=t)

    def mws(bias, strides, min_size):
        return lambda a: ev._segment_mws(a, model, bias, strides, min_size)

    if spec == "em":
        sd = model.segmentation_defaults
        hand = dict(sd["gasp"]["hand_weighted"])
        out = {"segment_default_gasp": lambda a: ee.segment_learned(a, model, {"method": "gasp", **{
                   k: v for k, v in sd["gasp"].items() if k != "hand_weighted"}}),
               "multicut_learned": lambda a: ee.segment_learned(a, model, {"method": "multicut", **{
                   k: v for k, v in sd["multicut"].items() if k != "hand_weighted"}}),
               "gasp_hand_weighted": lambda a: ee.segment_hand(a, model, hand),
               "pixel_mws": mws(sd["mws"]["repulsive_bias"], sd["mws"]["strides"], sd["mws"]["min_size"]),
               "baseline": baseline(float(sd["baseline_threshold"]))}
        return out
    ch = stored["chosen_on_slices_20_24"]
    m = ch["pixel"]["mws"]
    return {"gasp": lambda a: ee.segment_hand(a, model, ch["gasp"]),
            "pixel_mws": mws(m["bias"], m["strides"], m["min_size"]),
            "old_segment_default_mws_bias0_min200": mws(0.0, None, 200),
            "baseline": baseline(float(ch["pixel"]["baseline"]["threshold"]))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vnc", required=True, type=Path, help="Gerhard et al. 2013 VNC folder (stack1/)")
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"), help="folder of cached affinities")
    ap.add_argument("--models", nargs="+", default=["em", "isbi2012"], choices=["em", "isbi2012"])
    ap.add_argument("--min-part", type=int, default=200, help="pixels of a bridged part (default 200)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    t0 = time.perf_counter()
    raw, gt_issue = ev.read_vnc(args.vnc, synapses="merge")
    _, gt_cells = ev.read_vnc(args.vnc, synapses="ignore")
    gts = {"issue": gt_issue, "cells": gt_cells}
    result = {"protocol": __doc__.split("Example::")[0].strip(), "run": run_record(),
              "bridges": bridge_stats(gt_issue, gt_cells, args.min_part), "min_part": args.min_part,
              "models": {}}
    b = result["bridges"]
    logger.info("bridged instances per section %s (share of same-instance pairs: mean %.3f)",
                b["n_bridged"], float(np.mean(b["pair_share_bridged"])))
    oracle = oracle_cells(gt_issue, gt_cells)
    result["oracle_cells"] = {g: ev.summarise([ev.scores(o, y) for o, y in zip(oracle, gt)], tuple(range(20)))
                              for g, gt in gts.items()}
    logger.info("oracle (each ground-truth cell its own segment): issue GT ARand %.4f (worst %.4f), cells GT %.4f",
                result["oracle_cells"]["issue"]["mean_arand"], result["oracle_cells"]["issue"]["worst_arand"],
                result["oracle_cells"]["cells"]["mean_arand"])
    stored = json.loads(EVAL_JSON.read_text())["models"]
    for spec in args.models:
        model = ev.load_model(spec)
        aff = ev.cached_stack(args.cache / f"aff_vnc_{'new' if spec == 'em' else 'old'}.npy", model, raw)
        rows = {}
        for name, fn in _segmenters(spec, model, stored.get(f"{model.metadata['name']}", {})).items():
            labels = [fn(a) for a in aff]
            rows[name] = {g: ev.summarise([ev.scores(lab, y) for lab, y in zip(labels, gt)], tuple(range(20)))
                          for g, gt in gts.items()}
            logger.info("%-9s %-38s issue GT ARand %.4f (worst %.4f) | cells GT ARand %.4f (worst %.4f, slice %d)",
                        spec, name, rows[name]["issue"]["mean_arand"], rows[name]["issue"]["worst_arand"],
                        rows[name]["cells"]["mean_arand"], rows[name]["cells"]["worst_arand"],
                        rows[name]["cells"]["worst_slice"])
        result["models"][spec] = rows
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out is not None:
        from xmodal.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
