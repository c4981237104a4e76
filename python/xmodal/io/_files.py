"""Files in and out: tables (CSV / TSV / Parquet), images (.npy, TIFF, zarr / OME-Zarr), and the
JSON / CSV outputs with their provenance record, written atomically.

Readers name the file in every error (a missing path, a table that is not a table, a column that is
not numeric with its line, a pickled .npy file, which is never unpickled). Writers go through
:func:`xmodal.io.atomic_write_text`, so a reader never sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ._zarr import atomic_write_text, open_array, provenance_attributes

TABLE_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".parquet", ".pq"})
IMAGE_SUFFIXES = frozenset({".npy", ".tif", ".tiff", ".zarr"})


# ----------------------------------------------------------------------------------- readers

class Table(dict):
    """The columns of a table read by :func:`read_table` (a dict of column name -> array), with
    ``text``: for the CSV / TSV columns of whole numbers written without a decimal point whose
    text the numbers would not give back (``00123``, ``1e3``, ``+5``), that text (stripped), so
    that ids are kept as written (:func:`xmodal.io._points.points_of_table`)."""

    def __init__(self, columns=(), text: dict | None = None):
        super().__init__(columns)
        self.text: dict[str, np.ndarray] = dict(text or {})


def _altered_text(col: list[str], values: np.ndarray) -> np.ndarray | None:
    """The stripped text of a column of whole numbers when an entry written without a decimal point
    is not ``str(int(value))`` (leading zeros, an exponent, a sign, beyond 2**53), else None.
    Decimals (``7.0``, ``3.5000``) are numbers: their text is not kept."""
    if not values.size or not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        return None
    text = [v.strip() for v in col]
    if all("." in t or t == str(int(v)) for t, v in zip(text, values.tolist())):
        return None
    return np.array(text)


def _delimiter(header_line: str, suffix: str) -> str:
    """The delimiter of a text table: a tab for .tsv, else the most frequent of tab, comma and
    semicolon in the header line outside quoted names (a comma when it holds none)."""
    if suffix == ".tsv":
        return "\t"
    bare = re.sub(r'"[^"]*"', "", header_line)
    counts = {d: bare.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _text_rows(path: Path, suffix: str) -> list[list[str]]:
    """The rows of a CSV / TSV file (UTF-8, a byte order mark dropped; lines of blanks skipped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            text = fh.read()
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text.split("\n", 1)[0], suffix)))
    except UnicodeDecodeError as exc:
        raise ValueError(f"table {path}: not a text table (CSV/TSV) in UTF-8: {exc.reason} at byte {exc.start}") from None
    except csv.Error as exc:
        raise ValueError(f"table {path}: not a valid CSV/TSV table: {exc}") from None
    return [r for r in rows if any(v.strip() for v in r)] if rows else rows


def _check_header(path: Path, header: list[str], body: list[list[str]]) -> list[str]:
    """The stripped column names; ValueError naming the file for a name given twice or a row with
    more (non-empty) values than the header has names."""
    names = [n.strip() for n in header]
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ValueError(f"table {path}: column {sorted(seen)[0]!r} is named more than once in the header {names}; "
                         "column names must be unique")
    for i, r in enumerate(body):
        if len(r) > len(names) and any(v.strip() for v in r[len(names):]):
            raise ValueError(f"table {path}: line {i + 2} holds {len(r)} values, the header names {len(names)} "
                             f"columns ({names}); a decimal comma or an unquoted delimiter in a value?")
    return names


def read_table(path: str | os.PathLike) -> Table:
    """Read a CSV / TSV / Parquet table into a dict of column arrays (numeric where possible).

    Text tables are UTF-8 (a byte order mark, as Excel writes, is dropped), delimited by tabs
    (.tsv), or by commas, tabs or semicolons as the header line shows; fields may be quoted; lines
    of blanks are skipped. Column names are stripped and must be unique; a row may not hold more
    values than the header names (missing trailing values read as empty).
    A column whose every entry parses as a number is float64; any other column keeps its strings
    (see :func:`numeric_column` for a clear error naming the file, column and line). The result is
    a :class:`Table`: its ``text`` keeps the text of whole-number columns that the numbers would
    change (e.g. zero-padded ids ``00123``).
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
        return Table({name: np.asarray(table.column(name).to_numpy()) for name in table.column_names})
    rows = _text_rows(path, suffix)
    if not rows:
        raise ValueError(f"table {path}: the file is empty")
    header, body = rows[0], rows[1:]
    if not body:
        raise ValueError(f"table {path}: no rows below the header {header}")
    out = Table()
    for j, name in enumerate(_check_header(path, header, body)):
        col = [r[j] if j < len(r) else "" for r in body]
        try:
            out[name] = np.array([float(v) for v in col])
        except ValueError:
            out[name] = np.array(col)
            continue
        text = _altered_text(col, out[name])
        if text is not None:
            out.text[name] = text
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


def read_image(path: str | os.PathLike):
    """Read a label or intensity image from .npy, .tif/.tiff or a zarr array (lazily for zarr).

    Returns a numpy array (memory-mapped for .npy) or a zarr array (a zarr array path, or the first
    scale of an OME-Zarr image / labels group). Errors name the file: a missing path, a table or
    other non-image file, a pickled (object) .npy file (never unpickled), or a folder that is not a
    zarr array / OME-Zarr image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        raise ValueError(f"image {path}: a table ({suffix}), expected an image (.npy, .tif/.tiff, .zarr or an "
                         "OME-Zarr image)")
    if suffix == ".npy" and path.is_file():
        return _read_npy(path)
    if suffix in {".tif", ".tiff"} and path.is_file():
        from .._optional import optional_import

        tifffile = optional_import("tifffile", purpose="reading TIFF images")
        try:
            image = tifffile.imread(path)
        except (ValueError, tifffile.TiffFileError) as exc:
            raise ValueError(f"image {path}: not a readable TIFF image ({exc})") from None
        if image.size == 0:  # tifffile logs a damaged first page and returns an empty array
            raise ValueError(f"image {path}: not a readable TIFF image (no image data: a damaged or truncated file)")
        return image
    if not path.is_dir():
        raise ValueError(f"image {path}: expected a .npy, .tif/.tiff file or a zarr / OME-Zarr folder")
    try:
        return open_array(path)  # a zarr array, or the first scale of an OME-Zarr image / labels group
    except (ValueError, KeyError, TypeError, OSError) as exc:
        if isinstance(exc, PermissionError):
            raise
        msg = " ".join(str(exc).split())
        raise ValueError(f"image {path}: not a zarr array or an OME-Zarr image ({msg})") from None


# ----------------------------------------------------------------------------------- writers

def jsonable(x: Any):
    """``x`` with numpy arrays / scalars and paths replaced by plain Python values (for JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (numpy values converted, see :func:`jsonable`), atomically."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_csv(path, header: Sequence[str], columns: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV table (one header line, then the rows of the equal-length ``columns``), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    cols = [np.asarray(c) for c in columns]
    lengths = [len(c) if c.ndim else -1 for c in cols]
    if len(cols) != len(header) or len(set(lengths)) > 1 or -1 in lengths:
        raise ValueError(f"columns: expected {len(header)} sequences of equal length (one per header name "
                         f"{list(header)}), got {len(cols)} of lengths {lengths}")
    for row in zip(*cols):
        w.writerow([v.item() if isinstance(v, np.generic) else v for v in row])
    return atomic_write_text(path, buf.getvalue())


def provenance_record(step: str, parameters: dict, inputs: dict | None = None) -> dict:
    """What produced an output folder (its ``provenance.json``): the record of
    :func:`provenance_attributes` (xmodal version, function, parameters, inputs, time) plus the
    step name, Python and platform. ``inputs`` maps names to paths or arrays (see
    :func:`xmodal.io._provenance.input_record`: paths absolute too, files with size and SHA-256)."""
    record = jsonable(provenance_attributes(step, jsonable(parameters), inputs)["xmodal"])
    return {"xmodal": record.pop("version"), "step": step, **record,
            "python": sys.version.split()[0], "platform": platform.platform()}
