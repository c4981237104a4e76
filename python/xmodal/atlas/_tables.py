"""Tables in and out: annotated samples for :func:`build_atlas`, cells for :func:`identify`, and the
names table an identification writes. These are what the command line calls
(``xmodal atlas build``, ``xmodal identify``)."""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import numpy as np

from .._validation import as_points, as_spacing
from ..io._points import coordinate_columns, points_of_table


def _coordinates(table: dict, path, columns) -> np.ndarray:
    columns = coordinate_columns(table, path, columns)
    try:
        pts = np.stack([np.asarray(table[c], dtype=np.float64) for c in columns], axis=1)
    except ValueError as exc:
        raise ValueError(f"table {path}: coordinate columns {list(columns)} must be numeric") from exc
    return as_points(pts, f"table {path}")


def _features(table: dict, path, feature_columns) -> np.ndarray | None:
    if not feature_columns:
        return None
    missing = [c for c in feature_columns if c not in table]
    if missing:
        raise ValueError(f"feature_columns: {missing} not in table {path} (it has {list(table)})")
    cols = []
    for c in feature_columns:
        col = np.asarray(table[c])
        if col.dtype.kind not in "fiub":
            raise ValueError(f"feature_columns: column {c!r} of table {path} is not numeric")
        cols.append(col.astype(np.float64))
    return np.stack(cols, axis=1)


def read_annotated_table(path, *, names_column: str, feature_columns: Sequence[str] | None = None,
                         columns: Sequence[str] | None = None, spacing=None):
    """One annotated sample from a CSV / TSV / Parquet table.

    Parameters
    ----------
    path : table file; coordinate columns ``z, y, x`` (or ``y, x``), or those named by ``columns``
    names_column : column holding each cell's name (rows with an empty name are dropped: unnamed
        cells do not enter an atlas)
    feature_columns : numeric columns used as features (same in every sample)
    spacing : scalar or per-axis factor applied to the coordinates (e.g. voxel size)

    Returns
    -------
    points (n, d), names (n,) str, features (n, f) or None
    """
    from ..io import read_table

    table = read_table(path)
    if names_column not in table:
        raise ValueError(f"names_column: {names_column!r} not in table {path} (it has {list(table)})")
    pts = _coordinates(table, path, columns)
    s = as_spacing(spacing, pts.shape[1])
    if s is not None:
        pts = pts * s
    raw = getattr(table, "text", {}).get(names_column)  # names written as numbers with zeros: as written
    raw = np.asarray(table[names_column]) if raw is None else np.asarray(raw, dtype=object)
    names = np.array([("" if (isinstance(v, float) and np.isnan(v)) else
                       (str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)))
                      for v in raw.tolist()], dtype=str)
    names = np.char.strip(names)
    feats = _features(table, path, feature_columns)
    keep = np.char.str_len(names) > 0
    return pts[keep], names[keep], None if feats is None else feats[keep]


def read_samples(paths: Sequence, *, names_column: str, feature_columns: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None, spacing=None):
    """Annotated samples from several tables: ``(samples, names, features)`` ready for
    :func:`build_atlas` (``features`` is None without ``feature_columns``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    samples, names, feats = [], [], []
    for p in paths:
        pts, nm, f = read_annotated_table(p, names_column=names_column, feature_columns=feature_columns,
                                          columns=columns, spacing=spacing)
        samples.append(pts)
        names.append(nm)
        feats.append(f)
    return samples, names, (feats if feature_columns else None)


def read_cells(path, *, feature_columns: Sequence[str] | None = None, columns: Sequence[str] | None = None,
               spacing=None, id_column: str | None = None):
    """Cells of a new sample from a table: ``(points, features or None, ids)`` (ids: the
    ``id_column`` values, else row numbers).

    Parameters
    ----------
    path : table file (CSV / TSV / Parquet); coordinate columns ``z, y, x`` (or ``y, x``), or those
        named by ``columns``
    feature_columns : numeric columns used as features (those the atlas was built with)
    columns : the coordinate columns, in axis order
    spacing : scalar or per-axis factor (axis order of the coordinate columns), optional
        The points are the table's coordinates times ``spacing``, so it sets their unit: give the
        voxel size (e.g. µm per voxel) when the table holds voxel indices; default 1 (the table's
        own units). Use the units the atlas's training samples had (``read_samples``' ``spacing``).
    id_column : column holding the cell ids, optional
    """
    from ..io import read_table

    table = read_table(path)
    ps = points_of_table(table, path, id_column=id_column, columns=columns, spacing=spacing)
    return ps.points, _features(table, path, feature_columns), ps.ids


def identification_rows(result, ids=None) -> tuple[list[str], list[list]]:
    """Header and rows of the names table: id, name, confidence, then name_i / probability_i for
    the top-k candidates."""
    n = len(result.names)
    ids = np.arange(n) if ids is None else np.asarray(ids)
    if len(ids) != n:
        raise ValueError(f"ids: expected {n} ids (one per cell), got {len(ids)}")
    k = result.top_k_names.shape[1]
    header = ["id", "name", "confidence"]
    for i in range(1, k + 1):
        header += [f"name_{i}", f"probability_{i}"]
    rows = []
    for j in range(n):
        row = [ids[j].item() if hasattr(ids[j], "item") else ids[j], result.names[j], f"{result.confidence[j]:.6g}"]
        for i in range(k):
            row += [result.top_k_names[j, i], f"{result.top_k_probabilities[j, i]:.6g}"]
        rows.append(row)
    return header, rows


def write_identification(result, path, ids=None) -> None:
    """Write the names table (CSV, see :func:`identification_rows`) atomically."""
    from ..io import atomic_write_text

    header, rows = identification_rows(result, ids)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
