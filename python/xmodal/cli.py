"""The ``xmodal`` command line.

Every subcommand takes ``--config FILE.toml``: a TOML file whose top-level keys, and the keys of a
table named after the subcommand (which override them), are the long option names (dashes or
underscores; ``no-prealign = true``), so a run can be repeated exactly; options given on the
command line override the file. Values are checked as on the command line (types, choices, true /
false for flags; a list stands for a comma-separated value); an unknown key or a table that is not
a command is an error. Errors name the command-line option (``--unmatched-cost``), followed by the
Python argument name in parentheses where it differs. Outputs carry their
provenance (xmodal version, parameters, inputs).

Errors: a mistake in the command line or its inputs (a missing or unreadable file, a table column
that is not numeric, a pickled .npy file, a bad TOML file, an invalid option value, an output path
of the wrong kind) is reported as one line ``xmodal COMMAND: error: ...`` naming the file (and
column) and the command exits with status 2. Anything else is a bug and shows its traceback
(``XMODAL_TRACEBACK=1`` shows the traceback of user errors too). Ctrl-C stops a command with the
line ``xmodal COMMAND: interrupted`` and exit status 130; its output is left as after a kill: the
previous complete output or none, never half-written (tiled and blockwise runs reuse their finished
blocks when the same command is run again).

Outputs (``--out``): a file output (``match``, ``evaluate``) replaces an existing file; a folder
output (``cpd``) or zarr output (``mws``) replaces an existing one only when an earlier run of the
same command wrote it (or the folder is empty). An output path that names an input, a folder where
a file is written, a file where a folder is written, or a folder that another program wrote is
refused unless ``--overwrite`` is given (``cpd``, ``mws``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import _cli_commands as commands
from ._cli_mws import cmd_mws
from ._cli_support import (
    EXIT_USAGE,
    UsageError,
    apply_config,
    config_path,
    inputs_named,
    is_user_error,
    one_line,
    option_names,
    setup,
)
from ._config import _process_setting, set_num_threads
from ._version import __version__
from .io._resume import IncompleteOutputError

EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by SIGINT (128 + 2)


def _at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
    return v


def _count(text: str) -> int:
    """argparse type: an integer >= 0 (argparse names the option in its message)."""
    return _at_least(text, 0)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _at_least(text, 1)

__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "main"]


# --------------------------------------------------------------------------- parser
def _command(sub, subs: dict, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` running ``func(args)``; ``kwargs`` are its help, description and epilog."""
    p = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.set_defaults(func=func)
    subs[name] = p
    return p


def _overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing --out that is a file or {what}")


def _transform(p: argparse.ArgumentParser, default: str, auto: bool = False) -> None:
    choices = (["auto"] if auto else []) + ["rigid", "similarity", "affine", "deformable"]
    p.add_argument("--transform", default=default, choices=choices,
                   help=f"CPD model (default {default}" + ("; auto: chosen by held-out matching cost)" if auto else ")"))


def _candidates(p: argparse.ArgumentParser, *, unmatched: str) -> None:
    """The candidate pairs of the matching and the cost of leaving a point unmatched."""
    p.add_argument("--k", type=_positive, default=30, help="nearest-neighbour candidates per point (default 30)")
    p.add_argument("--radius", type=float, help="also all pairs closer than this (physical units)")
    p.add_argument("--unmatched-cost", type=float, help=f"cost of an unmatched point (default: {unmatched})")


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="em", help="'em' (built-in EM affinity model, default), 'isbi2012' (the "
                                                 "previous built-in model) or a TorchScript file")
    p.add_argument("--tile-shape", help="prediction tile, e.g. 64,256,256 (default: largest that fits)")


def _common(p: argparse.ArgumentParser, *, device: bool = False, scheduler: bool = False) -> None:
    g = p.add_argument_group("run options")
    g.add_argument("--config", metavar="TOML", help="read options from a TOML file (command line wins)")
    g.add_argument("--threads", type=_positive, metavar="N", help="native threads (default: XMODAL_NUM_THREADS or all)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    if device:
        g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where to compute (default auto)")
    if scheduler:
        g.add_argument("--scheduler", metavar="ADDRESS",
                       help="dask.distributed scheduler address for blockwise work (default: local threads)")


def _identity_commands(sub, subs: dict) -> None:
    """``xmodal atlas build`` and ``xmodal identify`` (see docs/identity.md)."""
    p = _command(sub, subs, "atlas", commands.cmd_atlas,
                 help="build an atlas of named cells from annotated samples",
                 description="Group-wise registration of two or more annotated samples to an evolving mean; per-name "
                             "mean, covariance, features and presence; the confidence calibrated by leave-one-"
                             "sample-out. Writes a versioned JSON atlas and an HTML report beside it (NAME.report.html).",
                 epilog="examples:\n"
                        "  xmodal atlas build worm1.csv worm2.csv worm3.csv --names-column cell --out atlas.json\n"
                        "  xmodal atlas build e*.csv --names-column cell --features-columns volume --out atlas.json")
    p.add_argument("action", choices=["build"], help="what to do (build)")
    p.add_argument("samples", nargs="+", help="annotated tables (.csv/.tsv/.parquet): z, y, x and a names column")
    p.add_argument("--names-column", required=True, help="column with each cell's name (empty: not in the atlas)")
    p.add_argument("--features-columns", nargs="+", help="numeric feature columns (colour, volume, intensity)")
    p.add_argument("--columns", help="coordinate columns, comma-separated (default z,y,x or y,x)")
    p.add_argument("--spacing", help="coordinate scale, e.g. 0.5,0.2,0.2")
    p.add_argument("--allow-reflection", action="store_true", help="samples may be mirror images of each other")
    p.add_argument("--no-calibration", action="store_true", help="skip the leave-one-out calibration")
    p.add_argument("--out", default="atlas.json", help="output atlas (JSON; default atlas.json)")
    _common(p)

    p = _command(sub, subs, "identify", commands.cmd_identify,
                 help="name the cells of a sample against an atlas",
                 description="Registration to the atlas alternating with exact assignment; writes per cell the name, "
                             "its calibrated confidence and the top-k candidates.",
                 epilog="examples:\n"
                        "  xmodal identify cells.csv --atlas atlas.json --out names.csv\n"
                        "  xmodal identify cells.csv --atlas atlas.json --features-columns volume --top-k 3 "
                        "--out names.csv")
    p.add_argument("cells", help="cell table (.csv/.tsv/.parquet) with z, y, x")
    p.add_argument("--atlas", required=True, help="atlas JSON from 'xmodal atlas build'")
    p.add_argument("--out", default="names.csv", help="output CSV: id, name, confidence, top-k candidates "
                   "(default names.csv)")
    p.add_argument("--features-columns", nargs="+", help="the atlas's feature columns, same order")
    p.add_argument("--columns", help="coordinate columns, comma-separated (default z,y,x or y,x)")
    p.add_argument("--spacing", help="coordinate scale, e.g. 0.5,0.2,0.2")
    p.add_argument("--id-column", help="table column with cell ids (default: row numbers)")
    p.add_argument("--top-k", type=_positive, default=5, help="candidate names per cell (default 5)")
    p.add_argument("--allow-reflection", action="store_true", help="the sample may be a mirror image")
    _common(p)


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

    p = _command(sub, subs, "register", commands.cmd_register,
                 help="register and match two cell sets (points, tables or label images)",
                 description="Cross-modal cell registration: pre-alignment, CPD, exact matching, error estimates, "
                             "per-cell tables and a QC report in one folder.",
                 epilog="examples:\n"
                        "  xmodal register em_nuclei.csv lm_nuclei.csv --out reg/\n"
                        "  xmodal register em_labels.zarr lm_labels.tif --fixed-spacing 0.1,0.08,0.08 "
                        "--moving-spacing 2,0.5,0.5 --transform affine --out reg/\n"
                        "  xmodal register em_nuclei.csv lm_nuclei.csv --features-columns volume,intensity --out reg/\n"
                        "  xmodal register --config register.toml")
    p.add_argument("fixed", help="fixed cells: table (.csv/.tsv/.parquet, physical units) or label image")
    p.add_argument("moving", help="moving cells: table or label image")
    p.add_argument("--out", default="xmodal-register", help="output folder (default xmodal-register)")
    _transform(p, "auto", auto=True)
    p.add_argument("--matching", default="one-to-one", choices=["one-to-one", "cover"])
    p.add_argument("--spacing", help="voxel size / coordinate scale for both, e.g. 0.5,0.2,0.2")
    p.add_argument("--fixed-spacing", help="voxel size of the fixed input")
    p.add_argument("--moving-spacing", help="voxel size of the moving input")
    p.add_argument("--id-column", help="table column with cell ids")
    p.add_argument("--columns", help="coordinate columns of both tables, comma-separated, in the order of the "
                   "spacing (default z,y,x or y,x), e.g. anchor_z,anchor_y,anchor_x")
    p.add_argument("--prealign", default="all", choices=["all", "flips"], help="rotations searched")
    p.add_argument("--no-prealign", action="store_true", help="inputs are already roughly aligned")
    p.add_argument("--scale", action="store_true", help="also estimate a global scale")
    p.add_argument("--allow-reflection", action="store_true",
                   help="the pre-alignment also tries mirror images (axis handedness unknown)")
    _candidates(p, unmatched="auto")
    p.add_argument("--spots", nargs="+", help="smFISH spot tables (moving frame), one per replicate")
    p.add_argument("--features-columns", nargs="+", metavar="COLUMN",
                   help="numeric columns of both tables used in the matching and in CPD stages (colour, volume, "
                        "intensity), "
                        "e.g. --features-columns volume red (or volume,red)")
    p.add_argument("--feature-weight", default="auto",
                   help="weight of the features: 'auto' (held-out likelihood, default) or a number >= 0")
    p.add_argument("--no-feature-cpd", dest="feature_cpd", action="store_false",
                   help="features in the matching only (default: also affine + deformable CPD stages with features)")
    _common(p)

    _identity_commands(sub, subs)

    p = _command(sub, subs, "match", commands.cmd_match,
                 help="exact min-cost matching of two point sets on a sparse k-NN graph",
                 description="Sparse k-NN cost matrix and exact assignment (one-to-one or cover).",
                 epilog="examples:\n"
                        "  xmodal match a.csv b.csv --k 30 --radius 8 --unmatched-cost 10 --out pairs.csv\n"
                        "  xmodal match a.csv b.csv --mode cover --out pairs.csv")
    p.add_argument("a", help="first point table (.csv/.tsv/.parquet) or label image")
    p.add_argument("b", help="second point table or label image")
    p.add_argument("--out", default="matches.csv", help="output CSV of pairs (default matches.csv)")
    _candidates(p, unmatched="every point of the smaller set is matched")
    p.add_argument("--mode", default="one-to-one", choices=["one-to-one", "cover"])
    p.add_argument("--spacing", help="coordinate scale (tables) or voxel size (label images), e.g. 0.5,0.2,0.2")
    p.add_argument("--id-column", help="table column with point ids")
    _common(p)

    p = _command(sub, subs, "cpd", commands.cmd_cpd,
                 help="Coherent Point Drift registration of two point sets",
                 description="Register MOVING onto FIXED with CPD; writes transform.json and moved.csv.",
                 epilog="examples:\n"
                        "  xmodal cpd moving.csv fixed.csv --transform rigid --out cpd/\n"
                        "  xmodal cpd moving.csv fixed.csv --transform deformable --beta 30 --lam 0.1 --w 1e-5 "
                        "--device cuda --out cpd/")
    p.add_argument("moving", help="moving points: table (.csv/.tsv/.parquet) or label image")
    p.add_argument("fixed", help="fixed points: table or label image")
    p.add_argument("--out", default="xmodal-cpd", help="output folder (default xmodal-cpd)")
    _transform(p, "rigid")
    for name, kind in (("--w", float), ("--beta", float), ("--lam", float), ("--max-iter", int), ("--tol", float),
                       ("--estep-tol", float)):
        p.add_argument(name, type=kind, help="see xmodal.cpd (default: its default)")
    p.add_argument("--estep", choices=["auto", "exact", "fast"], help="E-step summation (see xmodal.cpd; "
                   "default auto: the fast grid E-step for large sets while sigma is wide)")
    p.add_argument("--coarse", type=int, metavar="N", help="coarse-to-fine for large sets: fit on voxel subsamples "
                   "of about N points, then refine on all points (xmodal.cpd_coarse_to_fine; CPU)")
    p.add_argument("--spacing", help="coordinate scale (tables) or voxel size (label images), e.g. 0.5,0.2,0.2")
    _overwrite(p, "a folder not written by 'xmodal cpd'")
    _common(p, device=True)

    p = _command(sub, subs, "predict", commands.cmd_predict,
                 help="halo tiled network prediction over an image of any size",
                 description="Predict a network over a 2D/3D image tile by tile with a halo of real context "
                             "(seam-free); writes an OME-Zarr image. A 2D model on a 3D image without "
                             "--channel-axis predicts the (z, y, x) stack slice by slice (as 'xmodal segment'; "
                             "--tile-shape and --halo then give the (y, x) plane).",
                 epilog="examples:\n"
                        "  xmodal predict raw.zarr --model isbi2012 --out affinities.ome.zarr\n"
                        "  xmodal predict raw.tif --model unet.pt --tile-shape 64,256,256 --device cuda --out "
                        "pred.ome.zarr\n"
                        "  xmodal predict raw.zarr --model unet.pt --scheduler tcp://10.0.0.1:8786 --out "
                        "pred.ome.zarr")
    p.add_argument("image", help="raw image: .zarr / OME-Zarr, .tif or .npy")
    p.add_argument("--out", required=False, default="prediction.ome.zarr",
                   help="output OME-Zarr path (new, or an earlier prediction, resumed or replaced; default "
                        "prediction.ome.zarr)")
    _model(p)
    p.add_argument("--halo", default="auto", help="context per side in voxels: one value (every axis) or one per "
                                                  "axis, e.g. 8,32,32; or 'auto' (half the receptive field)")
    p.add_argument("--blend", default="crop", choices=["crop", "linear", "gaussian"])
    p.add_argument("--normalize", default="auto", choices=["auto", "standardize", "quantile", "none"],
                   help="auto (default): the built-in model's own normalisation, else standardize")
    p.add_argument("--channel-axis", type=int, default=None, help="channel axis of the image, if any (without it "
                   "a 2D model takes a 3D image as a (z, y, x) stack)")
    _common(p, device=True, scheduler=True)

    p = _command(sub, subs, "mws", cmd_mws,
                 help="mutex watershed of affinities (single-shot or blockwise)",
                 description="Mutex watershed instance segmentation of affinities (C, *spatial), merge probabilities "
                             "(1 = same object), channel c joining p and p + offsets[c].",
                 epilog="examples:\n"
                        "  xmodal mws aff.npy --offsets '[[-1,0],[0,-1],[-9,0],[0,-9]]' --out labels.zarr\n"
                        "  xmodal mws aff.zarr --offsets offsets.json --n-attractive 3 --block-shape 64,512,512 "
                        "--out labels.zarr --scheduler tcp://10.0.0.1:8786")
    p.add_argument("affinities", help="affinities (.zarr, .npy, .tif) of shape (C, *spatial)")
    p.add_argument("--offsets", help="JSON list of offsets or a JSON file (default: those an 'xmodal predict' "
                                     "output records, with its --n-attractive)")
    p.add_argument("--n-attractive", type=int, help="attractive channels (default: ndim)")
    p.add_argument("--invert", action="store_true", help="affinities are boundary probabilities")
    p.add_argument("--bias", help="signed weights: merge probability + bias (one value, or one per channel, "
                                  "comma-separated, written with =: --bias=-0.5,-0.5,-0.8); replaces --n-attractive "
                                  "(see docs/mws.md)")
    p.add_argument("--out", default="labels.zarr", help="output zarr array (default labels.zarr)")
    p.add_argument("--block-shape", help="blockwise with these blocks (chunks of the output)")
    p.add_argument("--join", choices=("votes", "fragments"),
                   help="blockwise: how the blocks are joined (default: the fragment graph with --bias or with "
                        "long-range or diagonal attractive channels, else the votes across faces; docs/mws.md)")
    p.add_argument("--min-size", type=_count, default=0, help="merge segments smaller than this (voxels) into their most attractive neighbour (also blockwise)")
    _overwrite(p, "not a zarr array written by 'xmodal mws'")
    _common(p, scheduler=True)

    p = _command(sub, subs, "segment", commands.cmd_segment,
                 help="raw -> tiled prediction -> mutex watershed -> labels (+ metrics)",
                 description="Large-volume instance segmentation; writes segmentation.ome.zarr (affinities, labels "
                             "group), metrics.json and provenance.json into the output folder.",
                 epilog="examples:\n"
                        "  xmodal segment em.zarr --method gasp --out seg/\n"
                        "  xmodal segment em.zarr --model isbi2012 --method mws --min-size 100 --out seg/\n"
                        "  xmodal segment em.tif --ground-truth gt.tif --out seg/\n"
                        "  xmodal segment --config segment.toml")
    p.add_argument("raw", help="raw image or volume (.zarr / OME-Zarr, .tif, .npy)")
    p.add_argument("--out", default="xmodal-segment", help="output folder (default xmodal-segment)")
    _model(p)
    p.add_argument("--method", choices=["mws", "gasp", "multicut"],
                   help="agglomeration: pixel mutex watershed or superpixels + GASP / multicut (default: the "
                        "model's stored choice, else mws)")
    p.add_argument("--min-size", type=_count, default=None,
                   help="merge segments smaller than this (voxels) (default: the model's stored value, else 0)")
    p.add_argument("--ground-truth", help="instance labels to evaluate against")
    p.add_argument("--spacing", help="voxel size, e.g. 0.05,0.004,0.004")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the predictions of the 8 "
                   "rotations / flips of the image plane (8x the prediction time; see docs/inference.md)")
    p.add_argument("--memory-voxels", type=_positive, default=1 << 27,
                   help="largest volume segmented in memory, in voxels (default 134217728); larger ones go block "
                        "by block (a 2D model's stack: in groups of whole slices, the same labels)")
    p.add_argument("--block-shape", help="blocks of the blockwise route, e.g. 64,512,512 (default: 64,512,512 / "
                                         "2048,2048 when the volume exceeds --memory-voxels)")
    _common(p, device=True, scheduler=True)

    p = _command(sub, subs, "evaluate", commands.cmd_evaluate,
                 help="segmentation metrics against ground truth; or every method side by side",
                 description="ARand, VOI (split, merge), precision / recall / F1 at IoU thresholds, mean AP, SBD and "
                             "centroid Chamfer distance of a segmentation. With --methods, the first argument is "
                             "the raw image: it is segmented by each method (from one affinity prediction, with the "
                             "model's stored settings) and the thresholded-boundary baseline, and ARand, VOI and "
                             "segment counts are reported per slice and side by side.",
                 epilog="examples:\n"
                        "  xmodal evaluate seg/segmentation.ome.zarr/labels/cells gt.tif\n"
                        "  xmodal evaluate labels.npy gt.npy --out metrics.json\n"
                        "  xmodal evaluate raw.tif gt.tif --methods all --out methods.json")
    p.add_argument("segmentation", help="labels to score (with --methods: the raw image to segment)")
    p.add_argument("ground_truth")
    p.add_argument("--ignore-gt", type=int, nargs="*", default=[0], help="ground-truth labels to ignore (default 0)")
    p.add_argument("--methods", help="'all' or a comma list of mws, gasp, multicut, baseline: segment the raw "
                                     "image with each and compare")
    p.add_argument("--model", default="em", help="affinity model for --methods (as for segment; default 'em')")
    p.add_argument("--baseline-threshold", type=float, help="boundary threshold of the baseline (default: the "
                                                            "model's stored one)")
    p.add_argument("--out", help="also write the scores to this JSON file")
    _common(p, device=True)

    p = _command(sub, subs, "demo", commands.cmd_demo,
                 help="run both pipelines on built-in real data",
                 description="Cell registration of two C. elegans embryos (lineage names as ground truth) and "
                             "segmentation of two ISBI 2012 EM slices with the built-in model.",
                 epilog="examples:\n"
                        "  xmodal demo\n"
                        "  xmodal demo --out demo-out/")
    p.add_argument("--out", default="xmodal-demo", help="output folder (default xmodal-demo)")
    _common(p)

    p = _command(sub, subs, "info", commands.cmd_info,
                 help="show version, compiler, threads and CUDA devices",
                 description="Show the build and runtime configuration (as xmodal.show_config()).",
                 epilog="examples:\n"
                        "  xmodal info\n"
                        "  xmodal info --json")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 user error, see the module doc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    command = next((tok for tok in argv if not tok.startswith("-")), None)
    # --threads and the one-line warning format apply to this command only (main() may run in-process)
    threads_before, formatwarning = _process_setting(), warnings.formatwarning
    try:
        cfg_path = config_path(argv)
        if command in subs and cfg_path:
            apply_config(subs[command], command, cfg_path, commands=tuple(subs))
        args = parser.parse_args(argv)  # argparse reports its own errors with exit status 2
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        setup(args)
        inputs = [getattr(args, a.dest, None) for a in subs[args.command]._actions
                  if not a.option_strings and a.dest not in ("help", "command", "action")]
        inputs = [p for v in inputs for p in (v if isinstance(v, list) else [v])]
        with inputs_named(*inputs, getattr(args, "ground_truth", None)):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("XMODAL_TRACEBACK"):
            raise
        print(f"xmodal {command or ''}: interrupted".replace("xmodal : ", "xmodal: "), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("XMODAL_TRACEBACK") or not is_user_error(exc):
            raise
        text = option_names(cli_text(exc), subs.get(command))
        print(f"xmodal {command or ''}: error: {text}".replace("xmodal : ", "xmodal: "), file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.formatwarning = formatwarning
        if _process_setting() != threads_before:
            set_num_threads(threads_before)


def cli_text(exc: BaseException) -> str:
    """One line for a user error, without hints that only apply to Python callers."""
    text = one_line(exc)
    cause = exc
    while cause is not None:
        if isinstance(cause, IncompleteOutputError):
            text = text.replace(IncompleteOutputError.python_hint, "")
        cause = cause.__cause__ or cause.__context__
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
