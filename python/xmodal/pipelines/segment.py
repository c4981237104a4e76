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

from .._progress import timed as _timed
from .._progress import report_stage
from .._validation import as_progress, describe, per_axis, positive_int
from ._agglomerate import GRAPH_METHODS, agglomerate, filter_small, resolve_method
from ._domain import check_em_input
from ._evaluate_step import check_ground_truth, evaluate

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
    timings : dict of step -> seconds (normalize, predict, agglomerate, size_filter, write, evaluate,
        total; a step that did not run is absent)
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


def _resolve_model(model, offsets, n_attractive):
    """The model (:func:`xmodal.models.load_model`), its (C, ndim) offsets and attractive channels."""
    from ..models import load_model

    model = load_model(model)
    if offsets is None:
        offsets = getattr(model, "offsets", None)
        if offsets is None:
            raise ValueError("offsets: expected the (C, ndim) affinity offsets of the model's output channels, got None")
    if n_attractive is None:
        n_attractive = getattr(model, "n_attractive", None)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 2 or offsets.shape[1] not in (2, 3):
        raise ValueError(f"offsets: expected a (C, 2) or (C, 3) integer array, got shape {offsets.shape}")
    return model, offsets, (offsets.shape[1] if n_attractive is None else int(n_attractive))


@dataclass
class _Job:
    """The validated inputs of one :func:`segment` run: what every step reads."""

    image: Any  # (z, y, x) or (y, x): numpy, zarr or anything that slices to numpy
    spatial: tuple
    stack: bool  # a 2D model on a z stack
    model: Any
    offsets: np.ndarray  # (C, ndim) in the labels' axes: a 2D model's offsets get a 0 z component on a stack
    n_attractive: int
    mws_kw: dict  # agglomeration weighting: {"n_attractive"} or {"bias"}, and "strides"
    min_size: int
    spacing: tuple | None
    progress: object  # bool or callable progress(done, total, stage)
    method: str = "mws"  # agglomeration: a key of _agglomerate.SINGLE_SHOT / BLOCKWISE
    units: str | None = None  # of the spacing, when an OME-Zarr raw names them

    @property
    def axes(self) -> tuple:
        return ("c",) + ("z", "y", "x")[-len(self.spatial):]


def _validate(raw, *, model, offsets, n_attractive, normalize, min_size, spacing, progress, bias, strides,
              method=None, graph_options=None) -> _Job:
    """Step 0: every argument checked (before any work), the model resolved, the image opened."""
    from ._inputs import read_raw

    progress = as_progress(progress, "progress")
    if not (normalize is None or callable(normalize) or (isinstance(normalize, str)
                                                          and normalize in ("auto", "standardize", "quantile"))):
        raise ValueError(f"normalize: expected 'auto', 'standardize', 'quantile', None or a callable, "
                         f"got {describe(normalize)}")
    image, spacing, units = read_raw(raw, spacing)  # spacing None: an OME-Zarr's declared voxel size
    if len(image.shape) not in (2, 3):
        raise ValueError(f"raw: expected a 2D image or a 3D volume (z, y, x), got shape {tuple(image.shape)}")
    if not np.issubdtype(np.dtype(image.dtype), np.number) or np.issubdtype(np.dtype(image.dtype), np.complexfloating):
        raise TypeError(f"raw: expected a real numeric image, got {describe(image)}")
    if any(int(n) < 1 for n in image.shape):
        raise ValueError(f"raw: expected a non-empty image, got shape {tuple(image.shape)}")
    model, offsets, n_attractive = _resolve_model(model, offsets, n_attractive)
    method, min_size, extra = resolve_method(model, method, min_size, graph_options)
    spatial = tuple(int(s) for s in image.shape)
    stack = offsets.shape[1] == 2 and len(spatial) == 3
    if stack and spatial[2] <= 4 < spatial[1]:
        raise ValueError(f"raw: shape {spatial} looks like a colour image (its last axis holds {spatial[2]} "
                         f"channels); the model reads grey images or stacks (z, y, x) of grey sections, and "
                         f"would segment {spatial[0]} sections of {spatial[1]} x {spatial[2]} pixels: convert it "
                         f"to grey first (e.g. raw.mean(axis=-1))")
    if offsets.shape[1] == 3 and len(spatial) == 2:
        raise ValueError(f"offsets: a 3D model (offsets of length 3) cannot run on the 2D image of shape {spatial}")
    if method in GRAPH_METHODS:
        if bias is not None or strides is not None:
            raise ValueError(f"bias, strides: mutex watershed options, not used by method {method!r}; got "
                             f"bias={bias!r}, strides={strides!r}")
        kw = {"n_attractive": n_attractive, "stacked": stack, "min_size": min_size} | extra
        return _Job(image=image, spatial=spatial, stack=stack, model=model, offsets=_on_stack(offsets, stack),
                    n_attractive=n_attractive, mws_kw=kw, min_size=min_size, spacing=spacing, progress=progress,
                    method=method, units=units)
    mws_kw = _mws_weighting(model, offsets, n_attractive, stack, bias, strides, extra)
    return _Job(image=image, spatial=spatial, stack=stack, model=model, offsets=_on_stack(offsets, stack),
                n_attractive=n_attractive, mws_kw=mws_kw, min_size=min_size, spacing=spacing, progress=progress,
                units=units)


def _on_stack(offsets, stack: bool) -> np.ndarray:
    """A 2D model's offsets on a (z, y, x) stack get a 0 z component."""
    return np.hstack([np.zeros((len(offsets), 1), np.int64), offsets]) if stack else offsets


def _mws_weighting(model, offsets, n_attractive, stack, bias, strides, extra) -> dict:
    """The mutex watershed's keyword arguments: signed-weight ``bias`` or ``n_attractive`` (with the
    model's stored ``repulsive_bias`` when no ``bias`` is given), and ``strides``."""
    from ..segmentation.mws import _check_bias, _check_strides

    C = len(offsets)
    if strides is None and bias is None:
        strides = extra.get("strides")
    extra = {k: v for k, v in extra.items() if k != "strides"}
    bias = _check_bias(getattr(model, "mws_bias", None) if bias is None else bias, C)
    strides = _check_strides(getattr(model, "mws_strides", None) if strides is None else strides, offsets.shape[1], C)
    if bias is not None and strides is not None and not isinstance(strides[0], list):
        raise ValueError(f"strides: with bias give per-offset strides of shape ({C}, {offsets.shape[1]}), got {strides}")
    if stack and strides is not None:  # the 2D model's strides on the (z, y, x) stack
        strides = [[1] + row for row in strides] if isinstance(strides[0], list) else [1] + strides
    if bias is not None:
        return {"bias": bias, "strides": strides}
    return {"n_attractive": n_attractive, "strides": strides} | extra


def _normalizer(image, normalize, model=None):
    """Step 1: the point-wise normalisation, from statistics of the whole input (never per slice or tile).

    "auto": the normalisation the model's ``metadata["normalization"]`` describes
    (:func:`xmodal.inference.model_normalizer`; the EM model: global 1 % / 99 % quantiles), else
    "standardize". "standardize": global mean and standard deviation, computed here block by block. "quantile" is
    passed on: :func:`xmodal.predict_tiled` computes the global quantiles of the whole input it gets,
    which is the whole volume or stack (one call, see :func:`_predict`).
    """
    spec = getattr(model, "metadata", None)
    spec = spec.get("normalization") if isinstance(spec, dict) else None
    if isinstance(normalize, str) and normalize == "auto" and isinstance(spec, dict) and "kind" in spec:
        from ..inference import model_normalizer

        return model_normalizer(image, spec)
    if isinstance(normalize, str) and normalize in ("auto", "standardize"):
        from ..inference import Standardize, global_mean_std

        return Standardize(*global_mean_std(image))
    return normalize


def _predict(job: _Job, normalizer, root, *, tile_shape, halo, device, client):
    """Step 2: affinities ``(C, *spatial)`` in one :func:`xmodal.predict_tiled` call (zarr at ``root``)."""
    from ..inference import predict_tiled

    model = job.model
    if job.stack:  # a 2D model on a z stack: one plan for the whole stack
        from ._slicewise import slicewise

        model, tile_shape, halo = slicewise(job.model, job.spatial[1:], tile_shape, halo, device)
        device = "auto"  # the wrapper runs the model on the device itself
    aff = predict_tiled(model, job.image, out=None if root is None else str(root), client=client,
                        tile_shape=tile_shape, halo=halo, device=device, normalize=normalizer, channel_axis=None,
                        progress=job.progress)
    if root is not None:
        import zarr

        from ..io import ome_image_metadata

        zarr.open_group(str(root), mode="r+").attrs.update(
            {"ome": ome_image_metadata(job.axes, spacing=job.spacing, units=job.units, name="affinities")})
    return aff


def segment(raw, *, model="em", out=None, offsets=None, n_attractive=None, normalize="auto",
            tile_shape=None, halo="auto", device="auto", client=None, min_size=None,
            block_shape=None, memory_voxels: int = 1 << 27, ground_truth=None, spacing=None,
            progress=False, bias=None, strides=None, method=None, graph_options=None,
            tta=False) -> SegmentationResult:
    """Segment a raw image or volume of any size into instances.

    The run is a chain of named steps: validate (:func:`_validate`) -> normalise (:func:`_normalizer`)
    -> predict (:func:`_predict`) -> agglomerate and size filter (``pipelines/_agglomerate.py``)
    -> write (:func:`_commit`) -> evaluate (``pipelines/_evaluate_step.py``).

    Parameters
    ----------
    raw : array, zarr array or path (.zarr / OME-Zarr, .tif, .npy)
        2D image or 3D volume (z, y, x), single channel, non-empty, finite. A 2D model is applied
        slice by slice to a 3D stack (one tiled prediction over the whole stack, tiles one slice
        deep). Any size: the shipped models pad the image end to their down-sampling factor
        internally.
    model : "em", "isbi2012", torch module or path to a TorchScript file
        Network predicting merge probabilities (1 = same object) for ``offsets``. "em" (default) is
        the shipped 2D EM affinity model (:func:`xmodal.models.load_em_affinity_unet`), which
        carries its normalisation and the segmentation settings chosen on ISBI 2012 training
        slices 20-24 (``model.segmentation_defaults``: ``method``, ``min_size`` and the method's
        options); "isbi2012" the previous model (:func:`xmodal.models.load_isbi2012_affinity_unet`).
    out : path, optional
        Output folder: ``segmentation.ome.zarr`` (affinities as the image, labels in the OME-Zarr
        labels group ``labels/cells``), ``metrics.json``, ``provenance.json``. Written into the
        sibling ``<out>.xmodal-partial`` and renamed to ``out`` when complete (replacing a previous
        output there in one step), so a killed run leaves the previous complete folder or none. A
        rerun after a kill resumes from the partial folder: prediction tiles and the blocks or
        slice groups of the agglomeration are reused only when their input bytes and the parameters
        are unchanged. An existing ``out`` must be empty or a previous xmodal output (with a
        provenance.json). Give ``out`` for data larger than memory: without it the affinities of
        the whole input are held in memory.
    offsets, n_attractive : the affinity channels (default: the model's ``offsets`` /
        ``n_attractive`` attributes). Offsets follow :func:`xmodal.mutex_watershed`.
    normalize : "auto", "standardize", "quantile", None or callable
        "auto" (default): what the model's ``metadata["normalization"]`` says
        (:func:`xmodal.inference.model_normalizer`: global 1 % / 99 % quantiles for "em", global
        mean / standard deviation for "isbi2012"), "standardize" for a model without one.
        "standardize": global mean / standard deviation of the whole input (computed block by
        block; a constant image is only centred); "quantile": global 1 % / 98 % quantile scaling
        (see :func:`xmodal.predict_tiled`). Global means over the whole volume or stack, never per
        slice or tile. Other strings are an error.
    tile_shape, halo, device, client : tiled prediction (see :func:`xmodal.predict_tiled`); for a
        2D model on a stack, ``tile_shape`` and ``halo`` are given for the (y, x) plane. The
        ``client`` (dask.distributed) runs the prediction, the blockwise mutex watershed and the
        blockwise size filter.
    min_size : int, optional
        Segments smaller than this (voxels) are merged into their most attractive neighbour. Default:
        the model's stored ``min_size`` for the method, else 0. Method "mws": highest mean merge
        probability over the attractive edges they share (a segment without neighbours becomes
        background 0), with the same result single-shot and blockwise
        (:func:`xmodal.segmentation.remove_small_segments`); "gasp" / "multicut": the graph-level
        filter of :func:`xmodal.segmentation.superpixel_agglomeration` (lowest mean boundary). Ids
        are then consecutive from 1 in raster order of first occurrence.
    block_shape : sequence of int, optional
        Work block by block with these blocks; default single-shot when the volume has at most
        ``memory_voxels`` voxels, else blocks of 64 × 512 × 512 (3D) / 2048 × 2048 (2D). A 2D
        model's stack with the superpixel methods is then segmented in groups of whole slices of
        about ``prod(block_shape)`` voxels, with the same labels as in memory (slices of at most
        ``memory_voxels`` voxels; larger slices go block by block on the boundary map).
    ground_truth : label array or path, optional
        Instance labels to evaluate against (0 = ignored background / boundary).
    spacing : float or sequence of float, optional
        Voxel size (physical units, positive), one value per axis of ``raw`` or one for all axes;
        stored in the OME-Zarr metadata and used for Chamfer distances. Default: the voxel size (and
        unit) an OME-Zarr or TIFF ``raw`` declares (OME-TIFF or ImageJ metadata), else none (1 per axis).
    progress : bool or callable
        Progress of the prediction (a bar on a TTY, log lines otherwise). A callable
        ``progress(done, total, stage)`` is called per predicted tile (stage "predict_tiled") and at
        the start of each later stage (``done`` 0, ``total`` None: "agglomerate", "size_filter",
        "write", "evaluate"); an exception it raises aborts the run between steps (a GUI's cancel:
        an ``out`` folder is then left staged, resumable, never half-committed).
    bias, strides : optional
        Mutex watershed options (see :func:`xmodal.mutex_watershed`): ``bias`` selects the
        signed-weight mode (merge probability + bias per channel; ``n_attractive`` is then used only
        by the size filter), ``strides`` subsample edges (``ndim`` values for the repulsive
        channels, or ``(C, ndim)`` per offset), in the model's axes. Default: the model's
        ``mws_bias`` / ``mws_strides`` attributes when it has them, else the classic method (with
        the repulsive bias and strides stored in ``model.segmentation_defaults["mws"]``, see
        :func:`xmodal.models.em.bias_affinities`). Only for method "mws".
    method : "mws", "gasp", "multicut", optional
        Agglomeration of the affinities: the pixel mutex watershed, or the superpixel route
        (distance-transform watershed superpixels -> region graph with the mean boundary of the
        attractive links across each face -> GASP or multicut,
        :func:`xmodal.segmentation.superpixel_agglomeration`; over ``memory_voxels``: a 2D model's
        stack in groups of whole slices, the same labels; larger slices or volumes with learned
        weights in stitched blocks, :func:`xmodal.segmentation.stitched_superpixel_agglomeration`;
        without them on the boundary map,
        :func:`xmodal.segmentation.blockwise_superpixel_agglomeration`).
        Default: the model's stored method, else "mws".
    graph_options : dict, optional
        For "gasp" / "multicut": ``beta``, ``linkage``, ``threshold``, ``sigma_seeds``,
        ``sigma_weights``, ``alpha``, ``superpixel_min_size`` (see
        :func:`~xmodal.segmentation.superpixel_agglomeration`), over the model's stored ones.
        ``edge_model``: learned edge weights (an :class:`~xmodal.segmentation.EdgeClassifier` or its
        dict form); the EM model stores one for its default method, and ``{"edge_model": None}``
        turns it off (the model's hand-weighted settings are then used).
    tta : bool
        Test-time augmentation: the network's affinities averaged over the 8 rotations / flips of
        each tile (:class:`xmodal.inference.DihedralTTA`; 2D torch models whose offsets are closed
        under rotations and flips). 8 times the prediction cost. Default False: on the ISBI 2012
        tuning slices 20-24 it improved the thresholded-boundary baseline (ARand 0.0336 -> 0.0290)
        but not the superpixel route (``docs/segmentation_graph.md``).
    """
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    job = _validate(raw, model=model, offsets=offsets, n_attractive=n_attractive, normalize=normalize,
                    min_size=min_size, spacing=spacing, progress=progress, bias=bias, strides=strides,
                    method=method, graph_options=graph_options)
    truth = check_ground_truth(ground_truth, job.spatial)  # before the prediction, not after it
    if not isinstance(tta, bool):
        raise TypeError(f"tta: expected True or False, got {describe(tta)}")
    memory_voxels = positive_int(memory_voxels, "memory_voxels")
    if block_shape is not None:  # checked before the prediction, not after it
        block_shape = per_axis(block_shape, len(job.spatial), "block_shape", minimum=1)
    if tile_shape is not None:  # its form checked before the output folder is staged (predict_tiled: the rest)
        per_axis(tile_shape, len(job.spatial) - int(job.stack), "tile_shape", minimum=1)
    if tta:
        job.model = _with_tta(job)
    out_dir = stage = root = None
    if out is not None:
        from ..io import begin_folder, check_output_folder, staging_path

        out_dir = check_output_folder(out, name="out")  # refused before any work, not after
        resumed = staging_path(out_dir).exists()  # what a killed run left there is resumable (verified per block)
        stage = begin_folder(out_dir, name="out", keep=("segmentation.ome.zarr", "mws-work"))
        root = stage / "segmentation.ome.zarr"
    with _timed(timings, "normalize"):
        normalizer = _normalizer(job.image, normalize, job.model)
        looks = check_em_input(job.image, model)  # a built-in EM model on an image unlike EM: a warning
    with _timed(timings, "predict"):
        aff = _predict(job, normalizer, root, tile_shape=tile_shape, halo=halo, device=device, client=client)
    if block_shape is None and int(np.prod(job.spatial)) > memory_voxels:
        block_shape = (64, 512, 512) if len(job.spatial) == 3 else (2048, 2048)
    target = None
    if root is not None:
        chunks = (64, 256, 256)[-len(job.spatial):] if block_shape is None else tuple(block_shape)
        if block_shape is not None and job.stack and job.method in GRAPH_METHODS:
            chunks = (1,) + chunks[1:]  # written in groups of whole slices (slicewise route)
        from ..io import create_ome_zarr_labels

        target = create_ome_zarr_labels(root, "cells", job.spatial, np.uint32, axes=job.axes[1:], chunks=chunks,
                                        spacing=job.spacing, units=job.units, writer=_WRITER)
    report_stage(job.progress, "agglomerate")
    with _timed(timings, "agglomerate"):
        labels, n_segments, aff_mem = agglomerate(aff, job.offsets, job.mws_kw, method=job.method, target=target,
                                                  block_shape=block_shape, client=client, memory_voxels=memory_voxels,
                                                  workdir=None if stage is None else stage / "mws-work")
    report_stage(job.progress, "size_filter")
    with _timed(timings, "size_filter"):
        labels, n_segments = filter_small(labels, n_segments, aff_mem, job.offsets, n_attractive=job.n_attractive,
                                          min_size=0 if job.method in GRAPH_METHODS else job.min_size, block_shape=block_shape, client=client,
                                          writer=_WRITER)
    del aff_mem
    if target is not None and block_shape is None:  # single-shot labels in memory: written now
        report_stage(job.progress, "write")
        with _timed(timings, "write"):
            from ..io import mark_complete

            target[...] = labels.astype(np.uint32, copy=False)
            mark_complete(target, _WRITER)
    metrics = None
    if truth is not None:
        report_stage(job.progress, "evaluate")
        with _timed(timings, "evaluate"):
            metrics = evaluate(labels, truth, per_slice=job.stack, spacing=job.spacing)
    timings["total"] = time.perf_counter() - t_all
    result = SegmentationResult(labels=labels, affinities=aff, offsets=job.offsets, n_attractive=job.n_attractive,
                                n_segments=n_segments, metrics=metrics, timings=timings,
                                parameters=_parameters(job, raw, normalize, tile_shape, halo, block_shape)
                                | {"input_check": looks})
    if out_dir is not None:
        _commit(result, stage, out_dir, resumed=resumed, inputs={"raw": raw, "ground_truth": ground_truth})
    return result


def _with_tta(job: _Job):
    """The job's 2D torch model wrapped in :class:`xmodal.inference.DihedralTTA` (ValueError otherwise)."""
    from ..inference import DihedralTTA

    if not (hasattr(job.model, "modules") and hasattr(job.model, "parameters")):
        raise ValueError(f"tta: test-time augmentation needs a torch module, got {describe(job.model)}")
    planar = job.offsets[:, 1:] if job.stack else job.offsets
    if planar.shape[1] != 2:
        raise ValueError(f"tta: test-time augmentation needs a 2D model (offsets (C, 2)), got offsets of shape "
                         f"{tuple(job.offsets.shape)}")
    return DihedralTTA(job.model, planar)


def _parameters(job: _Job, raw, normalize, tile_shape, halo, block_shape) -> dict:
    """The run's parameters as recorded in provenance.json."""
    bias = job.mws_kw.get("bias")
    graph = {k: v for k, v in job.mws_kw.items() if k not in ("n_attractive", "bias", "strides", "stacked")}
    if hasattr(graph.get("edge_model"), "to_dict"):
        graph["edge_model"] = graph["edge_model"].to_dict()
    return {"model": getattr(job.model, "metadata", {}).get("name", type(job.model).__name__), "method": job.method,
            "agglomeration": graph,
            "offsets": job.offsets.tolist(), "n_attractive": job.n_attractive, "normalize": repr(normalize),
            "bias": None if bias is None else bias.tolist(), "strides": job.mws_kw.get("strides"),
            "tile_shape": tile_shape, "halo": halo, "min_size": job.min_size, "block_shape": block_shape,
            "tta": getattr(job.model, "transforms", 1) > 1 and type(job.model).__name__ == "DihedralTTA",
            "spacing": job.spacing, "raw": str(raw) if isinstance(raw, (str, Path)) else describe(raw)}


def _commit(result: SegmentationResult, stage: Path, out_dir: Path, *, resumed: bool, inputs: dict) -> None:
    """Step 6: metrics.json and provenance.json (``inputs``: paths or arrays; None values left out),
    then the staging folder renamed into ``out_dir``."""
    from ..io import commit_folder, open_array, remove_temporaries
    from ._output import provenance, write_json

    outputs = result.outputs
    outputs["affinities"] = str(out_dir / "segmentation.ome.zarr")
    outputs["labels"] = str(out_dir / "segmentation.ome.zarr" / "labels" / "cells")
    if result.metrics is not None:
        write_json(stage / "metrics.json", result.metrics)
        outputs["metrics"] = str(out_dir / "metrics.json")
    inputs = {k: v for k, v in inputs.items() if v is not None}
    write_json(stage / "provenance.json", provenance("segment", result.parameters, inputs) | {"timings": result.timings})
    outputs["provenance"] = str(out_dir / "provenance.json")
    if resumed:
        remove_temporaries(stage)  # files of writes the killed run never finished
    commit_folder(stage, out_dir)  # the complete folder replaces the previous output in one step
    result.affinities = open_array(outputs["affinities"])  # the handles into the staging folder moved with it
    if not isinstance(result.labels, np.ndarray):
        result.labels = open_array(outputs["labels"])
