#!/usr/bin/env python
"""Blockwise superpixel agglomeration with the learned edge weights, stitched, against single-shot.

    OMP_NUM_THREADS=1 python scripts/eval_stitched_blocks.py --data /work/shared/data/isbi2012_em_membranes \\
        --vnc /work/shared/data/drosophila_vnc_sstem_gerhard2013 --out benchmarks/results/segment-stitched-blocks.json

The shipped EM model predicts the held-out ISBI 2012 slices 25-29 (512², 4 nm pixels) and four slices
of the Drosophila VNC stack (0, 5, 10, 15; 1024², 4.6 nm); each slice is segmented single-shot with the
model's stored GASP defaults (learned edge weights) and by
:func:`xmodal.segmentation.stitched_superpixel_agglomeration` with the same options over a grid of
block sizes and halos. Reported per slice and setting: adapted Rand error against the single-shot
labels and against the ground truth (membranes ignored), the number of segments, the wall time on
2 threads (single-shot: one call). Nothing is chosen on these figures for the method itself; they
document which halo reproduces single-shot (``xmodal.pipelines._agglomerate.STITCH_HALO``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_em_model as ev  # noqa: E402
from _jsonout import write_json  # noqa: E402

SETTINGS = {"isbi": ((256, 16), (256, 32), (256, 64), (128, 32), (128, 64)), "vnc": ((512, 32), (512, 64), (256, 64))}


def run(name, aff, gt, slices, opts):
    from xmodal.metrics import adapted_rand_error
    from xmodal.models.em import EM_OFFSETS
    from xmodal.segmentation import stitched_superpixel_agglomeration, superpixel_agglomeration

    rows = []
    for a, g, z in zip(aff, gt, slices):
        t0 = time.perf_counter()
        single = superpixel_agglomeration(affinities=a, offsets=EM_OFFSETS, n_attractive=2, **opts)
        row = {"slice": int(z), "single": {"arand_gt": float(adapted_rand_error(single, g, ignore_gt=(0,)).error),
                                           "n_segments": int(single.max()), "seconds": time.perf_counter() - t0}}
        for bs, h in SETTINGS[name]:
            t0 = time.perf_counter()
            r = stitched_superpixel_agglomeration(a, EM_OFFSETS, n_attractive=2, block_shape=bs, halo=h, n_workers=2,
                                                  **opts)
            lab = np.asarray(r.labels)
            row[f"blocks {bs} halo {h}"] = {
                "arand_vs_single": float(adapted_rand_error(lab, single, ignore_gt=()).error),
                "arand_gt": float(adapted_rand_error(lab, g, ignore_gt=(0,)).error), "n_segments": int(lab.max()),
                "n_blocks": r.n_blocks, "face_merges": r.n_face_merges, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(name, z, {k: (round(v["arand_vs_single"], 4) if "arand_vs_single" in v else round(v["arand_gt"], 4))
                        for k, v in row.items() if isinstance(v, dict)}, file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--vnc", type=Path)
    ap.add_argument("--out")
    args = ap.parse_args()
    from xmodal.models.isbi2012 import read_isbi2012
    from xmodal.pipelines._agglomerate import GRAPH_OPTIONS

    model = ev.load_model("em")
    stored = model.segmentation_defaults["gasp"]
    opts = {k: v for k, v in stored.items() if k in GRAPH_OPTIONS} | {"min_size": int(stored.get("min_size", 0))}
    raw, gt = read_isbi2012(args.data, ev.HELDOUT_SLICES)
    out = {"protocol": __doc__.split("The shipped")[1].strip(), "options": {k: v for k, v in opts.items()
                                                                          if k != "edge_model"},
           "isbi_heldout": run("isbi", ev.predict_stack(model, raw), gt, ev.HELDOUT_SLICES, opts)}
    if args.vnc is not None:
        raw_v, gt_v = ev.read_vnc(args.vnc)
        keep = (0, 5, 10, 15)
        out["vnc"] = run("vnc", ev.predict_stack(model, raw_v[list(keep)]), gt_v[list(keep)], keep, opts)
    write_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
