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
