"""napari reader of xmodal outputs.

- a registration folder written by :func:`xmodal.pipelines.register_cells` (``out=``): it holds
  ``matches.csv``, ``cells.csv`` (fixed cells) and ``moving.csv`` (moving cells before and after
  registration, 95 % prediction regions when computed) -> the layers of
  :func:`xmodal.napari._layers.registration_layers`, in the units its ``provenance.json``
  records (:func:`registration_units`; the *Register cells* widget records the fixed layer's),
  napari's default where none are recorded;
- an OME-Zarr image, NGFF 0.5 (zarr v3, as xmodal writes: ``segmentation.ome.zarr`` of
  :func:`xmodal.pipelines.segment`, ``*.ome.zarr`` of ``predict_tiled``) or NGFF 0.4 (zarr v2, as
  ome-zarr-py and bioformats2raw write), or a segmentation output folder holding one: the image as
  an image layer (a channel axis such as the affinities' becomes napari's channel axis) and every
  label image of its ``labels`` group as a labels layer, with the voxel size and the offset of the
  NGFF ``coordinateTransformations`` (``scale``, then ``translation`` when present; physical
  units, the image's: labels in another length unit are converted) as the layer scale and
  translate, and the axes' units as the layers' ``units`` (napari 0.6 and later). A label image
  group opened alone gives a labels layer; a bioformats2raw layout gives each of its series.
  Arrays are opened lazily (zarr), not loaded; an image of several resolution levels is given as
  napari's multiscale data (full resolution first).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

import numpy as np

from ._layers import MatchTable, registration_layers


def get_reader(path):
    """npe2 reader hook: a function reading ``path`` when it is an xmodal output, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(os.fspath(path))
    if is_registration_folder(p) or _ome_zarr_root(p) is not None:
        return read_xmodal
    return None


def read_xmodal(path) -> list[tuple]:
    """Layer data tuples of an xmodal output (see the module docstring)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(os.fspath(path))
    if is_registration_folder(p):
        table = read_registration_folder(p)
        return registration_layers(table, name=p.name, units=registration_units(p, table.fixed.shape[1]))
    root = _ome_zarr_root(p)
    if root is None:
        raise ValueError(f"path: expected an xmodal registration folder or OME-Zarr output, got {p}")
    return read_ome_zarr(root)


def is_registration_folder(path: Path) -> bool:
    return path.is_dir() and (path / "matches.csv").is_file() and (path / "cells.csv").is_file()


def _axes_columns(table: dict, prefix: str) -> list[str]:
    cols = [f"{prefix}_{a}" for a in ("z", "y", "x") if f"{prefix}_{a}" in table]
    if len(cols) < 2:
        raise ValueError(f"expected columns {prefix}_z, {prefix}_y, {prefix}_x (or {prefix}_y, {prefix}_x), "
                         f"got {list(table)}")
    return cols


def read_registration_folder(path) -> MatchTable:
    """The :class:`MatchTable` of a ``register_cells`` output folder (physical units).

    Needs ``moving.csv`` (written since xmodal registrations record the moving cells); a folder
    without it is refused with a message saying so.
    """
    from ..io import read_table

    path = Path(path)
    if not (path / "moving.csv").is_file():
        raise ValueError(f"path: {path} has no moving.csv (written by register_cells of this xmodal version); "
                         "run the registration again to view it")
    cells, moving = (read_table(path / f) for f in ("cells.csv", "moving.csv"))
    matches = _read_matches(path / "matches.csv")
    fixed = np.stack([cells[c] for c in _axes_columns(cells, "fixed")], axis=1)
    mov = np.stack([moving[c] for c in _axes_columns(moving, "moving")], axis=1)
    moved = np.stack([moving[c] for c in _axes_columns(moving, "moved")], axis=1)
    regions = _regions(moving, fixed.shape[1])
    fi = np.asarray(matches["fixed_index"], dtype=np.int64)
    mi = np.asarray(matches["moving_index"], dtype=np.int64)
    conf = matches.get("confidence")
    fixed_ids, moving_ids = _cell_ids(cells, "fixed_id", len(fixed)), _cell_ids(moving, "moving_id", len(mov))
    if "fixed_id" in matches and len(fi):
        fixed_ids[fi] = _ids(matches["fixed_id"], getattr(matches, "text", {}).get("fixed_id"))
    if "moving_id" in matches and len(mi):
        moving_ids[mi] = _ids(matches["moving_id"], getattr(matches, "text", {}).get("moving_id"))
    status = matches.get("status")
    return MatchTable(fixed, mov, moved, fi, mi, conf, fixed_ids, moving_ids,
                      status=None if status is None else np.asarray(status, dtype=object), regions=regions,
                      source=str(path))


def registration_units(path, d: int) -> tuple[str, ...] | None:
    """The units of a registration folder's coordinates, as its ``provenance.json`` records them:
    ``units`` (written by :func:`write_registration_units`), else ``parameters.units``; one NGFF
    length unit for every axis or a list of ``d`` (common spellings such as "um" accepted).

    Returns
    -------
    tuple of str or None
        ``d`` NGFF unit names (e.g. "micrometer"); None where none are recorded, what is recorded
        is not ``d`` length units, or this napari's layers take no units (before 0.6).
    """
    if not _napari_takes_units():
        return None
    try:
        prov = json.loads((Path(path) / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(prov, dict):
        return None
    params = prov.get("parameters") if isinstance(prov.get("parameters"), dict) else {}
    return _length_units(prov.get("units", params.get("units")), d)


def write_registration_units(folder, units) -> bool:
    """Record ``units`` (one per axis: napari's ``layer.units`` or NGFF names) as the ``units`` of
    the registration folder's ``provenance.json`` (rewritten atomically), for
    :func:`registration_units`. Returns False, writing nothing, when they are not all length units
    (napari's default "pixel", a time) or the folder has no provenance.json."""
    from ..io import write_json

    units = [str(u) for u in units]
    names = _length_units(units, len(units))
    path = Path(folder) / "provenance.json"
    if names is None or not path.is_file():
        return False
    prov = json.loads(path.read_text(encoding="utf-8"))
    prov["units"] = list(names)
    write_json(path, prov)
    return True


def _length_units(units, d: int) -> tuple[str, ...] | None:
    """``units`` (one for all ``d`` axes or a list of ``d``) as NGFF length unit names, else None."""
    from ..io._units import ngff_unit

    if isinstance(units, str):
        units = [units] * d
    if not isinstance(units, (list, tuple)) or len(units) != d or not all(isinstance(u, str) for u in units):
        return None
    try:
        return tuple(ngff_unit(u) for u in units)
    except ValueError:
        return None


def _read_matches(path: Path) -> dict:
    """The columns of matches.csv; a header-only table (a registration without pairs, as
    register_cells writes it) gives empty columns instead of read_table's error."""
    from ..io import read_table

    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = fh.readline()
        if any(line.strip() for line in fh):
            return read_table(path)
    names = [n.strip() for n in header.strip().split(",")]
    if not all(names):
        raise ValueError(f"table {path}: expected a header line of column names, got {header!r}")
    return {n: np.zeros(0) for n in names}


def _cell_ids(table: dict, column: str, n: int) -> np.ndarray:
    """Ids of every cell: the table's id column when it has one, else row numbers (the matched
    cells get matches.csv's ids afterwards)."""
    if column not in table:
        return np.arange(n).astype(object)
    return _ids(table[column], getattr(table, "text", {}).get(column)).astype(object)


def _ids(column: np.ndarray, text=None) -> np.ndarray:
    """An id column as read from CSV: as written when numbers would change it (``text``, e.g.
    ``00123``, from :class:`xmodal.io.Table`), else whole numbers as ints (the reader gives floats)."""
    if text is not None:
        return np.asarray(text, dtype=object)
    col = np.asarray(column)
    if col.dtype.kind == "f" and np.all(np.isfinite(col)) and np.array_equal(col, np.round(col)):
        return col.astype(np.int64)
    return col


def _regions(moving: dict, d: int):
    axes = ("z", "y", "x")[-d:]
    if f"region_center_{axes[0]}" not in moving:
        return None
    centres = np.stack([moving[f"region_center_{a}"] for a in axes], axis=1)
    shapes = np.zeros((len(centres), d, d))
    for i in range(d):
        for j in range(i, d):
            shapes[:, i, j] = shapes[:, j, i] = moving[f"region_{axes[i]}{axes[j]}"]
    return centres, shapes


# ----------------------------------------------------------------------------------- OME-Zarr

def _ome(group_path: Path) -> dict | None:
    """The NGFF metadata of a zarr group, 0.5 or 0.4 and older (:func:`xmodal.io._ngff.ngff_metadata`)."""
    from ..io._ngff import ngff_metadata

    return ngff_metadata(group_path)


def _ome_zarr_root(path: Path) -> Path | None:
    """The OME-Zarr image or label image group at ``path`` (NGFF 0.4 or 0.5), a bioformats2raw
    layout's root, or the image inside a segmentation output folder."""
    if not path.is_dir():
        return None
    ome = _ome(path) or {}
    if "multiscales" in ome or "bioformats2raw.layout" in ome:
        return path
    inner = path / "segmentation.ome.zarr"
    if (path / "provenance.json").is_file() and inner.is_dir() and (_ome(inner) or {}).get("multiscales"):
        return inner
    return None


@functools.lru_cache(maxsize=1)
def _napari_takes_units() -> bool:
    """Whether this napari's layers take ``units`` (napari 0.6 and later)."""
    try:
        from napari.layers import Image
    except ImportError:
        return False
    return "units" in inspect.signature(Image.__init__).parameters


def _layer(image, name: str, kind: str, unit: str | None) -> tuple:
    """The napari layer data tuple of an :class:`xmodal.io._ngff.NgffImage`: every resolution
    level (a pyramid when there are several), the scale and translate of the full resolution with
    the spatial axes converted into ``unit`` (the image's, so that its labels overlay it), a
    channel axis as napari's channel axis (images only; its layers hidden beyond 3 channels)."""
    from ..io._units import LENGTH_UNITS, TIME_UNITS, convert_length

    scale, translate, units = list(image.scale), list(image.translation), list(image.units)
    for i, t in enumerate(image.types):
        if t == "space" and unit is not None and units[i] in LENGTH_UNITS and unit in LENGTH_UNITS:
            scale[i], translate[i] = convert_length([scale[i], translate[i]], units[i], unit)
            units[i] = unit
    c = image.channel_axis if kind == "image" else None
    keep = [i for i in range(len(scale)) if i != c]
    data = image.levels if len(image.levels) > 1 else image.levels[0]
    kwargs: dict = {"name": name, "scale": [scale[i] for i in keep], "translate": [translate[i] for i in keep]}
    if c is not None:
        n = image.levels[0].shape[c]
        labels = image.channel_names or [str(i) for i in range(n)]
        kwargs.update(channel_axis=c, name=[f"{name}[{label}]" for label in labels], visible=n <= 3)
    known = set(LENGTH_UNITS) | set(TIME_UNITS)
    if _napari_takes_units() and any(units[i] for i in keep) and all(units[i] in known or units[i] is None
                                                                     for i in keep):
        kwargs["units"] = tuple(units[i] or "pixel" for i in keep)
    return data, kwargs, kind


def read_ome_zarr(path, name: str | None = None) -> list[tuple]:
    """The layer data of an OME-Zarr group (NGFF 0.4 or 0.5): an image and every label image of
    its ``labels`` group, or a label image alone, or the images of a bioformats2raw layout (each
    series with its labels). ``name`` defaults to the folder's name without ``.ome.zarr``."""
    from ..io._ngff import ngff_series, read_ngff_image

    path = Path(path)
    meta = _ome(path) or {}
    name = name or path.name.removesuffix(".ome.zarr").removesuffix(".zarr") or path.name
    if "multiscales" not in meta and "bioformats2raw.layout" in meta:
        series = ngff_series(path)
        if not series:
            raise ValueError(f"path: the bioformats2raw layout {path} holds no NGFF image")
        return [layer for s in series for layer in read_ome_zarr(s, name=f"{name}/{s.name}")]
    image = read_ngff_image(path, meta)
    unit = image.spatial_unit
    if image.is_label:
        return [_layer(image, name, "labels", unit)]
    layers = [_layer(image, name, "image", unit)]
    labels_group = path / "labels"
    for label_name in ((_ome(labels_group) or {}).get("labels", []) if labels_group.is_dir() else []):
        lp = labels_group / str(label_name)
        meta = _ome(lp)
        if not meta or "multiscales" not in meta:
            continue
        layers.append(_layer(read_ngff_image(lp, meta), str(label_name), "labels", unit))
    return layers
