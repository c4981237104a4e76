"""Helpers shared by the widgets: layer pickers, cells of a layer in physical units, adding layer
data tuples to a viewer."""

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


def world_cells(layer):
    """The cells of a layer in world coordinates (physical units: data coordinates times the layer
    scale plus its translation), as an :class:`xmodal.io.PointSet` ((n, d) points, d = 2 or 3, in
    image axis order (z, y, x) or (y, x)).

    A Points layer gives its points (ids: row numbers 0..n-1); points with leading axes beyond
    (z, y, x), such as time or channel, are read when they all lie on one value of those axes (one
    time point), else refused. A Labels layer gives the centroid of every non-zero label of its full
    resolution (the first level of a multiscale layer), with the label values as ids (so that the
    registration results, the layers' features and the exported tables name cells by label).
    TypeError for another layer kind or a non-integer label image, ValueError for a label image
    that is not 2D/3D or has no objects, points of fewer than 2 dimensions or on several time
    points; the messages name the layer.
    """
    from ..io import PointSet

    kind = type(layer).__name__
    scale = np.asarray(layer.scale, dtype=np.float64)
    translate = np.asarray(layer.translate, dtype=np.float64)
    if kind == "Points":
        pts = np.asarray(layer.data, dtype=np.float64) * scale + translate
        ids = np.arange(len(pts))
    elif kind == "Labels":
        from ..io._points import label_centroids

        try:
            data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data  # full resolution
            cells = label_centroids(np.asarray(data), scale.tolist())
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"layer {layer.name!r}: {exc}") from None
        pts, ids = cells.points + translate, np.asarray(cells.ids)
    else:
        raise TypeError(f"layer: expected a Points or Labels layer, got {kind} {layer.name!r}")
    d = min(pts.shape[1], 3)
    if d < 2:
        raise ValueError(f"layer {layer.name!r}: expected 2D or 3D cells, got {pts.shape[1]}D")
    lead = pts[:, :-d]
    if lead.size and np.ptp(lead, axis=0).max() > 0:
        raise ValueError(f"layer {layer.name!r}: its points lie on several values of the axes before "
                         "(z, y, x) (time points or channels); expected the cells of one, e.g. a layer per "
                         "time point")
    return PointSet(pts[:, -d:], ids, f"napari layer {layer.name!r}")


def unit_factors(layer, reference, d: int) -> np.ndarray | None:
    """Per-axis factors converting the last ``d`` world axes of ``layer`` into the length units of
    ``reference`` (napari 0.6+ ``layer.units``, which napari itself does not convert when drawing),
    or None when there is nothing to convert: no units, units that are equal, or an axis that is
    not a length in both (napari's default "pixel" stands for the viewer's world units)."""
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
