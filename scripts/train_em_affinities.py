#!/usr/bin/env python
"""Train the 2D EM affinity U-Net shipped with xmodal (``em_affinity_unet``) on the CPU, reproducibly.

Data: ISBI 2012 training slices (Cardona et al. 2010; Arganda-Carreras et al. 2015) as
``train_image/{i}.png`` / ``train_label/{i}.png`` (255 = cell interior, 0 = membrane) under
``--data``. Instances are the 4-connected components of the non-membrane pixels. By default slices
0-19 train and slices 20-24 validate (and are where the segmentation settings are chosen, by
``scripts/evaluate_em_model.py``); slices 25-29 are never read by this script.

Input normalisation: ``clip((raw - low) / (high - low), 0, 1)`` with ``low`` / ``high`` the 1st /
99th percentiles of the whole training stack (global, never per crop); at inference the same
quantiles of the volume being segmented (``xmodal.models.em.normalize_em``).

Augmentation (``xmodal.models._augment.EMAugmentation``, applied to raw and labels jointly before
the affinity targets are computed): 8 symmetries of the square, rotation by any angle, +-20 %
scale, elastic deformation; on raw only: smooth local contrast, contrast, brightness, gamma,
blur, noise, fold-like defect lines and missing patches (the latter left out of the loss).

Targets: merge probability of each offset (1 = same instance; a pair touching a membrane is 0);
pairs whose partner is outside the slice or in a missing patch are masked. Loss: masked binary
cross-entropy on logits, mean over valid pairs and channels.

Reproducibility: numpy Generator and torch seeds from ``--seed``, ``torch.use_deterministic_algorithms``,
a fixed number of torch threads (``--threads``); two runs with the same arguments and thread count
give bit-identical weights. The wall-time cap only protects the machine (a capped run says so in
its metadata and is not the reproducible run).

Warm start (``--init CHECKPOINT``): the network is built from the checkpoint's ``features`` and its
weights and BatchNorm statistics are loaded before the first step (offsets and architecture must
match); the optimiser state is fresh (new warm-up and cosine schedule from ``--lr``) and the data
order comes from ``--seed``. The checkpoint's file name, SHA-256 and its own training metadata are
stored under ``training.init`` (and ``training.chain`` lists every run, oldest first), so the
shipped weights can be rebuilt by rerunning the chain.

Example (the first command trained the shipped network, seed 0; the second is the warm-started "v3"
run, evaluated and not shipped, ``docs/segmentation_graph.md``)::

    OMP_NUM_THREADS=1 python scripts/train_em_affinities.py --data /work/shared/data/isbi2012_em_membranes \\
        --out runs/final/em_affinity_unet.pt --steps 3000 --threads 1 --val-every 500 --augment full --seed 0
    OMP_NUM_THREADS=1 python scripts/train_em_affinities.py --data /work/shared/data/isbi2012_em_membranes \\
        --out runs/v3/em_affinity_unet.pt --steps 4000 --threads 1 --val-every 500 --augment full --seed 1 \\
        --lr 3e-4 --warmup 200 --init runs/final/em_affinity_unet.pt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("train_em_affinities")

CITATION = (
    "ISBI 2012 EM segmentation challenge training data: Cardona A. et al. (2010) An integrated "
    "micro- and macroarchitectural analysis of the Drosophila brain by computer-assisted serial "
    "section electron microscopy. PLoS Biol 8:e1000502; Arganda-Carreras I. et al. (2015) "
    "Crowdsourcing the creation of image segmentation algorithms for connectomics. Front. "
    "Neuroanat. 9:142. Copy used: github.com/zhixuhao/unet data/membrane/train "
    "(commit b45af4d458437d8281cc218a07fd4380818ece4a)."
)
DEFAULT_FEATURES = (16, 32, 64, 128, 256)


def _range_text(idx) -> str:
    idx = [int(i) for i in idx]
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}-{idx[-1]}"
    return ",".join(str(i) for i in idx)


@contextlib.contextmanager
def _torch_state(threads: int, seed: int):
    """Fixed thread count, deterministic algorithms and a forked RNG; restored afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(int(threads))
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(int(seed))
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det)


def masked_bce(logits, targets, mask):
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def masked_boundary_dice(logits, targets, mask, eps=1.0):
    """1 - mean over channels of the soft Dice of the *boundary* class (1 - merge probability).

    The rare class of every channel is "p and p + offset are in different objects"; the Dice term
    weights it by overlap instead of by pixel count, as the mutex watershed paper's loss does.
    """
    import torch

    p = (1.0 - torch.sigmoid(logits)) * mask
    t = (1.0 - targets) * mask
    inter = (p * t).sum(dim=(0, 2, 3))
    denom = (p * p).sum(dim=(0, 2, 3)) + (t * t).sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def masked_bce_malis(logits, targets, mask):
    """Masked BCE plus the constrained MALIS loss of the two nearest-neighbour channels.

    :func:`xmodal.models.malis_loss`: the BCE of each edge weighted by the ground-truth pixel pairs
    whose maximin edge it is, so a gap in a membrane that would merge two cells weighs as much as the
    pairs it merges. Needs offsets whose first two channels are (-1, 0) and (0, -1).
    """
    from xmodal.models import malis_loss

    return masked_bce(logits, targets, mask) + malis_loss(logits[:, :2], targets[:, :2], mask[:, :2])


LOSSES = {
    "bce": masked_bce,
    "bce+dice": lambda logits, t, m: masked_bce(logits, t, m) + masked_boundary_dice(logits, t, m),
    "bce+malis": masked_bce_malis,
}


def sample_batch(rng, images, instances, *, batch, crop, offsets, aug):
    """``batch`` augmented crops: x ``(B, 1 or K, crop, crop)``, targets and mask ``(B, C, crop, crop)``."""
    from xmodal.models._augment import augmented_sample

    xs, ts, ms = [], [], []
    for _ in range(batch):
        i = int(rng.integers(len(images)))
        x, t, m = augmented_sample(rng, images[i], instances[i], crop=crop, offsets=offsets, aug=aug)
        xs.append(x)
        ts.append(t)
        ms.append(m)
    x = np.stack(xs)
    x = x[:, None] if x.ndim == 3 else x
    return (x.astype(np.float32), np.stack(ts).astype(np.float32),
            np.stack(ms).astype(np.float32))


def validate(model, images, instances, offsets):
    """Masked BCE (mean, and per channel) of whole normalised slices, in eval mode."""
    import torch
    import torch.nn.functional as F

    from xmodal.models._augment import affinity_targets_ignore

    was_training = model.training
    model.eval()
    div = model.divisor
    tot = np.zeros(len(offsets))
    cnt = np.zeros(len(offsets))
    with torch.no_grad():
        for img, inst in zip(images, instances):
            h, w = img.shape[-2:]
            pad = [(0, 0)] * (img.ndim - 2) + [(0, (-h) % div), (0, (-w) % div)]
            xp = torch.from_numpy(np.ascontiguousarray(np.pad(img, pad, mode="reflect")))
            logits = model(xp[None, None] if img.ndim == 2 else xp[None])[:, :, :h, :w]
            t, m = affinity_targets_ignore(inst, offsets)
            t = torch.from_numpy(t[None].astype(np.float32))
            m = torch.from_numpy(m[None].astype(np.float32))
            loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * m
            tot += loss.sum(dim=(0, 2, 3)).double().numpy()
            cnt += m.sum(dim=(0, 2, 3)).double().numpy()
    model.train(was_training)
    return float(tot.sum() / max(cnt.sum(), 1.0)), (tot / np.maximum(cnt, 1.0)).tolist()


def train(images, instances, *, offsets, n_attractive=2, val_images=None, val_instances=None,
          features=DEFAULT_FEATURES, steps=4000, batch=8, crop=128, lr=1e-3, weight_decay=0.0, loss="bce",
          warmup=100, seed=0, threads=1, aug=None, quantiles=(0.01, 0.99), val_every=500,
          log_every=50, max_minutes=None, name="em_affinity_unet", init_state=None, init_info=None,
          context=0):
    """Train a :class:`xmodal.models.unet2d.UNet2D` affinity model; returns ``(model, metadata)``.

    Parameters
    ----------
    images : (n, H, W) raw slices (any real dtype); normalised here by the global ``quantiles``
        of all of ``images`` (the values are stored in the metadata).
    instances : (n, H, W) int instance labels, 0 = membrane.
    offsets : (C, 2) int; ``n_attractive``: the first channels that are attractive.
    val_images, val_instances : optional validation slices (normalised with the training
        ``low`` / ``high``, as a user's volume would be with its own; here the training values keep
        the validation loss comparable across runs).
    steps, batch, crop, lr, weight_decay, warmup : Adam(W) with linear warm-up over ``warmup``
        steps, then cosine decay to 5 % of ``lr``.
    seed, threads : reproducibility (bit-identical weights for the same seed and threads).
    loss : ``"bce"`` (masked binary cross-entropy), ``"bce+dice"`` (plus the boundary Dice of
        :func:`masked_boundary_dice`) or ``"bce+malis"`` (plus :func:`masked_bce_malis`'s MALIS term);
        the validation loss is the masked BCE either way.
    aug : :class:`xmodal.models._augment.EMAugmentation` (default: its defaults).
    max_minutes : optional wall-time cap.
    context : sections on each side given to the network as extra input channels (0: a 2D model
        of single sections). ``images`` must then be consecutive sections of one stack (mirrored
        at its ends, :func:`xmodal.models.em.em_context_stack`; the validation slices form a
        stack of their own).
    init_state : optional ``state_dict`` of a :class:`UNet2D` with the same ``features`` and
        ``len(offsets)`` output channels, loaded before training (warm start; the optimiser and
        schedule start fresh). ``init_info``: a dict recorded as ``training.init`` (e.g.
        :func:`load_init`'s second value).
    """
    import torch

    from xmodal.models._augment import EMAugmentation
    from xmodal.models.em import em_context_stack, em_quantile_range, normalize_em
    from xmodal.models.unet2d import UNet2D

    aug = EMAugmentation() if aug is None else aug
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {loss!r}")
    loss_fn, loss_name = LOSSES[loss], loss
    offsets = np.asarray(offsets, dtype=np.int64)
    if loss == "bce+malis" and (len(offsets) < 2 or offsets[:2].tolist() != [[-1, 0], [0, -1]]):
        raise ValueError(f"loss: 'bce+malis' needs offsets starting with (-1, 0), (0, -1), got "
                         f"{offsets[:2].tolist()}")
    features = tuple(int(f) for f in features)
    images = np.asarray(images)
    instances = np.asarray(instances)
    if images.ndim != 3 or images.shape != instances.shape:
        raise ValueError(f"images, instances: expected two (n, H, W) arrays of the same shape, got "
                         f"{images.shape} and {instances.shape}")
    if min(images.shape[1:]) < crop:
        raise ValueError(f"crop: expected at most the slice size {images.shape[1:]}, got {crop}")
    low, high = em_quantile_range(images, quantiles)
    train_x = normalize_em(images, low=low, high=high)
    train_y = instances.astype(np.int32)
    have_val = val_images is not None and len(val_images) > 0
    if have_val:
        val_x = normalize_em(np.asarray(val_images), low=low, high=high)
        val_y = np.asarray(val_instances).astype(np.int32)
    context = int(context)
    if context > 0:
        train_x = em_context_stack(train_x, context)
        if have_val:
            val_x = em_context_stack(val_x, context)
    in_channels = 2 * context + 1
    rng = np.random.default_rng(seed)
    history = []
    with _torch_state(threads, seed):
        model = UNet2D(in_channels, len(offsets), features=features)
        if init_state is not None:
            own = model.state_dict()
            bad = sorted(set(own) ^ set(init_state))
            bad += [k for k in own if k in init_state and tuple(own[k].shape) != tuple(init_state[k].shape)]
            if bad:
                raise ValueError(f"init_state: expected the parameters of UNet2D({in_channels}, {len(offsets)}, "
                                 f"features={features}), got mismatching entries {bad[:5]}")
            model.load_state_dict(init_state, strict=True)
        if crop % model.divisor:
            raise ValueError(f"crop: expected a multiple of {model.divisor}, got {crop}")
        n_params = int(sum(p.numel() for p in model.parameters()))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        warm = max(0, min(int(warmup), steps - 1))

        def lr_at(step):  # step counts from 0
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, steps - warm)
            return 0.05 + 0.95 * 0.5 * (1.0 + np.cos(np.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        logger.info("UNet2D %s: %d parameters; %d train slices, quantiles %s -> low %.2f high %.2f",
                    features, n_params, len(train_x), quantiles, low, high)
        t0 = time.perf_counter()
        c0 = time.process_time()
        t_data = 0.0
        run_loss, run_n = 0.0, 0
        stopped = False
        step = 0
        model.train()
        for step in range(1, steps + 1):
            td = time.perf_counter()
            x, t, m = sample_batch(rng, train_x, train_y, batch=batch, crop=crop, offsets=offsets, aug=aug)
            t_data += time.perf_counter() - td
            logits = model(torch.from_numpy(x))
            loss = loss_fn(logits, torch.from_numpy(t), torch.from_numpy(m))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss.detach())
            run_n += 1
            if log_every and step % log_every == 0:
                logger.info("step %d loss %.4f lr %.2e (%.0f s wall, %.0f s CPU, data %.0f s)", step,
                            run_loss / run_n, opt.param_groups[0]["lr"], time.perf_counter() - t0,
                            time.process_time() - c0, t_data)
                run_loss, run_n = 0.0, 0
            if have_val and val_every and (step % val_every == 0 or step == steps):
                vl, _ = validate(model, val_x, val_y, offsets)
                history.append({"step": step, "val_loss": vl, "seconds": round(time.perf_counter() - t0, 1)})
                logger.info("step %d validation loss %.4f", step, vl)
            if max_minutes is not None and time.perf_counter() - t0 > 60.0 * max_minutes:
                stopped = True
                logger.warning("wall-time cap reached at step %d", step)
                break
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        val_loss, val_pc = (validate(model, val_x, val_y, offsets) if have_val else (None, None))
        model.eval()
    metadata = {
        "name": name,
        "offsets": offsets.tolist(),
        "n_attractive": int(n_attractive),
        "convention": "merge_probability",
        "convention_text": "channel c at pixel p: probability that p and p + offsets[c] are in the same object",
        "architecture": "UNet2D (xmodal.models.unet2d): 3x3 conv-BatchNorm-ReLU x2 per level, max pooling, "
                        "transposed-conv upsampling, sigmoid output",
        "features": list(features),
        "in_channels": int(in_channels),
        "context": int(context),
        "context_text": ("input channel j is section z + j - context of the stack (mirrored at its ends; "
                         "xmodal.models.em.em_context_stack); the output is for section z")
                        if context else "single sections",
        "divisor": int(model.divisor),
        "normalization": {
            "kind": "quantile", "quantiles": list(quantiles), "clip": [0.0, 1.0],
            "formula": "clip((raw - low) / (high - low), 0, 1), low/high = global quantiles of the whole "
                       "image or volume being segmented (never per tile)",
            "training_low": low, "training_high": high,
        },
        "training": {
            "script": "scripts/train_em_affinities.py",
            "seed": int(seed), "steps": int(step), "steps_requested": int(steps), "batch": int(batch),
            "crop": int(crop), "lr": float(lr), "weight_decay": float(weight_decay), "warmup": int(warm),
            "schedule": "linear warm-up, cosine to 0.05 lr", "optimizer": "AdamW",
            "loss": {"bce": "masked binary cross-entropy on logits",
                     "bce+dice": "masked binary cross-entropy on logits + boundary soft Dice",
                     "bce+malis": "masked binary cross-entropy on logits + constrained MALIS "
                                  "(nearest-neighbour channels)"}[loss_name],
            "threads": int(threads), "deterministic": True, "torch": str(torch.__version__),
            "augmentation": aug.to_dict(),
            "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "data_seconds": round(t_data, 1),
            "stopped_by_time_cap": stopped, "n_parameters": n_params,
            "val_loss": val_loss, "val_loss_per_channel": val_pc, "history": history,
            "init": init_info if init_state is not None else None,
        },
        "data": CITATION,
    }
    return model, metadata


def load_init(path: Path, *, offsets=None):
    """``(state_dict, info)`` of a checkpoint written by :func:`save_checkpoint` for a warm start.

    ``info`` records the file name, its SHA-256, the checkpoint's ``features`` and training metadata
    (without its own ``chain``). ``offsets`` (optional): raise ValueError when the checkpoint was
    trained for other offsets.
    """
    import hashlib

    from xmodal.models._checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"init: expected an existing checkpoint file, got {str(path)!r}")
    ckpt = load_checkpoint(path, None, path.name)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"init: expected a checkpoint with 'state_dict' and 'metadata', got keys "
                         f"{sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__}")
    meta = ckpt.get("metadata") or {}
    if offsets is not None and meta.get("offsets") is not None:
        if np.asarray(meta["offsets"]).tolist() != np.asarray(offsets).tolist():
            raise ValueError(f"init: the checkpoint's offsets {meta['offsets']} differ from the training "
                             f"offsets {np.asarray(offsets).tolist()}")
    training = {k: v for k, v in dict(meta.get("training") or {}).items() if k != "chain"}
    info = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "features": meta.get("features"),
        "training": training,
    }
    chain = list(dict(meta.get("training") or {}).get("chain") or [])
    if not chain and training:
        chain = [{k: training.get(k) for k in ("command", "seed", "steps", "lr", "warmup", "val_loss",
                                                 "wall_seconds")}]
    info["chain"] = chain
    return ckpt["state_dict"], info


def save_checkpoint(model, metadata, out: Path) -> None:
    """Write ``out`` (.pt: state_dict + metadata) and its ``.json`` metadata sidecar atomically."""
    import torch

    from xmodal.io import atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save({"state_dict": state, "metadata": metadata}, tmp)
    tmp.replace(out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")


def _parse_slices(text: str):
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 folder (train_image/, train_label/)")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt; a .json sidecar too)")
    ap.add_argument("--train-slices", default="0-19", help="slices for gradient steps (default 0-19)")
    ap.add_argument("--val-slices", default="20-24", help="validation slices (default 20-24; '' for none)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128, help="crop side (multiple of the divisor)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--loss", default="bce", choices=sorted(LOSSES),
                    help="training loss: masked BCE (default), BCE + boundary Dice or BCE + constrained "
                         "MALIS; validation is BCE")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--features", type=int, nargs="+", default=list(DEFAULT_FEATURES))
    ap.add_argument("--offsets", default="em", choices=["em", "isbi2012"],
                    help="offset set: 'em' (14 channels, default) or the old model's 10")
    ap.add_argument("--augment", default="full", choices=["full", "geometry", "none", "no-artefacts"],
                    help="augmentation preset (default full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-time cap (safety stop)")
    ap.add_argument("--context", type=int, default=0,
                    help="neighbouring sections on each side as extra input channels (default 0)")
    ap.add_argument("--init", type=Path, default=None,
                    help="warm start from this checkpoint (its features are used; fresh optimiser)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    from xmodal.models._augment import EMAugmentation
    from xmodal.models.em import EM_N_ATTRACTIVE, EM_OFFSETS
    from xmodal.models.isbi2012 import read_isbi2012

    train_idx = _parse_slices(args.train_slices)
    val_idx = _parse_slices(args.val_slices)
    if set(train_idx) & set(range(25, 30)) or set(val_idx) & set(range(25, 30)):
        raise SystemExit("slices 25-29 are the held-out test slices: not used for training or validation")
    for name, idx in (("train", train_idx), ("val", val_idx)):
        if args.context and idx and idx != list(range(idx[0], idx[-1] + 1)):
            raise SystemExit(f"--context needs consecutive --{name}-slices, got {_range_text(idx)}")
    aug = {"full": EMAugmentation(), "geometry": EMAugmentation.geometry_only(), "none": EMAugmentation.none(),
           "no-artefacts": EMAugmentation(defect_line_prob=0.0, missing_patch_prob=0.0)}[args.augment]
    if args.offsets == "em":
        offsets, n_att = EM_OFFSETS, EM_N_ATTRACTIVE
    else:
        from xmodal.models import ISBI2012_N_ATTRACTIVE, ISBI2012_OFFSETS

        offsets, n_att = ISBI2012_OFFSETS, ISBI2012_N_ATTRACTIVE
    init_state = init_info = None
    features = args.features
    if args.init is not None:
        init_state, init_info = load_init(args.init, offsets=offsets)
        if init_info["features"]:
            features = init_info["features"]
    images, instances = read_isbi2012(args.data, train_idx)
    val_images, val_instances = (read_isbi2012(args.data, val_idx) if val_idx else (None, None))
    model, meta = train(images, instances, offsets=offsets, n_attractive=n_att, val_images=val_images,
                        val_instances=val_instances, features=features, steps=args.steps,
                        batch=args.batch, crop=args.crop, lr=args.lr, weight_decay=args.weight_decay,
                        loss=args.loss, warmup=args.warmup, seed=args.seed, threads=args.threads, aug=aug,
                        val_every=args.val_every, max_minutes=args.max_minutes,
                        init_state=init_state, init_info=init_info, context=args.context)
    meta["training"]["train_slices"] = _range_text(train_idx)
    meta["training"]["val_slices"] = _range_text(val_idx) if val_idx else None
    meta["training"]["augment_preset"] = args.augment
    meta["training"]["command"] = " ".join(["scripts/train_em_affinities.py"] + list(sys.argv[1:] if argv is None else argv))
    this = {k: meta["training"].get(k) for k in ("command", "seed", "steps", "lr", "warmup", "val_loss",
                                                  "wall_seconds")}
    meta["training"]["chain"] = (list(init_info["chain"]) if init_info else []) + [this]
    if init_info:
        init_info.pop("chain", None)
    save_checkpoint(model, meta, args.out)
    logger.info("saved %s (%.2f MB); validation loss %s; %.0f s", args.out, args.out.stat().st_size / 1e6,
                meta["training"]["val_loss"], meta["training"]["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
