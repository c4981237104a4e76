"""Validation of annotated samples and feature normalisation shared by build and identify."""

from __future__ import annotations

import numpy as np

from .._validation import as_points, describe, real_array


def _as_name(v, row: int, label: str) -> str:
    """One name as str: str as it is, bytes decoded as UTF-8; anything else (None, a number, NaN
    from a missing value in a table) is refused with its row."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{label}: row {row}: names given as bytes must be UTF-8, got {v!r}") from None
    raise TypeError(f"{label}: expected names as strings; row {row} is {v!r} ({type(v).__name__})")


def check_names(names, n: int, label: str) -> np.ndarray:
    """``names`` as a (n,) str array of unique non-empty names (str, numpy str, or bytes decoded
    as UTF-8; an object array must hold only those)."""
    try:
        arr = np.asarray(names)
    except Exception as exc:  # pragma: no cover
        raise TypeError(f"{label}: expected a sequence of {n} names, got {describe(names)}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{label}: expected a 1-D sequence of names, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{label}: expected {n} names (one per point), got {arr.shape[0]}")
    if arr.dtype.kind not in "USO":
        raise TypeError(f"{label}: expected names as strings, got dtype {arr.dtype}")
    vals = [_as_name(v, i, label) for i, v in enumerate(arr.tolist())]
    out = np.array(vals, dtype=str) if n else np.zeros(0, dtype=str)
    empty = np.flatnonzero(np.char.str_len(out) == 0) if n else np.zeros(0, int)
    if empty.size:
        raise ValueError(f"{label}: names must be non-empty strings; rows {empty[:8].tolist()} are empty")
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"{label}: names must be unique within a sample; repeated: {dup}")
    return out


def check_features(features, n: int, label: str, n_features: int | None = None) -> np.ndarray:
    """``features`` as an (n, f) finite float64 array (a 1-D array is one feature)."""
    a = real_array(features, label, "an (n, f) array of features")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{label}: expected an (n, f) array of features, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{label}: expected {n} rows (one per point), got {a.shape[0]}")
    if n_features is not None and a.shape[1] != n_features:
        raise ValueError(f"{label}: expected {n_features} feature columns, got {a.shape[1]}")
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        r, c = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{label}: features must be finite; row {r}, column {c} is {a[r, c]}")
    return a


def normalise_features(f: np.ndarray, how: str) -> np.ndarray:
    """Per-sample robust standardisation (median, 1.4826 × MAD; the standard deviation when the
    MAD is 0; unchanged when the column is constant) or nothing (``how == "none"``)."""
    if how == "none":
        return f
    med = np.median(f, axis=0)
    mad = 1.4826 * np.median(np.abs(f - med), axis=0)
    sd = f.std(axis=0)
    scale = np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))
    return (f - med) / scale


def check_informative(feats, feature_names, how: str) -> None:
    """ValueError for a feature column without any spread over all training samples (after the
    normalisation ``how``): its per-name variances would be 0 and its costs meaningless."""
    if feats is None:
        return
    F = np.vstack([normalise_features(f, how) for f in feats])
    flat = np.flatnonzero(np.ptp(F, axis=0) == 0) if len(F) else np.zeros(0, int)
    if flat.size:
        j = int(flat[0])
        where = "within every sample (the per-sample standardisation makes it 0)" if how == "sample" else \
            "over all samples"
        raise ValueError(f"features: column {j} ({feature_names[j]!r}) is constant {where}: it says nothing "
                         "about the names; leave it out")


def check_sample_points(points, label: str, d: int | None = None) -> np.ndarray:
    p = as_points(points, label, min_points=1)
    if d is not None and p.shape[1] != d:
        raise ValueError(f"{label}: expected {d} columns like the other samples, got {p.shape[1]}")
    return p
