"""Shipped network models: 2D affinity U-Nets for EM trained on ISBI 2012.

Two models are shipped: the EM model ``em_affinity_unet`` (:mod:`xmodal.models.em`; strong EM
augmentation, quantile normalisation, 14 offsets, mutex-watershed settings stored with it) and the
previous ``isbi2012_affinity_unet`` (:func:`load_isbi2012_affinity_unet`).

torch is imported only when a model is built or loaded (``pip install 'xmodal[torch]'``).

Affinity convention (the one used throughout xmodal, see ``DESIGN.md``): an affinity map has shape
``(C, *spatial)`` with ``offsets`` of shape ``(C, ndim)``; channel ``c`` at pixel ``p`` relates ``p``
and ``p + offsets[c]`` and holds the **merge probability** (1 = same object, 0 = different objects
or boundary). The first ``n_attractive`` channels are the short-range (attractive) edges of the
mutex watershed, the rest are long-range (repulsive) edges. For tools that expect a boundary
probability on attractive edges (e.g. elf / bioimage-cpp), use ``1 - affinities[:n_attractive]``.

Examples
--------
>>> from xmodal.models import load_isbi2012_affinity_unet, normalize_isbi2012  # doctest: +SKIP
>>> model = load_isbi2012_affinity_unet()                                      # doctest: +SKIP
>>> import torch                                                               # doctest: +SKIP
>>> with torch.no_grad():                                                      # doctest: +SKIP
...     aff = model(torch.from_numpy(normalize_isbi2012(raw))[None, None])[0].numpy()
"""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import numpy as np

from ._checkpoint import build_with_weights, load_checkpoint
from ._malis import MalisWeights, malis_loss, malis_weights
from ._targets import affinity_targets, dihedral_transform
from .em import (
    EM_N_ATTRACTIVE,
    EM_OFFSETS,
    em_affinity_unet_metadata,
    load_em_affinity_unet,
    normalize_em,
    predict_em_affinities,
)

__all__ = [
    "EM_OFFSETS",
    "EM_N_ATTRACTIVE",
    "em_affinity_unet_metadata",
    "load_em_affinity_unet",
    "normalize_em",
    "predict_em_affinities",
    "ISBI2012_OFFSETS",
    "ISBI2012_N_ATTRACTIVE",
    "UNet2D",
    "affinity_targets",
    "malis_weights",
    "malis_loss",
    "MalisWeights",
    "dihedral_transform",
    "isbi2012_weights_path",
    "load_isbi2012_affinity_unet",
    "isbi2012_metadata",
    "normalize_isbi2012",
    "SHIPPED_MODELS",
    "load_model",
]

logger = logging.getLogger(__name__)

#: Offsets (dy, dx) of the shipped ISBI 2012 model, in pixels. The first two are attractive
#: (direct neighbours), the rest repulsive (long range), as in the 2D mutex-watershed setups of
#: Wolf et al. (2018, 2020).
ISBI2012_OFFSETS = np.array(
    [[-1, 0], [0, -1],
     [-3, 0], [0, -3], [-9, 0], [0, -9], [-9, -9], [-9, 9], [-27, 0], [0, -27]],
    dtype=np.int64,
)
#: Number of attractive channels (the first ones) of the shipped ISBI 2012 model.
ISBI2012_N_ATTRACTIVE = 2

_WEIGHTS_FILE = "isbi2012_affinity_unet.pt"


def __getattr__(name: str):
    if name == "UNet2D":
        from ._optional_torch import torch_module

        torch_module()  # a helpful ImportError when torch is missing
        from .unet2d import UNet2D

        return UNet2D
    raise AttributeError(f"module 'xmodal.models' has no attribute {name!r}")


def isbi2012_weights_path():
    """Path (a :class:`importlib.resources` traversable) of the shipped ISBI 2012 weights."""
    return importlib.resources.files(__name__).joinpath(_WEIGHTS_FILE)


def _load_checkpoint(path=None) -> dict:
    return load_checkpoint(path, isbi2012_weights_path(), _WEIGHTS_FILE)


def isbi2012_metadata(path=None) -> dict[str, Any]:
    """Metadata stored with the ISBI 2012 weights.

    Keys include ``offsets`` (list of [dy, dx]), ``n_attractive``, ``convention``
    (``"merge_probability"``), ``features``, ``normalization`` (``mean``, ``std`` in raw uint8
    units), ``training`` (seed, steps, crop size, wall time, validation loss) and ``data``
    (citation).

    Parameters
    ----------
    path : str or path-like, optional
        A checkpoint written by ``scripts/train_isbi2012_affinities.py``; default the shipped one.
    """
    return dict(_load_checkpoint(path)["metadata"])


def load_isbi2012_affinity_unet(path=None, *, device: str = "cpu"):
    """The 2D affinity U-Net trained on ISBI 2012, in eval mode, with sigmoid output.

    Input: a ``(batch, 1, H, W)`` float32 tensor of any H and W (padded internally to multiples of
    ``model.divisor`` = 8 by repeating the last row / column, output cropped back), the raw EM standardised by
    :func:`normalize_isbi2012` (global mean / standard deviation). Output: ``(batch, 10, H, W)``
    merge probabilities for :data:`ISBI2012_OFFSETS` (first :data:`ISBI2012_N_ATTRACTIVE` attractive).
    Pixels whose partner ``p + offset`` lies outside the image carry no meaning.

    Parameters
    ----------
    path : str or path-like, optional
        Checkpoint to load instead of the shipped weights.
    device : str
        torch device to move the model to.

    Returns
    -------
    torch.nn.Module
        The model, with attributes ``offsets`` (numpy ``(C, 2)``), ``n_attractive`` and
        ``metadata`` (see :func:`isbi2012_metadata`).
    """
    ckpt = _load_checkpoint(path)
    from .unet2d import UNet2D

    meta = ckpt["metadata"]
    offsets = np.asarray(meta["offsets"], dtype=np.int64)
    # built without random initialisation: loading leaves torch's global random stream alone
    model = build_with_weights(lambda: UNet2D(1, len(offsets), features=tuple(meta["features"]),
                                              final_activation="sigmoid"), ckpt["state_dict"])
    model.eval()
    model.to(device)
    model.offsets = offsets
    model.n_attractive = int(meta["n_attractive"])
    model.metadata = dict(meta)
    return model


def normalize_isbi2012(raw, *, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """Standardise raw EM for the ISBI 2012 model: ``(raw - mean) / std`` as float32.

    By default ``mean`` and ``std`` are the global statistics of ``raw`` itself (the whole volume
    or slice stack given; never per tile). Pass the training statistics from
    :func:`isbi2012_metadata` (``normalization``) to reproduce training exactly.
    """
    from ..inference._normalize import Standardize, global_mean_std

    raw = np.asarray(raw)
    if raw.size == 0:
        raise ValueError("raw: expected a non-empty image, got an empty array")
    if mean is None or std is None:
        m, s = global_mean_std(raw)
        m, s = (m if mean is None else float(mean)), (s if std is None else float(std))
    else:
        m, s = float(mean), float(std)
    if not s > 0:
        raise ValueError(f"std: expected a positive standard deviation, got {s}")
    return Standardize(m, s)(raw.astype(np.float32))


#: Shipped models by name: the loader (a function of this module) that builds each.
SHIPPED_MODELS = {"em": "load_em_affinity_unet", "isbi2012": "load_isbi2012_affinity_unet"}


def load_model(model):
    """A network from its name, a file or itself (what ``xmodal predict --model`` and
    :func:`xmodal.pipelines.segment` accept).

    Parameters
    ----------
    model : str, path or callable
        The name of a shipped model (:data:`SHIPPED_MODELS`; ``"em"``: :func:`load_em_affinity_unet`,
        the default of :func:`xmodal.pipelines.segment`; ``"isbi2012"``: the previous
        :func:`load_isbi2012_affinity_unet`); the path of a TorchScript file (loaded on the CPU, in
        eval mode; needs torch) or of an xmodal checkpoint (a ``state_dict`` with ``metadata``, as
        written by ``scripts/train_em_affinities.py`` / ``scripts/train_isbi2012_affinities.py``;
        loaded by :func:`load_isbi2012_affinity_unet` when its metadata names that model, else by
        :func:`load_em_affinity_unet`); or a torch module / callable (returned as it is).

    Returns
    -------
    The model; shipped models and checkpoints carry ``offsets``, ``n_attractive`` and ``metadata``
    attributes.

    Raises
    ------
    ValueError
        An unknown name (the message lists the shipped ones), a path that is no file, or a file
        that is damaged (its stored checksums do not match), unreadable, a bare state dict or a
        pickled module (which is not unpickled: it could run code).
    """
    import os

    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if name in SHIPPED_MODELS:
            return globals()[SHIPPED_MODELS[name]]()
        if not os.path.isfile(name):
            what = "a folder" if os.path.isdir(name) else "no such file"
            raise ValueError(f"model: expected one of {sorted(SHIPPED_MODELS)}, the path of a TorchScript file or "
                             f"an xmodal checkpoint, or a torch module, got {name!r} ({what})")
        return _load_model_file(name)
    if not callable(model):
        from .._validation import describe

        raise TypeError(f"model: expected a model name, a TorchScript file or a torch module, got {describe(model)}")
    return model


def _load_model_file(name: str):
    """A TorchScript file or an xmodal checkpoint at ``name`` (an existing file)."""
    from ._checkpoint import check_integrity, is_torchscript, read_checkpoint
    from ._optional_torch import torch_module

    torch = torch_module()
    where = f"model: {name}"
    if not is_torchscript(name):
        meta = read_checkpoint(name, where)["metadata"]
        if str(meta.get("name", "")).startswith("isbi2012"):
            return load_isbi2012_affinity_unet(name)
        return load_em_affinity_unet(name)
    check_integrity(name, where)
    try:
        return torch.jit.load(name, map_location="cpu").eval()
    except RuntimeError as exc:
        raise ValueError(f"{where} is not a loadable TorchScript file: {str(exc).splitlines()[0]}") from exc
