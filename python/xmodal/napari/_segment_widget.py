"""Widget *Segment*: an Image layer -> :func:`xmodal.pipelines.segment` with a shipped model (the EM
model by default, with the segmentation settings stored with it) in a worker thread -> a Labels layer
with the image's whole data-to-world transform (scale, translate, rotate, shear, affine), so that the
labels lie exactly on the image.

The widget's defaults are those of :func:`~xmodal.pipelines.segment`: the model's stored method
(superpixels + GASP with learned edge weights for "em") and size filter, in memory up to
``memory_voxels`` voxels and block by block above. With an output folder, the image layer's scale
(the voxel size) and translation (the position of voxel 0, same physical units) are written to the
OME-NGFF ``coordinateTransformations`` of the affinities and the labels (``scale``, then
``translation``), and the image layer's length units (napari 0.6+ ``units``, e.g. nanometer) to
their axes' ``unit``, so the reader opens them where the image was, in its units. The labels layer
gets the image layer's units with its transform. OME-NGFF 0.5 has no rotation, shear
or general affine: an image layer with any of those gets its labels layer right in the viewer, but
the output folder records the scale and translation only (the status line says so)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from napari.viewer import Viewer
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox

from ._common import is_scale_translate, layer_picker, layer_transform
from ._jobs import Job, JobPanel

#: Shipped models (``segment(model=...)``); the first is the default.
MODELS = ("em", "isbi2012")
#: Agglomeration methods; "model default" is the method stored with the model.
METHODS = ("model default", "gasp", "multicut", "mws")
#: ``segment``'s default ``memory_voxels``: larger inputs are segmented block by block.
MEMORY_VOXELS = 1 << 27


def segment_options(model: str, method: str, min_size: int, memory_voxels: int) -> dict:
    """The :func:`~xmodal.pipelines.segment` arguments of the widget's fields: ``method`` "model
    default" and ``min_size`` -1 leave the model's stored settings in place."""
    opts = {"model": model, "memory_voxels": int(memory_voxels)}
    if method != METHODS[0]:
        opts["method"] = method
    if int(min_size) >= 0:
        opts["min_size"] = int(min_size)
    return opts


class SegmentWidget(Container):
    """Segment an image layer into a labels layer."""

    def __init__(self, napari_viewer: Viewer):  # napari passes the viewer by this name
        self.viewer = viewer = napari_viewer
        self.image_layer = layer_picker(viewer, "image", ("image",))
        self.model = ComboBox(label="model", choices=list(MODELS), value=MODELS[0])
        self.method = ComboBox(label="method", choices=list(METHODS), value=METHODS[0])
        self.min_size = SpinBox(label="min segment size (voxels; -1: model's)", value=-1, min=-1, max=10**7)
        self.memory_voxels = SpinBox(label="in memory up to (voxels)", value=MEMORY_VOXELS, min=1,
                                     max=2**31 - 1)
        self.out = FileEdit(label="output folder (optional)", mode="d", value="")
        self.panel = JobPanel("Segment")
        super().__init__(widgets=[self.image_layer, self.model, self.method, self.min_size, self.memory_voxels,
                                  self.out, self.panel])
        self.panel.run_button.changed.connect(self.run)
        self.result = None

    def run(self, *_) -> Job | None:
        layer = self.image_layer.value
        if layer is None:
            self.panel.status.value = "choose an image layer"
            return None
        if getattr(layer, "rgb", False) or layer.ndim not in (2, 3):
            got = "an RGB(A) colour image" if getattr(layer, "rgb", False) else f"{layer.ndim}D"
            self.panel.status.value = (f"segment: error: layer {layer.name!r}: expected a grey-value 2D image or "
                                       f"3D stack, got {got}")
            return None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        out = str(self.out.value) if str(self.out.value) not in ("", ".") else None
        translate = [float(v) for v in layer.translate]
        units = ngff_units(layer)
        opts = segment_options(self.model.value, self.method.value, self.min_size.value,
                               self.memory_voxels.value)
        opts.update(out=out, spacing=[float(v) for v in layer.scale])
        blockwise = int(np.prod(data.shape)) > opts["memory_voxels"]

        def compute(job: Job):
            from ..pipelines import segment

            def progress(done, total, stage):  # cancel stops the run at the next tile or stage
                job.check()
                job.report(fraction=done / total if total else None,
                           message=f"{stage}: {done}/{total}" if total else stage)

            job.report(message="tiled prediction" + (" (blockwise)" if blockwise else ""))
            result = segment(data, progress=progress, **opts)
            if out is not None and (any(translate) or units):  # the output is complete: where the image was
                write_ome_translation(Path(out) / "segmentation.ome.zarr", translate, units)
            job.check()
            return result

        job = Job(compute, name="segment")
        # where the image was when Run was pressed (the layer may be moved or deleted meanwhile)
        source = SimpleNamespace(name=layer.name, transform=layer_transform(layer),
                                 partial_output=out is not None and not is_scale_translate(layer))
        self.panel.start(job, lambda res: self._show(res, source))
        return job

    def _show(self, result, source) -> None:
        """Add the labels layer of ``result`` with the transform of the image as it was at Run
        (``source.transform``: :func:`~xmodal.napari._common.layer_transform`)."""
        self.result = result
        self.viewer.add_labels(np.asarray(result.labels), name=f"{source.name}: segments", **source.transform)
        self.panel.status.value = f"segment: done, {result.n_segments} segments"
        if source.partial_output:
            self.panel.status.value += ("; the image layer is rotated, sheared or has an affine: the output "
                                        "folder's OME-Zarr metadata hold its scale and translation only")


def ngff_units(layer) -> list[str] | None:
    """The NGFF names of a layer's units (napari 0.6+ ``layer.units``, e.g. "nanometer"), one per
    axis; None when it has none or any is no length unit (napari's default "pixel")."""
    from ..io._units import ngff_unit

    units = getattr(layer, "units", None)
    if not units:
        return None
    try:
        return [ngff_unit(str(u)) for u in units]
    except ValueError:
        return None


def write_ome_translation(image, translate, units=None) -> None:
    """Set the NGFF ``translation`` (physical units, one value per spatial axis in array order) of
    the OME-Zarr image group ``image`` and of every label image of its ``labels`` group: a
    ``translation`` after the ``scale`` of each dataset's ``coordinateTransformations`` (replacing
    a previous one; 0 on non-spatial axes). ``units`` (optional; NGFF length unit names, one per
    spatial axis, see :func:`ngff_units`) become the spatial axes' ``unit``. Each group's zarr.json
    is rewritten atomically."""
    image = Path(image)
    groups = [image]
    labels = _read_zarr_json(image / "labels") if (image / "labels" / "zarr.json").is_file() else {}
    groups += [image / "labels" / n for n in labels.get("attributes", {}).get("ome", {}).get("labels", [])]
    for group in groups:
        _set_translation(group, [float(t) for t in translate], units)


def _read_zarr_json(group: Path) -> dict:
    return json.loads((group / "zarr.json").read_text(encoding="utf-8"))


def _set_translation(group: Path, translate: list, units=None) -> None:
    from ..io import atomic_write_text

    meta = _read_zarr_json(group)
    ms = meta.get("attributes", {}).get("ome", {}).get("multiscales")
    if not ms:
        raise ValueError(f"image: {group} is not an OME-Zarr image group (no multiscales metadata)")
    axes = ms[0]["axes"]
    spatial = [i for i, a in enumerate(axes) if not isinstance(a, dict) or a.get("type") == "space"]
    if len(spatial) != len(translate):
        raise ValueError(f"translate: expected {len(spatial)} values (one per spatial axis of {group}), "
                         f"got {translate}")
    if units is not None and len(units) != len(spatial):
        raise ValueError(f"units: expected {len(spatial)} (one per spatial axis of {group}), got {units}")
    for i, unit in zip(spatial, units or []):
        if isinstance(axes[i], dict):
            axes[i]["unit"] = unit
    full = [0.0] * len(axes)
    for i, t in zip(spatial, translate):
        full[i] = t
    for ds in ms[0]["datasets"]:
        kept = [t for t in ds.get("coordinateTransformations", []) if t.get("type") != "translation"]
        ds["coordinateTransformations"] = kept + [{"type": "translation", "translation": full}]
    atomic_write_text(group / "zarr.json", json.dumps(meta, indent=2))
