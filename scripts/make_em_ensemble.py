#!/usr/bin/env python
"""Combine EM affinity networks of one recipe (different seeds) into one ensemble checkpoint.

The output is a checkpoint that :func:`xmodal.models.em.load_em_affinity_unet` loads as an
:class:`xmodal.models.unet2d.AffinityEnsemble`: its prediction is the mean of the members' merge
probabilities. The members must share offsets, architecture (``features``) and input
normalisation, and must have trained on the same slices. ``--half`` stores the weights as float16
(half the size; the loader computes in float32), so that two members fit in the space of one.

The ensemble's metadata keeps the members' shared fields, lists every member (file name, SHA-256,
its training metadata) under ``ensemble.members``, and records the validation masked BCE of the
ensemble and of each member on ``--val-slices``, all computed the same way here: from the merge
probabilities of the checkpoint as written (so with float16 weights when ``--half``), clipped to
[1e-7, 1 - 1e-7]. Segmentation settings are not copied: they are chosen for the ensemble afterwards
(``scripts/evaluate_em_methods.py`` and ``scripts/evaluate_em_edge_robust.py`` with ``--model``).

Example::

    python scripts/make_em_ensemble.py --members python/xmodal/models/em_affinity_unet.pt \\
        runs/seed1/em_affinity_unet.pt --half --data /work/shared/data/isbi2012_em_membranes \\
        --out runs/ensemble/em_affinity_unet.pt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SHARED = ("name", "offsets", "n_attractive", "convention", "convention_text", "architecture", "features",
          "in_channels", "divisor", "normalization", "data")


def _parse_slices(text: str):
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def validation_bce(model, images, instances, offsets) -> float:
    """Masked BCE of the merge probabilities of whole normalised slices (probabilities clipped)."""
    from xmodal.models._augment import affinity_targets_ignore
    from xmodal.models.em import predict_em_affinities

    tot = cnt = 0.0
    for img, inst in zip(images, instances):
        p = np.clip(predict_em_affinities(model, img).astype(np.float64), 1e-7, 1 - 1e-7)
        t, m = affinity_targets_ignore(inst, offsets)
        loss = -(t * np.log(p) + (1 - t) * np.log1p(-p)) * m
        tot += float(loss.sum())
        cnt += float(m.sum())
    return tot / max(cnt, 1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", nargs="+", required=True, type=Path, help="member checkpoints (.pt)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 folder, for the validation loss")
    ap.add_argument("--val-slices", default="20-24")
    ap.add_argument("--half", action="store_true", help="store the weights as float16")
    args = ap.parse_args(argv)

    import torch

    from xmodal.io import atomic_write_text
    from xmodal.models.em import load_em_affinity_unet, normalize_em
    from xmodal.models.isbi2012 import read_isbi2012
    from xmodal.models.unet2d import AffinityEnsemble

    if len(args.members) < 2:
        raise SystemExit("--members: expected at least two checkpoints")
    members, metas, files = [], [], []
    for path in args.members:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = dict(ckpt["metadata"])
        if meta.get("ensemble"):
            raise SystemExit(f"--members: {path} is already an ensemble")
        metas.append(meta)
        members.append(load_em_affinity_unet(path))
        files.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      "training": meta.get("training")})
    for key in SHARED:
        if any(json.dumps(m.get(key)) != json.dumps(metas[0].get(key)) for m in metas):
            raise SystemExit(f"--members: field {key!r} differs between the members")
    slices = {(m["training"].get("train_slices"), m["training"].get("val_slices")) for m in metas}
    if len(slices) != 1:
        raise SystemExit(f"--members: trained on different slices: {sorted(slices)}")
    train_slices, val_slices = slices.pop()

    ens = AffinityEnsemble(members).eval()
    state = {k: (v.half() if args.half and v.is_floating_point() else v).detach().clone().contiguous()
             for k, v in ens.state_dict().items()}
    meta = {k: metas[0][k] for k in SHARED if k in metas[0]}
    meta["architecture"] = (f"{meta['architecture']}; ensemble of {len(members)} such networks "
                            "(xmodal.models.unet2d.AffinityEnsemble): mean of their merge probabilities")
    meta["ensemble"] = {"n_members": len(members), "combine": "mean of the members' merge probabilities",
                        "weights_dtype": "float16" if args.half else "float32", "members": files}
    tr = [m["training"] for m in metas]
    meta["training"] = {
        "kind": "ensemble", "script": "scripts/make_em_ensemble.py",
        "command": " ".join(["scripts/make_em_ensemble.py"] + list(sys.argv[1:] if argv is None else argv)),
        "seed": [t.get("seed") for t in tr], "steps": [t.get("steps") for t in tr],
        "threads": min(int(t.get("threads", 1)) for t in tr),
        "deterministic": all(bool(t.get("deterministic")) for t in tr),
        "wall_seconds": float(sum(float(t.get("wall_seconds", 0.0)) for t in tr)),
        "cpu_seconds": float(sum(float(t.get("cpu_seconds", 0.0)) for t in tr)),
        "n_parameters": int(sum(int(t.get("n_parameters", 0)) for t in tr)),
        "train_slices": train_slices, "val_slices": val_slices, "augment_preset": tr[0].get("augment_preset"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    torch.save({"state_dict": state, "metadata": meta}, tmp)
    tmp.replace(args.out)

    # validation loss of the checkpoint as written and of each member, computed the same way
    val_idx = _parse_slices(args.val_slices)
    images, instances = read_isbi2012(args.data, val_idx)
    norm = meta["normalization"]
    x = [normalize_em(im, low=norm["training_low"], high=norm["training_high"]) for im in images]
    offsets = np.asarray(meta["offsets"])
    written = load_em_affinity_unet(args.out)
    meta["training"]["val_loss"] = validation_bce(written, x, instances, offsets)
    meta["training"]["member_val_loss"] = [validation_bce(m, x, instances, offsets) for m in written.members]
    meta["training"]["val_loss_note"] = ("masked BCE of the merge probabilities (clipped to [1e-7, 1 - 1e-7]) "
                                         f"on slices {args.val_slices}, weights as written")
    torch.save({"state_dict": state, "metadata": meta}, tmp)
    tmp.replace(args.out)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"val_loss": meta["training"]["val_loss"],
                      "member_val_loss": meta["training"]["member_val_loss"],
                      "bytes": args.out.stat().st_size}))


if __name__ == "__main__":
    main()
