"""The commands of the ``xmodal`` command line: one function per subcommand, taking the parsed
arguments and returning the exit status (see :mod:`xmodal.cli` for the parser and the error
contract)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ._cli_mws import record_offsets
from ._cli_support import (
    UsageError,
    check_folder_name,
    dask_client,
    ints_option,
    options_of,
    prepare_out,
    spacing_option,
)


def cmd_info(args) -> int:
    from ._config import backends, format_config

    info = backends()
    print(json.dumps(info, indent=2) if args.json else format_config(info))
    return 0


def cmd_register(args) -> int:
    from .pipelines import register_cells

    spots = None
    if args.spots:
        spots = {Path(s).stem: s for s in args.spots}
    fixed, moving = _register_inputs(args)
    check_folder_name(args.out, "an output folder")
    res = register_cells(
        fixed, moving, transform=args.transform, matching=args.matching,
        fixed_spacing=spacing_option(args.fixed_spacing or args.spacing),
        moving_spacing=spacing_option(args.moving_spacing or args.spacing), id_column=args.id_column,
        prealign=False if args.no_prealign else args.prealign, scale=args.scale, k=args.k, radius=args.radius,
        allow_reflection=args.allow_reflection,
        unmatched_cost="auto" if args.unmatched_cost is None else float(args.unmatched_cost),
        spots=spots, out=args.out, **_register_features(args),
    )
    chosen = f" ({res.parameters['model']})" if args.transform == "auto" else ""
    print(f"matched {res.n_matched} of {len(res.moving_points)} moving and {len(res.fixed_points)} fixed cells "
          f"in {res.timings['total']:.2f} s{chosen}; outputs in {args.out}")
    return 0


def _register_inputs(args):
    """The two inputs of ``xmodal register``: the paths, or with ``--columns`` the tables read with
    those coordinate columns (and the spacing and ids as register_cells reads them)."""
    columns = _columns(getattr(args, "columns", None))
    if not columns:
        return args.fixed, args.moving
    from .io import load_points
    from .io._files import TABLE_SUFFIXES

    out = []
    for side, spacing in (("fixed", args.fixed_spacing or args.spacing), ("moving", args.moving_spacing or args.spacing)):
        path = Path(getattr(args, side))
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise UsageError(f"--columns: needs tables (.csv, .tsv, .parquet) for both inputs, got {side} {path}")
        out.append(load_points(path, columns=columns, spacing=spacing_option(spacing), id_column=args.id_column,
                               name=side))
    return out


def _register_features(args) -> dict:
    """``--features-columns`` / ``--feature-weight`` of ``xmodal register`` as keyword arguments of
    :func:`register_cells` (the columns of both tables, rows in the order of the cells)."""
    columns = [c.strip() for a in (getattr(args, "features_columns", None) or []) for c in a.split(",") if c.strip()]
    weight = getattr(args, "feature_weight", "auto")
    if weight != "auto":
        try:
            weight = float(weight)
        except ValueError:
            raise UsageError(f"--feature-weight: expected 'auto' or a number >= 0, got {weight!r}") from None
    if not columns:
        return {}
    from .atlas._tables import _features
    from .io import read_table
    from .io._files import TABLE_SUFFIXES

    out = {"feature_weight": weight, "feature_cpd": bool(getattr(args, "feature_cpd", True))}
    for side in ("fixed", "moving"):
        path = Path(getattr(args, side))
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise UsageError(f"--features-columns: needs tables (.csv, .tsv, .parquet) for both inputs, got {side} "
                             f"{path}")
        if not path.is_file():
            raise UsageError(f"{side}: file not found: {path}")
        out[f"{side}_features"] = _features(read_table(path), path, columns)
    return out


def _columns(text):
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def cmd_atlas(args) -> int:
    from .atlas import build_atlas, read_samples, write_atlas_report

    out = prepare_out(args.out, kind="file", command="atlas", inputs=args.samples)
    report = prepare_out(out.with_name(out.stem + ".report.html"), kind="file", command="atlas", inputs=args.samples)
    if len(args.samples) < 2:
        raise UsageError(f"samples: an atlas needs at least 2 annotated tables, got {len(args.samples)}")
    samples, names, feats = read_samples(args.samples, names_column=args.names_column,
                                         feature_columns=args.features_columns, columns=_columns(args.columns),
                                         spacing=spacing_option(args.spacing))
    for path, nm in zip(args.samples, names):
        if len(nm) == 0:
            raise UsageError(f"{path}: no named cells in column {args.names_column!r}")
    atlas = build_atlas(samples, names=names, features=feats, feature_names=args.features_columns,
                        allow_reflection=args.allow_reflection, calibrate=not args.no_calibration)
    atlas.parameters["inputs"] = [str(p) for p in args.samples]
    # how the tables were read, so that 'identify' can read a sample the same way (units!)
    atlas.parameters["tables"] = {"names_column": args.names_column, "columns": _columns(args.columns),
                                  "spacing": spacing_option(args.spacing), "features_columns": args.features_columns}
    # the slow report is written aside first, then the atlas and the report replace the old pair
    # back to back: a killed run leaves both old files or both new ones
    staged = report.with_name(f".{report.name}.xmodal-partial")
    write_atlas_report(atlas, staged)
    try:
        atlas.save(out)
        os.replace(staged, report)
    finally:
        staged.unlink(missing_ok=True)  # the atlas could not be saved: no staged report left behind
    cal = atlas.calibration
    extra = (f"; leave-one-out accuracy {cal['loo_mean_accuracy']:.3f}, ECE {cal['loo_ece']:.3f}"
             if cal.get("loo_mean_accuracy") is not None else "")
    print(f"atlas of {atlas.n_samples} samples, {len(atlas.names)} names{extra}; written to {out} (report: {report})")
    return 0


def cmd_identify(args) -> int:
    from .atlas import Atlas, identify, read_cells, write_identification

    import numpy as np

    from .io import provenance_record, write_json

    out = prepare_out(args.out, kind="file", command="identify", inputs=(args.cells, args.atlas))
    provenance = prepare_out(out.with_suffix(".provenance.json"), kind="file", command="identify",
                             inputs=(args.cells, args.atlas))
    if not Path(args.atlas).is_file():
        raise UsageError(f"--atlas: file not found: {args.atlas}")
    atlas = Atlas.load(args.atlas)
    if atlas.feature_names and not args.features_columns:
        raise UsageError(f"--features-columns: the atlas was built with features {atlas.feature_names}; "
                         "give the same columns")
    pts, feats, ids = read_cells(args.cells, feature_columns=args.features_columns, columns=_columns(args.columns),
                                 spacing=spacing_option(args.spacing), id_column=args.id_column)
    if args.top_k < 1:
        raise UsageError(f"--top-k: expected a positive integer, got {args.top_k}")
    built = atlas.parameters.get("tables") or {}
    if "spacing" in built and built["spacing"] != spacing_option(args.spacing):
        given = [built["spacing"], spacing_option(args.spacing)]
        given = [",".join(f"{v:g}" for v in np.atleast_1d(g)) if g is not None else "(none)" for g in given]
        print(f"xmodal identify: warning: the atlas was built with --spacing {given[0]}, the cells are read with "
              f"--spacing {given[1]}: their coordinates must be in the atlas's units", file=sys.stderr)
    res = identify(pts, atlas, features=feats, top_k=args.top_k, allow_reflection=args.allow_reflection)
    write_identification(res, out, ids=ids)
    summary = {"n_cells": len(res.names), "n_named": res.n_named, "reflected": bool(res.reflected),
               "mean_confidence": float(res.confidence.mean()) if len(res.names) else None,
               "n_confidence_0.9": int((res.confidence >= 0.9).sum()), "transform": res.transform.to_dict(),
               "fit": res.diagnostics["fit"],
               "atlas": {"samples": atlas.n_samples, "names": len(atlas.names), "tables": built,
                         "loo_mean_accuracy": atlas.calibration.get("loo_mean_accuracy")}}
    write_json(provenance, provenance_record("identify", options_of(args), {"cells": args.cells, "atlas": args.atlas})
               | {"result": summary})
    sure = int((res.confidence >= 0.9).sum())
    print(f"named {res.n_named} of {len(res.names)} cells ({sure} with confidence >= 0.9); written to {out}")
    return 0


def cmd_match(args) -> int:
    import numpy as np

    from .io import load_points, provenance_record, write_csv, write_json
    from .matching import match_points

    out = prepare_out(args.out, kind="file", command="match", inputs=(args.a, args.b))
    prepare_out(out.with_suffix(".provenance.json"), kind="file", command="match", inputs=(args.a, args.b))
    a = load_points(args.a, spacing=spacing_option(args.spacing), id_column=args.id_column, name="a")
    b = load_points(args.b, spacing=spacing_option(args.spacing), id_column=args.id_column, name="b")
    res = match_points(a.points, b.points, k=args.k, radius=args.radius, unmatched_cost=args.unmatched_cost,
                       mode=args.mode)
    rows, cols = np.asarray(res.rows), np.asarray(res.cols)
    dist = np.linalg.norm(a.points[rows] - b.points[cols], axis=1)
    write_csv(out, ["a_index", "b_index", "a_id", "b_id", "distance"], [rows, cols, a.ids[rows], b.ids[cols], dist])
    write_json(out.with_suffix(".provenance.json"),
               provenance_record("match", options_of(args), {"a": args.a, "b": args.b}))
    print(f"{len(rows)} pairs, total cost {float(res.cost):.6g}; written to {out}")
    return 0


def cmd_cpd(args) -> int:
    import numpy as np

    from ._progress import progress_bar
    from .io import begin_folder, commit_folder, load_points, provenance_record, write_csv, write_json
    from .registration import cpd, cpd_coarse_to_fine

    out = prepare_out(args.out, kind="folder", command="cpd", inputs=(args.moving, args.fixed),
                       overwrite=args.overwrite)
    mov = load_points(args.moving, spacing=spacing_option(args.spacing), name="moving")
    fix = load_points(args.fixed, spacing=spacing_option(args.spacing), name="fixed")
    opts = {k: getattr(args, k) for k in ("w", "beta", "lam", "max_iter", "tol", "estep", "estep_tol")
            if getattr(args, k) is not None}
    total = opts.get("max_iter", 50 if args.coarse else 150)
    with progress_bar(total, desc="cpd", unit="iteration", enabled=not args.quiet) as bar:
        opts["callback"] = lambda **_: bar.update(1)
        if args.coarse:
            res = cpd_coarse_to_fine(mov.points, fix.points, transform=args.transform, n_coarse=args.coarse, **opts)
        else:
            res = cpd(mov.points, fix.points, transform=args.transform, device=args.device, **opts)
    stage = begin_folder(out, name="--out")  # after the fit: a refused run leaves no folder; renamed when complete
    write_json(stage / "transform.json", res.transform.to_dict())
    moved = np.asarray(res.moved)
    axes = ["z", "y", "x"][-moved.shape[1]:]
    write_csv(stage / "moved.csv", ["id", *axes], [mov.ids, *moved.T])
    write_json(stage / "provenance.json",
               provenance_record("cpd", options_of(args), {"moving": args.moving, "fixed": args.fixed})
               | {"iterations": int(res.iterations), "converged": bool(res.converged), "sigma2": float(res.sigma2)})
    commit_folder(stage, out)
    print(f"cpd {args.transform}: {res.iterations} iterations, converged={res.converged}, "
          f"sigma2={float(res.sigma2):.4g}; outputs in {out}")
    return 0


def cmd_predict(args) -> int:
    """``xmodal predict``: :func:`xmodal.predict_tiled` into an OME-Zarr image. A 2-D model on a 3-D
    image without ``--channel-axis`` predicts the (z, y, x) stack slice by slice, as ``segment`` does
    (one tiled prediction over the whole stack, tiles one slice deep, normalised over the whole stack)."""
    from ._cli_support import same_path
    from .inference import Standardize, global_mean_std, model_normalizer, predict_tiled
    from .inference._receptive import is_torch_module, spatial_signature
    from .io import read_image
    from .models import load_model

    where = check_folder_name(args.out, "an OME-Zarr image")
    if where.exists():  # checked before anything is read or created
        if same_path(where, args.image):
            raise UsageError(f"--out: {where} is also the input image; choose another output path")
        if not where.is_dir():
            raise UsageError(f"--out: expected the path of an OME-Zarr image (a folder), got {where}, which is an "
                             f"existing file; choose another path")
        if any(where.iterdir()) and not any((where / n).is_file() for n in ("zarr.json", ".zgroup", ".zarray")):
            raise UsageError(f"--out: expected a new path or an earlier prediction to resume, got {where}, a "
                             f"folder that is not a zarr store")
    model = load_model(args.model)
    image = read_image(args.image)
    normalize = {"none": None, "quantile": "quantile"}.get(args.normalize)
    spec = getattr(model, "metadata", {}).get("normalization") if isinstance(getattr(model, "metadata", None), dict) else None
    if args.normalize == "auto" and isinstance(spec, dict) and "kind" in spec:
        normalize = model_normalizer(image, spec)
    elif args.normalize in ("auto", "standardize"):
        normalize = Standardize(*global_mean_std(image, name="image"))
    # one value: the same on every axis (as the Python API takes it)
    halo = args.halo if args.halo == "auto" else ints_option(args.halo, "--halo")
    halo = halo[0] if isinstance(halo, (tuple, list)) and len(halo) == 1 else halo
    tile_shape = ints_option(args.tile_shape)
    tile_shape = tile_shape[0] if isinstance(tile_shape, (tuple, list)) and len(tile_shape) == 1 else tile_shape
    device, base, stack = args.device, model, False
    if (is_torch_module(model) and image.ndim == 3 and args.channel_axis is None
            and spatial_signature(model)[0] == 2):  # a 2-D model's (z, y, x) stack: slice by slice
        from .pipelines._slicewise import slicewise

        if image.shape[2] <= 4 < image.shape[1]:
            raise UsageError(f"image: shape {tuple(image.shape)} looks like a colour image (its last axis holds "
                             f"{image.shape[2]} channels), which would be predicted as {image.shape[0]} sections of "
                             f"{image.shape[1]} x {image.shape[2]} pixels; convert it to grey first, or give "
                             f"--channel-axis 2 for a model that reads colour channels")

        model, tile_shape, halo = slicewise(model, tuple(image.shape[1:]), tile_shape, halo, device)
        device, stack = "auto", True  # the wrapper runs the model on the device itself
    out = predict_tiled(model, image, tile_shape=tile_shape, halo=halo, blend=args.blend,
                        device=device, normalize=normalize, channel_axis=args.channel_axis, out=args.out,
                        client=dask_client(args), progress=not args.quiet)
    _declare_scale(args.out, args.image, image.ndim - (args.channel_axis is not None))
    record_offsets(args.out, base, stack)  # for 'xmodal mws' without --offsets
    print(f"prediction of shape {tuple(out.shape)} written to {args.out}")
    return 0


def _declare_scale(out, image_path, ndim: int) -> None:
    """The voxel size (and unit) an OME-Zarr or TIFF input declares, copied into the OME-Zarr
    prediction ``out`` so that the two overlay in physical units (nothing when the input declares none)."""
    from .io._ome import declared_scale, set_ome_zarr_scale

    spacing, units = declared_scale(image_path, ndim)
    set_ome_zarr_scale(out, spacing, units)


def cmd_segment(args) -> int:
    from .pipelines import segment

    check_folder_name(args.out, "an output folder")
    res = segment(args.raw, model=args.model, out=args.out, min_size=args.min_size, method=args.method,
                  tile_shape=ints_option(args.tile_shape), device=args.device, client=dask_client(args),
                  ground_truth=args.ground_truth, spacing=spacing_option(args.spacing), progress=not args.quiet,
                  tta=args.tta, memory_voxels=args.memory_voxels,
                  block_shape=ints_option(args.block_shape, "--block-shape"))
    line = f"{res.n_segments} segments in {res.timings['total']:.1f} s; outputs in {args.out}"
    if res.metrics is not None:
        m = res.metrics.get("mean", res.metrics)
        line += f"; ARand {m['arand']:.4f}, VOI split {m['voi_split']:.3f}, merge {m['voi_merge']:.3f}"
    print(line)
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .io import read_image, write_json
    from .metrics import evaluate_segmentation

    if not args.methods and args.baseline_threshold is not None:
        raise UsageError("--baseline-threshold: applies only with --methods (segmenting a raw image); "
                         "without it the first argument is scored as it is")
    out = None if not args.out else prepare_out(args.out, kind="file", command="evaluate",
                                                 inputs=(args.segmentation, args.ground_truth))
    if args.methods:
        return _evaluate_methods(args, out)
    seg = np.asarray(read_image(args.segmentation)[...])
    gt = np.asarray(read_image(args.ground_truth)[...])
    scores = evaluate_segmentation(seg, gt, ignore_gt=tuple(args.ignore_gt)).as_dict()
    text = json.dumps(scores, indent=2, default=float)
    if out is not None:
        write_json(out, scores)
    print(text)
    return 0


def _evaluate_methods(args, out) -> int:
    from .io import write_json
    from .pipelines.compare import METHODS, compare_segmentation_methods, format_comparison

    methods = METHODS if args.methods.strip() == "all" else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    res = compare_segmentation_methods(args.segmentation, args.ground_truth, model=args.model, methods=methods,
                                       baseline_threshold=args.baseline_threshold, ignore_gt=tuple(args.ignore_gt),
                                       device=args.device, progress=not args.quiet)
    if out is not None:
        write_json(out, res)
    print(format_comparison(res))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, progress=not args.quiet)
    print(summary)
    return 0
