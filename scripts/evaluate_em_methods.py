#!/usr/bin/env python
"""Every segmentation method on the same affinities: parameters chosen on ISBI 2012 slices 20-24
only, scores on held-out slices 25-29 and on the unseen Drosophila VNC stack, side by side.

Methods (all from the same model output):

- ``baseline``: thresholded-boundary connected components grown back by a watershed
  (:func:`xmodal.models.isbi2012.boundary_baseline_segmentation`); ``threshold`` tuned.
- ``mws``: pixel mutex watershed with a repulsive ``bias``, ``strides`` and a size filter
  (:func:`xmodal.models.em.mws_segmentation`); grid and choice of ``evaluate_em_model.tune``.
- ``gasp``, ``multicut``, ``graph_mws``: the superpixel route
  (:func:`xmodal.segmentation.superpixel_agglomeration` with the model's affinities): superpixel
  ``threshold`` / ``sigma_seeds`` / ``superpixel_min_size``, boundary bias ``beta``, GASP
  ``linkage`` and the graph-level ``min_size`` tuned.

The choice of each method is the lowest mean adapted Rand error over slices 20-24 (first of equals
in grid order). Slices 25-29 and the VNC stack are scored once with those settings; nothing is
chosen on them. The tuning loop caches superpixels and region graphs; every reported score is
recomputed with the public functions (and the tuning path is checked against them on slices
20-24).

Affinities are predicted once per model and stack and cached as ``.npy`` in ``--cache``.

``--tune-only`` stops after the choice on slices 20-24 (slices 25-29 and the VNC stack are not read):
the first step when a new network is compared with the shipped one before either is scored on
held-out data. ``--models`` takes ``em`` / ``isbi2012`` (shipped) or checkpoint paths.

Example::

    OMP_NUM_THREADS=1 python scripts/evaluate_em_methods.py --data /work/shared/data/isbi2012_em_membranes \\
        --vnc /work/shared/data/drosophila_vnc_sstem_gerhard2013 --cache runs/cache --out runs/methods.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_em_model as ev  # noqa: E402

logger = logging.getLogger("evaluate_em_methods")

# A first grid (threshold 0.3-0.6, sigma_seeds 1-2, superpixel_min_size 25-100, beta 0.3-0.7) had its
# optimum on the slices 20-24 at edges (threshold 0.6, sigma 1, size 25, beta 0.3); this grid extends it there.
SP_GRID = {"threshold": (0.4, 0.5, 0.6, 0.7, 0.8), "sigma_seeds": (0.5, 1.0, 2.0), "superpixel_min_size": (10, 25, 100)}
GRAPH_GRID = {"beta": (0.2, 0.25, 0.3, 0.4, 0.5, 0.6), "min_size": (0, 50, 100, 200, 400)}
GRAPH_METHODS = {"gasp": {"method": "gasp", "linkage": ("mean", "sum", "max")},
                 "multicut": {"method": "multicut"},
                 "graph_mws": {"method": "mws"}}
TAGS = {"em": "new", "isbi2012": "old"}


def cached(cache: Path, spec: str, split: str, model, raw):
    """Affinities of ``raw`` by ``model`` (global normalisation of the stack), predicted once."""
    return ev.cached_stack(cache / f"aff_{split}_{TAGS.get(spec, Path(spec).stem)}.npy", model, raw)


def _graph(a, offsets, na, sp):
    """Region graph of ``sp`` with the mean boundary (1 - attractive merge probability) per face:
    the default path of :func:`superpixel_agglomeration` (attractive channels, no long range)."""
    from xmodal.segmentation.rag import edge_features, region_adjacency_graph

    rag = region_adjacency_graph(sp, ignore_label=0)
    feats = edge_features(rag, sp, affinities=(1.0 - a[:na]).astype(a.dtype), offsets=offsets[:na])
    be = np.clip(np.nan_to_num(feats.get("mean"), nan=1.0), 0.0, 1.0)
    sizes = feats.count.astype(np.float64)
    ok = sizes > 0
    node_size = np.bincount(sp.ravel().astype(np.int64), minlength=rag.n_nodes).astype(np.float64)
    return rag.n_nodes, rag.edges[ok].astype(np.int64), be[ok], sizes[ok], node_size


def _graph_labels(graph, sp, *, method, beta, linkage, min_size):
    from xmodal.segmentation.agglomeration import _merge_small_segments, agglomerate_graph

    n, uv, be, sizes, node_size = graph
    nl = agglomerate_graph(n, uv, be, sizes, method=method, beta=beta, linkage=linkage).astype(np.int64)
    nl[0] = 0
    if min_size > 0:
        nl = _merge_small_segments(nl, node_size, uv, be, sizes, int(min_size))
    return nl[sp.astype(np.int64)]


def _graph_settings(name):
    spec = GRAPH_METHODS[name]
    for linkage in spec.get("linkage", ("mean",)):
        for beta in GRAPH_GRID["beta"]:
            if spec["method"] == "multicut" and not 0 < beta < 1:
                continue
            yield {"method": spec["method"], "linkage": linkage, "beta": beta}


def tune_graph(model, aff, gt):
    """Grid search of the superpixel methods on the tuning slices: {name: (choice, rows)}."""
    from xmodal.segmentation import distance_transform_watershed
    from xmodal.segmentation.agglomeration import boundaries_from_affinities

    na, offs = int(model.n_attractive), np.asarray(model.offsets)
    bmaps = [boundaries_from_affinities(a, offs, n_attractive=na) for a in aff]
    rows = {name: [] for name in GRAPH_METHODS}
    for t, s, m in itertools.product(*SP_GRID.values()):
        sps = [distance_transform_watershed(b, threshold=t, sigma_seeds=s, min_size=m) for b in bmaps]
        graphs = [_graph(a, offs, na, sp) for a, sp in zip(aff, sps)]
        for name in GRAPH_METHODS:
            for st in _graph_settings(name):
                per = {ms: [] for ms in GRAPH_GRID["min_size"]}
                for g, sp, y in zip(graphs, sps, gt):
                    for ms in GRAPH_GRID["min_size"]:
                        per[ms].append(ev.scores(_graph_labels(g, sp, min_size=ms, **st), y))
                for ms, sc in per.items():
                    rows[name].append({"threshold": t, "sigma_seeds": s, "superpixel_min_size": m, **st,
                                       "min_size": ms, **{f"mean_{k}": float(np.mean([d[k] for d in sc]))
                                                          for k in sc[0]}})
        logger.info("  superpixels t=%.2f sigma=%.1f min=%d: best %s", t, s, m,
                    {k: round(min(r["mean_arand"] for r in v), 4) for k, v in rows.items()})
    return {name: (min(r, key=lambda x: x["mean_arand"]), r) for name, r in rows.items()}


def graph_segmentation(a, model, choice):
    """The public call with the chosen settings."""
    from xmodal.segmentation import superpixel_agglomeration

    return superpixel_agglomeration(affinities=a, offsets=model.offsets, n_attractive=model.n_attractive,
                                    method=choice["method"], beta=choice["beta"], linkage=choice["linkage"],
                                    threshold=choice["threshold"], sigma_seeds=choice["sigma_seeds"],
                                    superpixel_min_size=choice["superpixel_min_size"],
                                    min_size=choice["min_size"])


def apply_all(model, aff, gt, slices, choices) -> dict:
    """Scores of every method with its chosen settings."""
    out = ev.apply(model, aff, gt, slices, choices["pixel"])
    for name in GRAPH_METHODS:
        per = [ev.scores(graph_segmentation(a, model, choices[name]), g) for a, g in zip(aff, gt)]
        out[name] = ev.summarise(per, slices)
    return out


def _log_table(label, res):
    for k, d in res.items():
        logger.info("  %-8s %-18s ARand %.4f (worst %.4f, slice %d) VOI split %.3f merge %.3f segments %.1f",
                    label, k, d["mean_arand"], d["worst_arand"], d["worst_slice"], d["mean_voi_split"],
                    d["mean_voi_merge"], d["mean_n_segments"])


def evaluate_model(spec, args, stacks) -> dict:
    model = ev.load_model(spec)
    rec = ev._model_record(model, spec)
    logger.info("model %s", rec["name"])
    raw_t, gt_t = stacks["tune"]
    aff_t = cached(args.cache, spec, "tune", model, raw_t)
    pixel_choice, pixel_table = ev.tune(model, aff_t, gt_t, ev.FULL_GRID)
    graph = tune_graph(model, aff_t, gt_t)
    choices = {"pixel": pixel_choice} | {name: c for name, (c, _) in graph.items()}
    rec["chosen_on_slices_20_24"] = choices
    rec["tuning_table"] = {"pixel": pixel_table} | {name: r for name, (_, r) in graph.items()}
    rec["tune_20_24"] = apply_all(model, aff_t, gt_t, ev.TUNE_SLICES, choices)
    for name in GRAPH_METHODS:  # the cached tuning path equals the public function
        if abs(rec["tune_20_24"][name]["mean_arand"] - choices[name]["mean_arand"]) > 1e-9:
            raise RuntimeError(f"{name}: tuning path and public function disagree on slices 20-24")
    _log_table("tune", rec["tune_20_24"])
    for split, key, slices in (("heldout", "isbi_heldout_25_29", ev.HELDOUT_SLICES),
                               ("vnc", "vnc_unseen", tuple(range(20)))):
        if split not in stacks:
            continue
        raw, gt = stacks[split]
        rec[key] = apply_all(model, cached(args.cache, spec, split, model, raw), gt, slices, choices)
        _log_table(split, rec[key])
    return rec


def segmentation_defaults(choices: dict) -> dict:
    """The settings :func:`xmodal.pipelines.segment` reads from the model (``segmentation_defaults``):
    every method's choice, and as ``method`` the one with the lowest mean ARand on slices 20-24
    among those that beat the baseline there (else the pixel mutex watershed)."""
    px = choices["pixel"]
    tuned = {"mws": px["mws"]["tune_mean_arand"]} | {m: choices[m]["mean_arand"] for m in ("gasp", "multicut")}
    best = min(tuned, key=tuned.get)
    base = px["baseline"]["tune_mean_arand"]
    keys = ("beta", "linkage", "threshold", "sigma_seeds", "superpixel_min_size", "min_size")
    return {
        "method": best if tuned[best] < base else "mws",
        "mws": {"repulsive_bias": px["mws"]["bias"], "strides": px["mws"]["strides"], "min_size": px["mws"]["min_size"]},
        **{m: {k: choices[m][k] for k in keys if not (m == "multicut" and k == "linkage")}
           for m in ("gasp", "multicut")},
        "baseline_threshold": px["baseline"]["threshold"],
        "tune_mean_arand": tuned | {"baseline": base},
        "chosen_on": "ISBI 2012 slices 20-24 (lowest mean adapted Rand error; scripts/evaluate_em_methods.py)",
        "meaning": "mws.repulsive_bias: repulsive merge probabilities a -> clip(a + bias, 0, 1) before the mutex "
                   "watershed (xmodal.models.em.bias_affinities); gasp / multicut: options of "
                   "xmodal.segmentation.superpixel_agglomeration; min_size: segments smaller than this merged "
                   "into their most attractive neighbour",
    }


def write_defaults(meta_path: Path, defaults: dict) -> None:
    """Store ``defaults`` as ``segmentation_defaults`` in the model's ``.json`` metadata (atomic).

    Learned edge-weight settings already stored (``scripts/evaluate_em_edges.py``) are kept as the
    superpixel methods' settings, with the new hand-weighted choice as their ``hand_weighted``."""
    from xmodal.io import atomic_write_text

    meta = json.loads(meta_path.read_text())
    previous = meta.get("segmentation_defaults") or {}
    for m in ("gasp", "multicut"):  # learned edge weights (scripts/evaluate_em_edges.py) stay the default
        if isinstance(previous.get(m), dict) and "edge_model" in previous[m]:
            defaults[m] = previous[m] | {"hand_weighted": defaults[m]}
    for k in ("gasp_edge_model_choice",):
        if k in previous:
            defaults[k] = previous[k]
    meta["segmentation_defaults"] = defaults
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 folder")
    ap.add_argument("--vnc", type=Path, default=None, help="Gerhard et al. 2013 VNC folder (unseen test set)")
    ap.add_argument("--models", nargs="+", default=["em", "isbi2012"])
    ap.add_argument("--cache", type=Path, default=Path("runs/cache"), help="folder of cached affinities")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune-only", action="store_true",
                    help="choose on slices 20-24 only; do not read slices 25-29 or the VNC stack")
    ap.add_argument("--write-defaults", type=Path, default=None,
                    help="store the first model's chosen settings in this .json metadata (the shipped one: "
                         "python/xmodal/models/em_affinity_unet.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    import torch

    from xmodal.models.isbi2012 import read_isbi2012

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    stacks = {"tune": read_isbi2012(args.data, ev.TUNE_SLICES)}
    if not args.tune_only:
        stacks["heldout"] = read_isbi2012(args.data, ev.HELDOUT_SLICES)
    if args.vnc is not None and not args.tune_only:
        stacks["vnc"] = ev.read_vnc(args.vnc)
    result = {"protocol": {"tuning": "ISBI 2012 slices 20-24, lowest mean ARand per method",
                           "grids": {"pixel": {k: [None if v is None else (list(v) if isinstance(v, tuple) else float(v))
                                                   for v in vals] for k, vals in ev.FULL_GRID.items()},
                                     "superpixels": SP_GRID, "graph": GRAPH_GRID,
                                     "gasp_linkage": GRAPH_METHODS["gasp"]["linkage"]},
                           "heldout": "ISBI 2012 slices 25-29, never used for choices",
                           "vnc": "Gerhard et al. 2013 VNC stack 1, 20 slices, unseen; GT label >= 159 CCs"},
              "models": {}}
    for i, spec in enumerate(args.models):
        rec = evaluate_model(spec, args, stacks)
        rec["segmentation_defaults"] = segmentation_defaults(rec["chosen_on_slices_20_24"])
        result["models"][rec["name"] or spec] = rec
        if i == 0 and args.write_defaults is not None:
            write_defaults(args.write_defaults, rec["segmentation_defaults"])
            logger.info("stored the settings chosen on slices 20-24 in %s", args.write_defaults)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out is not None:
        from xmodal.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
