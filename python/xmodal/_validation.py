"""Argument checks shared by the public functions.

Every check raises ValueError or TypeError naming the argument, what was expected and what was
given, before any native code runs.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def describe(x: Any) -> str:
    """Short description of a value for error messages."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    text = repr(x)
    return text if len(text) <= 60 else f"{type(x).__name__} ({text[:57]}...)"


def real_array(x: Any, name: str, expected: str) -> np.ndarray:
    """``x`` as a numpy array of real numbers (or bools); TypeError naming ``expected`` otherwise."""
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds here
        raise TypeError(f"{name}: expected {expected}, got {describe(x)}") from exc
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name}: expected {expected} (numeric), got {describe(x)}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected real values in {expected}, got {describe(x)}")
    return a


def check_points_shape(shape: tuple, name: str, dims=(2, 3), min_points: int = 1) -> None:
    """ValueError naming ``name`` unless ``shape`` is ``(n, d)`` with d in ``dims`` and n >= ``min_points``
    (one check for host and device point arrays)."""
    if len(shape) != 2:
        hint = " (an empty set of points has shape (0, d))" if tuple(shape) == (0,) else ""
        raise ValueError(f"{name}: expected an (n, d) array, got shape {tuple(shape)}{hint}")
    if shape[1] not in dims:
        dims = sorted(dims)
        want = (f"{dims[0]} to {dims[-1]}" if len(dims) > 2 and dims == list(range(dims[0], dims[-1] + 1))
                else " or ".join(map(str, dims)))
        raise ValueError(f"{name}: expected {want} columns (coordinates), got {shape[1]}")
    if shape[0] < min_points:
        raise ValueError(f"{name}: expected at least {min_points} points, got {shape[0]}")


def as_points(x: Any, name: str, *, dims=(2, 3), min_points: int = 1, dtype=np.float64,
              finite: bool = True) -> np.ndarray:
    """Return ``x`` as a C-contiguous ``(n, d)`` float array, d in ``dims``."""
    a = real_array(x, name, "an (n, d) array of coordinates")
    check_points_shape(a.shape, name, dims, min_points)
    a = np.ascontiguousarray(a, dtype=dtype)
    if finite and not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
        raise ValueError(f"{name}: coordinates must be finite; row {bad} is {a[bad].tolist()}")
    return a


def as_spacing(spacing: Any, ndim: int, name: str = "spacing") -> np.ndarray | None:
    """``None``, a positive scalar or a positive sequence of length ``ndim`` -> float64 array or None."""
    if spacing is None:
        return None
    if isinstance(spacing, (str, bytes)) or (isinstance(spacing, (list, tuple))
                                             and any(isinstance(v, (str, bytes)) for v in spacing)):
        raise TypeError(f"{name}: expected a positive number or {ndim} positive numbers (one per axis), "
                        f"got {describe(spacing)}")
    try:
        s = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number or {ndim} positive numbers (one per axis), "
                        f"got {describe(spacing)}") from None
    if s.ndim == 0:
        s = np.full(ndim, float(s))
    if s.shape != (ndim,):
        raise ValueError(f"{name}: expected a scalar or {ndim} values (one per axis), got {describe(spacing)}")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{name}: expected positive finite values, got {s.tolist()}")
    return s


def positive_int(x: Any, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {describe(x)}")
    if int(x) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {int(x)}")
    return int(x)


def per_axis(x: Any, ndim: int, name: str, *, minimum: int = 0) -> tuple[int, ...]:
    """An integer (the same on every axis) or ``ndim`` integers, each >= ``minimum``, as a tuple.

    For per-axis sizes such as tile and block shapes, halos and overlaps. TypeError for anything
    that is not an integer or a sequence of integers (booleans and floats included), ValueError for
    a sequence of another length or a value below ``minimum``; both name ``name``.
    """
    if isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)):
        x = (int(x),) * ndim
    try:
        vals = list(x)
    except TypeError:
        raise TypeError(f"{name}: expected an integer or {ndim} integers, got {describe(x)}") from None
    if len(vals) != ndim:
        raise ValueError(f"{name}: expected {ndim} values (one per axis), got {len(vals)}")
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in vals):
        raise TypeError(f"{name}: expected integers, got {describe(x)}")
    out = tuple(int(v) for v in vals)
    if any(v < minimum for v in out):
        raise ValueError(f"{name}: expected integers >= {minimum}, got {list(out)}")
    return out


def positive_float(x: Any, name: str, *, allow_none: bool = False, allow_zero: bool = False) -> float | None:
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {describe(x)}")
    v = float(x)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} finite number, got {v}")
    return v


def choice(x: Any, name: str, options) -> str:
    if x not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {x!r}")
    return x


def as_bool(x: Any, name: str) -> bool:
    """``x`` as a Python bool; TypeError unless it is ``True``/``False`` (or a numpy bool).

    Strings such as ``"no"`` and numbers are refused instead of being read by their truth value.
    """
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    raise TypeError(f"{name}: expected True or False, got {describe(x)}")


def as_progress(x: Any, name: str = "progress"):
    """``x`` as a progress setting: a bool, or a callable ``progress(done, total, stage)``.

    A callable is called as work advances (``done`` of ``total`` steps of ``stage``, a str;
    ``total`` None when unknown) and may raise to abort the run (a GUI's cancel button); the
    exception propagates to the caller.
    """
    if callable(x) and not isinstance(x, (bool, np.bool_)):
        _check_progress_signature(x, name)
        return x
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    raise TypeError(f"{name}: expected True, False or a callable progress(done, total, stage), got {describe(x)}")


def _check_progress_signature(fn, name: str) -> None:
    """TypeError naming ``name`` when ``fn`` cannot be called with three positional arguments (a
    callable whose signature Python cannot read is accepted as it is)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(0, 1, "stage")
    except TypeError as exc:
        raise TypeError(f"{name}: expected a callable progress(done, total, stage) taking three positional "
                        f"arguments, got {getattr(fn, '__name__', type(fn).__name__)}{sig} ({exc})") from None


def int64_array(x: Any, name: str, expected: str) -> np.ndarray:
    """``x`` as an int64 array; TypeError for non-integer values, ValueError for values outside int64.

    Integer-valued floats are accepted; unsigned values above 2**63 - 1 (which would wrap to negative
    numbers) and floats beyond the int64 range are refused.
    """
    a = real_array(x, name, expected)
    if a.dtype == bool:
        raise TypeError(f"{name}: expected {expected}, got booleans ({describe(x)})")
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            raise ValueError(f"{name}: expected {expected}, got non-finite values")
        if a.size and not (a == np.round(a)).all():
            raise TypeError(f"{name}: expected {expected}, got non-integer values ({describe(x)})")
        if a.size and np.abs(a).max() >= 2.0**63:
            raise ValueError(f"{name}: expected values that fit a 64-bit signed integer, got {np.abs(a).max():.6g}")
    elif a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected values that fit a 64-bit signed integer, got {int(a.max())} "
                         f"(an unsigned value that would wrap to {int(a.max()) - 2**64})")
    return a.astype(np.int64)


def _is_float32(x) -> bool:
    """Whether an array (numpy, cupy or torch) holds float32 values."""
    return str(getattr(x, "dtype", "")).removeprefix("torch.") == "float32"


def float_dtype(dtype: Any, *arrays) -> np.dtype:
    """A kernel precision: ``dtype`` (None, float32 or float64) as a numpy dtype; None gives float32
    when every array holds float32 values (numpy, cupy or torch), else float64."""
    if dtype is None:
        return np.dtype(np.float32) if all(_is_float32(a) for a in arrays) else np.dtype(np.float64)
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected None, float32 or float64, got {dtype!r}") from exc
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected None, float32 or float64, got {dt}")
    return dt
