"""What the ``xmodal`` command line needs besides its commands: the user-error contract (one line,
exit status 2), TOML config files, ``--out`` checks and the parsing of option values."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
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
        if not is_user_error(exc) or not names or any(n in msg for n in names) or msg.startswith("out:"):
            raise  # (an error about --out is not about the inputs)
        raise UsageError(f"{msg} ({'input' if len(names) == 1 else 'inputs'}: {', '.join(names)})") from exc


#: Python argument names of the library that differ from the dest of the command-line option
_ALIASES = {"feature_columns": "features_columns", "n_coarse": "coarse"}


def option_names(text: str, sub: argparse.ArgumentParser | None) -> str:
    """A user error in the words of the command line: the Python argument names of the library
    (``unmatched_cost: ...``, ``k, radius: ...``) replaced by the options of ``sub`` (``--unmatched-cost``);
    names inside quotes or paths are left alone."""
    if sub is None:
        return text
    names = {}
    for a in sub._actions:
        longs = [s for s in a.option_strings if s.startswith("--")]
        if longs and not isinstance(a, argparse._HelpAction):
            names[a.dest] = longs[0]
    names.update({py: names[dest] for py, dest in _ALIASES.items() if dest in names and py not in names})
    m = re.match(r"([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*): ", text)
    if m and all(n in names for n in m.group(1).split(", ")):
        lead = m.group(1).split(", ")
        head = ", ".join(names[n] for n in lead)
        if len(lead) == 1 and names[lead[0]] != "--" + lead[0]:
            head += f" ({lead[0]})"  # the Python name too, for API users
        return head + _rename(text[m.end(1):], names)
    return _rename(text, names)


def _rename(text: str, names: dict) -> str:
    return re.sub(r"(?<![\w./\\'\"-])[a-z]\w*_\w+(?![\w/\\'\"-])(?!\.\w)",
                  lambda w: names.get(w.group(0), w.group(0)), text)


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


#: Suffixes of single files: a folder or zarr output named with one would surprise its reader.
FILE_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".csv", ".tsv", ".json", ".png", ".html", ".txt", ".parquet")


def check_folder_name(out, what: str) -> Path:
    """``--out`` of a command that writes a folder (``what``, e.g. "an OME-Zarr image"): refused
    when named like a single file (``labels.npy`` would become a folder of that name)."""
    path = Path(out)
    if path.suffix.lower() in FILE_SUFFIXES:
        raise UsageError(f"--out: this command writes {what} (a folder), got {path}, named like a {path.suffix} "
                         f"file; choose e.g. {path.with_suffix('.zarr' if 'zarr' in what.lower() else '')}")
    return path


def prepare_out(out, *, kind: str, command: str, inputs=(), overwrite: bool = False) -> Path:
    """Check ``--out`` before any work: ``kind`` is "file", "folder" or "zarr" (see the module doc).

    With ``overwrite`` a refused path is removed; nothing is created here.
    """
    path = Path(out)
    for i in inputs:
        if i is not None and Path(i).exists() and same_path(path, i):
            raise UsageError(f"--out: {path} is also an input of this command; choose another output path")
    if kind != "file":
        check_folder_name(path, "a zarr array" if kind == "zarr" else "an output folder")
    if not path.exists():
        from .io._resume import _check_can_create_beside

        try:  # a file in the way of a parent folder, or a place where nothing can be created
            _check_can_create_beside(path, "--out")
        except (ValueError, PermissionError) as exc:
            raise UsageError(str(exc)) from None
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


def apply_config(sub: argparse.ArgumentParser, command: str, cfg_path: str, commands=()) -> None:
    """Make the options of the TOML file the defaults of ``sub`` (the command line still wins).

    Top-level keys apply to every command, the keys of the table named after the command override
    them; tables named after other ``commands`` are skipped. Keys are option names (dashes or
    underscores, ``no-feature-cpd = true`` as well as ``feature_cpd = false``); each value is
    checked as on the command line (type, choices, booleans for flags), a list of numbers or names
    stands for a comma-separated value.
    """
    cfg = load_toml(cfg_path)
    where = f"--config {cfg_path}"
    table = {}
    for key, value in cfg.items():
        if not isinstance(value, dict):
            table[key] = value
        elif key not in commands:
            raise UsageError(f"{where}: table [{key}] is not a command (expected one of {', '.join(commands)})")
    table.update(cfg.get(command) if isinstance(cfg.get(command), dict) else {})
    actions = _config_actions(sub)
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in actions:
            raise UsageError(f"{where}: unknown option {key!r} for 'xmodal {command}'")
        action, inverted = actions[name]
        values[action.dest] = _config_value(action, inverted, value, f"{where}: {key}")
    # Positional arguments given in the file need not be repeated on the command line.
    for action in sub._actions:
        if not action.option_strings and action.dest in values:
            action.nargs = "?" if action.nargs in (None, "?") else "*"
            action.required = False
    sub.set_defaults(**values)


def _config_actions(sub: argparse.ArgumentParser) -> dict:
    """Config keys of a subcommand: dest and long option names -> (action, value inverted)."""
    out = {}
    for a in sub._actions:
        if isinstance(a, argparse._HelpAction) or a.dest == "config":
            continue
        out.setdefault(a.dest, (a, False))
        for s in a.option_strings:
            if s.startswith("--"):
                name = s[2:].replace("-", "_")
                out[name] = (a, name != a.dest and isinstance(a, argparse._StoreFalseAction))
    return out


def _config_value(action, inverted: bool, value, where: str):
    """A TOML value as the parsed command-line value of ``action``; UsageError naming ``where``."""
    if isinstance(value, dict):
        raise UsageError(f"{where}: expected a value, got a table")
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return (not value) if inverted else value
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not items and action.nargs == "+":
            raise UsageError(f"{where}: expected at least one value, got []")
        return [_config_scalar(action, v, where) for v in items]
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            value = json.dumps(value)  # e.g. offsets = [[-1, 0], [0, -1]]
        elif action.type is None and value and not any(isinstance(v, bool) for v in value):
            value = ",".join(str(v) for v in value)  # e.g. spacing = [0.5, 0.2, 0.2]
        else:
            raise UsageError(f"{where}: expected one value, got {json.dumps(value)}")
    return _config_scalar(action, value, where)


def _config_scalar(action, value, where: str):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        text = json.dumps(value) if isinstance(value, bool) else repr(value)
        raise UsageError(f"{where}: expected {_expected(action)}, got {text}")
    text = value if isinstance(value, str) else str(value)
    if action.type is not None:
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expected {_expected(action)}, got {value!r}") from None
    else:
        value = text
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: expected one of {', '.join(map(repr, action.choices))}, got {value!r}")
    return value


def _expected(action) -> str:
    return {int: "an integer", float: "a number"}.get(action.type, "a string or a number")


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
