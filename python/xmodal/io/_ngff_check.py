"""The check of the NGFF ``multiscales`` metadata that xmodal reads (kept apart from the readers so that
:mod:`xmodal.io._zarr` and :mod:`xmodal.io._ngff` can both use it without importing each other)."""

from __future__ import annotations

import math


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_numbers(value, what: str, where: str) -> None:
    ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                         for v in value)
    if not ok:
        raise ValueError(f"{where}: OME-Zarr metadata: {what} must be a list of finite numbers, got {_short(value)}")


def first_multiscale(meta: dict | None, where: str) -> dict | None:
    """The first ``multiscales`` entry of NGFF metadata ``meta`` (as :func:`ngff_metadata` gives it),
    checked for the fields xmodal reads: a non-empty ``datasets`` list of objects with a ``path``
    string, ``axes`` as names or objects with a ``name`` string (and a string ``unit``, if any), and
    ``coordinateTransformations`` lists whose ``scale`` / ``translation`` are finite numbers.
    None when ``meta`` has no ``multiscales``; ValueError starting with ``where`` (e.g.
    ``"source: 'img.zarr'"``) naming the field when the metadata is damaged."""
    ms = (meta or {}).get("multiscales") if isinstance(meta, dict) else None
    if ms is None:
        return None
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise ValueError(f"{where}: OME-Zarr metadata: 'multiscales' must be a non-empty list of objects, "
                         f"got {_short(ms)}")
    m = ms[0]
    ds = m.get("datasets")
    if not isinstance(ds, list) or not ds or not all(isinstance(d, dict) and isinstance(d.get("path"), str)
                                                     and d["path"] for d in ds):
        raise ValueError(f"{where}: OME-Zarr metadata: 'datasets' must be a non-empty list of objects with a "
                         f"'path' string, got {_short(ds)}")
    axes = m.get("axes")
    if axes is not None:
        good = isinstance(axes, list) and all(
            isinstance(a, str) or (isinstance(a, dict) and isinstance(a.get("name"), str)
                                   and (a.get("unit") is None or isinstance(a.get("unit"), str))) for a in axes)
        if not good:
            raise ValueError(f"{where}: OME-Zarr metadata: 'axes' must be a list of names or of objects with a "
                             f"'name' string (and a 'unit' string, if any), got {_short(axes)}")
    for owner, label in [(m, "multiscales[0]")] + [(d, f"datasets[{i}]") for i, d in enumerate(ds)]:
        ct = owner.get("coordinateTransformations")
        if ct is None:
            continue
        if not isinstance(ct, list) or not all(isinstance(t, dict) for t in ct):
            raise ValueError(f"{where}: OME-Zarr metadata: {label} 'coordinateTransformations' must be a list of "
                             f"objects, got {_short(ct)}")
        for t in ct:
            kind = t.get("type")
            if kind in ("scale", "translation") and "path" not in t:
                _check_numbers(t.get(kind), f"{label} {kind}", where)
    return m
