"""Helpers shared by the widgets: layer pickers, a layer's data-to-world transform, cells of a
layer in world coordinates (physical units), adding layer data tuples to a viewer."""

from __future__ import annotations

import numpy as np


def layer_picker(viewer, label: str, kinds: tuple[str, ...]):
    """A ComboBox listing the viewer's layers of the given kinds ("points", "labels", "image",
    "shapes"), kept up to date as layers come and go."""
    from magicgui.widgets import ComboBox

    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if type(layer).__name__.lower() in kinds]

    box = ComboBox(label=label, choices=choices)
    for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
        ev.connect(lambda *_: box.reset_choices())
    return box


def data_to_world_matrix(layer) -> np.ndarray:
    """The homogeneous (ndim + 1, ndim + 1) matrix of a layer's whole data-to-world transform.

    napari maps data coordinates to world coordinates by ``affine ∘ (translate, rotate, shear,
    scale)``: ``world = affine(rotate · shear · diag(scale) · data + translate)``, all of it affine.
    The matrix is read through napari's public ``layer.data_to_world`` (at the origin and the unit
    vectors of the data frame), so it is whatever napari itself draws. A stand-in object without
    ``data_to_world`` (duck-typed layers in scripts and tests) gives its ``scale`` and
    ``translate`` alone.

    Returns
    -------
    numpy.ndarray
        ``m`` with ``world = m[:-1, :-1] @ data + m[:-1, -1]`` (last row 0 ... 0 1); columns in the
        layer's axis order (e.g. t, z, y, x), world units (the layer's ``units``, unconverted).
    """
    scale = np.asarray(layer.scale, dtype=np.float64)
    n = len(scale)
    m = np.eye(n + 1)
    if not callable(getattr(layer, "data_to_world", None)):
        m[:n, :n] = np.diag(scale)
        m[:n, n] = np.asarray(layer.translate, dtype=np.float64)
        return m
    origin = np.asarray(layer.data_to_world(np.zeros(n)), dtype=np.float64)
    for i, unit in enumerate(np.eye(n)):
        m[:n, i] = np.asarray(layer.data_to_world(unit), dtype=np.float64) - origin
    m[:n, n] = origin
    return m


def apply_matrix(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (n, d) mapped by the homogeneous (d + 1, d + 1) matrix ``m``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, len(m) - 1)
    return pts @ m[:-1, :-1].T + m[:-1, -1]


def layer_transform(layer) -> dict:
    """The keyword arguments (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``; ``units``
    where napari has them) that give a new layer the whole data-to-world transform of ``layer``:
    a layer holding data of ``layer``'s data frame (its labels, its points again) then lies
    exactly on it. Copies, read now: later edits of ``layer`` do not change them. A stand-in
    object without rotate, shear or affine gives only what it has."""
    out = {"scale": tuple(float(v) for v in layer.scale), "translate": tuple(float(v) for v in layer.translate)}
    for key in ("rotate", "shear"):
        value = getattr(layer, key, None)
        if value is not None:
            out[key] = np.array(value, dtype=np.float64)
    affine = getattr(layer, "affine", None)
    if affine is not None:
        out["affine"] = np.array(getattr(affine, "affine_matrix", affine), dtype=np.float64)
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = tuple(units)
    return out


def is_scale_translate(layer) -> bool:
    """Whether ``layer``'s whole data-to-world transform is its ``scale`` and ``translate`` alone
    (no rotation, shear or extra affine; what an OME-NGFF 0.5 ``scale`` + ``translation`` can hold)."""
    n = len(layer.scale)
    plain = np.eye(n + 1)
    plain[:n, :n] = np.diag(np.asarray(layer.scale, dtype=np.float64))
    plain[:n, n] = np.asarray(layer.translate, dtype=np.float64)
    m = data_to_world_matrix(layer)
    return bool(np.allclose(m, plain, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(m).max()))))


def world_cells(layer):
    """The cells of a layer in world coordinates, as an :class:`xmodal.io.PointSet` ((n, d) points,
    d = 2 or 3, in image axis order (z, y, x) or (y, x); physical units, the layer's ``units``).

    World coordinates are the data coordinates mapped through the layer's whole data-to-world
    transform (:func:`data_to_world_matrix`: scale, shear, rotate, translate, then the layer's
    ``affine``), so the cells are where napari draws them. A Points layer gives its points (ids:
    row numbers 0..n-1); points with leading axes beyond (z, y, x), such as time or channel, are
    read when they all lie on one world value of those axes (one time point), else refused. A
    Labels layer gives the centroid of every non-zero label of its full resolution (the first level
    of a multiscale layer), taken in the data frame and mapped through the transform (an affine
    map carries centroids to centroids), with the label values as ids (so that the registration
    results, the layers' features and the exported tables name cells by label). TypeError for
    another layer kind or a non-integer label image, ValueError for a label image that is not
    2D/3D or has no objects, points of fewer than 2 dimensions or on several time points; the
    messages name the layer.
    """
    from ..io import PointSet

    kind = type(layer).__name__
    if kind == "Points":
        data = np.asarray(layer.data, dtype=np.float64)
        ids = np.arange(len(data))
    elif kind == "Labels":
        from ..io._points import label_centroids

        try:
            labels = layer.data[0] if getattr(layer, "multiscale", False) else layer.data  # full resolution
            cells = label_centroids(np.asarray(labels))  # data frame: voxel units
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"layer {layer.name!r}: {exc}") from None
        data, ids = np.asarray(cells.points, dtype=np.float64), np.asarray(cells.ids)
    else:
        raise TypeError(f"layer: expected a Points or Labels layer, got {kind} {layer.name!r}")
    m = data_to_world_matrix(layer)
    if data.ndim != 2 or data.shape[1] != len(m) - 1:
        raise ValueError(f"layer {layer.name!r}: expected cells of {len(m) - 1} coordinates (the layer's "
                         f"dimensions), got data of shape {data.shape}")
    pts = apply_matrix(m, data)
    d = min(pts.shape[1], 3)
    if d < 2:
        raise ValueError(f"layer {layer.name!r}: expected 2D or 3D cells, got {pts.shape[1]}D")
    lead = pts[:, :-d]
    if lead.size and np.ptp(lead, axis=0).max() > 1e-9 * max(1.0, float(np.abs(lead).max())):
        raise ValueError(f"layer {layer.name!r}: its points lie on several values of the axes before "
                         "(z, y, x) (time points or channels); expected the cells of one, e.g. a layer per "
                         "time point")
    return PointSet(pts[:, -d:], ids, f"napari layer {layer.name!r}")


def layer_units(layer, d: int) -> tuple | None:
    """The units (napari 0.6+ ``layer.units``) of the last ``d`` axes of ``layer``: those of the
    cells of :func:`world_cells` (axes before z, y, x, such as time, dropped), for the layers made
    of them. None for a layer without units (napari before 0.6, duck-typed stand-ins).

    Returns
    -------
    tuple or None
        ``d`` units as the layer holds them (pint units in napari), or None.
    """
    units = getattr(layer, "units", None)
    if units is None or len(units) < d:
        return None
    return tuple(units)[len(units) - d:]


def unit_factors(layer, reference, d: int) -> np.ndarray | None:
    """Per-axis factors converting the last ``d`` world axes of ``layer`` into the length units of
    ``reference`` (napari 0.6+ ``layer.units``; the cells of both must be in one unit to be
    registered, whether or not the napari version draws layers of different units converted), or
    None when there is nothing to convert: no units, units that are equal, or an axis that is not a
    length in both (napari's default "pixel" stands for the viewer's world units).

    The factors multiply the world coordinates of :func:`world_cells` axis by axis, i.e. after the
    layer's whole transform (rotation, shear and affine included): napari draws a layer's world
    coordinates in its own units. With the same unit on every spatial axis (the usual case) the
    factor is one number and commutes with any rotation; a rotation that mixes axes of different
    units has no meaningful conversion, and the factors are then applied to the world axes as
    napari labels them."""
    units, ref = getattr(layer, "units", None), getattr(reference, "units", None)
    if units is None or ref is None or len(units) < d or len(ref) < d:
        return None
    pairs = list(zip(list(units)[-d:], list(ref)[-d:]))
    if any(str(u.dimensionality) != "[length]" or str(r.dimensionality) != "[length]" for u, r in pairs):
        return None
    factors = np.array([(1.0 * u).to(r).magnitude for u, r in pairs], dtype=np.float64)
    return None if np.all(factors == 1.0) else factors


def world_points(layer) -> np.ndarray:
    """The (n, d) points of :func:`world_cells` alone (physical units, world coordinates)."""
    return world_cells(layer).points


def add_layers(viewer, layer_data: list[tuple]) -> list:
    """Add ``(data, kwargs, layer_type)`` tuples to the viewer; returns the new layers."""
    from napari.layers import Layer

    out = []
    for data, kwargs, kind in layer_data:
        out.append(viewer.add_layer(Layer.create(data, dict(kwargs), kind)))
    return out
