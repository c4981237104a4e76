"""The ``xmodal`` command line.

Every subcommand takes ``--config FILE.toml``: a TOML file whose top-level keys (or the keys of a
table named after the subcommand) are the long option names (dashes or underscores), so a run can
be repeated exactly; options given on the command line override the file. Outputs carry their
provenance (xmodal version, parameters, inputs).

Errors: a mistake in the command line or its inputs (a missing or unreadable file, a table column
that is not numeric, a pickled .npy file, a bad TOML file, an invalid option value, an output path
of the wrong kind) is reported as one line ``xmodal COMMAND: error: ...`` naming the file (and
column) and the command exits with status 2. Anything else is a bug and shows its traceback
(``XMODAL_TRACEBACK=1`` shows the traceback of user errors too).

Outputs (``--out``): a file output (``match``, ``evaluate``) replaces an existing file; a folder
output (``cpd``) or zarr output (``mws``) replaces an existing one only when an earlier run of the
same command wrote it (or the folder is empty). An output path that names an input, a folder where
a file is written, a file where a folder is written, or a folder that another program wrote is
refused unless ``--overwrite`` is given (``cpd``, ``mws``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from ._version import __version__

log = logging.getLogger("xmodal.cli")


# --------------------------------------------------------------------------- helpers
class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit status 2."""


EXIT_USAGE = 2
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _is_user_error(exc: BaseException) -> bool:
    """User errors get one line and exit status 2; anything else is a bug and keeps its traceback.

    File-system and missing-package errors are always the user's. ValueError / TypeError /
    RuntimeError are when xmodal's own code raised them (argument checks name the argument); raised
    inside a third-party package they may be a bug, so the traceback is kept.
    """
    if isinstance(exc, (UsageError, OSError, ImportError)):
        return True
    if isinstance(exc, (ValueError, TypeError, RuntimeError)):
        tb, last = exc.__traceback__, None
        while tb is not None:
            last, tb = tb, tb.tb_next
        return last is None or os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)
    return False


@contextlib.contextmanager
def _inputs_named(*paths):
    """Name the input files in user errors raised by library calls on their contents."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError) as exc:
        names = list(dict.fromkeys(str(p) for p in paths if p is not None))
        msg = _one_line(exc)
        if not _is_user_error(exc) or not names or any(n in msg for n in names):
            raise
        raise UsageError(f"{msg} ({'input' if len(names) == 1 else 'inputs'}: {', '.join(names)})") from exc


def _load_toml(path: str) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from ._optional import optional_import

        tomllib = optional_import("tomli", purpose="reading TOML config files on Python 3.10")
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--config: file not found: {p}")
    if p.is_dir():
        raise UsageError(f"--config {p}: is a folder, expected a TOML file")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {p}: not valid TOML: {_one_line(exc)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {p}: not a UTF-8 text file") from None


def _same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # pragma: no cover
        return False


def _written_by(path: Path, command: str) -> bool:
    """Whether ``path`` is an earlier output of ``xmodal COMMAND`` (zarr attributes or provenance.json)."""
    for meta in (path / "zarr.json", path / "provenance.json"):
        if meta.is_file():
            try:
                doc = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            record = doc.get("attributes", {}).get("xmodal", {}) if meta.name == "zarr.json" else doc
            return record.get("function", record.get("step")) == command
    return False


def _prepare_out(out, *, kind: str, command: str, inputs=(), overwrite: bool = False) -> Path:
    """Check ``--out`` before any work: ``kind`` is "file", "folder" or "zarr" (see the module doc).

    With ``overwrite`` a refused path is removed; nothing is created here.
    """
    path = Path(out)
    for i in inputs:
        if i is not None and Path(i).exists() and _same_path(path, i):
            raise UsageError(f"--out: {path} is also an input of this command; choose another output path")
    if not path.exists():
        return path
    if kind == "file":
        if path.is_dir():
            raise UsageError(f"--out: {path} is a folder; expected the path of a file to write")
        return path
    if path.is_dir() and (not any(path.iterdir()) or _written_by(path, command)):
        return path
    if not overwrite:
        what = "a file" if not path.is_dir() else "a folder that xmodal " + command + " did not write"
        raise UsageError(f"--out: {path} exists and is {what}; choose another path or pass --overwrite to replace it")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return path


def _config_path(argv: list[str]) -> str | None:
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--config="):
            return tok.split("=", 1)[1]
    return None


def _apply_config(sub: argparse.ArgumentParser, command: str, cfg_path: str) -> None:
    """Make the options of the TOML file the defaults of ``sub`` (the command line still wins)."""
    cfg = _load_toml(cfg_path)
    table = cfg[command] if isinstance(cfg.get(command), dict) else cfg
    known = {a.dest for a in sub._actions}
    values = {}
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        dest = key.replace("-", "_")
        if dest not in known:
            raise UsageError(f"--config {cfg_path}: unknown option {key!r} for 'xmodal {command}'")
        values[dest] = value
    # Positional arguments given in the file need not be repeated on the command line.
    for action in sub._actions:
        if not action.option_strings and action.dest in values:
            action.nargs = "?"
            action.required = False
    sub.set_defaults(**values)


def _numbers(text, option: str, kind=float, *, x_separates: bool = True):
    """Comma-separated numbers (also "64x256" when ``x_separates``); UsageError naming ``option``."""
    text = str(text).replace("x", ",") if x_separates else str(text)
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UsageError(f"{option}: expected comma-separated {what}, got {text!r}") from None


def _spacing(text, option: str = "--spacing"):
    if text is None or isinstance(text, (list, tuple, float, int)):
        return text
    parts = _numbers(text, option)
    return parts[0] if len(parts) == 1 else parts


def _setup(args) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads: expected a positive integer, got {threads}")
        from ._config import set_num_threads

        set_num_threads(int(threads))


# --------------------------------------------------------------------------- commands
def _cmd_info(args) -> int:
    from ._config import backends, format_config

    info = backends()
    print(json.dumps(info, indent=2) if args.json else format_config(info))
    return 0


def _cmd_register(args) -> int:
    from .pipelines import register_cells

    spots = None
    if args.spots:
        spots = {Path(s).stem: s for s in args.spots}
    res = register_cells(
        args.fixed, args.moving, transform=args.transform, matching=args.matching,
        fixed_spacing=_spacing(args.fixed_spacing or args.spacing),
        moving_spacing=_spacing(args.moving_spacing or args.spacing), id_column=args.id_column,
        prealign=False if args.no_prealign else args.prealign, scale=args.scale, k=args.k, radius=args.radius,
        unmatched_cost="auto" if args.unmatched_cost is None else float(args.unmatched_cost),
        spots=spots, out=args.out,
    )
    print(f"matched {res.n_matched} of {len(res.moving_points)} moving and {len(res.fixed_points)} fixed cells "
          f"in {res.timings['total']:.2f} s; outputs in {args.out}")
    return 0


def _cmd_match(args) -> int:
    from .matching import match_points
    from .pipelines import load_points
    from .pipelines._output import provenance, write_csv, write_json

    out = _prepare_out(args.out, kind="file", command="match", inputs=(args.a, args.b))
    _prepare_out(out.with_suffix(".provenance.json"), kind="file", command="match", inputs=(args.a, args.b))
    a = load_points(args.a, spacing=_spacing(args.spacing), id_column=args.id_column, name="a")
    b = load_points(args.b, spacing=_spacing(args.spacing), id_column=args.id_column, name="b")
    res = match_points(a.points, b.points, k=args.k, radius=args.radius, unmatched_cost=args.unmatched_cost,
                       mode=args.mode)
    import numpy as np

    rows, cols = np.asarray(res.rows), np.asarray(res.cols)
    dist = np.linalg.norm(a.points[rows] - b.points[cols], axis=1)
    write_csv(out, ["a_index", "b_index", "a_id", "b_id", "distance"], [rows, cols, a.ids[rows], b.ids[cols], dist])
    write_json(out.with_suffix(".provenance.json"),
               provenance("match", {k: v for k, v in vars(args).items() if k != "func"}, {"a": args.a, "b": args.b}))
    print(f"{len(rows)} pairs, total cost {float(res.cost):.6g}; written to {out}")
    return 0


def _cmd_cpd(args) -> int:
    import numpy as np

    from .pipelines import load_points
    from .pipelines._output import provenance, write_csv, write_json
    from .registration import cpd

    out = _prepare_out(args.out, kind="folder", command="cpd", inputs=(args.moving, args.fixed),
                       overwrite=args.overwrite)
    mov = load_points(args.moving, spacing=_spacing(args.spacing), name="moving")
    fix = load_points(args.fixed, spacing=_spacing(args.spacing), name="fixed")
    opts = {k: getattr(args, k) for k in ("w", "beta", "lam", "max_iter", "tol") if getattr(args, k) is not None}
    from .io import begin_folder, commit_folder

    stage = begin_folder(out, name="--out")  # renamed to --out when complete
    res = cpd(mov.points, fix.points, transform=args.transform, device=args.device, **opts)
    write_json(stage / "transform.json", res.transform.to_dict())
    moved = np.asarray(res.moved)
    axes = ["z", "y", "x"][-moved.shape[1]:]
    write_csv(stage / "moved.csv", ["id", *axes], [mov.ids, *moved.T])
    write_json(stage / "provenance.json",
               provenance("cpd", {k: v for k, v in vars(args).items() if k != "func"},
                          {"moving": args.moving, "fixed": args.fixed})
               | {"iterations": int(res.iterations), "converged": bool(res.converged), "sigma2": float(res.sigma2)})
    commit_folder(stage, out)
    print(f"cpd {args.transform}: {res.iterations} iterations, converged={res.converged}, "
          f"sigma2={float(res.sigma2):.4g}; outputs in {out}")
    return 0


def _client(args):
    address = getattr(args, "scheduler", None)
    if not address:
        return None
    from ._optional import optional_import

    distributed = optional_import("distributed", purpose="--scheduler")
    return distributed.Client(address)


def _tuple(text, option: str = "--tile-shape"):
    if text is None or isinstance(text, (list, tuple)):
        return text
    return tuple(_numbers(text, option, int))


def _offsets(text):
    """--offsets: a JSON list of offsets, or a JSON file holding one."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):  # from a TOML config
        return text
    p = Path(str(text))
    if p.is_dir():
        raise UsageError(f"--offsets: {p} is a folder; expected a JSON list of offsets or a JSON file")
    if p.exists():
        try:
            return json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"--offsets: {p} is not a JSON file ({_one_line(exc)})") from None
    try:
        return json.loads(str(text))
    except ValueError:
        raise UsageError(f"--offsets: expected a JSON list of offsets such as '[[-1,0],[0,-1]]' or an existing "
                         f"JSON file, got {str(text)!r}") from None


def _cmd_predict(args) -> int:
    from .inference import predict_tiled
    from .pipelines._inputs import read_image
    from .pipelines.segment import _Standardize, _global_mean_std, _resolve_model

    model, _, _ = _resolve_model(args.model, [[0, 0]], None)
    image = read_image(args.image)
    normalize = {"none": None, "quantile": "quantile"}.get(args.normalize)
    if args.normalize == "standardize":
        normalize = _Standardize(*_global_mean_std(image))
    halo = args.halo if args.halo == "auto" else _tuple(args.halo)
    out = predict_tiled(model, image, tile_shape=_tuple(args.tile_shape), halo=halo, blend=args.blend,
                        device=args.device, normalize=normalize, channel_axis=args.channel_axis, out=args.out,
                        client=_client(args), progress=not args.quiet)
    print(f"prediction of shape {tuple(out.shape)} written to {args.out}")
    return 0


def _cmd_mws(args) -> int:
    import numpy as np

    from .pipelines._inputs import read_image
    from .segmentation import blockwise_mutex_watershed, mutex_watershed, remove_small_segments
    from .segmentation.mws import _check_bias, _check_n_attractive, _check_offsets

    out = _prepare_out(args.out, kind="zarr", command="mws", inputs=(args.affinities,), overwrite=args.overwrite)
    aff = read_image(args.affinities)
    offsets = _offsets(args.offsets)
    if offsets is None:
        offsets = aff.attrs.get("xmodal", {}).get("offsets") if hasattr(aff, "attrs") else None
        if offsets is None:
            raise UsageError("--offsets: expected a JSON list of offsets (or a file), got none")
    if len(aff.shape) not in (3, 4):
        raise UsageError(f"affinities {args.affinities}: expected shape (C, y, x) or (C, z, y, x), "
                         f"got {tuple(aff.shape)}")
    spatial = tuple(aff.shape[1:])
    # everything that can be checked is checked before the output is created
    offsets = _check_offsets(offsets, int(aff.shape[0]), len(spatial)).tolist()
    _check_n_attractive(args.n_attractive, int(aff.shape[0]), len(spatial))
    bias = None
    if args.bias is not None:
        bias = (_numbers(args.bias, "--bias", x_separates=False) if not isinstance(args.bias, (int, float, list))
                else args.bias)
        bias = bias[0] if isinstance(bias, list) and len(bias) == 1 else bias
        if args.n_attractive is not None:
            raise UsageError("--bias: not used with --n-attractive (the sign of affinity + bias decides); give one")
        _check_bias(bias, int(aff.shape[0]))
    weighting = {"n_attractive": args.n_attractive} if bias is None else {"bias": bias}
    block_shape = None
    if args.block_shape:
        block_shape = _tuple(args.block_shape, "--block-shape")
        if len(block_shape) != len(spatial) or min(block_shape) < 1:
            raise UsageError(f"--block-shape: expected {len(spatial)} positive integers (one per spatial axis of "
                             f"{tuple(spatial)}), got {args.block_shape!r}")
    from .io import begin_folder, commit_folder, create_array, mark_complete, provenance_attributes

    attrs = provenance_attributes("mws", {k: v for k, v in vars(args).items() if k != "func"},
                                  {"affinities": args.affinities})
    # The array is written next to --out and renamed into place when complete (a killed run leaves the
    # previous output or none). Blockwise work is resumable from <out>.xmodal-work: a block is reused
    # only when its affinities and the parameters are unchanged; the folder is removed on success.
    stage = begin_folder(out, name="--out")
    if block_shape:
        target = create_array(stage, spatial, np.uint64, chunks=block_shape, overwrite=True,
                              attributes=attrs, writer="xmodal mws")
        res = blockwise_mutex_watershed(aff, offsets, block_shape=block_shape,
                                        halo=np.abs(np.asarray(offsets)).max(axis=0).tolist(), out=target,
                                        invert=args.invert, client=_client(args), **weighting,
                                        workdir=out.parent / (out.name + ".xmodal-work"))
        n = int(res.n_labels)
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
    commit_folder(stage, out)
    print(f"{n} segments written to {out}")
    return 0


def _cmd_segment(args) -> int:
    from .pipelines import segment

    res = segment(args.raw, model=args.model, out=args.out, min_size=args.min_size,
                  tile_shape=_tuple(args.tile_shape), device=args.device, client=_client(args),
                  ground_truth=args.ground_truth, spacing=_spacing(args.spacing), progress=not args.quiet)
    line = f"{res.n_segments} segments in {res.timings['total']:.1f} s; outputs in {args.out}"
    if res.metrics is not None:
        m = res.metrics.get("mean", res.metrics)
        line += f"; ARand {m['arand']:.4f}, VOI split {m['voi_split']:.3f}, merge {m['voi_merge']:.3f}"
    print(line)
    return 0


def _cmd_evaluate(args) -> int:
    import numpy as np

    from .metrics import evaluate_segmentation
    from .pipelines._inputs import read_image
    from .pipelines._output import write_json

    out = None if not args.out else _prepare_out(args.out, kind="file", command="evaluate",
                                                 inputs=(args.segmentation, args.ground_truth))
    seg = np.asarray(read_image(args.segmentation)[...])
    gt = np.asarray(read_image(args.ground_truth)[...])
    scores = evaluate_segmentation(seg, gt, ignore_gt=tuple(args.ignore_gt)).as_dict()
    text = json.dumps(scores, indent=2, default=float)
    if out is not None:
        write_json(out, scores)
    print(text)
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, progress=not args.quiet)
    print(summary)
    return 0


# --------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, *, device: bool = False, scheduler: bool = False) -> None:
    g = p.add_argument_group("run options")
    g.add_argument("--config", metavar="TOML", help="read options from a TOML file (command line wins)")
    g.add_argument("--threads", type=int, metavar="N", help="native threads (default: XMODAL_NUM_THREADS or all)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    if device:
        g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute")
    if scheduler:
        g.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler address for blockwise work (default: local threads)")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="xmodal",
        description="Multimodal bioimage analysis: cell registration and matching, tiled inference, "
        "mutex watershed segmentation.",
        epilog="Run 'xmodal COMMAND --help' for the options and examples of a command.",
    )
    parser.add_argument("--version", action="version", version=f"xmodal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("register", help="register and match two cell sets (points, tables or label images)",
                       formatter_class=fmt,
                       description="Cross-modal cell registration: pre-alignment, CPD, exact matching, error "
                                   "estimates, per-cell tables and a QC report in one folder.",
                       epilog="examples:\n  xmodal register em_nuclei.csv lm_nuclei.csv --out reg/\n"
                              "  xmodal register em_labels.zarr lm_labels.tif --fixed-spacing 0.1,0.08,0.08 "
                              "--moving-spacing 2,0.5,0.5 --transform affine --out reg/\n"
                              "  xmodal register --config register.toml")
    p.add_argument("fixed", help="fixed cells: table (.csv/.tsv/.parquet, physical units) or label image")
    p.add_argument("moving", help="moving cells: table or label image")
    p.add_argument("--out", required=False, default="xmodal-register", help="output folder")
    p.add_argument("--transform", default="deformable", choices=["rigid", "similarity", "affine", "deformable"])
    p.add_argument("--matching", default="one-to-one", choices=["one-to-one", "cover"])
    p.add_argument("--spacing", help="voxel size / coordinate scale for both, e.g. 0.5,0.2,0.2")
    p.add_argument("--fixed-spacing", help="voxel size of the fixed input")
    p.add_argument("--moving-spacing", help="voxel size of the moving input")
    p.add_argument("--id-column", help="table column with cell ids")
    p.add_argument("--prealign", default="all", choices=["all", "flips"], help="rotations searched")
    p.add_argument("--no-prealign", action="store_true", help="inputs are already roughly aligned")
    p.add_argument("--scale", action="store_true", help="also estimate a global scale")
    p.add_argument("--k", type=int, default=30, help="nearest-neighbour candidates per cell (default 30)")
    p.add_argument("--radius", type=float, help="also all pairs closer than this (physical units)")
    p.add_argument("--unmatched-cost", type=float, help="cost of an unmatched cell (default: auto)")
    p.add_argument("--spots", nargs="+", help="smFISH spot tables (moving frame), one per replicate")
    _common(p)
    p.set_defaults(func=_cmd_register)
    subs["register"] = p

    p = sub.add_parser("match", help="exact min-cost matching of two point sets on a sparse k-NN graph",
                       formatter_class=fmt,
                       description="Sparse k-NN cost matrix and exact assignment (one-to-one or cover).",
                       epilog="examples:\n  xmodal match a.csv b.csv --k 30 --radius 8 --unmatched-cost 10 "
                              "--out pairs.csv\n  xmodal match a.csv b.csv --mode cover --out pairs.csv")
    p.add_argument("a", help="first point table (.csv/.tsv/.parquet) or label image")
    p.add_argument("b", help="second point table or label image")
    p.add_argument("--out", default="matches.csv", help="output CSV of pairs")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--radius", type=float)
    p.add_argument("--unmatched-cost", type=float)
    p.add_argument("--mode", default="one-to-one", choices=["one-to-one", "cover"])
    p.add_argument("--spacing")
    p.add_argument("--id-column")
    _common(p)
    p.set_defaults(func=_cmd_match)
    subs["match"] = p

    p = sub.add_parser("cpd", help="Coherent Point Drift registration of two point sets",
                       formatter_class=fmt,
                       description="Register MOVING onto FIXED with CPD; writes transform.json and moved.csv.",
                       epilog="examples:\n  xmodal cpd moving.csv fixed.csv --transform rigid --out cpd/\n"
                              "  xmodal cpd moving.csv fixed.csv --transform deformable --beta 30 --lam 0.1 "
                              "--w 1e-5 --device cuda --out cpd/")
    p.add_argument("moving")
    p.add_argument("fixed")
    p.add_argument("--out", default="xmodal-cpd", help="output folder")
    p.add_argument("--transform", default="rigid", choices=["rigid", "similarity", "affine", "deformable"])
    p.add_argument("--w", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--lam", type=float)
    p.add_argument("--max-iter", type=int)
    p.add_argument("--tol", type=float)
    p.add_argument("--spacing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that is a file or a folder not written by 'xmodal cpd'")
    _common(p, device=True)
    p.set_defaults(func=_cmd_cpd)
    subs["cpd"] = p

    p = sub.add_parser("predict", help="halo tiled network prediction over an image of any size",
                       formatter_class=fmt,
                       description="Predict a network over a 2D/3D image tile by tile with a halo of real context "
                                   "(seam-free); writes an OME-Zarr image.",
                       epilog="examples:\n  xmodal predict raw.zarr --model isbi2012 --out affinities.ome.zarr\n"
                              "  xmodal predict raw.tif --model unet.pt --tile-shape 64,256,256 --device cuda "
                              "--out pred.ome.zarr\n  xmodal predict raw.zarr --model unet.pt --scheduler "
                              "tcp://10.0.0.1:8786 --out pred.ome.zarr")
    p.add_argument("image", help="raw image: .zarr / OME-Zarr, .tif or .npy")
    p.add_argument("--model", default="isbi2012", help="'isbi2012' (built-in) or a TorchScript file")
    p.add_argument("--out", required=False, default="prediction.ome.zarr", help="output OME-Zarr path")
    p.add_argument("--tile-shape", help="output tile, e.g. 64,256,256 (default: largest that fits)")
    p.add_argument("--halo", default="auto", help="context per side in voxels, or 'auto' (half the receptive field)")
    p.add_argument("--blend", default="crop", choices=["crop", "linear", "gaussian"])
    p.add_argument("--normalize", default="standardize", choices=["standardize", "quantile", "none"])
    p.add_argument("--channel-axis", type=int, default=None, help="channel axis of the image, if any")
    _common(p, device=True, scheduler=True)
    p.set_defaults(func=_cmd_predict)
    subs["predict"] = p

    p = sub.add_parser("mws", help="mutex watershed of affinities (single-shot or blockwise)", formatter_class=fmt,
                       description="Mutex watershed instance segmentation of affinities (C, *spatial), merge "
                                   "probabilities (1 = same object), channel c joining p and p + offsets[c].",
                       epilog="examples:\n  xmodal mws aff.npy --offsets '[[-1,0],[0,-1],[-9,0],[0,-9]]' --out labels.zarr\n"
                              "  xmodal mws aff.zarr --offsets offsets.json --n-attractive 3 --block-shape 64,512,512 "
                              "--out labels.zarr --scheduler tcp://10.0.0.1:8786")
    p.add_argument("affinities", help="affinities (.zarr, .npy, .tif) of shape (C, *spatial)")
    p.add_argument("--offsets", help="JSON list of offsets or a JSON file")
    p.add_argument("--n-attractive", type=int, help="attractive channels (default: ndim)")
    p.add_argument("--invert", action="store_true", help="affinities are boundary probabilities")
    p.add_argument("--bias", help="signed weights: merge probability + bias (one value, or one per channel, "
                                  "comma-separated); replaces --n-attractive (see docs/mws.md)")
    p.add_argument("--out", default="labels.zarr", help="output zarr array")
    p.add_argument("--block-shape", help="blockwise with these blocks (chunks of the output)")
    p.add_argument("--min-size", type=int, default=0, help="merge smaller segments (single-shot)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that is a file or not a zarr array written by 'xmodal mws'")
    _common(p, scheduler=True)
    p.set_defaults(func=_cmd_mws)
    subs["mws"] = p

    p = sub.add_parser("segment", help="raw -> tiled prediction -> mutex watershed -> labels (+ metrics)",
                       formatter_class=fmt,
                       description="Large-volume instance segmentation; writes segmentation.ome.zarr (affinities, "
                                   "labels group), metrics.json and provenance.json into the output folder.",
                       epilog="examples:\n  xmodal segment em.zarr --model isbi2012 --min-size 100 --out seg/\n"
                              "  xmodal segment em.tif --ground-truth gt.tif --out seg/\n"
                              "  xmodal segment --config segment.toml")
    p.add_argument("raw", help="raw image or volume (.zarr / OME-Zarr, .tif, .npy)")
    p.add_argument("--model", default="isbi2012", help="'isbi2012' (built-in) or a TorchScript file")
    p.add_argument("--out", default="xmodal-segment", help="output folder")
    p.add_argument("--min-size", type=int, default=0, help="merge segments smaller than this (voxels)")
    p.add_argument("--tile-shape", help="prediction tile (default: largest that fits)")
    p.add_argument("--ground-truth", help="instance labels to evaluate against")
    p.add_argument("--spacing", help="voxel size, e.g. 0.05,0.004,0.004")
    _common(p, device=True, scheduler=True)
    p.set_defaults(func=_cmd_segment)
    subs["segment"] = p

    p = sub.add_parser("evaluate", help="segmentation metrics against ground truth", formatter_class=fmt,
                       description="ARand, VOI (split, merge), precision / recall / F1 at IoU thresholds, mean AP, "
                                   "SBD and centroid Chamfer distance.",
                       epilog="examples:\n  xmodal evaluate seg/segmentation.ome.zarr/labels/cells gt.tif\n"
                              "  xmodal evaluate labels.npy gt.npy --out metrics.json")
    p.add_argument("segmentation")
    p.add_argument("ground_truth")
    p.add_argument("--ignore-gt", type=int, nargs="*", default=[0], help="ground-truth labels to ignore (default 0)")
    p.add_argument("--out", help="also write the scores to this JSON file")
    _common(p)
    p.set_defaults(func=_cmd_evaluate)
    subs["evaluate"] = p

    p = sub.add_parser("demo", help="run both pipelines on built-in real data", formatter_class=fmt,
                       description="Cell registration of two C. elegans embryos (lineage names as ground truth) and "
                                   "segmentation of two ISBI 2012 EM slices with the built-in model.",
                       epilog="examples:\n  xmodal demo\n  xmodal demo --out demo-out/")
    p.add_argument("--out", default="xmodal-demo", help="output folder")
    _common(p)
    p.set_defaults(func=_cmd_demo)
    subs["demo"] = p

    p = sub.add_parser("info", help="show version, compiler, threads and CUDA devices", formatter_class=fmt,
                       description="Show the build and runtime configuration (as xmodal.show_config()).",
                       epilog="examples:\n  xmodal info\n  xmodal info --json")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_info)
    subs["info"] = p
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error, see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    command = next((tok for tok in argv if not tok.startswith("-")), None)
    try:
        cfg_path = _config_path(argv)
        if command in subs and cfg_path:
            _apply_config(subs[command], command, cfg_path)
        args = parser.parse_args(argv)  # argparse reports its own errors with exit status 2
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        _setup(args)
        inputs = [getattr(args, a.dest, None) for a in subs[args.command]._actions
                  if not a.option_strings and a.dest not in ("help", "command")]
        with _inputs_named(*inputs, getattr(args, "ground_truth", None)):
            return int(args.func(args) or 0)
    except Exception as exc:
        if os.environ.get("XMODAL_TRACEBACK") or not _is_user_error(exc):
            raise
        print(f"xmodal {command or ''}: error: {_one_line(exc)}".replace("xmodal : ", "xmodal: "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
