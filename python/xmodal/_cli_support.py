"""What the ``xmodal`` command line needs besides its commands: the user-error contract (one line,
exit status 2), TOML config files, ``--out`` checks and the parsing of option values."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

EXIT_USAGE = 2
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit status 2."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def is_user_error(exc: BaseException) -> bool:
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
def inputs_named(*paths):
    """Name the input files in user errors raised by library calls on their contents."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError) as exc:
        names = list(dict.fromkeys(str(p) for p in paths if p is not None))
        msg = one_line(exc)
        if not is_user_error(exc) or not names or any(n in msg for n in names):
            raise
        raise UsageError(f"{msg} ({'input' if len(names) == 1 else 'inputs'}: {', '.join(names)})") from exc


def load_toml(path: str) -> dict:
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
        raise UsageError(f"--config {p}: not valid TOML: {one_line(exc)}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {p}: not a UTF-8 text file") from None


def same_path(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # pragma: no cover
        return False


def written_by(path: Path, command: str) -> bool:
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


def prepare_out(out, *, kind: str, command: str, inputs=(), overwrite: bool = False) -> Path:
    """Check ``--out`` before any work: ``kind`` is "file", "folder" or "zarr" (see the module doc).

    With ``overwrite`` a refused path is removed; nothing is created here.
    """
    path = Path(out)
    for i in inputs:
        if i is not None and Path(i).exists() and same_path(path, i):
            raise UsageError(f"--out: {path} is also an input of this command; choose another output path")
    if not path.exists():
        return path
    if kind == "file":
        if path.is_dir():
            raise UsageError(f"--out: {path} is a folder; expected the path of a file to write")
        return path
    if path.is_dir() and (not any(path.iterdir()) or written_by(path, command)):
        return path
    if not overwrite:
        what = "a file" if not path.is_dir() else "a folder that xmodal " + command + " did not write"
        raise UsageError(f"--out: {path} exists and is {what}; choose another path or pass --overwrite to replace it")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return path


def config_path(argv: list[str]) -> str | None:
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith("--config="):
            return tok.split("=", 1)[1]
    return None


def apply_config(sub: argparse.ArgumentParser, command: str, cfg_path: str) -> None:
    """Make the options of the TOML file the defaults of ``sub`` (the command line still wins)."""
    cfg = load_toml(cfg_path)
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


def numbers_option(text, option: str, kind=float, *, x_separates: bool = True):
    """Comma-separated numbers (also "64x256" when ``x_separates``); UsageError naming ``option``."""
    text = str(text).replace("x", ",") if x_separates else str(text)
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UsageError(f"{option}: expected comma-separated {what}, got {text!r}") from None


def spacing_option(text, option: str = "--spacing"):
    if text is None or isinstance(text, (list, tuple, float, int)):
        return text
    parts = numbers_option(text, option)
    return parts[0] if len(parts) == 1 else parts


def options_of(args) -> dict:
    """The parsed options of a command, for its provenance record."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def setup(args) -> None:
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    command = getattr(args, "command", None) or "xmodal"
    # a library warning (e.g. an image unlike the model's training data) as one line, not a source line
    warnings.formatwarning = lambda message, category, *_, **__: (
        f"xmodal {command}: warning: {message}\n" if issubclass(category, UserWarning)
        else f"{category.__name__}: {message}\n")
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads: expected a positive integer, got {threads}")
        from ._config import set_num_threads

        set_num_threads(int(threads))


def dask_client(args):
    address = getattr(args, "scheduler", None)
    if not address:
        return None
    from ._optional import optional_import

    distributed = optional_import("distributed", purpose="--scheduler")
    return distributed.Client(address)


def ints_option(text, option: str = "--tile-shape"):
    if text is None or isinstance(text, (list, tuple)):
        return text
    return tuple(numbers_option(text, option, int))


def offsets_option(text):
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
            raise UsageError(f"--offsets: {p} is not a JSON file ({one_line(exc)})") from None
    try:
        return json.loads(str(text))
    except ValueError:
        raise UsageError(f"--offsets: expected a JSON list of offsets such as '[[-1,0],[0,-1]]' or an existing "
                         f"JSON file, got {str(text)!r}") from None
