"""The dtype contract of the value arrays of the segmentation functions.

Affinities, boundary maps, height maps and per-edge weights or probabilities accept any real
numeric dtype: bool, signed and unsigned integers, and floats of any width. float32 and float64
are used as they are (byte-swapped input in native byte order); other dtypes are converted (to
float32 for images, float64 for per-edge values, as each caller says). Complex, string, object
and datetime values are refused with a TypeError naming the argument. Where the values are
probabilities in [0, 1], integer arrays may hold only 0 and 1: a ValueError otherwise, which says
to divide 8-bit maps stored as 0-255 by 255 (a silent conversion would read 255 as "certain" and
every other value as out of range).

Label arrays (``labels``, ``seeds``, ``superpixels``) are integers and masks are booleans (or
integers, nonzero = True); they are checked where they are used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import describe

__all__ = ["check_real_dtype", "as_float_values"]

_REAL_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def check_real_dtype(dtype: Any, name: str, expected: str) -> None:
    """TypeError naming ``name`` unless ``dtype`` is bool, an integer or a float dtype (for arrays
    read lazily, such as zarr arrays, whose dtype is checked before any block is read)."""
    dt = np.dtype(dtype)
    if dt.kind not in _REAL_KINDS:
        raise TypeError(f"{name}: expected {expected} of a real numeric dtype (bool, integer or float), "
                        f"got dtype {dt}")


def _check_integer_probabilities(a: np.ndarray, name: str) -> None:
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 1:
        hint = f" (for 8-bit probabilities stored as 0-255, pass {name} / 255)" if lo >= 0 and hi <= 255 else ""
        raise ValueError(f"{name}: expected probabilities in [0, 1] (integer values must be 0 or 1), got dtype "
                         f"{a.dtype} with values in [{lo}, {hi}]{hint}")


def as_float_values(x: Any, name: str, expected: str, *, dtype: Any = None, probabilities: bool = False
                    ) -> np.ndarray:
    """``x`` as a numpy float array under the contract of this module.

    ``dtype`` None keeps float32 and float64 (in native byte order) and converts any other real
    dtype to float32; a given ``dtype`` converts to it. ``probabilities``: integer values must be
    0 or 1 (checked here; the range of float values is checked by the caller, with positions).
    """
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - ragged lists and the like
        raise TypeError(f"{name}: expected {expected}, got {describe(x)}") from exc
    if a.dtype == object:
        raise TypeError(f"{name}: expected {expected} of a real numeric dtype (bool, integer or float), "
                        f"got {describe(x)}")
    check_real_dtype(a.dtype, name, expected)
    if probabilities and a.dtype.kind in "iu" and a.size:
        _check_integer_probabilities(a, name)
    if dtype is not None:
        return np.asarray(a, dtype=dtype)
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    return a.astype(np.float32)
