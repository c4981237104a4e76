"""Loading a weights file written by torch.save: the shipped one of a model or a user's path."""

from __future__ import annotations

import importlib.resources
import os
import zipfile


def load_checkpoint(path, shipped, name: str) -> dict:
    """The checkpoint dict at ``path``, or, with ``path=None``, the shipped file ``shipped`` (an
    :mod:`importlib.resources` traversable; ``name`` is its file name for the error message).
    Loaded on the CPU with ``weights_only=True`` (no pickled code runs), after :func:`check_integrity`.

    Raises ValueError naming the file when it is damaged (a stored checksum does not match),
    unreadable (truncated, empty, not a torch file), holds pickled objects other than tensors, or is
    not an xmodal checkpoint (a dict with ``state_dict`` and ``metadata``).
    """
    if path is None:
        if not shipped.is_file():
            raise FileNotFoundError(f"the shipped weights {name} are missing from the xmodal package")
        with importlib.resources.as_file(shipped) as p:
            return read_checkpoint(p, f"the shipped weights {name} (reinstall xmodal)")
    return read_checkpoint(path, f"path: {os.fspath(path)}")


def read_checkpoint(path, where: str) -> dict:
    """The xmodal checkpoint at ``path`` (see :func:`load_checkpoint`); ``where`` starts the messages."""
    from ._optional_torch import torch_module

    torch = torch_module()
    check_integrity(path, where)
    try:
        with open(path, "rb") as fh:
            ckpt = torch.load(fh, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError, ...
        if "weights only load failed" in str(exc).lower():
            raise ValueError(f"{where} holds pickled Python objects, not only tensors (e.g. a whole "
                             "torch.save(module)), which xmodal does not unpickle: they could run code. Save "
                             "the network as TorchScript (torch.jit.script(net).save(path)) or pass the "
                             "module itself") from exc
        raise ValueError(f"{where} is not a readable torch file (truncated or corrupted?): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict)
            and isinstance(ckpt.get("metadata"), dict)):
        keys = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{where} is not an xmodal checkpoint (a dict with 'state_dict' and 'metadata', "
                         f"as the training scripts write), got {keys}; for your own network save it as "
                         "TorchScript (torch.jit.script(net).save(path)) or pass the module itself")
    return ckpt


def check_integrity(path, where: str) -> None:
    """ValueError unless every entry of the zip archive at ``path`` matches its stored CRC-32.

    torch writes its files (``torch.save`` and TorchScript) as zip archives with a checksum per
    entry but does not check them when loading, so a flipped byte in the weights would load as a
    silently different network. Files that are not zip archives (torch's legacy format, or not a
    torch file at all) are left to the loader.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{where} is damaged (truncated or corrupted?): {exc}") from exc
    if bad is not None:
        raise ValueError(f"{where} is damaged: the checksum of its entry {bad!r} does not match its "
                         "bytes (the file was corrupted or changed after torch wrote it)")


def is_torchscript(path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), as opposed to ``torch.save``."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def build_with_weights(factory, state_dict: dict):
    """``factory()`` (a torch module) holding the tensors of ``state_dict``, never randomly initialised.

    The module is constructed on torch's ``"meta"`` device (shapes only: no memory, no initial
    values), so torch's global random stream is neither advanced nor saved and restored: a host's
    seeded torch stream gives the same numbers with or without the load, also for draws another
    thread makes meanwhile. Its parameters and buffers are then the checkpoint's tensors (floating
    point ones as float32, on the CPU; ``strict`` loading: every key must match).
    """
    import itertools

    from ._optional_torch import torch_module

    torch = torch_module()
    with torch.device("meta"):  # thread-local: other threads' tensors are unaffected
        model = factory()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()},
                          assign=True)
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"the checkpoint does not set {left} of {type(model).__name__}")
    return model
