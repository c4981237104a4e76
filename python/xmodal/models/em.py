"""The shipped 2D EM affinity model (``em_affinity_unet``): loading, normalisation, prediction and
the mutex-watershed settings stored with it.

The model is a 5-level 2D U-Net (:class:`xmodal.models.unet2d.UNet2D`, BatchNorm, so tiled
prediction in eval mode equals whole-image prediction) trained on ISBI 2012 slices with strong
EM augmentation (``scripts/train_em_affinities.py``, ``xmodal.models._augment``). Its input is the
raw image mapped by *global* quantiles: ``clip((raw - low) / (high - low), 0, 1)`` with ``low`` /
``high`` the 1st / 99th percentiles of the whole image or volume being segmented (never per tile),
so another microscope's intensity range maps onto the same [0, 1] scale.

Output: merge probabilities (1 = same object) for :data:`EM_OFFSETS`; channel ``c`` at pixel ``p``
relates ``p`` and ``p + EM_OFFSETS[c]``; the first :data:`EM_N_ATTRACTIVE` channels are the
attractive (nearest-neighbour) edges of the mutex watershed, the rest repulsive.

The metadata (offsets, normalisation, training settings, and the segmentation settings chosen on
ISBI training slices 20-24: ``segmentation_defaults``) is stored in the checkpoint and, readable
without torch, in ``em_affinity_unet.json`` next to it.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import numpy as np

from ._checkpoint import build_with_weights, load_checkpoint

__all__ = [
    "EM_OFFSETS",
    "EM_N_ATTRACTIVE",
    "EM_QUANTILES",
    "em_weights_path",
    "em_affinity_unet_metadata",
    "load_em_affinity_unet",
    "em_quantile_range",
    "normalize_em",
    "em_context_stack",
    "predict_em_affinities",
    "bias_affinities",
    "mws_segmentation",
]

#: Offsets (dy, dx) in pixels of the shipped EM model: two attractive nearest-neighbour channels,
#: then repulsive channels at distances 3, 9 and 27 along the two axes and both diagonals.
EM_OFFSETS = np.array(
    [[-1, 0], [0, -1],
     [-3, 0], [0, -3], [-3, -3], [-3, 3],
     [-9, 0], [0, -9], [-9, -9], [-9, 9],
     [-27, 0], [0, -27], [-27, -27], [-27, 27]],
    dtype=np.int64,
)
#: Number of attractive channels (the first ones) of the shipped EM model.
EM_N_ATTRACTIVE = 2
#: Global quantiles mapped to 0 and 1 by the input normalisation.
EM_QUANTILES = (0.01, 0.99)

_WEIGHTS_FILE = "em_affinity_unet.pt"
_META_FILE = "em_affinity_unet.json"


def em_weights_path():
    """Path (a :class:`importlib.resources` traversable) of the shipped EM model weights."""
    return importlib.resources.files(__package__).joinpath(_WEIGHTS_FILE)


def em_affinity_unet_metadata(path=None) -> dict[str, Any]:
    """Metadata of the EM affinity model, read without torch.

    Keys: ``name``, ``offsets`` (list of [dy, dx]), ``n_attractive``, ``convention``
    (``"merge_probability"``), ``features``, ``divisor``, ``normalization`` (``kind`` "quantile",
    ``quantiles``, ``clip``, and the training volume's ``low`` / ``high`` for reference),
    ``training`` (seed, steps, threads, wall time, augmentation, losses), ``data`` (citation) and,
    once evaluated, ``segmentation_defaults`` (mutex watershed ``bias``, ``strides``,
    ``min_size``; baseline ``threshold``; chosen on ISBI slices 20-24).

    Parameters
    ----------
    path : str or path-like, optional
        A ``.json`` metadata file, or a ``.pt`` checkpoint (its ``.json`` sidecar is read when it
        exists, else the checkpoint itself, which needs torch). Default: the shipped model.
    """
    if path is None:
        ref = importlib.resources.files(__package__).joinpath(_META_FILE)
        if not ref.is_file():
            raise FileNotFoundError(f"the shipped metadata {_META_FILE} is missing from the xmodal package")
        return json.loads(ref.read_text())
    p = Path(path)
    if p.suffix == ".json":
        return json.loads(p.read_text())
    side = p.with_suffix(".json")
    if side.is_file():
        return json.loads(side.read_text())
    return dict(_load_checkpoint(p)["metadata"])


def _load_checkpoint(path=None) -> dict:
    return load_checkpoint(path, em_weights_path(), _WEIGHTS_FILE)


def load_em_affinity_unet(path=None, *, device: str = "cpu"):
    """The 2D EM affinity U-Net, in eval mode, with sigmoid output.

    Input: ``(batch, 1, H, W)`` float32, the raw image normalised by :func:`normalize_em` with the
    global quantiles of the whole image / volume; H and W multiples of ``model.divisor`` (16).
    Output: ``(batch, C, H, W)`` merge probabilities for ``model.offsets`` (the first
    ``model.n_attractive`` attractive). Pixels whose partner ``p + offset`` lies outside the image
    carry no meaning.

    Parameters
    ----------
    path : str or path-like, optional
        A checkpoint written by ``scripts/train_em_affinities.py``; default the shipped weights.
    device : str
        torch device to move the model to.

    Returns
    -------
    torch.nn.Module
        A :class:`~xmodal.models.unet2d.UNet2D`, or, when the metadata has an ``ensemble`` entry,
        an :class:`~xmodal.models.unet2d.AffinityEnsemble` of ``n_members`` of them (output: the mean
        of their merge probabilities). With attributes ``offsets`` (numpy ``(C, 2)``), ``n_attractive``, ``metadata`` and
        ``segmentation_defaults`` (the settings of :func:`xmodal.pipelines.segment` chosen on ISBI
        slices 20-24, from the ``.json`` next to the weights; empty when there are none).
    """
    ckpt = _load_checkpoint(path)
    from .unet2d import AffinityEnsemble, UNet2D

    meta = dict(ckpt["metadata"])
    side = _sidecar(path)
    if side is not None and "segmentation_defaults" in side:  # chosen after training, stored in the .json
        meta["segmentation_defaults"] = side["segmentation_defaults"]
    offsets = np.asarray(meta["offsets"], dtype=np.int64)
    def member():
        return UNet2D(int(meta.get("in_channels", 1)), len(offsets), features=tuple(meta["features"]),
                      final_activation="sigmoid")

    def network():
        ensemble = meta.get("ensemble")
        if ensemble:  # several networks of one recipe (seeds), written by scripts/make_em_ensemble.py
            return AffinityEnsemble([member() for _ in range(int(ensemble["n_members"]))])
        return member()

    # built without random initialisation: loading leaves torch's global random stream alone
    model = build_with_weights(network, ckpt["state_dict"])
    model.eval()
    model.to(device)
    model.offsets = offsets
    model.n_attractive = int(meta["n_attractive"])
    model.metadata = meta
    model.segmentation_defaults = dict(meta.get("segmentation_defaults") or {})
    return model


def _sidecar(path) -> dict | None:
    """The ``.json`` metadata next to a checkpoint (the shipped one when ``path`` is None), or None."""
    if path is None:
        ref = importlib.resources.files(__package__).joinpath(_META_FILE)
        return json.loads(ref.read_text()) if ref.is_file() else None
    side = Path(path).with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else None


def em_quantile_range(raw, q=EM_QUANTILES) -> tuple[float, float]:
    """Global ``q[0]`` / ``q[1]`` quantiles (linear interpolation) of all values of ``raw``.

    ``raw`` is the whole image or volume that will be segmented (numpy array); for out-of-core
    arrays use :func:`xmodal.inference.quantile_normalizer` with the same ``q``.
    """
    a = np.asarray(raw)
    if a.size == 0:
        raise ValueError("raw: expected a non-empty image, got an empty array")
    q = tuple(float(v) for v in q)
    if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
        raise ValueError(f"q: expected two quantiles 0 <= low < high <= 1, got {q}")
    lo, hi = np.quantile(a.astype(np.float64, copy=False).ravel(), q)
    return float(lo), float(hi)


def normalize_em(raw, *, low: float | None = None, high: float | None = None, q=EM_QUANTILES) -> np.ndarray:
    """``clip((raw - low) / (high - low), 0, 1)`` as float32: the input of the EM model.

    ``low`` / ``high`` default to the global quantiles ``q`` of ``raw`` itself (pass the values
    of the whole volume when normalising one tile or slice of it).
    """
    a = np.asarray(raw)
    if low is None or high is None:
        lo, hi = em_quantile_range(a, q)
        low = lo if low is None else low
        high = hi if high is None else high
    low, high = float(low), float(high)
    if not high > low:
        raise ValueError(f"high: expected high > low, got low={low}, high={high}")
    x = (a.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    np.clip(x, 0.0, 1.0, out=x)
    return x


def em_context_stack(x, context: int) -> np.ndarray:
    """``(n, 2 * context + 1, H, W)``: each section of a normalised ``(n, H, W)`` stack with its
    ``context`` neighbours on each side (the input of a model with ``metadata["context"] > 0``).

    Beyond the ends of the stack the sections are mirrored about the end section (section ``-1``
    is section ``1``; a single section repeats itself).
    """
    x = np.asarray(x)
    context = int(context)
    if x.ndim != 3:
        raise ValueError(f"x: expected a (sections, H, W) stack, got shape {x.shape}")
    if context < 0:
        raise ValueError(f"context: expected a count >= 0, got {context}")
    n = x.shape[0]
    idx = np.arange(n)[:, None] + np.arange(-context, context + 1)[None, :]
    if n > 1:
        period = 2 * (n - 1)
        idx = np.abs(np.mod(idx, period))
        idx = np.where(idx > n - 1, period - idx, idx)
    else:
        idx = np.zeros_like(idx)
    return x[idx]


def predict_em_affinities(model, x, *, tta: bool = False) -> np.ndarray:
    """Merge probabilities ``(C, H, W)`` of one normalised 2D slice by a whole-image forward.

    ``x`` is the output of :func:`normalize_em`, ``(H, W)``; or ``(K, H, W)`` for a model that
    also reads neighbouring sections (one row of :func:`em_context_stack`). It is mirror-padded at the bottom / right to a
    multiple of ``model.divisor`` and the padding is cropped off the output. ``tta=True`` averages
    the 8 rotations / flips (:class:`xmodal.inference.DihedralTTA`, 8 times the cost).
    """
    import torch

    if not isinstance(tta, bool):
        raise TypeError(f"tta: expected True or False, got {tta!r}")
    if tta:
        from ..inference import DihedralTTA

        if not isinstance(model, DihedralTTA):
            model = DihedralTTA(model)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"x: expected a 2D slice (H, W) or its sections (K, H, W), got shape {x.shape}")
    div = int(getattr(model, "divisor", 1))
    h, w = x.shape[-2:]
    ph, pw = (-h) % div, (-w) % div
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    xp = np.pad(x, pad, mode="reflect") if (ph or pw) else x
    t = torch.from_numpy(np.ascontiguousarray(xp))
    with torch.no_grad():
        out = model(t[None, None] if x.ndim == 2 else t[None])[0].numpy()
    return np.ascontiguousarray(out[:, :h, :w])


def bias_affinities(affinities, *, n_attractive: int, bias: float) -> np.ndarray:
    """Shift the repulsive channels so that the mutex watershed repels less (``bias > 0``) or more.

    :func:`xmodal.mutex_watershed` sorts attractive edges by ``a`` and repulsive edges by
    ``1 - a``. This returns a copy in which every repulsive merge probability is ``clip(a + bias,
    0, 1)``, so that each repulsive edge is processed as if its weight were ``1 - a - bias``: the
    same as adding ``bias`` to every attractive weight (the signed-weight bias of mwatershed-based
    pipelines, applied to the attractive / repulsive split of this model), except at the clip.
    """
    a = np.array(affinities, dtype=np.float32, copy=True)
    if a.ndim < 3 or not 0 <= int(n_attractive) <= a.shape[0]:
        raise ValueError(f"affinities: expected (C, *spatial) with C >= n_attractive={n_attractive}, got shape {a.shape}")
    if bias:
        rep = a[int(n_attractive):]
        rep += np.float32(bias)
        np.clip(rep, 0.0, 1.0, out=rep)
    return a


def mws_segmentation(affinities, offsets, *, n_attractive: int, bias: float = 0.0, strides=None,
                     min_size: int = 0) -> np.ndarray:
    """Mutex watershed of one affinity map with a repulsive ``bias`` (:func:`bias_affinities`),
    optional ``strides`` on the repulsive edges, then segments under ``min_size`` pixels merged
    into their most attractive neighbour (:func:`xmodal.segmentation.remove_small_segments`, on the
    unbiased affinities). Returns uint32 labels from 1."""
    from ..segmentation import mutex_watershed, remove_small_segments

    a = np.asarray(affinities, dtype=np.float32)
    labels = mutex_watershed(bias_affinities(a, n_attractive=n_attractive, bias=bias), offsets,
                             n_attractive=n_attractive, strides=strides)
    if int(min_size) > 1:
        labels = remove_small_segments(labels, int(min_size), affinities=a, offsets=offsets,
                                       n_attractive=n_attractive)
    return labels
