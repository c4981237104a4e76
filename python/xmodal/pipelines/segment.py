"""Large-volume segmentation: raw -> normalisation -> tiled prediction -> mutex watershed -> labels.

    raw (zarr / OME-Zarr / tif / npy / array, any size)
      -> global normalisation statistics (computed block by block, never per tile)
      -> halo tiled prediction of affinities (zarr when an output folder is given)
      -> mutex watershed (single-shot when the volume fits the memory budget, else blockwise)
      -> size filter (small segments merged into their most attractive neighbour)
      -> labels as an OME-Zarr labels group, metrics against ground truth when given
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import as_bool, as_spacing, describe, positive_int

log = logging.getLogger("xmodal.pipelines")

_WRITER = "xmodal.segment"


@dataclass
class SegmentationResult:
    """Result of :func:`segment`.

    Attributes
    ----------
    labels : array (numpy or zarr) of the raw image's spatial shape; 0 = background, objects 1..n
    affinities : array (C, *spatial) merge probabilities (numpy or zarr)
    offsets : (C, ndim) int array, the affinity offsets in the labels' axis order
    n_attractive : int
    n_segments : int
    metrics : dict or None (see :func:`xmodal.metrics.evaluate_segmentation`), per slice and mean
        for 2D models applied to a stack
    outputs : dict of output name -> path
    timings : dict of step -> seconds
    """

    labels: Any
    affinities: Any
    offsets: np.ndarray
    n_attractive: int
    n_segments: int
    metrics: dict | None = None
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)


def _global_mean_std(image, block_voxels: int = 1 << 24) -> tuple[float, float]:
    """Mean and standard deviation of a (possibly out-of-core) array, slab by slab along axis 0.

    Sums are taken around the first value (shifted sums), so a constant image gives exactly 0.
    Raises ValueError for an empty image or non-finite values.
    """
    if int(np.prod(image.shape)) == 0:
        raise ValueError(f"raw: expected a non-empty image, got shape {tuple(image.shape)}")
    n = 0
    s = 0.0
    s2 = 0.0
    shift = None
    per_row = int(np.prod(image.shape[1:])) if image.ndim > 1 else 1
    step = max(1, block_voxels // max(per_row, 1))
    for start in range(0, image.shape[0], step):
        block = np.asarray(image[start:start + step], dtype=np.float64)
        if shift is None:
            shift = float(block.flat[0])
        if not np.isfinite(block).all():
            raise ValueError("raw: expected finite intensities, found NaN or infinity")
        block = block - shift
        n += block.size
        s += float(block.sum())
        s2 += float(np.square(block).sum())
    mean = s / n
    return shift + mean, float(np.sqrt(max(s2 / n - mean * mean, 0.0)))


class _Standardize:
    """Point-wise ``(x - mean) / std`` (picklable, so dask workers can use it).

    A constant image (``std == 0``) is only centred (divided by 1), so it becomes zeros, not NaN.
    """

    def __init__(self, mean: float, std: float):
        std = float(std)
        self.mean, self.std = float(mean), (std if np.isfinite(std) and std > 0 else 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)


def _resolve_model(model, offsets, n_attractive):
    if isinstance(model, str):
        if model != "isbi2012":
            if Path(model).exists():
                from .._optional import optional_import

                torch = optional_import("torch", purpose="loading a TorchScript model")
                model = torch.jit.load(str(model), map_location="cpu").eval()
            else:
                raise ValueError(f"model: expected 'isbi2012', a TorchScript file or a torch module, got {model!r}")
        else:
            from ..models import load_isbi2012_affinity_unet

            model = load_isbi2012_affinity_unet()
    model_offsets = getattr(model, "offsets", None)
    if offsets is None:
        if model_offsets is None:
            raise ValueError("offsets: expected the (C, ndim) affinity offsets of the model's output channels, got None")
        offsets = model_offsets
    if n_attractive is None:
        n_attractive = getattr(model, "n_attractive", None)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 2 or offsets.shape[1] not in (2, 3):
        raise ValueError(f"offsets: expected a (C, 2) or (C, 3) integer array, got shape {offsets.shape}")
    return model, offsets, (offsets.shape[1] if n_attractive is None else int(n_attractive))


def segment(raw, *, model="isbi2012", out=None, offsets=None, n_attractive=None, normalize="standardize",
            tile_shape=None, halo="auto", device="auto", client=None, min_size: int = 0,
            block_shape=None, memory_voxels: int = 1 << 27, ground_truth=None, spacing=None,
            progress: bool = False, bias=None, strides=None) -> SegmentationResult:
    """Segment a raw image or volume of any size into instances.

    Parameters
    ----------
    raw : array, zarr array or path (.zarr / OME-Zarr, .tif, .npy)
        2D image or 3D volume (z, y, x), single channel, non-empty, finite. A 2D model is applied
        slice by slice to a 3D stack. Any size: the shipped model pads the image end to its
        down-sampling factor (8) internally.
    model : "isbi2012", torch module or path to a TorchScript file
        Network predicting merge probabilities (1 = same object) for ``offsets``. "isbi2012" is the
        shipped 2D EM membrane model (:func:`xmodal.models.load_isbi2012_affinity_unet`).
    out : path, optional
        Output folder: ``segmentation.ome.zarr`` (affinities as the image, labels in the OME-Zarr
        labels group ``labels/cells``), ``metrics.json``, ``provenance.json``. Written into the
        sibling ``<out>.xmodal-partial`` and renamed to ``out`` when complete (replacing a previous
        output there in one step), so a killed run leaves the previous complete folder or none. A
        rerun after a kill resumes from the partial folder: prediction tiles and mutex watershed
        blocks are reused only when their input bytes and the parameters are unchanged. An
        existing ``out`` must be empty or a previous xmodal output (with a provenance.json).
    offsets, n_attractive : the affinity channels (default: the model's ``offsets`` /
        ``n_attractive`` attributes). Offsets follow :func:`xmodal.mutex_watershed`.
    normalize : "standardize", "quantile", None or callable
        "standardize": global mean / standard deviation of the whole input (computed block by
        block; a constant image is only centred); "quantile": global 1 % / 98 % quantile scaling
        (see :func:`xmodal.predict_tiled`). Other strings are an error.
    tile_shape, halo, device, client : tiled prediction (see :func:`xmodal.predict_tiled`); the
        ``client`` (dask.distributed) also runs the blockwise mutex watershed.
    min_size : int
        Segments smaller than this (voxels) are merged into their most attractive neighbour
        (single-shot), or become background 0 (blockwise; ids renumbered consecutively).
    block_shape : sequence of int, optional
        Blockwise mutex watershed with these blocks; default single-shot when the volume has at
        most ``memory_voxels`` voxels, else blocks of 64 × 512 × 512 (3D) / 2048 × 2048 (2D).
    ground_truth : label array or path, optional
        Instance labels to evaluate against (0 = ignored background / boundary).
    spacing : float or sequence of float, optional
        Voxel size (physical units, positive), one value per axis of ``raw`` or one for all axes;
        stored in the OME-Zarr metadata and used for Chamfer distances.
    progress : bool
        Progress bars on a TTY.
    bias, strides : optional
        Mutex watershed options (see :func:`xmodal.mutex_watershed`): ``bias`` selects the
        signed-weight mode (merge probability + bias per channel; ``n_attractive`` is then used only
        by the size filter), ``strides`` subsample edges (``ndim`` values for the repulsive
        channels, or ``(C, ndim)`` per offset), in the model's axes. Default: the model's
        ``mws_bias`` / ``mws_strides`` attributes when it has them, else the classic method without
        strides.
    """
    from ..inference import predict_tiled
    from ..io import create_ome_zarr_image, mark_complete, mark_incomplete
    from ._inputs import read_image

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    min_size = positive_int(min_size, "min_size", minimum=0)
    progress = as_bool(progress, "progress")
    if not (normalize is None or callable(normalize) or (isinstance(normalize, str)
                                                          and normalize in ("standardize", "quantile"))):
        raise ValueError(f"normalize: expected 'standardize', 'quantile', None or a callable, got {describe(normalize)}")
    image = read_image(raw) if isinstance(raw, (str, Path)) else raw
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if len(image.shape) not in (2, 3):
        raise ValueError(f"raw: expected a 2D image or a 3D volume (z, y, x), got shape {tuple(image.shape)}")
    if not np.issubdtype(np.dtype(image.dtype), np.number) or np.issubdtype(np.dtype(image.dtype), np.complexfloating):
        raise TypeError(f"raw: expected a real numeric image, got {describe(image)}")
    if any(int(n) < 1 for n in image.shape):
        raise ValueError(f"raw: expected a non-empty image, got shape {tuple(image.shape)}")
    if spacing is not None:
        spacing = tuple(float(v) for v in as_spacing(spacing, len(image.shape)))
    model, offsets, n_attractive = _resolve_model(model, offsets, n_attractive)
    if out is not None:
        from ..io import check_output_folder

        check_output_folder(out, name="out")  # refused before any work, not after
    spatial = tuple(int(s) for s in image.shape)
    stack = offsets.shape[1] == 2 and len(spatial) == 3  # 2D model on a z stack
    if offsets.shape[1] == 3 and len(spatial) == 2:
        raise ValueError(f"offsets: a 3D model (offsets of length 3) cannot run on the 2D image of shape {spatial}")
    C = len(offsets)
    from ..segmentation.mws import _check_bias, _check_strides

    bias = _check_bias(getattr(model, "mws_bias", None) if bias is None else bias, C)
    strides = _check_strides(getattr(model, "mws_strides", None) if strides is None else strides, offsets.shape[1], C)
    if bias is not None and strides is not None and not isinstance(strides[0], list):
        raise ValueError(f"strides: with bias give per-offset strides of shape ({C}, {offsets.shape[1]}), got {strides}")
    if stack and strides is not None:  # the 2D model's strides on the (z, y, x) stack
        strides = [[1] + row for row in strides] if isinstance(strides[0], list) else [1] + strides
    mws_kw = ({"n_attractive": n_attractive} if bias is None else {"bias": bias}) | {"strides": strides}

    t0 = time.perf_counter()
    if normalize == "standardize":
        normalizer = _Standardize(*_global_mean_std(image))
    else:
        normalizer = normalize
    timings["normalize"] = time.perf_counter() - t0

    out_dir = Path(out) if out is not None else None
    axes = ("c", "z", "y", "x")[-(len(spatial) + 1):]
    root = stage = None
    if out_dir is not None:
        from ..io import begin_folder, staging_path

        # What a killed run left there is resumable (it verifies its inputs); the rest is cleared.
        resumed = staging_path(out_dir).exists()
        stage = begin_folder(out_dir, name="out", keep=("segmentation.ome.zarr", "mws-work"))
        root = stage / "segmentation.ome.zarr"
    common = dict(tile_shape=tile_shape, halo=halo, device=device, normalize=normalizer, channel_axis=None,
                  progress=progress)
    t0 = time.perf_counter()
    if stack:
        # A 2D model on a z stack: whole slices are predicted (tiled) and written one by one.
        if root is not None:
            chunk = tuple(min(s, c) for s, c in zip(spatial, (1, 512, 512)))
            aff_out = create_ome_zarr_image(root, (C, *spatial), np.float32, axes=axes, chunks=(C, *chunk),
                                            spacing=spacing, name="affinities", overwrite=True, writer=_WRITER)
        else:
            aff_out = np.zeros((C, *spatial), np.float32)
        for z in range(spatial[0]):
            aff_out[:, z] = np.asarray(predict_tiled(model, np.asarray(image[z]), **common))
        if root is not None:
            mark_complete(aff_out, _WRITER)
    else:
        # predict_tiled creates the OME-Zarr image itself, with chunks that divide its tiles.
        aff_out = predict_tiled(model, image, out=None if root is None else str(root), client=client, **common)
    timings["predict"] = time.perf_counter() - t0

    mws_offsets = np.hstack([np.zeros((C, 1), np.int64), offsets]) if stack else offsets
    t0 = time.perf_counter()
    n_vox = int(np.prod(spatial))
    from ..segmentation import blockwise_mutex_watershed, mutex_watershed, remove_small_segments

    label_axes = axes[1:]
    if block_shape is None and n_vox <= memory_voxels:
        aff = np.asarray(aff_out[...], dtype=np.float32)
        labels = mutex_watershed(aff, mws_offsets, **mws_kw)
        if min_size > 1:
            labels = remove_small_segments(labels, min_size, affinities=aff, offsets=mws_offsets,
                                           n_attractive=n_attractive)
        n_segments = int(labels.max()) if labels.size else 0
        del aff
        if root is not None:
            chunks = (64, 256, 256)[-len(spatial):]
            arr = _labels_array(root, spatial, label_axes, spacing, chunks)
            arr[...] = labels.astype(np.uint32, copy=False)
            mark_complete(arr, _WRITER)
    else:
        if block_shape is None:
            block_shape = (64, 512, 512) if len(spatial) == 3 else (2048, 2048)
        target = None if root is None else _labels_array(root, spatial, label_axes, spacing, block_shape)
        halo_mws = np.abs(mws_offsets).max(axis=0).tolist()
        res = blockwise_mutex_watershed(aff_out, mws_offsets, block_shape=block_shape, halo=halo_mws, out=target,
                                        client=client, workdir=None if stage is None else stage / "mws-work",
                                        **mws_kw)
        labels, n_segments = res.labels, int(res.n_labels)
        if min_size > 1:
            if target is not None:
                mark_incomplete(target, _WRITER)
            n_segments = _remove_small_blockwise(labels, n_segments, min_size, block_shape)
            if target is not None:
                mark_complete(target, _WRITER)
    timings["mws"] = time.perf_counter() - t0

    outputs = {}
    if root is not None:
        outputs["affinities"] = str(out_dir / root.name)
        outputs["labels"] = str(out_dir / root.name / "labels" / "cells")

    metrics = None
    if ground_truth is not None:
        t0 = time.perf_counter()
        gt = read_image(ground_truth) if isinstance(ground_truth, (str, Path)) else ground_truth
        metrics = _evaluate(np.asarray(labels), np.asarray(gt), per_slice=stack, spacing=spacing)
        timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all

    params = {"model": getattr(model, "metadata", {}).get("name", type(model).__name__),
              "offsets": mws_offsets.tolist(), "n_attractive": n_attractive, "normalize": repr(normalize),
              "bias": None if bias is None else bias.tolist(), "strides": strides,
              "tile_shape": tile_shape, "halo": halo, "min_size": min_size, "block_shape": block_shape,
              "spacing": spacing, "raw": str(raw) if isinstance(raw, (str, Path)) else describe(raw)}
    if out_dir is not None:
        from ..io import commit_folder, open_array, remove_temporaries
        from ._output import provenance, write_json

        if metrics is not None:
            write_json(stage / "metrics.json", metrics)
            outputs["metrics"] = str(out_dir / "metrics.json")
        write_json(stage / "provenance.json", provenance("segment", params) | {"timings": timings})
        outputs["provenance"] = str(out_dir / "provenance.json")
        if resumed:
            remove_temporaries(stage)  # files of writes the killed run never finished
        commit_folder(stage, out_dir)  # the complete folder replaces the previous output in one step
        aff_out = open_array(outputs["affinities"])  # the handles into the staging folder moved with it
        if not isinstance(labels, np.ndarray):
            labels = open_array(outputs["labels"])
    return SegmentationResult(labels=labels, affinities=aff_out, offsets=mws_offsets, n_attractive=n_attractive,
                              n_segments=n_segments, metrics=metrics, outputs=outputs, timings=timings,
                              parameters=params)


def _remove_small_blockwise(labels, n_labels: int, min_size: int, block_shape) -> int:
    """Size filter of a (possibly out-of-core) label array, block by block, in place.

    Segments with fewer than ``min_size`` voxels become background 0 and the others are renumbered
    consecutively from 1 (in their order). Memory: one block plus one counter per label. Unlike
    the single-shot filter, small segments are not merged into a neighbour (that needs the
    affinities across block faces).
    """
    from ..inference._normalize import iter_blocks

    counts = np.zeros(n_labels + 1, np.int64)
    block = tuple(int(b) for b in block_shape)
    for sl in iter_blocks(labels.shape, block):
        counts += np.bincount(np.asarray(labels[sl]).ravel(), minlength=n_labels + 1)[: n_labels + 1]
    keep = counts >= min_size
    keep[0] = False
    mapping = np.zeros(n_labels + 1, np.uint64)
    mapping[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint64)
    for sl in iter_blocks(labels.shape, block):
        part = np.asarray(labels[sl])
        labels[sl] = mapping[part].astype(part.dtype, copy=False)
    return int(keep.sum())


def _labels_array(root: Path, spatial, axes, spacing, chunks):
    """Create the OME-Zarr labels group ``root/labels/cells`` (NGFF 0.5 image-label); return its array."""
    import zarr

    from ..io import ome_image_metadata
    from ..io import incomplete_status

    group = zarr.open_group(str(root), mode="a")
    lab_group = group.require_group("labels")
    lab_group.attrs.update({"ome": {"version": "0.5", "labels": ["cells"]}})
    cells = lab_group.require_group("cells")
    arr = cells.create_array("0", shape=tuple(spatial), chunks=tuple(min(s, c) for s, c in zip(spatial, chunks)),
                             dtype=np.uint32, fill_value=0, overwrite=True, attributes=incomplete_status(_WRITER))
    meta = ome_image_metadata(axes, spacing=spacing, name="cells")
    meta["image-label"] = {"version": "0.5", "source": {"image": "../../"}}
    cells.attrs.update({"ome": meta})
    return arr


def _evaluate(labels: np.ndarray, gt: np.ndarray, *, per_slice: bool, spacing) -> dict:
    from ..metrics import evaluate_segmentation

    if labels.shape != gt.shape:
        raise ValueError(f"ground_truth: expected the shape of the image {labels.shape}, got {gt.shape}")
    if not per_slice:
        return evaluate_segmentation(labels, gt, spacing=spacing).as_dict()
    slices = [evaluate_segmentation(labels[z], gt[z]).as_dict() for z in range(labels.shape[0])]
    keys = [k for k, v in slices[0].items() if isinstance(v, (int, float))]
    return {"per_slice": slices, "mean": {k: float(np.mean([s[k] for s in slices])) for k in keys}}
