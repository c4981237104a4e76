"""Widget *Register cells*: two Points layers (or Labels layers -> object centroids) ->
:func:`xmodal.pipelines.register_cells` in a worker thread -> fixed, moved, match lines coloured by
confidence, match vectors coloured by distance and 95 % error ellipses as layers."""

from __future__ import annotations

from napari.viewer import Viewer
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox

from ..io import PointSet
from ._common import add_layers, layer_picker, layer_units, unit_factors, world_cells
from ._jobs import Job, JobPanel
from ._layers import MatchTable, registration_layers
from ._reader import write_registration_units

TRANSFORMS = ("auto", "rigid", "similarity", "affine", "deformable")


class RegisterWidget(Container):
    """Register the cells of a moving layer onto those of a fixed layer and match them.

    Points layers are read in world coordinates (the layer's whole data-to-world transform: scale,
    shear, rotate, translate, then its ``affine``; physical units); Labels layers give their object
    centroids (same coordinates), named by their label values in the results, the layers' features
    and the exported tables. The result layers hold world coordinates of the fixed layer (identity
    transform), so they lie on both inputs however those are transformed. Layers in different
    length units (``layer.units``, e.g. nm and µm) are registered in the fixed layer's unit (the
    conversion applies to the world coordinates); every result layer (the moving cells of their own
    frame too, converted) carries the fixed layer's units of z, y, x (napari 0.6+), so it lies on the
    fixed layer and napari keeps converting between the viewer's units. ``unmatched cost`` 0 means
    "auto" (3 × the median nearest-neighbour distance); ``out`` (optional) writes the registration
    folder, which the reader opens again (in those units: they are recorded in its provenance.json
    when they are length units).
    """

    def __init__(self, napari_viewer: Viewer):  # napari passes the viewer by this name
        self.viewer = viewer = napari_viewer
        self.fixed_layer = layer_picker(viewer, "fixed", ("points", "labels"))
        self.moving_layer = layer_picker(viewer, "moving", ("points", "labels"))
        self.transform = ComboBox(label="transform", choices=list(TRANSFORMS), value="auto")
        self.prealign = ComboBox(label="pre-alignment", choices=["all", "flips", "none"], value="all")
        self.unmatched_cost = FloatSpinBox(label="unmatched cost (0 = auto)", value=0.0, min=0.0, max=1e9)
        self.errors = CheckBox(label="error estimates", value=True)
        self.out = FileEdit(label="output folder (optional)", mode="d", value="")
        self.panel = JobPanel("Register")
        super().__init__(widgets=[self.fixed_layer, self.moving_layer, self.transform, self.prealign,
                                  self.unmatched_cost, self.errors, self.out, self.panel])
        self.panel.run_button.changed.connect(self.run)
        self.result = None

    def _options(self) -> dict:
        out = str(self.out.value) if str(self.out.value) not in ("", ".") else None
        pre = self.prealign.value
        return dict(transform=self.transform.value, prealign=False if pre == "none" else pre,
                    unmatched_cost=self.unmatched_cost.value or "auto", errors=self.errors.value, out=out)

    def run(self, *_) -> Job | None:
        """Start the registration; returns the job (None when the inputs are missing or unusable:
        the status line says why, e.g. a Labels layer without objects, and no job starts)."""
        fixed, moving = self.fixed_layer.value, self.moving_layer.value
        if fixed is None or moving is None:
            self.panel.status.value = "choose a fixed and a moving layer"
            return None
        try:
            fix, mov = world_cells(fixed), world_cells(moving)
        except (TypeError, ValueError) as exc:  # shown like a job's error, never raised into Qt
            self.panel.last_error = exc
            self.panel.status.value = f"register cells: error: {exc}"
            return None
        factors = unit_factors(moving, fixed, mov.points.shape[1])
        note = ""
        if factors is not None:  # e.g. moving in nm, fixed in µm: register in the fixed layer's unit
            mov = PointSet(mov.points * factors, mov.ids, mov.source)
            note = (f" (moving cells converted from {', '.join(sorted({str(u) for u in moving.units}))} "
                    f"to {', '.join(sorted({str(u) for u in fixed.units}))})")
        opts = self._options()
        name = f"{moving.name} -> {fixed.name}"
        units = layer_units(fixed, fix.points.shape[1])  # the results are in the fixed layer's units

        def compute(job: Job):
            from ..pipelines import register_cells

            def callback(iteration=0, **_):
                job.check()  # cancel stops the CPD between two iterations
                job.report(message=f"CPD iteration {iteration}")

            job.report(message="pre-alignment")
            result = register_cells(fix, mov, cpd_options={"callback": callback},
                                    deformable_options={"callback": callback}, **opts)
            if opts["out"] is not None and units is not None:  # the reader opens the folder in them
                write_registration_units(opts["out"], units)
            return result

        job = Job(compute, name="register cells")
        self.panel.start(job, lambda res: self._show(res, name, fix.ids, mov.ids, note, units))
        return job

    def _show(self, result, name: str, fixed_ids=None, moving_ids=None, note: str = "", units=None) -> None:
        """Add the result layers of ``result`` (identity transform; ``units``: the fixed layer's,
        as read when Run was pressed, None without)."""
        self.result = result
        table = MatchTable.from_result(result, source=result.outputs.get("matches", ""), fixed_ids=fixed_ids,
                                       moving_ids=moving_ids)
        add_layers(self.viewer, registration_layers(table, name=name, units=units))
        self.panel.status.value = f"register cells: done, {result.n_matched} pairs{note}"
