"""Widget *Identify with an atlas*: an atlas file (``Atlas.save`` JSON) + a Points layer ->
:func:`xmodal.atlas.identify` in a worker thread -> a Points layer with each cell's name as text,
low-confidence cells outlined in red, and the top-k candidates of the selected cell shown in the
widget."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from napari.viewer import Viewer
from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, Label, SpinBox

from ._common import layer_picker, layer_transform, world_points
from ._jobs import Job, JobPanel


class IdentifyWidget(Container):
    """Name the cells of a Points layer with an atlas.

    The cells are read in world coordinates (the layer's whole data-to-world transform; see
    :func:`~xmodal.napari._common.world_cells`); the names layer gets the points' data and
    transform, so it lies on them.
    """

    def __init__(self, napari_viewer: Viewer):  # napari passes the viewer by this name
        self.viewer = viewer = napari_viewer
        self.atlas_file = FileEdit(label="atlas (.json)", mode="r", filter="*.json")
        self.points_layer = layer_picker(viewer, "cells", ("points",))
        self.top_k = SpinBox(label="candidates (top k)", value=5, min=1, max=20)
        self.threshold = FloatSpinBox(label="low confidence below", value=0.5, min=0.0, max=1.0, step=0.05)
        # identify's allow_reflection: for data whose axis handedness is unknown
        self.reflection = CheckBox(label="allow reflection", value=False)
        self.candidates = Label(value="")
        self.panel = JobPanel("Identify")
        super().__init__(widgets=[self.atlas_file, self.points_layer, self.top_k, self.threshold, self.reflection, self.panel,
                                  self.candidates])
        self.panel.run_button.changed.connect(self.run)
        self.result = None
        self.layer = None

    def run(self, *_) -> Job | None:
        """Start the identification; returns the job (None when the inputs are missing or unusable:
        the status line says why and no job starts). The cells are read when Run is pressed: the
        result is shown for them even if the layer is edited or deleted meanwhile."""
        layer = self.points_layer.value
        path = str(self.atlas_file.value)
        if layer is None or path in ("", "."):
            self.panel.status.value = "choose an atlas file and a points layer"
            return None
        try:
            pts = world_points(layer)
        except (TypeError, ValueError) as exc:  # shown like a job's error, never raised into Qt
            self.panel.last_error = exc
            self.panel.status.value = f"identify: error: {exc}"
            return None
        top_k, reflection = int(self.top_k.value), bool(self.reflection.value)
        # the points as they are now: data, whole transform (scale, translate, rotate, shear, affine)
        source = SimpleNamespace(data=np.array(layer.data, dtype=np.float64), size=np.array(layer.size),
                                 name=layer.name, **layer_transform(layer))

        def compute(job: Job):
            from ..atlas import Atlas, identify

            job.report(message="loading the atlas")
            atlas = Atlas.load(path)
            job.check()
            job.report(message="pose search, registration, assignment")
            return identify(pts, atlas, top_k=top_k, allow_reflection=reflection)

        job = Job(compute, name="identify")
        self.panel.start(job, lambda res: self._show(res, source))
        return job

    def _show(self, result, source) -> None:
        """Add the names layer: the cells of ``source`` (a Points layer, or its data, transform,
        size and name as read when Run was pressed) named by ``result``. The names layer holds
        ``source``'s data with its whole data-to-world transform (scale, translate, rotate, shear,
        affine; :func:`~xmodal.napari._common.layer_transform`), so it lies exactly on the points."""
        self.result = result
        low = result.confidence < float(self.threshold.value)
        cands = [", ".join(f"{n or '(none)'} {p:.2f}" for n, p in zip(names, probs) if p > 0 or n)
                 for names, probs in zip(result.top_k_names, result.top_k_probabilities)]
        features = {"name": result.names, "confidence": result.confidence, "low_confidence": low,
                    "candidates": np.asarray(cands, dtype=object), "cell": np.arange(len(result.names))}
        border = np.where(low[:, None], [[1.0, 0.1, 0.1, 1.0]], [[1.0, 1.0, 1.0, 0.6]])
        size = float(np.median(source.size)) if np.size(source.size) else 5.0
        self.layer = self.viewer.add_points(
            np.asarray(source.data), **layer_transform(source), name=f"{source.name}: names",
            features=features, size=size, face_color="confidence", face_colormap="viridis",
            face_contrast_limits=(0.0, 1.0), border_color=border, border_width=0.25,
            text={"string": "{name}", "size": 8, "color": "white", "anchor": "upper_left"})
        # each names layer keeps its result; feature "cell" (its row of the result) follows a point
        # when others are deleted, -1 for points added by hand
        layer = self.layer
        layer.metadata["xmodal_identity"] = result
        layer.events.data.connect(lambda event: self._points_added(layer, event))
        layer.selected_data.events.items_changed.connect(lambda *_: self._selection_changed(layer))
        self.panel.status.value = (f"identify: done, {result.n_named} of {len(result.names)} cells named, "
                                   f"{int(low.sum())} low confidence")
        fit = result.diagnostics.get("fit") or {}
        if fit.get("mirror_fits_better"):  # the warnings of identify, where the user looks
            self.panel.status.value += ("; WARNING: the mirror image of the sample fits the atlas better: its "
                                        "handedness probably differs (tick 'allow reflection' or flip an axis)")
        elif fit.get("ok") is False:
            self.panel.status.value += (f"; WARNING: the sample fits the atlas much worse than its training samples "
                                        f"(median squared Mahalanobis distance {fit['median_d2']:.2f}): the "
                                        "registration has probably failed (units? axis order? handedness?)")

    @staticmethod
    def _points_added(layer, event) -> None:
        """Points added by hand to a names layer are no cells of the result: no name, cell -1
        (napari would copy the features of the last selected point)."""
        if str(getattr(event, "action", "")) != "added":
            return
        features, k = layer.features.copy(), len(event.data_indices)
        rows = features.index[len(features) - k:]
        features.loc[rows, "cell"], features.loc[rows, "name"], features.loc[rows, "candidates"] = -1, "", ""
        layer.features = features

    def _selection_changed(self, layer) -> None:
        sel = sorted(layer.selected_data)
        if not sel:
            return
        result, cells = layer.metadata.get("xmodal_identity"), layer.features["cell"].to_numpy()
        cell = int(cells[sel[0]]) if sel[0] < len(cells) else -1
        if result is not None and 0 <= cell < len(result.names):
            self.show_candidates(cell, result)
        else:
            self.candidates.value = f"point {sel[0]}: not identified (added after the run)"

    def show_candidates(self, index: int, result=None) -> str:
        """Show (and return) the top-k candidate names of cell ``index`` (a row of ``result``,
        default: the last run's) with their probabilities."""
        r = self.result if result is None else result
        text = (f"cell {index}: {r.names[index] or '(unnamed)'} (confidence {r.confidence[index]:.2f})\n"
                + "\n".join(f"  {n or '(no atlas name)'}: {p:.3f}"
                            for n, p in zip(r.top_k_names[index], r.top_k_probabilities[index])))
        self.candidates.value = text
        return text
