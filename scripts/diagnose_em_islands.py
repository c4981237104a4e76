#!/usr/bin/env python
"""Where the `segment` default's adapted Rand error on ISBI 2012 comes from: small ground-truth
segments absorbed whole by a neighbour ("islands"), and whether the superpixels separate them.

For each split (tuning slices 20-24, held-out slices 25-29) the shipped `segment` defaults are run
as a user runs them. A ground-truth segment of fewer than ``--max-size`` pixels (default 3,000) is
an absorbed island when at least 95 % of it lies in one segment whose majority ground-truth segment
is another one. It *has its own superpixels* when at least 80 % of it lies in superpixels (the
default's: threshold 0.4, sigma_seeds 1, min size 25) whose majority ground-truth segment is the
island. Two oracles bound what a better agglomeration could gain: every absorbed island given its
own label, and only those with their own superpixels (the ones the agglomeration merged, not the
superpixels). A diagnosis, nothing is chosen here.

Example::

    python scripts/diagnose_em_islands.py --data /work/shared/data/isbi2012_em_membranes \\
        --out benchmarks/results/segment-isbi-islands-2026-12-02.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonout import run_record  # noqa: E402


def _majority(values):
    ids, counts = np.unique(values, return_counts=True)
    return ids[counts.argmax()] if len(ids) else None


def diagnose(raw, gt, max_size: int) -> dict:
    from skimage.metrics import adapted_rand_error

    from xmodal.models.em import load_em_affinity_unet, normalize_em, predict_em_affinities
    from xmodal.pipelines.segment import segment
    from xmodal.segmentation import distance_transform_watershed
    from xmodal.segmentation.agglomeration import boundaries_from_affinities

    model = load_em_affinity_unet()
    seg = np.asarray(segment(raw).labels)
    x = normalize_em(raw)
    out = {"arand": [], "oracle_all_islands": [], "oracle_islands_with_superpixels": [], "n_islands": [],
           "n_islands_with_superpixels": [], "island_sizes": []}
    for z in range(len(raw)):
        a = predict_em_affinities(model, x[z])
        b = boundaries_from_affinities(a, np.asarray(model.offsets), n_attractive=model.n_attractive)
        sp = distance_transform_watershed(b, threshold=0.4, sigma_seeds=1.0, min_size=25)
        g, s, fg = gt[z], seg[z], gt[z] > 0
        o_all, o_sp, nxt = s.copy(), s.copy(), int(s.max()) + 1
        n_is = n_sp = 0
        for gi in np.unique(g[fg]):
            sel = g == gi
            n = int(sel.sum())
            ids, counts = np.unique(s[sel], return_counts=True)
            if n >= max_size or counts.max() < 0.95 * n or _majority(g[(s == ids[counts.argmax()]) & fg]) == gi:
                continue
            own = sum(int((sp[sel] == sid).sum()) for sid in np.unique(sp[sel])
                      if _majority(g[(sp == sid) & fg]) == gi)
            n_is += 1
            out["island_sizes"].append(n)
            o_all[sel] = nxt
            if own >= 0.8 * n:
                n_sp += 1
                o_sp[sel] = nxt
            nxt += 1
        for key, lab in (("arand", s), ("oracle_all_islands", o_all), ("oracle_islands_with_superpixels", o_sp)):
            out[key].append(float(adapted_rand_error(g[fg], lab[fg])[0]))
        out["n_islands"].append(n_is)
        out["n_islands_with_superpixels"].append(n_sp)
    for key in ("arand", "oracle_all_islands", "oracle_islands_with_superpixels"):
        out[f"mean_{key}"] = float(np.mean(out[key]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 folder (train_image/, train_label/)")
    ap.add_argument("--max-size", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from xmodal.models.isbi2012 import read_isbi2012

    result = {"protocol": __doc__.split("Example::")[0].strip(), "run": run_record(), "max_size": args.max_size}
    for name, sl in (("tune_20_24", range(20, 25)), ("heldout_25_29", range(25, 30))):
        raw, gt = read_isbi2012(args.data, sl)
        result[name] = diagnose(raw, gt, args.max_size)
        r = result[name]
        print(f"{name}: ARand {r['mean_arand']:.4f}; every absorbed island separate {r['mean_oracle_all_islands']:.4f}; "
              f"those with their own superpixels {r['mean_oracle_islands_with_superpixels']:.4f} "
              f"({sum(r['n_islands_with_superpixels'])} of {sum(r['n_islands'])} islands)")
    text = json.dumps(result, indent=2) + "\n"
    if args.out is not None:
        from xmodal.io import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
