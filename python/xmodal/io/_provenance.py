"""What the provenance records of an input: a path as given and absolute, with the size and SHA-256
of a file up to :data:`HASH_LIMIT` bytes (folders such as zarr stores are only marked as folders,
never walked), or an in-memory array's type, shape and dtype."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

#: Files larger than this (bytes, 1 GiB) are recorded with their size but not hashed.
HASH_LIMIT = 1 << 30


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of the file at ``path``, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def path_record(path) -> dict:
    """``{"path", "absolute", "kind"}`` of a path (kind "file", "folder" or "missing"); a file also
    has ``bytes`` and, up to :data:`HASH_LIMIT` bytes, ``sha256``."""
    p = Path(path)
    record: dict = {"path": os.fspath(path), "absolute": str(p.absolute())}
    if p.is_dir():
        return record | {"kind": "folder"}
    if not p.is_file():
        return record | {"kind": "missing"}
    size = p.stat().st_size
    record |= {"kind": "file", "bytes": size}
    if size <= HASH_LIMIT:
        try:
            record["sha256"] = file_sha256(p)
        except OSError:  # unreadable now: the record keeps what is known
            pass
    return record


def input_record(x: Any) -> Any:
    """The provenance record of one input ``x``: a path (``os.PathLike``, or a string naming an
    existing file or folder) as :func:`path_record`; an array (anything with ``shape`` and
    ``dtype``: numpy, zarr, dask) as ``{"kind": "array", "type", "shape", "dtype"}`` (plus the
    ``store`` path of a zarr array on disk); a list or tuple item by item; anything else as given
    (None, a description, a number)."""
    if isinstance(x, os.PathLike) or (isinstance(x, str) and x and os.path.exists(x)):
        return path_record(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        record = {"kind": "array", "type": type(x).__name__, "shape": [int(n) for n in x.shape],
                  "dtype": str(x.dtype)}
        root = getattr(getattr(x, "store", None), "root", None)
        if root is not None:
            record["store"] = str(Path(root).absolute())
        return record
    if isinstance(x, (list, tuple)):
        return [input_record(v) for v in x]
    return x


def input_records(inputs) -> dict:
    """:func:`input_record` of every value of the mapping ``inputs`` (None: an empty record)."""
    return {str(k): input_record(v) for k, v in (inputs or {}).items()}
