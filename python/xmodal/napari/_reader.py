"""napari reader of xmodal outputs.

- a registration folder written by :func:`xmodal.pipelines.register_cells` (``out=``): it holds
  ``matches.csv``, ``cells.csv`` (fixed cells) and ``moving.csv`` (moving cells before and after
  registration, 95 % prediction regions when computed) -> the layers of
  :func:`xmodal.napari._layers.registration_layers`;
- an OME-Zarr image written by xmodal (``segmentation.ome.zarr`` of :func:`xmodal.pipelines.segment`,
  ``*.ome.zarr`` of ``predict_tiled``), or a segmentation output folder holding one: the image as an
  image layer (a channel axis such as the affinities' becomes napari's channel axis) and every
  label image of its ``labels`` group as a labels layer, with the voxel size and the offset of the
  NGFF ``coordinateTransformations`` (``scale``, then ``translation`` when present; physical
  units) as the layer scale and translate. Arrays are opened lazily (zarr), not loaded.
"""

from __future__ import annotations

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
        return registration_layers(read_registration_folder(p), name=p.name)
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


def _read_matches(path: Path) -> dict:
    """The columns of matches.csv; a header-only table (a registration without pairs, as
    register_cells writes it) gives empty columns instead of read_table's error."""
    from ..io import read_table

    with open(path, newline="", encoding="utf-8") as fh:
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
    import json

    meta = group_path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError):
        return None
    return attrs.get("ome") or None


def _ome_zarr_root(path: Path) -> Path | None:
    """The OME-Zarr image group at ``path``, or the one inside a segmentation output folder."""
    if not path.is_dir():
        return None
    ome = _ome(path)
    if ome and "multiscales" in ome:
        return path
    inner = path / "segmentation.ome.zarr"
    if (path / "provenance.json").is_file() and inner.is_dir() and (_ome(inner) or {}).get("multiscales"):
        return inner
    return None


def _multiscale(path: Path, ome: dict):
    """(array of the full resolution, axis names, scale per axis, translation per axis) of one NGFF
    image group: the dataset's ``coordinateTransformations`` then the multiscale's, composed
    (physical = index × scale + translation, the units of the axes; napari's scale and translate)."""
    from ..io import open_array

    ms = ome["multiscales"][0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
    ds = ms["datasets"][0]
    scale, translate = np.ones(len(axes)), np.zeros(len(axes))
    for t in ds.get("coordinateTransformations", []) + ms.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            s = np.asarray(t["scale"], dtype=np.float64)
            scale, translate = scale * s, translate * s
        elif t.get("type") == "translation":
            translate = translate + np.asarray(t["translation"], dtype=np.float64)
    return open_array(str(path / ds["path"])), axes, scale.tolist(), translate.tolist()


def read_ome_zarr(path) -> list[tuple]:
    """The image of an xmodal OME-Zarr group and its label images as napari layer data."""
    path = Path(path)
    arr, axes, scale, translate = _multiscale(path, _ome(path))
    name = path.name.removesuffix(".ome.zarr") or path.name
    kwargs: dict = {"name": name}
    if "c" in axes:
        spatial_scale = [s for a, s in zip(axes, scale) if a != "c"]
        spatial_translate = [t for a, t in zip(axes, translate) if a != "c"]
        kwargs.update(channel_axis=axes.index("c"), name=[f"{name}[{i}]" for i in range(arr.shape[axes.index("c")])],
                      scale=spatial_scale, translate=spatial_translate, visible=False)
    else:
        kwargs.update(scale=scale, translate=translate)
    layers = [(arr, kwargs, "image")]
    labels_group = path / "labels"
    for label_name in ((_ome(labels_group) or {}).get("labels", []) if labels_group.is_dir() else []):
        lp = labels_group / label_name
        meta = _ome(lp)
        if not meta:
            continue
        larr, _, lscale, ltranslate = _multiscale(lp, meta)
        layers.append((larr, {"name": label_name, "scale": lscale, "translate": ltranslate}, "labels"))
    return layers
