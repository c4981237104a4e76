"""``xmodal mws``: mutex watershed of affinities, single-shot or blockwise, into a zarr array
(see :mod:`xmodal.cli` for the error contract)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ._cli_support import UsageError, dask_client, ints_option, numbers_option, offsets_option, options_of, prepare_out


def cmd_mws(args) -> int:
    from .io import begin_folder, commit_folder, provenance_attributes, read_image
    from .segmentation.mws import _check_bias, _check_n_attractive, _check_offsets

    out = prepare_out(args.out, kind="zarr", command="mws", inputs=(args.affinities,), overwrite=args.overwrite)
    aff = read_image(args.affinities)
    offsets = offsets_option(args.offsets)
    if offsets is None:  # those an 'xmodal predict' output recorded, with its attractive channels
        recorded = recorded_offsets(args.affinities, aff)
        offsets = recorded.get("offsets")
        if offsets is None:
            raise UsageError("--offsets: expected a JSON list of offsets (or a file), got none (and the affinities "
                             "record none)")
        args.offsets = offsets  # (for the provenance record)
        if args.n_attractive is None and args.bias is None and recorded.get("n_attractive") is not None:
            args.n_attractive = int(recorded["n_attractive"])
    if len(aff.shape) not in (3, 4):
        raise UsageError(f"affinities {args.affinities}: expected shape (C, y, x) or (C, z, y, x), "
                         f"got {tuple(aff.shape)}")
    spatial = tuple(aff.shape[1:])
    # everything that can be checked is checked before the output is created
    offsets = _check_offsets(offsets, int(aff.shape[0]), len(spatial)).tolist()
    _check_n_attractive(args.n_attractive, int(aff.shape[0]), len(spatial))
    bias = None
    if args.bias is not None:
        bias = (numbers_option(args.bias, "--bias", x_separates=False) if not isinstance(args.bias, (int, float, list))
                else args.bias)
        bias = bias[0] if isinstance(bias, list) and len(bias) == 1 else bias
        if args.n_attractive is not None:
            raise UsageError("--bias: not used with --n-attractive (the sign of affinity + bias decides); give one")
        _check_bias(bias, int(aff.shape[0]))
    weighting = {"n_attractive": args.n_attractive} if bias is None else {"bias": bias}
    block_shape = None
    if args.block_shape:
        block_shape = ints_option(args.block_shape, "--block-shape")
        if len(block_shape) != len(spatial) or min(block_shape) < 1:
            raise UsageError(f"--block-shape: expected {len(spatial)} positive integers (one per spatial axis of "
                             f"{tuple(spatial)}), got {args.block_shape!r}")
    if getattr(args, "join", None) and not block_shape:
        raise UsageError(f"--join: joins the blocks of a blockwise run; give --block-shape too, got --join {args.join}")
    if getattr(args, "join", None) == "votes" and bias is not None:
        raise UsageError("--join: 'votes' is not available with --bias (any channel may attract); use fragments")
    attrs = provenance_attributes("mws", options_of(args), {"affinities": args.affinities})
    # The array is written next to --out and renamed into place when complete (a killed run leaves the
    # previous output or none). Blockwise work is resumable from <out>.xmodal-work: a block is reused
    # only when its affinities and the parameters are unchanged; the folder is removed on success.
    stage = begin_folder(out, name="--out")
    workdir = out.parent / (out.name + ".xmodal-work")
    try:
        n = _mws_into(stage, aff, offsets, spatial, block_shape, attrs, weighting, workdir, args)
    except (ValueError, TypeError):
        # Bad input (e.g. a NaN found in some block) fails the same way on every rerun: nothing
        # worth resuming, so leave no staging or work folder behind.
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    commit_folder(stage, out)
    print(f"{n} segments written to {out}")
    return 0


def _mws_halo(offsets) -> list:
    """The blockwise halo of ``xmodal mws``: the longest offset per axis, at least one voxel (an
    axis no offset crosses, such as z of a stack of 2D affinities, still gets one to stitch on)."""
    import numpy as np

    return np.maximum(np.abs(np.asarray(offsets)).max(axis=0), 1).tolist()


def _mws_into(stage, aff, offsets, spatial, block_shape, attrs, weighting, workdir, args) -> int:
    """Segment into the staging folder (blockwise when ``block_shape``); the number of segments."""
    import numpy as np

    from .io import create_array, mark_complete
    from .segmentation import blockwise_mutex_watershed, mutex_watershed, remove_small_segments

    if block_shape:
        from .pipelines._agglomerate import filter_small

        target = create_array(stage, spatial, np.uint64, chunks=block_shape, overwrite=True,
                              attributes=attrs, writer="xmodal mws")
        client = dask_client(args)
        res = blockwise_mutex_watershed(aff, offsets, block_shape=block_shape,
                                        halo=_mws_halo(offsets), out=target,
                                        invert=args.invert, client=client, **weighting,
                                        workdir=workdir, join=getattr(args, "join", None))
        # the same size filter as single-shot (identical result), block by block, in place
        _, n = filter_small(target, int(res.n_labels), aff, offsets, n_attractive=args.n_attractive,
                            min_size=args.min_size, block_shape=block_shape, client=client, invert=args.invert,
                            writer="xmodal mws")
    else:
        a = np.asarray(aff[...])
        labels = mutex_watershed(a, offsets, invert=args.invert, **weighting)
        if args.min_size > 1:
            labels = remove_small_segments(labels, args.min_size, affinities=a, offsets=offsets,
                                           n_attractive=args.n_attractive, invert=args.invert)
        target = create_array(stage, labels.shape, labels.dtype, overwrite=True, attributes=attrs,
                              writer="xmodal mws")
        target[...] = labels
        mark_complete(target, "xmodal mws")
        n = int(labels.max())
    return n


def record_offsets(out, model, stack: bool) -> None:
    """Record the offsets (and attractive channels) of ``model`` in the attributes of the OME-Zarr
    prediction ``out``, in its spatial axes (a 2-D model's stack: a 0 z component), so that
    ``xmodal mws`` needs no ``--offsets`` for it. Nothing for a model without offsets or whose
    channels are not merge probabilities."""
    offsets = getattr(model, "offsets", None)
    meta = getattr(model, "metadata", None)
    convention = meta.get("convention", "merge_probability") if isinstance(meta, dict) else "merge_probability"
    if offsets is None or convention != "merge_probability":
        return
    import numpy as np
    import zarr

    offs = np.asarray(offsets, dtype=np.int64)
    if stack:
        offs = np.column_stack([np.zeros(len(offs), np.int64), offs])
    group = zarr.open_group(str(out), mode="r+")
    record = dict(group.attrs.get("xmodal") or {})
    record["offsets"] = offs.tolist()
    if getattr(model, "n_attractive", None) is not None:
        record["n_attractive"] = int(model.n_attractive)
    group.attrs["xmodal"] = record


def recorded_offsets(path, aff) -> dict:
    """The ``offsets`` / ``n_attractive`` recorded with affinities: in the array's attributes, else in
    those of the OME-Zarr group ``path`` (an 'xmodal predict' output); {} when none."""
    record = aff.attrs.get("xmodal") if hasattr(aff, "attrs") else None
    if isinstance(record, dict) and record.get("offsets") is not None:
        return record
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return {}
    record = doc.get("attributes", {}).get("xmodal") if isinstance(doc, dict) else None
    return record if isinstance(record, dict) else {}
