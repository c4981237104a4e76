"""Atomic output writing and provenance shared by the pipelines.

Files are written with :func:`xmodal.io.atomic_write_bytes` / :func:`xmodal.io.atomic_write_text`
(the one atomic-file helper); output folders are staged and committed with
:func:`xmodal.io.begin_folder` / :func:`xmodal.io.commit_folder`.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text, provenance_attributes

__all__ = ["atomic_write_bytes", "atomic_write_text", "provenance", "write_csv", "write_json"]


def _jsonable(x: Any):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def write_csv(path: Path, header: Sequence[str], columns: Iterable[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    cols = [np.asarray(c) for c in columns]
    for row in zip(*cols):
        w.writerow([v.item() if isinstance(v, np.generic) else v for v in row])
    return atomic_write_text(path, buf.getvalue())


def provenance(step: str, parameters: dict, inputs: dict | None = None) -> dict:
    """What produced an output: the record of :func:`xmodal.io.provenance_attributes` (xmodal
    version, function, parameters, inputs, time) plus the step name, Python and platform."""
    record = provenance_attributes(step, _jsonable(parameters), _jsonable(inputs or {}))["xmodal"]
    return {"xmodal": record.pop("version"), "step": step, **record,
            "python": sys.version.split()[0], "platform": platform.platform()}
