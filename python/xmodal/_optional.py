"""Lazy imports of optional dependencies with a message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> (pip extra, distribution to mention)
_EXTRAS = {
    "torch": ("torch", "torch"),
    "itk": ("elastix", "itk-elastix"),
    "dask": ("dask", "dask[distributed]"),
    "distributed": ("dask", "dask[distributed]"),
    "cupy": ("cuda", "cupy"),
    "tifffile": ("io", "tifffile"),
    "pandas": ("io", "pandas"),
    "matplotlib": ("plot", "matplotlib"),
    "bioimage_cpp": ("multicut", "bioimage-cpp"),
}


def optional_import(module: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise ImportError saying which xmodal extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, dist = _EXTRAS.get(top, (None, top))
        what = f" for {purpose}" if purpose else ""
        hint = f"pip install 'xmodal[{extra}]'" if extra in {"torch", "elastix", "dask", "cuda", "multicut"} else f"pip install {dist}"
        raise ImportError(f"xmodal needs the optional package '{dist}'{what}; install it with: {hint}") from exc


def have_module(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
