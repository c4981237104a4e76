"""The voxel size a TIFF file declares: OME-TIFF ``PhysicalSizeX/Y/Z`` (with their units), else the
ImageJ metadata (``XResolution`` / ``YResolution`` in pixels per unit, ``spacing`` for z, ``unit``).
A plain TIFF's resolution tags (often a default 72 dpi) are not taken as a voxel size."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

#: Unit names of OME-TIFF and ImageJ as the NGFF (UDUNITS-2) names xmodal writes.
_UNITS = {
    "nm": "nanometer", "nanometer": "nanometer", "nanometers": "nanometer",
    "um": "micrometer", "\u00b5m": "micrometer", "\u03bcm": "micrometer", "\\u00b5m": "micrometer",
    "micron": "micrometer", "microns": "micrometer", "micrometer": "micrometer", "micrometers": "micrometer",
    "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter", "centimeter": "centimeter",
    "m": "meter", "meter": "meter", "pm": "picometer", "å": "angstrom", "angstrom": "angstrom",
}

_METERS = {"picometer": 1e-12, "angstrom": 1e-10, "nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3,
           "centimeter": 1e-2, "meter": 1.0}


def unit_name(unit) -> str | None:
    """``unit`` (an OME-TIFF or ImageJ unit such as "µm", "micron", "nm") as its NGFF name
    ("micrometer", "nanometer", ...); None for no unit, "pixel" or a unit it does not know."""
    if not isinstance(unit, str):
        return None
    return _UNITS.get(unit.strip().lower())


def _positive(values) -> bool:
    return all(isinstance(v, float) and v > 0 and math.isfinite(v) for v in values)


def _ome_sizes(xml: str) -> dict:
    """``{axis: (size, unit)}`` of the first ``Pixels`` element of OME-XML (unit default µm)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    out = {}
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}") if pixels is not None else None
        if size is not None:
            try:
                out[axis] = (float(size), unit_name(pixels.get(f"PhysicalSize{axis}Unit", "um")))
            except ValueError:
                continue
    return out


def _imagej_sizes(tif) -> dict:
    """``{axis: (size, unit)}`` from ImageJ metadata: x / y from the resolution tags (pixels per
    unit), z from ``spacing``; none when ImageJ names no unit (its default, "pixel")."""
    meta = tif.imagej_metadata or {}
    unit = unit_name(meta.get("unit"))
    if unit is None:
        return {}
    out = {}
    tags = tif.pages[0].tags
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        value = tags.get(tag)
        try:
            num, den = value.value
            out[axis] = (float(den) / float(num), unit)
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            continue
    if "spacing" in meta:
        try:
            out["Z"] = (float(meta["spacing"]), unit)
        except (TypeError, ValueError):
            pass
    return out


def tiff_scale(path, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size and unit the TIFF file at ``path`` declares for its ``ndim`` spatial axes (z, y, x
    or y, x): ``((dz, dy, dx), "micrometer")``, from OME-TIFF ``PhysicalSize*`` or ImageJ metadata
    (a missing z size counts 1, as ImageJ does). Sizes in different units are converted to the x
    axis's; the unit is None when an axis names none or one this module does not know.
    ``(None, None)`` when tifffile is not installed, the file is no TIFF, its first series has
    another number of spatial axes (e.g. an ImageJ channel stack, axes CYX), or it declares
    nothing (or a size that is not positive and finite)."""
    try:
        import tifffile
    except ImportError:
        return None, None
    try:
        with tifffile.TiffFile(os.fspath(path)) as tif:
            axes = tif.series[0].axes if tif.series else ""
            if tif.is_ome and tif.ome_metadata:
                sizes = _ome_sizes(tif.ome_metadata)
            elif tif.is_imagej:
                sizes = _imagej_sizes(tif)
            else:
                sizes = {}
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return None, None
    spatial = [a for a in axes if a in "ZYX"]
    if not sizes or len(spatial) != ndim or not ({"Y", "X"} & set(sizes)):
        return None, None
    scale = tuple(sizes.get(a, (1.0, None))[0] for a in spatial)
    if not _positive(scale):
        return None, None
    units = {sizes[a][1] for a in spatial if a in sizes}
    unit = units.pop() if len(units) == 1 else None
    if len(units) > 1 and None not in units:  # OME-TIFF axes in different units: all in the x axis's
        unit = sizes[spatial[-1]][1] if spatial[-1] in sizes else sorted(units)[0]
        scale = tuple(float(f"{sizes[a][0] * _METERS[sizes[a][1]] / _METERS[unit]:.12g}") if a in sizes else 1.0
                      for a in spatial)
    if all(s == 1.0 for s in scale) and unit is None:
        return None, None
    return scale, unit
