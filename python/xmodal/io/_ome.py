"""The voxel size an OME-Zarr image declares (NGFF 0.4 and 0.5 ``multiscales``) or a TIFF file does
(OME-TIFF or ImageJ metadata, :func:`xmodal.io._tiff.tiff_scale`), so that a path given without
``spacing`` is still measured in its own physical units (:func:`declared_scale`). NGFF images and
label images as a viewer needs them (levels, axes, units) are read by :mod:`xmodal.io._ngff`."""

from __future__ import annotations

import os
from typing import Any

_SPATIAL = ("z", "y", "x")


def _multiscale(path) -> dict | None:
    """The first ``multiscales`` entry of the zarr group at ``path`` (NGFF 0.5 under ``"ome"``,
    0.4 at the top level), or None when ``path`` is no OME-Zarr image group; ValueError naming the
    path and the field when its metadata is damaged (:func:`xmodal.io._ngff.first_multiscale`)."""
    import zarr

    from ._ngff_check import first_multiscale

    try:
        node = zarr.open(os.fspath(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store: no declared voxel size
        return None
    if isinstance(node, zarr.Array):
        return None
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"] else attrs
    return first_multiscale(ome, f"path: {os.fspath(path)!r}")


def _scale_of(transforms: Any, n: int):
    """The product of the ``scale`` entries of a list of NGFF coordinate transformations (length n)."""
    out = [1.0] * n
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale") or []) == n:
            out = [a * float(b) for a, b in zip(out, t["scale"])]
    return out


def ome_zarr_scale(path, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size and unit of the spatial axes of the OME-Zarr image at ``path`` (first resolution
    level: its dataset's ``scale`` times the multiscale's), when it has exactly ``ndim`` spatial
    axes: ``((dz, dy, dx), "micrometer")``, the unit as its NGFF name ("um" read as "micrometer");
    the unit is None when the axes name none, different ones or one that is no length unit.
    ``(None, None)`` for anything else (a plain zarr array, a TIFF, metadata without a
    scale, or a scale that is not positive and finite)."""
    ms = _multiscale(path)
    if ms is None or not ms.get("datasets"):
        return None, None
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in ms.get("axes") or []]
    n = len(axes)
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space" or
               (a.get("type") is None and a.get("name") in _SPATIAL)]
    if n == 0 or len(spatial) != ndim:
        return None, None
    ds_scale = _scale_of(ms["datasets"][0].get("coordinateTransformations"), n)
    ms_scale = _scale_of(ms.get("coordinateTransformations"), n)
    scale = tuple(ds_scale[i] * ms_scale[i] for i in spatial)
    if not all(s > 0 and s != float("inf") for s in scale):
        return None, None
    units = {axes[i].get("unit") for i in spatial}
    unit = _known_unit(units.pop()) if len(units) == 1 else None
    if all(s == 1.0 for s in scale) and unit is None:
        return None, None  # nothing declared beyond the default
    return scale, unit


def _known_unit(unit) -> str | None:
    """An axis unit as its NGFF length unit name ("um" -> "micrometer"), None when it is none."""
    from ._units import ngff_unit

    try:
        return ngff_unit(unit)
    except ValueError:
        return None


def declared_scale(path, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size and unit an image path declares for its ``ndim`` spatial axes: an OME-Zarr
    folder's (:func:`ome_zarr_scale`), a .tif / .tiff file's (:func:`xmodal.io._tiff.tiff_scale`);
    ``(None, None)`` for anything else (a .npy file, a plain zarr array, no metadata)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return ome_zarr_scale(p, ndim)
    if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
        from ._tiff import tiff_scale

        return tiff_scale(p, ndim)
    return None, None


def set_ome_zarr_scale(path, spacing, units: str | None = None) -> bool:
    """Write ``spacing`` (one value per spatial axis, in ``units``) into the ``scale`` of the first
    dataset of the OME-Zarr (NGFF 0.5) image group at ``path``; non-spatial axes keep theirs.
    Returns False, changing nothing, when the group has no such metadata or another number of
    spatial axes."""
    import zarr

    if spacing is None or _multiscale(path) is None:
        return False
    group = zarr.open_group(os.fspath(path), mode="r+")
    ome = dict(group.attrs.get("ome") or {})
    if not ome.get("multiscales"):
        return False
    ms = dict(ome["multiscales"][0])
    axes = [dict(a) for a in ms.get("axes") or []]
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"]
    if len(spatial) != len(spacing):
        return False
    ds = dict(ms["datasets"][0])
    scale = [1.0] * len(axes)
    for i, s in zip(spatial, spacing):
        scale[i] = float(s)
        if units:
            axes[i]["unit"] = units
    others = [t for t in ds.get("coordinateTransformations", []) if t.get("type") != "scale"]
    ds["coordinateTransformations"] = [{"type": "scale", "scale": scale}] + others
    ms["axes"], ms["datasets"] = axes, [ds] + list(ms["datasets"][1:])
    ome["multiscales"] = [ms] + list(ome["multiscales"][1:])
    group.attrs["ome"] = ome
    return True
