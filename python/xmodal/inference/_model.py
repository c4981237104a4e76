"""Uniform call of a torch module or an array callable on a batch of windows."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from .._validation import describe
from ._receptive import is_torch_module

log = logging.getLogger("xmodal.inference")


def resolve_torch_device(model, device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if not is_torch_module(model):
        if device not in ("auto", "cpu"):
            raise ValueError(f"device: a callable that is not a torch module runs where it runs; got {device!r}")
        return "cpu"
    import torch

    if device == "auto":
        for p in model.parameters():
            if p.is_cuda:
                return str(p.device)
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device")
    return str(device)


class Runner:
    """Runs ``model`` on a float32 batch ``(B, C, *spatial)`` and returns float32 ``(B, C_out, *spatial)``."""

    def __init__(self, model, device: str = "auto"):
        if not callable(model):
            raise TypeError(f"model: expected a torch module or a callable on arrays, got {describe(model)}")
        self.model = model
        self.is_torch = is_torch_module(model)
        self.device = resolve_torch_device(model, device)
        if self.is_torch:
            import torch

            self.torch = torch
            self.dtype = torch.float32
            for p in model.parameters():
                if p.is_floating_point():
                    self.dtype = p.dtype
                    break
            model.to(self.device)
            if model.training:
                log.warning("model is in training mode: BatchNorm/Dropout make tiles disagree; call model.eval()")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.is_torch:
            torch = self.torch
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype, non_blocking=True)
            with torch.inference_mode():
                y = self.model(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                y = y.to(torch.float32)
            return y.cpu().numpy()
        y = self.model(batch)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        return np.asarray(y, dtype=np.float32)


def model_token(model) -> str:
    """A digest of what a model computes, for job signatures.

    Torch modules: their architecture (``str(module)``), class and weights (the state dict, buffers
    included). Other callables: their pickled state (:func:`xmodal.io.object_token`; a callable that
    cannot be pickled never matches another run, so its work is never reused).
    """
    if not is_torch_module(model):
        from ..io import object_token

        return object_token(model)
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(type(model).__qualname__.encode())
    h.update(str(model).encode())
    return h.hexdigest()

