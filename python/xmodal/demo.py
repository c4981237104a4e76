"""``xmodal demo``: both pipelines end to end on built-in real data.

1. Cell registration: two C. elegans embryos (JIM767, ~350 nuclei each, imaged in different
   orientations) registered and matched with :func:`xmodal.pipelines.register_cells`; the lineage
   names give the fraction of correct matches.
2. Segmentation: two ISBI 2012 EM slices segmented with the built-in affinity U-Net and the mutex
   watershed (:func:`xmodal.pipelines.segment`), scored against the ground truth.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

FIXED_EMBRYO = "20241009_JIM767_25_L1"
MOVING_EMBRYO = "20241010_JIM767_25_L3"


def run_demo(out: str | Path = "xmodal-demo", *, progress: bool = True) -> str:
    """Run the demo, write its outputs under ``out`` and return a short text summary.

    ``progress``: progress bars on a terminal (tqdm), log lines otherwise (see ``xmodal._progress``).
    """
    from .datasets import celegans_embryos, isbi2012_slices
    from .pipelines import register_cells, segment
    from .pipelines._output import write_json

    out = Path(out)
    if out.exists() and not out.is_dir():  # before any work; the pipelines check their own subfolders
        raise ValueError(f"out: expected a folder for the demo's outputs, got the existing file {out}")
    t0 = time.perf_counter()
    embryos = celegans_embryos()
    fixed, moving = embryos[FIXED_EMBRYO], embryos[MOVING_EMBRYO]
    reg = register_cells(fixed.points, moving.points, out=out / "register")
    correct = int(np.sum(fixed.cells[reg.fixed_index] == moving.cells[reg.moving_index]))
    common = len(set(fixed.cells) & set(moving.cells))
    t_reg = time.perf_counter() - t0

    from ._optional import have_module

    summary = {
        "registration": {
            "fixed": FIXED_EMBRYO, "moving": MOVING_EMBRYO, "fixed_cells": len(fixed.cells),
            "moving_cells": len(moving.cells), "matched": reg.n_matched, "correct_lineage_names": correct,
            "shared_lineage_names": common, "accuracy": correct / common, "seconds": t_reg,
            "outputs": reg.outputs,
        },
    }
    lines = [
        f"xmodal demo: outputs in {out}",
        f"  cell registration  {FIXED_EMBRYO} <- {MOVING_EMBRYO}: {reg.n_matched} pairs, "
        f"{correct} of {common} shared lineage names matched correctly ({correct / common:.1%}), {t_reg:.1f} s",
    ]
    if have_module("torch"):
        t0 = time.perf_counter()
        raw, gt = isbi2012_slices()
        seg = segment(raw, out=out / "segment", ground_truth=gt, progress=progress)  # the model's stored defaults
        t_seg = time.perf_counter() - t0
        m = seg.metrics["mean"]
        summary["segmentation"] = {
            "slices": "ISBI 2012 training volume 25-26", "segments": seg.n_segments, "arand": m["arand"],
            "voi_split": m["voi_split"], "voi_merge": m["voi_merge"], "seconds": t_seg, "outputs": seg.outputs,
            "model": seg.parameters["model"], "method": seg.parameters["method"],
        }
        lines.append(f"  segmentation       ISBI 2012 slices 25-26 ({seg.parameters['model']}, {seg.parameters['method']}): "
                     f"{seg.n_segments} segments, ARand {m['arand']:.4f}, "
                     f"VOI split {m['voi_split']:.3f} / merge {m['voi_merge']:.3f} bits, {t_seg:.1f} s")
    else:
        summary["segmentation"] = None
        lines.append("  segmentation       skipped: the network needs PyTorch (pip install 'xmodal[demo]')")
    lines.append(f"  see {out / 'register' / 'report.html'} and {out / 'summary.json'}")
    write_json(out / "summary.json", summary)
    return "\n".join(lines)
