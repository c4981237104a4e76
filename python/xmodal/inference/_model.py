"""Uniform call of a torch module or an array callable on a batch of windows."""

from __future__ import annotations

import contextlib
import hashlib
import logging

import numpy as np

from .._validation import describe
from ._receptive import is_torch_module

log = logging.getLogger("xmodal.inference")


def resolve_torch_device(model, device) -> str:
    """The torch device string ``model`` runs on: ``device`` is "auto", "cpu", "cuda", "cuda:N" or a
    ``torch.device`` of those; ValueError for anything else, RuntimeError for CUDA without a GPU."""
    if type(device).__module__ == "torch" and type(device).__name__ == "device":
        device = str(device)
    if not isinstance(device, str) or (device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:")):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
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
        raise RuntimeError(f"device={device!r} but torch sees no CUDA device")
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
            training = mode_dependent_in_training(model)
            if training:
                log.warning("model: %s in training mode (batch statistics make tiles disagree, dropout makes "
                            "results vary between runs); call model.eval()", ", ".join(training))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.is_torch:
            torch = self.torch
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype, non_blocking=True)
            with torch.inference_mode():
                y = _first_output(self.model(x))
                if not isinstance(y, torch.Tensor):  # a torch model that returns a numpy array
                    return np.asarray(y, dtype=np.float32)
                y = y.to(torch.float32)
            return y.cpu().numpy()
        y = _first_output(self.model(batch))
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        return np.asarray(y, dtype=np.float32)


def _first_output(y):
    """The prediction among a model's outputs: the output itself, or the first of a tuple / list."""
    if isinstance(y, (tuple, list)) and len(y) > 0:
        y = y[0]
    if not hasattr(y, "shape") or isinstance(y, (dict, str, bytes)):
        raise TypeError(f"model: expected a tensor or array (or a tuple / list whose first element is one) as "
                        f"output, got {describe(y)}")
    return y


def _kind(m) -> str:
    """A module's class name (a TorchScript module's: the eager class it was compiled from)."""
    return getattr(m, "original_name", None) or type(m).__name__


def mode_dependent_in_training(model) -> list[str]:
    """Names (``"name (Class)"``) of the modules of ``model`` that behave differently in training mode
    (BatchNorm, InstanceNorm with running statistics, dropout) and are in training mode."""
    found = []
    for name, m in model.named_modules():
        kind = _kind(m)
        if not m.training:
            continue
        if ("BatchNorm" in kind or "Dropout" in kind
                or ("InstanceNorm" in kind and getattr(m, "track_running_stats", False))):
            found.append(f"{name or 'model'} ({kind})")
    return found


def per_window_statistics(model) -> list[str]:
    """Names (``"name (Class)"``) of the modules of ``model`` that normalise by statistics of the
    window they see (GroupNorm; InstanceNorm unless it uses running statistics in eval mode)."""
    found = []
    for name, m in model.named_modules():
        kind = _kind(m)
        running = getattr(m, "track_running_stats", False) and not m.training
        if kind == "GroupNorm" or ("InstanceNorm" in kind and not running):
            found.append(f"{name or 'model'} ({kind})")
    return found


@contextlib.contextmanager
def kept_state(model):
    """Run ``model`` and restore its buffers afterwards (also after an exception) when a module is in
    training mode, so that a prediction never overwrites the caller's BatchNorm running statistics;
    a no-op for callables that are not torch modules and for models in eval mode."""
    saved = None
    if is_torch_module(model) and any(m.training for m in model.modules()):
        saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield model
    finally:
        if saved:
            import torch

            live = dict(model.named_buffers())  # by name: moving the model replaces its buffers
            with torch.no_grad():
                for name, v in saved.items():
                    if name in live:
                        live[name].copy_(v.to(live[name].device))


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

