"""OME-NGFF images and label images of any version xmodal meets, as a viewer needs them.

- NGFF 0.5 (zarr v3): the metadata is the group attribute ``"ome"`` (``zarr.json``);
- NGFF 0.4 and older (zarr v2, as ome-zarr-py and bioformats2raw write): ``multiscales``,
  ``labels``, ``image-label``, ``omero`` are top-level keys of the group's ``.zattrs``, the version
  is in each multiscale entry; 0.3 names the axes by strings, 0.1 / 0.2 not at all (5D t, c, z, y, x);
- bioformats2raw's layout: a root group ``{"bioformats2raw.layout": 3}`` whose images (series) are
  the groups ``0``, ``1``, ... (listed by ``OME/.zattrs`` ``series`` when present).

:func:`ngff_metadata` gives either version's metadata in the shape of 0.5's ``"ome"`` object, read
from the metadata file alone (no zarr import, nothing opened); :func:`read_ngff_image` gives the
resolution levels (opened lazily) with the axes, units and the full resolution's voxel size and
offset (``coordinateTransformations``: physical = index x scale + translation, in the axes' units).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._ngff_check import first_multiscale

#: The NGFF keys that 0.4 and older put at the top level of a zarr v2 group's attributes.
_NGFF_KEYS = ("multiscales", "labels", "image-label", "omero", "plate", "well", "bioformats2raw.layout")

_DEFAULT_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _group_attributes(path: Path) -> dict | None:
    """The attributes of the zarr group at ``path`` from its metadata file (zarr v3 ``zarr.json``,
    zarr v2 ``.zattrs``), or None when ``path`` holds no group (an array, no zarr, unreadable)."""
    v3 = path / "zarr.json"
    try:
        if v3.is_file():
            doc = json.loads(v3.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("node_type") != "group":
                return None
            attrs = doc.get("attributes") or {}
        elif (path / ".zattrs").is_file() and not (path / ".zarray").is_file():
            attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, ValueError):
        return None
    return attrs if isinstance(attrs, dict) else None


def ngff_metadata(path) -> dict | None:
    """The NGFF metadata of the zarr group at ``path`` in the shape of NGFF 0.5's ``"ome"`` object
    (keys such as ``multiscales``, ``labels``, ``image-label``, ``omero``, ``bioformats2raw.layout``,
    and ``version``): 0.5's ``"ome"`` attribute as it is, or the top-level NGFF keys of an older
    version's attributes with ``version`` taken from its first multiscale (else its image-label,
    else "0.4"). None when the group declares no NGFF metadata or ``path`` is no zarr group."""
    p = Path(os.fspath(path))
    attrs = _group_attributes(p) if p.is_dir() else None
    if not attrs:
        return None
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome:
        return ome
    meta = {k: attrs[k] for k in _NGFF_KEYS if k in attrs}
    if not meta:
        return None
    ms = meta.get("multiscales")
    first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
    label = meta.get("image-label") if isinstance(meta.get("image-label"), dict) else {}
    meta["version"] = str(first.get("version") or label.get("version") or "0.4")
    return meta


def ngff_series(path) -> list[Path]:
    """The image groups (series) of a bioformats2raw layout at ``path``: those that ``OME/.zattrs``
    lists under ``series``, else ``0``, ``1``, ... while they exist; only groups with NGFF
    ``multiscales``. Empty when ``path`` is no such layout."""
    p = Path(os.fspath(path))
    meta = ngff_metadata(p) or {}
    if "bioformats2raw.layout" not in meta:
        return []
    listed = (_group_attributes(p / "OME") or {}).get("series")
    if isinstance(listed, list) and listed:
        names = [str(s) for s in listed]
    else:
        names = []
        while (p / str(len(names))).is_dir():
            names.append(str(len(names)))
    return [p / n for n in names if "multiscales" in (ngff_metadata(p / n) or {})]


@dataclass
class NgffImage:
    """One NGFF image or label image (see the module docstring).

    Attributes
    ----------
    levels : list of zarr arrays, the resolution levels, full resolution first (opened lazily; only
        the leading levels that shrink or keep every axis, so napari can show them as a pyramid)
    axes : axis names, in array order
    types : axis types ("space", "channel", "time" or None when neither declared nor guessable)
    units : the unit each axis names (e.g. "micrometer", "nanometer"), None where none
    scale, translation : per axis, the full resolution level's voxel size and offset (physical =
        index x scale + translation, in the axis' unit): the dataset's coordinate transformations
        then the multiscale's, composed
    is_label : whether the group is a label image (NGFF ``image-label`` metadata)
    channel_names : the ``omero`` channel labels, when given for every channel
    """

    levels: list
    axes: list[str]
    types: list[str | None]
    units: list[str | None]
    scale: list[float]
    translation: list[float]
    is_label: bool = False
    channel_names: list[str] = field(default_factory=list)

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel axis (type "channel", or named "c" without a type), else None."""
        return next((i for i, t in enumerate(self.types) if t == "channel"), None)

    @property
    def spatial_unit(self) -> str | None:
        """The unit all spatial axes share, or None (none named, or different ones)."""
        units = {u for u, t in zip(self.units, self.types) if t == "space"}
        return units.pop() if len(units) == 1 else None


def _transform(transforms, scale: list[float], translation: list[float]):
    """``scale`` and ``translation`` after the NGFF coordinate transformations ``transforms``
    (applied in order: a scale multiplies both, a translation adds)."""
    n = len(scale)
    for t in transforms or []:
        if not isinstance(t, dict):
            continue
        if t.get("type") == "scale" and len(t.get("scale") or []) == n:
            s = [float(v) for v in t["scale"]]
            scale = [a * b for a, b in zip(scale, s)]
            translation = [a * b for a, b in zip(translation, s)]
        elif t.get("type") == "translation" and len(t.get("translation") or []) == n:
            translation = [a + float(b) for a, b in zip(translation, t["translation"])]
    return scale, translation


def _axes(ms: dict, ndim: int) -> tuple[list[str], list[str | None], list[str | None]]:
    """Names, types and units of a multiscale's axes (0.4 / 0.5 dicts, 0.3 strings, or none:
    the last ``ndim`` of t, c, z, y, x as NGFF 0.1 / 0.2 fix them)."""
    raw = ms.get("axes") or list("tczyx"[-ndim:])
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in raw]
    names = [str(a.get("name")) for a in axes]
    types = [a.get("type") or _DEFAULT_TYPES.get(n) for a, n in zip(axes, names)]
    units = [a.get("unit") if isinstance(a.get("unit"), str) else None for a in axes]
    return names, types, units


def read_ngff_image(path, meta: dict | None = None) -> NgffImage:
    """The first multiscale image of the NGFF group at ``path`` (``meta``: its
    :func:`ngff_metadata`, read when not given). ValueError naming the path when the group has no
    ``multiscales`` or its axes do not match the arrays."""
    from ._zarr import open_array

    p = Path(os.fspath(path))
    meta = ngff_metadata(p) if meta is None else meta
    ms = first_multiscale(meta, f"path: {os.fspath(p)!r}")
    if ms is None:
        raise ValueError(f"path: expected an OME-Zarr image group with NGFF multiscales metadata, got {p}")
    datasets = ms["datasets"]
    levels = [open_array(str(p / datasets[0]["path"]))]
    for ds in datasets[1:]:
        arr = open_array(str(p / ds["path"]))
        if arr.ndim != levels[-1].ndim or any(a > b for a, b in zip(arr.shape, levels[-1].shape)):
            break
        levels.append(arr)
    ndim = levels[0].ndim
    names, types, units = _axes(ms, ndim)
    if len(names) != ndim:
        raise ValueError(f"path: the multiscales of {p} name {len(names)} axes {names}; its array has {ndim}")
    scale, translation = _transform(datasets[0].get("coordinateTransformations"), [1.0] * ndim, [0.0] * ndim)
    scale, translation = _transform(ms.get("coordinateTransformations"), scale, translation)
    channels = [c.get("label") for c in ((meta.get("omero") or {}).get("channels") or []) if isinstance(c, dict)]
    image = NgffImage(levels, names, types, units, scale, translation, is_label="image-label" in meta)
    c = image.channel_axis
    if c is not None and len(channels) == levels[0].shape[c] and all(isinstance(n, str) and n for n in channels):
        image.channel_names = channels
    return image
