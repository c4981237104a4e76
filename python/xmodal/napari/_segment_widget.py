"""Widget *Segment*: an Image layer -> :func:`xmodal.pipelines.segment` with the shipped model (tiled
prediction, mutex watershed; blockwise when the image is large) in a worker thread -> a Labels
layer with the image's scale and translation.

With an output folder, the image layer's scale (the voxel size) and translation (the position of
voxel 0, same physical units) are written to the OME-NGFF ``coordinateTransformations`` of the
affinities and the labels (``scale``, then ``translation``), so the reader opens them where the
image was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from napari.viewer import Viewer
from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox

from ._common import layer_picker
from ._jobs import Job, JobPanel

MODELS = ("isbi2012",)


def block_shape_for(shape: tuple, block_voxels: int) -> tuple | None:
    """Blocks for the mutex watershed when the image has more than ``block_voxels`` voxels: 512 (2D)
    or 64 × 256 × 256 (3D) per block, capped by the image; None (single shot) otherwise."""
    if int(np.prod(shape)) <= block_voxels:
        return None
    target = (512, 512) if len(shape) == 2 else (64, 256, 256)
    return tuple(min(int(s), t) for s, t in zip(shape, target))


class SegmentWidget(Container):
    """Segment an image layer into a labels layer."""

    def __init__(self, napari_viewer: Viewer):  # napari passes the viewer by this name
        self.viewer = viewer = napari_viewer
        self.image_layer = layer_picker(viewer, "image", ("image",))
        self.model = ComboBox(label="model", choices=list(MODELS), value=MODELS[0])
        self.min_size = SpinBox(label="min segment size (voxels)", value=100, min=0, max=10**7)
        self.block_voxels = SpinBox(label="blockwise above (voxels)", value=2048 * 2048, min=1, max=2**31 - 1)
        self.out = FileEdit(label="output folder (optional)", mode="d", value="")
        self.panel = JobPanel("Segment")
        super().__init__(widgets=[self.image_layer, self.model, self.min_size, self.block_voxels, self.out,
                                  self.panel])
        self.panel.run_button.changed.connect(self.run)
        self.result = None

    def run(self, *_) -> Job | None:
        layer = self.image_layer.value
        if layer is None:
            self.panel.status.value = "choose an image layer"
            return None
        if getattr(layer, "rgb", False) or layer.ndim not in (2, 3):
            self.panel.status.value = f"expected a 2D image or a 3D stack, got {layer.ndim}D"
            return None
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        out = str(self.out.value) if str(self.out.value) not in ("", ".") else None
        translate = [float(v) for v in layer.translate]
        opts = dict(model=self.model.value, min_size=int(self.min_size.value),
                    block_shape=block_shape_for(tuple(data.shape), int(self.block_voxels.value)), out=out,
                    spacing=[float(v) for v in layer.scale])

        def compute(job: Job):
            from ..pipelines import segment

            def progress(done, total, stage):  # cancel stops the run at the next tile or stage
                job.check()
                job.report(fraction=done / total if total else None,
                           message=f"{stage}: {done}/{total}" if total else stage)

            job.report(message="tiled prediction" + (" (blockwise)" if opts["block_shape"] else ""))
            result = segment(data, progress=progress, **opts)
            if out is not None and any(translate):  # the output folder is complete: where the image was
                write_ome_translation(Path(out) / "segmentation.ome.zarr", translate)
            job.check()
            return result

        job = Job(compute, name="segment")
        self.panel.start(job, lambda res: self._show(res, layer))
        return job

    def _show(self, result, source) -> None:
        self.result = result
        self.viewer.add_labels(np.asarray(result.labels), name=f"{source.name}: segments", scale=source.scale,
                               translate=source.translate)
        self.panel.status.value = f"segment: done, {result.n_segments} segments"


def write_ome_translation(image, translate) -> None:
    """Set the NGFF ``translation`` (physical units, one value per spatial axis in array order) of
    the OME-Zarr image group ``image`` and of every label image of its ``labels`` group: a
    ``translation`` after the ``scale`` of each dataset's ``coordinateTransformations`` (replacing
    a previous one; 0 on non-spatial axes). Each group's zarr.json is rewritten atomically."""
    image = Path(image)
    groups = [image]
    labels = _read_zarr_json(image / "labels") if (image / "labels" / "zarr.json").is_file() else {}
    groups += [image / "labels" / n for n in labels.get("attributes", {}).get("ome", {}).get("labels", [])]
    for group in groups:
        _set_translation(group, [float(t) for t in translate])


def _read_zarr_json(group: Path) -> dict:
    return json.loads((group / "zarr.json").read_text(encoding="utf-8"))


def _set_translation(group: Path, translate: list) -> None:
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
    full = [0.0] * len(axes)
    for i, t in zip(spatial, translate):
        full[i] = t
    for ds in ms[0]["datasets"]:
        kept = [t for t in ds.get("coordinateTransformations", []) if t.get("type") != "translation"]
        ds["coordinateTransformations"] = kept + [{"type": "translation", "translation": full}]
    atomic_write_text(group / "zarr.json", json.dumps(meta, indent=2))
