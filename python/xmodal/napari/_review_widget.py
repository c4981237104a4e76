"""Widget *Review matches*: pick a match line (or type its number), accept, reject or reassign it to
another fixed cell, and export the reviewed table (CSV) that ``register_cells(reviewed=...)`` and
``xmodal.atlas.read_samples`` read back. Works on the matches layer that the reader or the
*Register cells* widget adds (it carries the match table in its metadata)."""

from __future__ import annotations

from napari.viewer import Viewer
from magicgui.widgets import Container, FileEdit, Label, PushButton, SpinBox

from ._common import layer_picker
from ._layers import confidence_colors, match_features, match_lines
from ._review import accept, export_csv, reassign, reject


class ReviewWidget(Container):
    """Accept / reject / reassign the pairs of a registration and export them."""

    def __init__(self, napari_viewer: Viewer):  # napari passes the viewer by this name
        self.viewer = viewer = napari_viewer
        self.matches_layer = layer_picker(viewer, "matches", ("shapes",))
        self.pair = SpinBox(label="pair", value=0, min=0, max=10**9)
        self.info = Label(value="")
        self.accept_button = PushButton(text="Accept")
        self.reject_button = PushButton(text="Reject")
        self.new_fixed = SpinBox(label="new fixed cell (index)", value=0, min=0, max=10**9)
        self.reassign_button = PushButton(text="Reassign")
        self.path = FileEdit(label="export to", mode="w", filter="*.csv", value="reviewed_matches.csv")
        self.export_button = PushButton(text="Export CSV")
        self.status = Label(value="")
        super().__init__(widgets=[self.matches_layer, self.pair, self.info, self.accept_button, self.reject_button,
                                  self.new_fixed, self.reassign_button, self.path, self.export_button, self.status])
        self.accept_button.changed.connect(lambda *_: self._edit(accept))
        self.reject_button.changed.connect(lambda *_: self._edit(reject))
        self.reassign_button.changed.connect(lambda *_: self._edit(reassign, int(self.new_fixed.value)))
        self.export_button.changed.connect(lambda *_: self.export())
        self.pair.changed.connect(lambda *_: self._describe())
        self.matches_layer.changed.connect(lambda *_: self._watch())
        viewer.layers.events.removed.connect(lambda *_: self._watch())  # the picker may be left empty
        self._watched = None
        self._watch()

    @property
    def table(self):
        layer = self.matches_layer.value
        return None if layer is None else layer.metadata.get("xmodal_matches")

    def _watch(self) -> None:
        """Follow the selection of the chosen matches layer: a selected line becomes the pair."""
        layer = self.matches_layer.value
        if layer is not self._watched and layer is not None:
            layer.events.highlight.connect(lambda *_: self._selected(layer))
        self._watched = layer
        self._describe()

    def _selected(self, layer) -> None:
        if layer is self.matches_layer.value and layer.selected_data:
            self.pair.value = min(layer.selected_data)

    def _describe(self) -> None:
        t = self.table
        if t is None:
            self.info.value = "choose a matches layer (from the reader or the Register cells widget)"
            return
        i = int(self.pair.value)
        if not 0 <= i < len(t.fixed_index):
            self.info.value = f"pair {i} does not exist ({len(t.fixed_index)} pairs)"
            return
        self.info.value = (f"fixed {t.fixed_index[i]} (id {t.fixed_ids[t.fixed_index[i]]}) <- moving "
                           f"{t.moving_index[i]} (id {t.moving_ids[t.moving_index[i]]}); distance "
                           f"{t.distances[i]:.3g}, confidence {t.confidence[i]:.2f}, {t.status[i]}")

    def _edit(self, action, *args) -> None:
        t = self.table
        if t is None:
            self.status.value = "no match table on this layer"
            return
        try:
            action(t, int(self.pair.value), *args)
        except ValueError as exc:
            self.status.value = str(exc)
            return
        self.refresh()
        counts = {s: int((t.status == s).sum()) for s in ("accepted", "rejected", "reassigned")}
        self.status.value = ", ".join(f"{v} {k}" for k, v in counts.items())

    def refresh(self) -> None:
        """Redraw the matches layer from its table (lines, colours, features)."""
        layer, t = self.matches_layer.value, self.table
        layer.selected_data = set()
        layer.data = match_lines(t)
        layer.shape_type = "line"
        layer.features = match_features(t)
        layer.edge_color = confidence_colors(t.confidence, t.status)
        self._describe()

    def export(self, path=None):
        """Write the reviewed table to ``path`` (default: the widget's) atomically and return its
        path; None when it cannot be written (the status line says why; a file already there is
        left as it was)."""
        t = self.table
        if t is None:
            self.status.value = "no match table on this layer"
            return None
        path = path or self.path.value
        try:
            written = export_csv(t, path)
        except (OSError, ValueError) as exc:  # e.g. a folder, no permission: shown, never raised into Qt
            self.status.value = f"export: error: cannot write {path}: {exc}"
            return None
        self.status.value = f"exported {len(t.fixed_index)} pairs to {written}"
        return written
