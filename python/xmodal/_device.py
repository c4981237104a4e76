"""Device selection and CUDA array handling shared by the capabilities.

Convention: numpy in -> numpy out; a CUDA array (anything with ``__cuda_array_interface__``:
cupy, or a torch tensor on a CUDA device) in -> the same kind out, without a host round trip.
``device="auto"`` runs on the GPU when the input already lives there, else on the CPU.
"""

from __future__ import annotations

from typing import Any

from ._validation import choice


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
    raises RuntimeError when no GPU can be used.
    """
    choice(device, "device", ("auto", "cpu", "cuda"))
    if device == "auto":
        return "cuda" if any(is_cuda_array(a) for a in arrays) else "cpu"
    if device == "cuda" and not cuda_available():
        raise RuntimeError(
            "device='cuda' but no CUDA device is usable: "
            + ("xmodal._cuda was not built (install with a CUDA toolkit present)" if cuda_module() is None
               else "no GPU is visible")
        )
    return device
