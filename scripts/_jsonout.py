"""Output of the evaluation scripts: a JSON document to a file, or to stdout."""

from __future__ import annotations

import json
from pathlib import Path


def run_record() -> dict:
    """When, where and with what a result was made: UTC date, xmodal commit (and whether the tree
    had local changes), Python / numpy / scipy / torch versions, machine (platform, CPU model,
    cores available), command line."""
    import os
    import platform
    import subprocess
    import sys
    from datetime import datetime, timezone

    import numpy as np
    import scipy

    root = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD") or None, "local_changes": bool(git("status", "--porcelain")),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch_version, "platform": platform.platform(), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "command": " ".join(sys.argv)}


def write_json(out, path=None) -> None:
    """``out`` as indented JSON into ``path``, or printed when ``path`` is None. A dict gets a
    ``"run"`` record (:func:`run_record`) unless it has one. An existing ``path`` is refused (a
    committed result is never overwritten in place; set XMODAL_OVERWRITE_RESULTS=1 to replace a
    scratch file); the file is written to a temporary name and renamed, so it is whole or absent."""
    import os

    if isinstance(out, dict) and "run" not in out:
        out = {**out, "run": run_record()}
    text = json.dumps(out, indent=1)
    if not path:
        print(text)
        return
    path = Path(path)
    if path.exists() and os.environ.get("XMODAL_OVERWRITE_RESULTS") != "1":
        raise SystemExit(f"{path} exists: results are not overwritten; choose another name "
                         "(or set XMODAL_OVERWRITE_RESULTS=1 for a scratch file)")
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def feature_script_args(doc: str):
    """Command line of the embryo feature scripts: ``--features`` (Embryo attributes) and ``--out``."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="size,expression", help="Embryo attributes, comma-separated")
    ap.add_argument("--out", help="write the JSON here (default stdout)")
    args = ap.parse_args()
    args.features = args.features.split(",")
    return args


def prealigned_embryo_pairs(train_embryos: int = 4, split: str = "all"):
    """The 28 built-in embryo pairs as ``scripts/eval_identity.py pairs`` walks them: yields
    ``(a, b, split, start)`` with the two ``Embryo`` records, "train" (both among the first
    ``train_embryos`` in sorted order) or "heldout", and b's points after one orientation search
    onto a (what ``register_cells`` does before its fit; pass them with ``prealign=False``).
    ``split``: "all", or only the "train" or the "heldout" pairs."""
    import itertools

    from xmodal.datasets import celegans_embryos
    from xmodal.pipelines._register_steps import PREALIGN_POINTS
    from xmodal.pipelines.prealign import fast_prealign

    emb = celegans_embryos()
    keys = sorted(emb)
    train = set(keys[:train_embryos])
    for a, b in itertools.combinations(keys, 2):
        part = "train" if a in train and b in train else "heldout"
        if split not in ("all", part):
            continue
        fa, fb = emb[a], emb[b]
        pre = fast_prealign(fb.points, fa.points, n_points=PREALIGN_POINTS, rotations="all", seed=0)
        yield fa, fb, part, pre.apply(fb.points)


def split_summary(rows, keys, value=None) -> dict:
    """Mean and worst of each key over the "train", "heldout" and "all" rows (``row["split"]``):
    ``{part: {key: {"mean", "worst"}}}``; ``value(row, key)`` reads a value (default ``row[key]``)."""
    import numpy as np

    value = value or (lambda row, key: row[key])
    out = {}
    for part in ("train", "heldout", "all"):
        sel = [r for r in rows if part == "all" or r["split"] == part]
        if not sel:
            continue
        out[part] = {k: {"mean": float(np.mean([value(r, k) for r in sel])),
                         "worst": float(np.min([value(r, k) for r in sel]))} for k in keys}
    return out
