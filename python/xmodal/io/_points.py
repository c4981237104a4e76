"""Point sets from arrays, centroid tables and label images, in physical units.

Columns are in image axis order: (z, y, x) for 3D, (y, x) for 2D.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import as_points, as_spacing, describe
from ._files import IMAGE_SUFFIXES, TABLE_SUFFIXES, numeric_column, read_image, read_table
from ._ome import declared_scale

_AXIS_COLUMNS = (("z", "y", "x"), ("y", "x"))


@dataclass
class PointSet:
    """Points in physical units with the ids that name them.

    Attributes
    ----------
    points : (n, d) float64 array, physical units, columns (z, y, x) or (y, x)
    ids : (n,) array of the point ids (table id column, label values, or 0..n-1)
    source : str, where the points came from (for provenance)
    sizes : (n,) voxel counts for points taken from label images, else None
    spacing : per-axis scale applied to the coordinates (the ``spacing`` given, or the voxel size an
        OME-Zarr or TIFF label image declares), else None
    units : NGFF name of the length unit of ``points`` (e.g. "micrometer") when a label image's
        metadata declares it (no ``spacing`` given), else None (unknown: the caller's units)
    """

    points: np.ndarray
    ids: np.ndarray
    source: str
    sizes: np.ndarray | None = None
    spacing: tuple | None = None
    units: str | None = None


def _scaled(points: np.ndarray, spacing) -> np.ndarray:
    s = as_spacing(spacing, points.shape[1])
    return points if s is None else points * s


def coordinate_columns(table: dict, path, columns) -> tuple[str, ...]:
    """The coordinate columns of a table: ``columns`` checked, or the first of (z, y, x) and (y, x)
    present (any case); ValueError naming the table otherwise."""
    lower = {k.lower(): k for k in table}
    if columns is None:
        for cand in _AXIS_COLUMNS:
            if all(c in lower for c in cand):
                return tuple(lower[c] for c in cand)
        raise ValueError(
            f"table {path}: expected coordinate columns named z, y, x (or y, x), got columns {list(table)}; "
            "pass columns=(...) to name them"
        )
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"columns: {missing} not in table {path} (it has {list(table)})")
    return tuple(columns)


def _points_from_table(path: Path, *, id_column: str | None, columns: tuple[str, ...] | None,
                       spacing) -> PointSet:
    return points_of_table(read_table(path), path, id_column=id_column, columns=columns, spacing=spacing)


def points_of_table(table: dict, path, *, id_column: str | None = None, columns=None, spacing=None) -> PointSet:
    """The points (physical units: coordinates × ``spacing``) and ids (``id_column``, else row
    numbers) of a table read from ``path`` (named in the errors). Ids are written back as given: an
    id column of whole numbers gives int64 ids, unless their text is not the numbers' own (e.g.
    zero-padded ``00123`` or ``1e3``: the table's ``text``, see :class:`xmodal.io.Table`), which
    is kept as strings."""
    columns = coordinate_columns(table, path, columns)
    pts = np.stack([numeric_column(table, c, path) for c in columns], axis=1)
    pts = _scaled(as_points(pts, f"table {path}"), spacing)
    if id_column is not None:
        if id_column not in table:
            raise ValueError(f"id_column: {id_column!r} not in table {path} (it has {list(table)})")
        ids = np.asarray(table[id_column])
        text = getattr(table, "text", {}).get(id_column)
        if text is not None and len(text) == len(ids):
            ids = np.asarray(text)  # e.g. zero-padded ids: the numbers would not give the text back
        elif ids.dtype.kind == "f" and ids.size and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)) \
                and np.abs(ids).max() < 2.0 ** 53:
            ids = ids.astype(np.int64)  # integer ids stay integers (numeric columns are read as float64)
        _check_ids(ids, id_column, path)
    else:
        ids = np.arange(len(pts))
    s = as_spacing(spacing, pts.shape[1])
    return PointSet(pts, ids, str(path), spacing=None if s is None else tuple(s.tolist()))


def _check_ids(ids: np.ndarray, id_column: str, path) -> None:
    """Ids name the rows of every output table, so they must be present and unique."""
    text = np.array([str(v).strip() for v in ids.tolist()], dtype=object)
    empty = np.flatnonzero((text == "") | (text == "nan"))
    if empty.size:
        raise ValueError(f"id_column: {id_column!r} of {path} is empty on {empty.size} row(s) (first: data row "
                         f"{int(empty[0]) + 1}); every row needs an id")
    uniq, first, counts = np.unique(text.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ValueError(f"id_column: {id_column!r} of {path} repeats {dup.size} id(s) (e.g. {str(dup[0])!r}, "
                         f"{int(counts[counts > 1][0])} times); ids must be unique to join the outputs back")


def label_centroids(labels: Any, spacing=None) -> PointSet:
    """Centroids (physical units) and voxel counts of every non-zero label of a 2D/3D label image.

    Parameters
    ----------
    labels : array-like of integers, 2D or 3D (0 = background)
    spacing : scalar or sequence, voxel size per axis in physical units (default 1)

    Returns
    -------
    PointSet
        ``ids`` are the label values, ``sizes`` their voxel counts (see
        :func:`xmodal.metrics.label_centroids` for the arrays alone).
    """
    from ..metrics import label_centroids as centroids_of

    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D label image, got {lab.ndim}D with shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels: expected an integer label image, got dtype {lab.dtype}")
    s = as_spacing(spacing, lab.ndim)
    ids, pts, counts = centroids_of(lab, spacing=s, return_sizes=True)
    if len(ids) == 0:
        raise ValueError("labels: the label image has no objects (all voxels are 0)")
    return PointSet(pts, ids, "labels", counts, None if s is None else tuple(s.tolist()))


def load_points(x: Any, *, spacing=None, id_column: str | None = None, columns=None, name: str = "points") -> PointSet:
    """Points from an (n, d) array, a centroid table path or a label image (path or array).

    A path with suffix .csv/.tsv/.txt/.parquet is a table of physical coordinates (``spacing``
    multiplies them when given); .npy/.tif/.zarr is a label image whose object centroids are taken
    (``spacing`` = voxel size; without it, the voxel size an OME-Zarr image declares in its
    ``multiscales`` metadata or a TIFF in its OME-TIFF / ImageJ metadata, else 1:
    ``PointSet.spacing`` says which, and ``PointSet.units`` the unit the metadata names), except a
    .npy of floating-point values and shape (n, 2) or (n, 3), which is a point array (float values
    cannot be labels). An integer array of ndim 2 or 3 whose shape is not (n, 2|3) is a
    label image; any other 2-D array is a point array.
    """
    if isinstance(x, PointSet):
        return x
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        suffix = path.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return _points_from_table(path, id_column=id_column, columns=columns, spacing=spacing)
        if suffix in IMAGE_SUFFIXES or path.is_dir():
            image = read_image(path)
            if suffix == ".npy" and image.ndim == 2 and image.dtype.kind == "f" and image.shape[1] in (2, 3):
                pts = as_points(image, name)  # float values cannot be labels: an (n, d) point array
                s = as_spacing(spacing, pts.shape[1])
                return PointSet(_scaled(pts, s), np.arange(len(pts)), str(path),
                                spacing=None if s is None else tuple(s.tolist()))
            units = None
            if spacing is None:
                spacing, units = declared_scale(path, len(image.shape))
            ps = label_centroids(image, spacing)
            ps.source, ps.units = str(path), units
            return ps
        raise ValueError(f"{name}: cannot tell the kind of {path}: expected a table (.csv, .tsv, .parquet) "
                         "or a label image (.npy, .tif, .zarr)")
    arr = np.asarray(x) if not hasattr(x, "shape") else x
    if getattr(arr, "ndim", 0) == 3 or (getattr(arr, "ndim", 0) == 2 and np.issubdtype(arr.dtype, np.integer)
                                         and arr.shape[1] not in (2, 3)):
        ps = label_centroids(arr, spacing)
        ps.source = f"label image {describe(arr)}"
        return ps
    pts = as_points(arr, name)
    s = as_spacing(spacing, pts.shape[1])
    return PointSet(_scaled(pts, s), np.arange(len(pts)), f"array {describe(arr)}",
                    spacing=None if s is None else tuple(s.tolist()))
