#!/usr/bin/env python
"""The fit check of ``xmodal.atlas.identify`` on the built-in C. elegans embryos: each embryo held out
in turn against an atlas of the other 7 (positions + nucleus diameter + reporter intensity), given
as recorded and with deliberate mistakes (units of one or two axes, a mirror image); per case the
accuracy, the median squared Mahalanobis distance of the fit, whether the check flagged it, and
where the fit was doubtful the handedness test (objective of the sample and of its mirror image).

    OMP_NUM_THREADS=1 PYTHONPATH=python python scripts/eval_fit_check.py > benchmarks/results/identity-fit-check-DATE.txt
"""

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_atlas import _embryos, _features  # noqa: E402

from xmodal.atlas import build_atlas, identify  # noqa: E402

CASES = (("as recorded", (1.0, 1.0, 1.0), False), ("z/5.7", (1 / 5.7, 1.0, 1.0), False),
         ("z*10", (10.0, 1.0, 1.0), False), ("mirror", (1.0, 1.0, 1.0), True), ("yx*0.5", (1.0, 0.5, 0.5), False))


def main():
    emb, keys = _embryos()
    for s in range(len(keys)):
        train = [keys[(s + 1 + j) % len(keys)] for j in range(7)]
        atlas = build_atlas([emb[k].points for k in train], names=[emb[k].cells for k in train],
                            features=[_features(emb[k], "size+expression") for k in train])
        e = emb[keys[s]]
        ref = atlas.calibration["loo_fit_median_d2"]
        row = [f"fold {s} {keys[s]}", f"atlas leave-one-out median d2 {min(ref):.2f}-{max(ref):.2f}"]
        for tag, scale, mirror in CASES:
            p = e.points * np.asarray(scale) * (np.array([1.0, 1.0, -1.0]) if mirror else 1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = identify(p, atlas, features=_features(e, "size+expression"))
            acc = float((res.index == atlas.index(e.cells)).mean())
            fit = res.diagnostics["fit"]
            hand = ""
            if "mirror_fits_better" in fit:  # the fit was doubtful: the mirror image was registered too
                hand = (f" mirror tested: objective {fit['objective']:.1f} mirror {fit['mirror_objective']:.1f} "
                        f"mirror_fits_better {fit['mirror_fits_better']} ({res.diagnostics['timings']['handedness']:.2f} s)")
            row.append(f"{tag}: accuracy {acc:.3f} median_d2 {fit['median_d2']:.2f} flagged {not fit['ok']}{hand}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
