"""Halo tiled inference: predict_tiled (planned in :mod:`._plan`, run by :mod:`._run`)."""

from __future__ import annotations

import logging
import os
import time

from .. import io as xio
from .._validation import describe
from ._model import kept_state
from ._plan import WRITER as _WRITER
from ._plan import Plan, plan_prediction, read_raw
from ._run import run_dask, run_local
from ._run_blend_dask import run_dask_blended

log = logging.getLogger("xmodal.inference")


def _input_digest(plan: Plan) -> str:
    """The run's input digest: the digests of every tile's window, in tile order (reads, no model)."""
    return xio.combine_digests(xio.data_digest(read_raw(plan.image, plan.caxis, t.window)) for t in plan.tiles)


def predict_tiled(model, image, *, tile_shape=None, halo="auto", blend="crop", batch_size="auto", device="auto",
                  normalize=None, channel_axis=0, out=None, client=None, progress=True, resume=True):
    """Predict a network over an image of any size, tile by tile, with a halo of real context.

    The output is cut into a grid of tiles aligned to the network's total down-sampling factor.
    Every tile is predicted from an input window reaching ``halo`` voxels beyond it (window edges
    inside the volume aligned to the factor; at the volume border only real data, no padding), and
    with ``blend="crop"`` only the tile itself is kept. For a network whose output depends on its
    input only through its receptive field (eval-mode BatchNorm, no InstanceNorm or per-window
    statistics) and ``halo >= receptive field / 2`` the result equals the whole-volume prediction
    (up to float rounding of the convolution algorithms, ~1e-6 in float32).

    Parameters
    ----------
    model : torch.nn.Module or callable
        The network, in the mode it should run (call ``model.eval()`` first; BatchNorm or dropout
        in training mode is logged as a warning, and the model's buffers, e.g. BatchNorm running
        statistics, are restored afterwards). A torch module is called on batches
        ``(B, C_in, *spatial)`` in the dtype of its first floating parameter (float32 without one);
        it must return ``(B, C_out, *spatial)`` (same spatial shape), or a tuple / list whose first
        element is that. A callable that is not a torch module gets float32 numpy arrays and returns
        arrays. A module normalising by the statistics of each window (GroupNorm, InstanceNorm
        without running statistics) is logged as a warning: no tiling reproduces its whole-volume
        prediction exactly (:func:`tile_mismatch` measures by how much).
    image : numpy array, zarr array, dask array or path to a zarr array / OME-Zarr image
        2-D or 3-D, with or without a channel axis. For a torch module the number of spatial axes
        comes from its first convolution; for other callables 2 or 3 axes are spatial and a 4-D
        image has a channel axis. A 2-D torch module takes a 3-D image as a channel image (a
        ``(z, y, x)`` stack is predicted slice by slice by ``xmodal predict`` and
        :func:`xmodal.segment`). Values must be finite: NaN or infinity raise ValueError (an
        in-memory numpy image is checked before any tile runs; a memory-mapped, zarr or dask image
        window by window as it is read, without an extra pass).
    tile_shape : sequence of int, optional
        Output tile in voxels per spatial axis, a multiple of the down-sampling factor (axes longer
        than the image are clipped). ``None``: the largest tile that fits memory
        (:func:`find_tile_shape`; torch modules only, give it for other callables).
    halo : "auto", int or sequence of int
        Context read around every tile (voxels). ``"auto"``: half the analytic receptive field,
        rounded up to the down-sampling factor (:func:`receptive_field`). A given halo below half the
        analytic receptive field is logged as a warning (the result may then differ from the
        whole-image prediction near tile edges). A network with a global field (global pooling,
        ``x.mean((2, 3))``, attention over all positions: :class:`GlobalFieldError`) has no
        finite halo: ``"auto"`` raises, a given halo is used with a warning (tiles differ from
        the whole-image prediction unless one tile covers the image).
    blend : {"crop", "linear", "gaussian"}
        ``"crop"`` keeps the tile's part of each window prediction (exact; out of core; distributed).
        The blended modes weight whole window predictions (linear ramp across the halo, or a
        Gaussian centred on the tile) with the native accumulation kernel and normalise by the sum
        of weights, out of core: float32 accumulators only for the output blocks that windows
        still to come overlap (a slab about a window plus two blocks thick along the axis with the
        most tiles), each block written whole to ``out`` as soon as its last window is added
        (locally or on a dask ``client``).
    batch_size : "auto" or int
        Windows per forward pass (windows of equal shape are batched). ``"auto"``: 1 on the CPU,
        4 on a GPU.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        Where a torch module runs (``"auto"``: where its parameters are if on a GPU, else a GPU when
        torch sees one, else the CPU). The module is moved there (and stays there).
    normalize : None, "quantile" or callable
        ``"quantile"``: per channel, clip to the global 1 % and 98 % quantiles computed out of core
        (histogram, within ``(max - min) / 65536``) and scale to [0, 1]. A callable is applied to
        every float32 window ``(C, *window)``; it must be point-wise for the result to stitch and
        return finite values (ValueError otherwise, e.g. a per-window z-score of a constant window).
    channel_axis : int or None
        The image's channel axis when it has one: an axis of the image (``-image.ndim`` to
        ``image.ndim - 1``, checked also when the image has none; ValueError otherwise).
    out : None, numpy array, zarr array or path
        Where to write ``(C_out, *spatial)``. ``None``: a new float32 numpy array. A path: a new
        OME-Zarr (NGFF 0.5) image with provenance attributes, chunks dividing the tile (reopened
        when it exists with the same layout, so an interrupted run resumes). With ``blend="crop"`` a
        zarr array's chunks must divide the tile (chunk-aligned writes: parallel writers never share
        a chunk); blended modes take any chunks (they write blocks of whole chunks). A given
        array must have a floating dtype (an integer one would truncate the prediction). A path
        that is an existing file, or a non-empty folder that is not a zarr store, is refused, and
        so is an ``out`` that holds the image (shared memory, the same zarr array, or the OME-Zarr
        path the image is read from): later windows would read predictions as input.
    client : dask.distributed.Client or str, optional
        Run the tiles on its workers; the model is scattered once to every worker. With a zarr
        ``out`` the workers write directly, else the crops (blended: the output blocks) come back
        to the caller. Crop mode: one task per batch. Blended modes: one task per box of whole
        output blocks, which predicts every window overlapping its box (windows on a box's edge are
        predicted by both boxes: the boxes are chosen for the shortest run on the cluster's
        threads, see docs/inference.md). Bitwise identical to the local result.
    progress : bool or callable
        Progress bar on a TTY (tqdm), log lines otherwise (see ``xmodal._progress``). A callable
        ``progress(done, total, "predict_tiled")`` is called once at the start and after every
        finished tile; an exception it raises stops the run (a zarr ``out`` keeps the tiles done
        so far, resumable).
    resume : bool
        With a zarr ``out`` in a local store, record finished tiles (crop mode; blended modes:
        finished output blocks) as marker files in ``<array path>.xmodal-progress`` (written after
        the tile's or block's chunks, each holding the SHA-256 of the input windows it was computed
        from) and, on a rerun with the same model and parameters, reuse a tile or block only when
        its windows, read again, have the same digests (so a rerun on other data recomputes; a
        blended rerun predicts every window overlapping a block not reused). The markers are removed once the run completes. A zarr ``out``
        that is already complete for the same parameters and the same input (digest of all
        windows, recorded in its completion status) is returned without writing.

    Returns
    -------
    numpy.ndarray or zarr.Array
        The prediction ``(C_out, *spatial)``: ``out`` when given (the zarr array for a path).

    Notes
    -----
    A volume axis that is not a multiple of the down-sampling factor: windows still start on the
    factor grid and the last window ends at the volume's end, so the last window has the same
    remainder as the whole volume. A network that pads internally to the factor then gives the
    whole-volume result; one that does not would fail on the whole volume too (and fails here
    with the model's error, which gets a note naming the windows' shape and the axis off the factor
    grid, on Python >= 3.11). Peak memory (crop mode): about ``3 * batch_size + 2`` windows (two batches
    read ahead by one reader thread, one being predicted, ``batch_size + 1`` being written by one
    writer thread) plus the network's activations on one batch, whatever the image size. Blended
    modes add the open blocks' accumulators: at most ``4 * (C_out + 1)`` bytes per voxel of a slab
    ``min(extent, window + 2 blocks)`` thick along the sweep axis, across the other axes.

    A zarr output is flagged incomplete (attribute ``xmodal_output``) before its first chunk
    changes and complete after its last one, so a killed run leaves an array that
    :func:`xmodal.io.open_array` refuses to read as if it were finished. A path ``out`` is written
    in place: a previous output there is overwritten tile by tile (flagged incomplete meanwhile).
    """
    with kept_state(model):  # a model in training mode gets its buffers (BatchNorm statistics) back
        return _predict_tiled(model, image, tile_shape=tile_shape, halo=halo, blend=blend, batch_size=batch_size,
                              device=device, normalize=normalize, channel_axis=channel_axis, out=out,
                              client=client, progress=progress, resume=resume)


def _predict_tiled(model, image, *, tile_shape, halo, blend, batch_size, device, normalize, channel_axis, out,
                   client, progress, resume):
    """:func:`predict_tiled` without the restoration of the model's state."""
    if client is not None and not isinstance(client, str):
        if not hasattr(client, "scatter") or not hasattr(client, "submit"):
            raise TypeError(f"client: expected a dask.distributed.Client or a scheduler address, got {describe(client)}")
    plan = plan_prediction(model, image, tile_shape=tile_shape, halo=halo, blend=blend, batch_size=batch_size,
                           device=device, normalize=normalize, channel_axis=channel_axis, out=out,
                           progress=progress, resume=resume)
    t0 = time.perf_counter()
    if plan.out_kind == "zarr":
        prior = plan.prior_status or {}
        if (resume and prior.get("complete") and prior.get("signature") == plan.signature
                and prior.get("input_digest") and _input_digest(plan) == prior["input_digest"]):
            # The output already holds this job's result for this very input: nothing to write.
            if plan.ledger is not None:
                plan.ledger.clear()
            plan.stats.update(tiles=len(plan.tiles), skipped=len(plan.tiles))
            log.info("predict_tiled: %s is complete for this input and these parameters; reused",
                     xio.local_store_path(plan.out))
            return plan.out
        xio.mark_incomplete(plan.out, _WRITER)  # before the first chunk changes
    if client is not None:
        result = (run_dask if plan.blend == "crop" else run_dask_blended)(plan, client, device)
    else:
        result = run_local(plan)
    if plan.out_kind == "zarr":
        digests = plan.stats.get("digests", {})
        xio.mark_complete(plan.out, _WRITER, signature=plan.signature,
                          input_digest=xio.combine_digests(digests[t.index] for t in plan.tiles))
        if plan.prior_status is not None and not plan.prior_status.get("complete"):
            where = xio.local_store_path(plan.out)  # what the killed run resumed here left
            xio.remove_temporaries(where)
            if where is not None and isinstance(out, (str, os.PathLike)):  # and in the OME-Zarr group
                xio.remove_temporaries(os.path.dirname(where.rstrip("/")), recursive=False)
    plan.stats.pop("digests", None)
    if plan.ledger is not None:
        plan.ledger.clear()
    log.info("predict_tiled: %d tiles of %s (halo %s, factor %s), %d skipped as done, %.3f s",
             len(plan.tiles), plan.tile, plan.halo, plan.factor, plan.stats.get("skipped", 0),
             time.perf_counter() - t0)
    return result
