"""Loading a weights file written by torch.save: the shipped one of a model or a user's path."""

from __future__ import annotations

import importlib.resources


def load_checkpoint(path, shipped, name: str) -> dict:
    """The checkpoint dict at ``path``, or, with ``path=None``, the shipped file ``shipped`` (an
    :mod:`importlib.resources` traversable; ``name`` is its file name for the error message).
    Loaded on the CPU with ``weights_only=True`` (no pickled code runs)."""
    from ._optional_torch import torch_module

    torch = torch_module()
    if path is None:
        if not shipped.is_file():
            raise FileNotFoundError(f"the shipped weights {name} are missing from the xmodal package")
        with importlib.resources.as_file(shipped) as p, open(p, "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    with open(path, "rb") as fh:
        return torch.load(fh, map_location="cpu", weights_only=True)
