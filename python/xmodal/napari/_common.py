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


def world_points(layer) -> np.ndarray:
    """The layer's points (Points) or object centroids (Labels) in world coordinates (physical
    units: data coordinates times the layer scale plus its translation), (n, d), d = 2 or 3."""
    kind = type(layer).__name__
    scale = np.asarray(layer.scale, dtype=np.float64)
    translate = np.asarray(layer.translate, dtype=np.float64)
    if kind == "Points":
        pts = np.asarray(layer.data, dtype=np.float64) * scale + translate
    elif kind == "Labels":
        from ..io._points import label_centroids

        pts = label_centroids(np.asarray(layer.data), scale.tolist()).points + translate
    else:
        raise TypeError(f"layer: expected a Points or Labels layer, got {kind} {layer.name!r}")
    d = min(pts.shape[1], 3)
    if d < 2:
        raise ValueError(f"layer {layer.name!r}: expected 2D or 3D cells, got {pts.shape[1]}D")
    return pts[:, -d:]


def add_layers(viewer, layer_data: list[tuple]) -> list:
    """Add ``(data, kwargs, layer_type)`` tuples to the viewer; returns the new layers."""
    from napari.layers import Layer

    out = []
    for data, kwargs, kind in layer_data:
        out.append(viewer.add_layer(Layer.create(data, dict(kwargs), kind)))
    return out
