"""Device selection and CUDA array handling shared by the capabilities.

Convention: numpy in -> numpy out; a CUDA array (anything with ``__cuda_array_interface__``:
cupy, or a torch tensor on a CUDA device) in -> the same kind out, without a host round trip.
``device="auto"`` runs on the GPU when the input already lives there, else on the CPU.

The twin pattern: a capability with a GPU path has one public dispatcher that validates its
options once and calls a ``_cpu`` or a ``_cuda`` adapter (``matching/_knn.py`` ->
``_knn_cpu.py`` / ``_knn_cuda.py``; ``registration/_cpd.py`` -> ``_cpd_cpu.py`` / ``_cpd_cuda.py``).
Each adapter converts and validates the points on its device (:func:`xmodal._validation.as_points`
on the host, :func:`as_device_points` here) and calls its native module (``xmodal._core`` /
``xmodal._cuda``), whose bindings take the same arguments and return the same dict of results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_points_shape, choice, describe


def is_cuda_array(x: Any) -> bool:
    """Whether ``x`` lives on a CUDA device (cupy array or CUDA torch tensor)."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    is_cuda = getattr(x, "is_cuda", None)
    return bool(is_cuda) if isinstance(is_cuda, bool) else False


def cuda_module():
    """The module ``xmodal._cuda`` or None when it was not built."""
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _cuda


def cuda_available() -> bool:
    """Whether ``xmodal._cuda`` was built and a CUDA device is visible."""
    mod = cuda_module()
    return mod is not None and len(mod.devices()) > 0


def resolve_device(device: str, *arrays: Any) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for ``device`` in {"auto", "cpu", "cuda"}.

    ``"auto"`` is ``"cuda"`` when any of ``arrays`` is a CUDA array, else ``"cpu"``. ``"cuda"``
    raises RuntimeError when no GPU can be used. ``"cpu"`` with a CUDA array raises ValueError
    (the arrays would have to be copied to the host; do that explicitly).
    """
    choice(device, "device", ("auto", "cpu", "cuda"))
    on_gpu = any(is_cuda_array(a) for a in arrays)
    if device == "auto":
        return "cuda" if on_gpu else "cpu"
    if device == "cpu" and on_gpu:
        raise ValueError("device: 'cpu' was requested for CUDA arrays; copy them to the host (numpy) first")
    if device == "cuda" and not cuda_available():
        raise RuntimeError(
            "device='cuda' but no CUDA device is usable: "
            + ("xmodal._cuda was not built (install with a CUDA toolkit present)" if cuda_module() is None
               else "no GPU is visible")
        )
    return device


def native_cuda(entry: str):
    """``xmodal._cuda``, checked to provide ``entry``; RuntimeError naming what is missing."""
    mod = cuda_module()
    if mod is None or not hasattr(mod, entry):
        raise RuntimeError(f"{entry} on the GPU needs xmodal._cuda, built with a CUDA toolkit "
                           "(pip install from source on a machine with nvcc)")
    return mod


def cupy_module(purpose: str):
    """cupy, or ImportError naming the extra to install."""
    from ._optional import optional_import

    return optional_import("cupy", purpose=purpose)


def array_namespace(a: Any):
    """numpy for numpy arrays, cupy for cupy arrays."""
    if isinstance(a, np.ndarray):
        return np
    import cupy  # only reached for device arrays

    return cupy


def to_host(a: Any) -> np.ndarray:
    """A numpy copy of a small device array (or ``a`` itself when it is numpy)."""
    return a if isinstance(a, np.ndarray) else a.get()


def as_cupy(x: Any, name: str, cp) -> tuple[Any, str]:
    """``x`` as a cupy array (no copy for CUDA arrays) and its kind: ``"torch"`` or ``"cupy"``.

    Torch tensors go through DLPack; other CUDA arrays through ``__cuda_array_interface__``; host
    arrays are copied to the current device.
    """
    if isinstance(x, cp.ndarray):
        return x, "cupy"
    if type(x).__module__.startswith("torch"):
        return cp.from_dlpack(x.detach()), "torch"
    if hasattr(x, "__cuda_array_interface__"):
        return cp.asarray(x), "cupy"
    try:
        return cp.asarray(np.asarray(x)), "cupy"
    except Exception as exc:  # pragma: no cover - depends on the array library
        raise TypeError(f"{name}: expected an (n, d) array of coordinates, got {describe(x)}") from exc


def from_cupy(a: Any, kind: str):
    """``a`` returned as the input's kind (torch tensors through DLPack, no copy)."""
    if kind == "torch":
        import torch

        return torch.from_dlpack(a)
    return a


def as_device_points(x: Any, name: str, cp, *, dtype=np.float64, dims=(2, 3), min_points: int = 1):
    """The CUDA twin of :func:`xmodal._validation.as_points`: a C-contiguous ``(n, d)`` cupy array
    of ``dtype``, with the same checks and messages (shape, real dtype, finite coordinates)."""
    a = x if isinstance(x, cp.ndarray) else as_cupy(x, name, cp)[0]
    check_points_shape(tuple(a.shape), name, dims, min_points)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected numeric an (n, d) array of coordinates, got {describe(x)}")
    a = cp.ascontiguousarray(a, dtype=dtype)
    ok = cp.isfinite(a).all(axis=1)
    if not bool(ok.all()):
        bad = int(cp.flatnonzero(~ok)[0])
        raise ValueError(f"{name}: coordinates must be finite; row {bad} is {a[bad].get().tolist()}")
    return a


def current_stream(cp) -> int:
    """Address of cupy's current stream on the current device (0: the default stream)."""
    return int(cp.cuda.get_current_stream().ptr)
