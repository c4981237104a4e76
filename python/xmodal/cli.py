"""The ``xmodal`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from ._version import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from ._config import backends, format_config

    info = backends()
    print(json.dumps(info, indent=2) if args.json else format_config(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmodal",
        description="Multimodal bioimage analysis: cell registration and matching, tiled inference, "
        "mutex watershed segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"xmodal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="show version, compiler, threads and CUDA devices",
                       description="Show the build and runtime configuration (as xmodal.show_config()).",
                       epilog="example: xmodal info --json")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"xmodal {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
