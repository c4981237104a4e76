"""Reading the inputs of the pipelines: point arrays, centroid tables and label images.

Everything is returned in physical units, columns in image axis order (z, y, x) for 3D and (y, x)
for 2D.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import as_points, as_spacing, describe

_TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}
_IMAGE_SUFFIXES = {".npy", ".tif", ".tiff", ".zarr"}
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
    """

    points: np.ndarray
    ids: np.ndarray
    source: str
    sizes: np.ndarray | None = None


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV / TSV / Parquet table into a dict of column arrays (numeric where possible).

    A column whose every entry parses as a number is float64; any other column keeps its strings
    (see :func:`numeric_column` for a clear error naming the file, column and line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"table {path}: is a folder, expected a .csv / .tsv / .parquet file")
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        from .._optional import optional_import

        pq = optional_import("pyarrow.parquet", purpose="reading Parquet tables")
        table = pq.read_table(path)
        return {name: np.asarray(table.column(name).to_numpy()) for name in table.column_names}
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if (suffix == ".tsv" or sample.count("\t") > sample.count(",")) else ","
            rows = list(csv.reader(fh, delimiter=delimiter))
    except UnicodeDecodeError as exc:
        raise ValueError(f"table {path}: not a text table (CSV/TSV) in UTF-8: {exc.reason} at byte {exc.start}") from None
    except csv.Error as exc:
        raise ValueError(f"table {path}: not a valid CSV/TSV table: {exc}") from None
    if not rows:
        raise ValueError(f"table {path}: the file is empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    if not body:
        raise ValueError(f"table {path}: no rows below the header {header}")
    out = {}
    for j, name in enumerate(header):
        col = [r[j] if j < len(r) else "" for r in body]
        try:
            out[name.strip()] = np.array([float(v) for v in col])
        except ValueError:
            out[name.strip()] = np.array(col)
    return out


def numeric_column(table: dict, name: str, path) -> np.ndarray:
    """Column ``name`` of a table from :func:`read_table` as float64; ValueError naming the file,
    the column and the first line (1 = header) whose entry is not a number."""
    col = np.asarray(table[name])
    if col.dtype.kind in "biuf":
        return col.astype(np.float64)
    for i, v in enumerate(col.tolist()):
        try:
            float(v)
        except (TypeError, ValueError):
            raise ValueError(f"table {path}: column {name!r} must be numeric; line {i + 2} holds {str(v)!r}") from None
    return col.astype(np.float64)  # pragma: no cover - every entry parsed


def _points_from_table(path: Path, *, id_column: str | None, columns: tuple[str, ...] | None,
                       spacing) -> PointSet:
    table = read_table(path)
    lower = {k.lower(): k for k in table}
    if columns is None:
        for cand in _AXIS_COLUMNS:
            if all(c in lower for c in cand):
                columns = tuple(lower[c] for c in cand)
                break
        else:
            raise ValueError(
                f"table {path}: expected coordinate columns named z, y, x (or y, x), got columns {list(table)}; "
                "pass columns=(...) to name them"
            )
    missing = [c for c in columns if c not in table]
    if missing:
        raise ValueError(f"columns: {missing} not in table {path} (it has {list(table)})")
    pts = np.stack([numeric_column(table, c, path) for c in columns], axis=1)
    pts = as_points(pts, f"table {path}")
    s = as_spacing(spacing, pts.shape[1])
    if s is not None:
        pts = pts * s
    if id_column is not None:
        if id_column not in table:
            raise ValueError(f"id_column: {id_column!r} not in table {path} (it has {list(table)})")
        ids = np.asarray(table[id_column])
    else:
        ids = np.arange(len(pts))
    return PointSet(pts, ids, str(path))


def _read_npy(path: Path) -> np.ndarray:
    """Memory-map a numeric .npy file; refuse object arrays (never unpickle) and non-.npy files."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # pragma: no cover - version 3 headers (utf-8 field names)
                dtype = None
    except ValueError as exc:
        raise ValueError(f"image {path}: not a .npy file ({exc})") from None
    if dtype is not None and dtype.hasobject:
        raise ValueError(f"image {path}: holds Python objects (a pickled array); xmodal reads only numeric "
                         ".npy files and never unpickles them (allow_pickle=False)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"image {path}: cannot be read as a numeric .npy array ({exc})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label or intensity image from .npy, .tif/.tiff or a zarr array (lazily for zarr).

    Errors name the file: a missing path, a table or other non-image file, a pickled (object)
    .npy file (never unpickled), or a folder that is not a zarr array / OME-Zarr image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix in _TABLE_SUFFIXES:
        raise ValueError(f"image {path}: a table ({suffix}), expected an image (.npy, .tif/.tiff, .zarr or an "
                         "OME-Zarr image)")
    if suffix == ".npy" and path.is_file():
        return _read_npy(path)
    if suffix in {".tif", ".tiff"} and path.is_file():
        from .._optional import optional_import

        tifffile = optional_import("tifffile", purpose="reading TIFF images")
        try:
            return tifffile.imread(path)
        except (ValueError, tifffile.TiffFileError) as exc:
            raise ValueError(f"image {path}: not a readable TIFF image ({exc})") from None
    if not path.is_dir():
        raise ValueError(f"image {path}: expected a .npy, .tif/.tiff file or a zarr / OME-Zarr folder")
    from ..io import open_array

    try:
        return open_array(path)  # a zarr array, or the first scale of an OME-Zarr image / labels group
    except (ValueError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, PermissionError):
            raise
        msg = " ".join(str(exc).split())
        raise ValueError(f"image {path}: not a zarr array or an OME-Zarr image ({msg})") from None


def label_centroids(labels: Any, spacing=None) -> PointSet:
    """Centroids (physical units) and voxel counts of every non-zero label of a 2D/3D label image.

    Parameters
    ----------
    labels : array-like of integers, 2D or 3D (0 = background)
    spacing : scalar or sequence, voxel size per axis in physical units (default 1)
    """
    from ..metrics import label_centroids as centroids_of

    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"labels: expected a 2D or 3D label image, got {lab.ndim}D with shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels: expected an integer label image, got dtype {lab.dtype}")
    ids, pts, counts = centroids_of(lab, spacing=as_spacing(spacing, lab.ndim), return_sizes=True)
    if len(ids) == 0:
        raise ValueError("labels: the label image has no objects (all voxels are 0)")
    return PointSet(pts, ids, "labels", counts)


def load_points(x: Any, *, spacing=None, id_column: str | None = None, columns=None, name: str = "points") -> PointSet:
    """Points from an (n, d) array, a centroid table path or a label image (path or array).

    A path with suffix .csv/.tsv/.txt/.parquet is a table of physical coordinates (``spacing``
    multiplies them when given); .npy/.tif/.zarr is a label image whose object centroids are taken
    (``spacing`` = voxel size). An integer array of ndim 2 or 3 whose shape is not (n, 2|3) is a
    label image; any other 2-D array is a point array.
    """
    if isinstance(x, PointSet):
        return x
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        suffix = path.suffix.lower()
        if suffix in _TABLE_SUFFIXES:
            return _points_from_table(path, id_column=id_column, columns=columns, spacing=spacing)
        if suffix in _IMAGE_SUFFIXES or path.is_dir():
            ps = label_centroids(read_image(path), spacing)
            ps.source = str(path)
            return ps
        raise ValueError(f"{name}: cannot tell the kind of {path}: expected a table (.csv, .tsv, .parquet) "
                         "or a label image (.npy, .tif, .zarr)")
    arr = np.asarray(x) if not hasattr(x, "shape") else x
    if getattr(arr, "ndim", 0) == 3 or (getattr(arr, "ndim", 0) == 2 and np.issubdtype(arr.dtype, np.integer)
                                         and arr.shape[1] not in (2, 3)):
        return label_centroids(arr, spacing)
    pts = as_points(arr, name)
    s = as_spacing(spacing, pts.shape[1])
    if s is not None:
        pts = pts * s
    return PointSet(pts, np.arange(len(pts)), f"array {describe(arr)}")
