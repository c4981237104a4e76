"""Resume and commit: content digests, job signatures, completion status, staged output folders.

One mechanism for every resumable output of xmodal (tiled prediction to zarr, blockwise mutex
watershed, the ``segment`` pipeline, the CLI):

- **Content digests.** Work is cut into blocks (tiles); each block's result is recorded with the
  SHA-256 of the exact input bytes it was computed from (:func:`data_digest` of the block's input
  window, halo included, as read during the run). A resumed run reads the block's input again,
  hashes it, and reuses the stored result only when the digest matches; otherwise it recomputes.
  So a resume against other data (same shape and dtype) never reuses a block computed from the
  old data, whatever the store (numpy, zarr, dask), and needs no whole-volume hash up front: each
  input byte is hashed while it is read for the work anyway (about 1 GB/s with SHA-256, far below
  the cost of a network or a watershed on the same bytes). A resume re-reads the input of the
  blocks it skips (no compute). The digest of a whole run is :func:`combine_digests` of the block
  digests in block order (a digest of the input windows, not of the array's bytes).
- **Signatures.** Everything else that changes the result (model weights, tile, halo,
  normalisation, offsets, thresholds, xmodal version ...) goes into a job signature
  (:func:`job_signature`); a ledger or output with another signature is not reused.
- **Completion status.** Every zarr array xmodal writes carries the attribute ``"xmodal_output"``:
  ``{"complete": false, "writer": ...}`` from its creation on (in the array's first metadata
  document), replaced by ``{"complete": true, ...}`` (with the job signature and input digest)
  only after every chunk is written. zarr writes a metadata document to a temporary file and
  renames it, so the flip is atomic for a reader or a killed writer. :func:`xmodal.io.open_array`
  refuses to read an incomplete output (``allow_incomplete=True`` reads it with a warning).
- **Staged folders.** An output folder is written to the sibling ``<name>.xmodal-partial`` and
  renamed into place when complete (:func:`begin_folder`, :func:`commit_folder`); a previous
  complete folder at the target is swapped out in the same step (an atomic exchange on Linux), so
  a killed run leaves the previous complete folder (or none), never a mix of two runs.

Atomicity is with respect to a killed process (files are renamed into place). Chunk files are not
fsynced, so after a power loss the operating system may have lost recent writes.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

STATUS_KEY = "xmodal_output"
STAGING_SUFFIX = ".xmodal-partial"


# ----------------------------------------------------------------------------------- digests

def data_digest(*arrays) -> str:
    """SHA-256 (hex) of the dtype, shape and C-order bytes of each array (None allowed).

    Arrays are read as they are (numpy, or anything ``numpy.asarray`` accepts); the hash runs
    outside the GIL for large buffers.
    """
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"None;")
            continue
        a = np.ascontiguousarray(np.asarray(a))
        if a.dtype == object:
            raise TypeError("data_digest: expected numeric arrays, got dtype object")
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8) if a.size else b"")
    return h.hexdigest()


def combine_digests(digests: Iterable[str]) -> str:
    """SHA-256 of a sequence of digests (order matters): the digest of a run from its blocks'."""
    h = hashlib.sha256()
    for d in digests:
        h.update(str(d).encode())
        h.update(b";")
    return h.hexdigest()


def _token(obj: Any):
    """A JSON-able stand-in for a parameter value that is stable across processes."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _token(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_token(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"ndarray": data_digest(obj)}
    return {"object": object_token(obj)}


def object_token(obj: Any) -> str:
    """Digest of an object's pickled state (class and attributes), e.g. a normalisation callable.

    Functions and classes pickle by their qualified name (so a changed function body keeps its
    token); an object that cannot be pickled gets its ``repr``, which includes its address: it
    never matches a later run, so work is recomputed rather than wrongly reused.
    """
    try:
        data = pickle.dumps(obj, protocol=4)
    except Exception:
        return "repr:" + repr(obj)
    return "pickle:" + hashlib.sha256(data).hexdigest()


def job_signature(parameters: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the parameters that change a result (canonical JSON, plus xmodal's version).

    Arrays enter by content digest, other objects by :func:`object_token`.
    """
    from .._version import __version__

    text = json.dumps({"xmodal": __version__, **_token(dict(parameters))}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------- status

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def incomplete_status(writer: str) -> dict:
    """The attribute value of an output being written by ``writer``: ``{STATUS_KEY: {...}}``."""
    return {STATUS_KEY: {"complete": False, "writer": str(writer), "started": _now()}}


def mark_incomplete(array, writer: str) -> None:
    """Flag a zarr ``array`` as being written (before its data changes); see :func:`mark_complete`."""
    array.attrs.update(incomplete_status(writer))


def mark_complete(array, writer: str, *, signature: str | None = None, input_digest: str | None = None) -> None:
    """Flag a zarr ``array`` as complete: call after its last chunk is written.

    ``signature`` (:func:`job_signature`) and ``input_digest`` (:func:`combine_digests` of the
    block digests) let a rerun recognise that the output already holds the result for its input.
    The attribute document is replaced atomically (zarr renames a temporary file into place).
    """
    array.attrs.update({STATUS_KEY: {"complete": True, "writer": str(writer), "finished": _now(),
                                     "signature": signature, "input_digest": input_digest}})


def output_status(array) -> dict | None:
    """The ``"xmodal_output"`` record of a zarr array, or None (not written by xmodal, or old)."""
    attrs = getattr(array, "attrs", None)
    if attrs is None:
        return None
    try:
        status = attrs.get(STATUS_KEY)
    except Exception:  # pragma: no cover - a store that cannot read its attributes
        return None
    return dict(status) if isinstance(status, Mapping) else None


def is_complete(array) -> bool:
    """False only for an xmodal output whose writer has not finished (see :func:`mark_complete`)."""
    status = output_status(array)
    return status is None or bool(status.get("complete", False))


class IncompleteOutputError(ValueError):
    """An unfinished xmodal output was given as input (see :func:`check_complete`).

    ``python_hint`` is the part of the message that applies to Python callers only (the
    ``allow_incomplete=True`` argument); the command line leaves it out.
    """

    python_hint = ", or pass allow_incomplete=True to read the partial data"


def check_complete(array, where: str, *, name: str = "source", allow_incomplete: bool = False) -> None:
    """Raise :class:`IncompleteOutputError` (a ValueError), or warn with ``allow_incomplete``, when
    ``array`` is an unfinished output."""
    if is_complete(array):
        return
    status = output_status(array) or {}
    writer = status.get("writer", "xmodal")
    text = (f"{name}: {where} is an incomplete output of {writer} (the run was interrupted or is still "
            f"running; attribute {STATUS_KEY!r} has complete=false): its unwritten chunks read as the "
            f"fill value. Rerun the same command to resume it")
    if not allow_incomplete:
        raise IncompleteOutputError(text + IncompleteOutputError.python_hint)
    warnings.warn(text + "; reading the partial data as requested", RuntimeWarning, stacklevel=3)


def remove_temporaries(directory, *, recursive: bool = True) -> int:
    """Delete the temporary files a killed writer left under ``directory``; return their number.

    These are the files of a write that never reached its rename: zarr's ``*.partial`` and
    xmodal's ``.tmp-*`` (:func:`xmodal.io.atomic_write_bytes`). Called when a resumed output is
    complete (only on directories that one writer owns); the walk lists every chunk file once.
    """
    removed = 0
    if directory is None or not os.path.isdir(directory):
        return 0
    for root, _dirs, files in os.walk(directory):
        if not recursive and os.path.normpath(root) != os.path.normpath(directory):
            break
        for f in files:
            if f.endswith(".partial") or f.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(root, f))
                    removed += 1
                except OSError:  # pragma: no cover - removed meanwhile
                    pass
    return removed


# ----------------------------------------------------------------------------------- folders

def staging_path(path) -> Path:
    """Where the output folder ``path`` is written before it is renamed into place."""
    path = Path(path)
    return path.parent / (path.name + STAGING_SUFFIX)


def _is_replaceable(path: Path) -> bool:
    entries = os.listdir(path)
    return not entries or "provenance.json" in entries or "zarr.json" in entries


def check_output_folder(path, *, name: str = "out") -> Path:
    """Check that ``path`` may receive an output folder: absent, empty, or a previous xmodal output.

    A previous output is recognised by its ``provenance.json`` (pipelines) or ``zarr.json`` (a zarr
    store). Any other existing folder or file is refused with a ValueError naming ``name``, so that
    replacing the output never deletes unrelated files.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a folder path, got {type(path).__name__}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: expected a folder path, got the existing file {path}")
    if path.is_dir() and not _is_replaceable(path):
        raise ValueError(f"{name}: {path} exists and is not an xmodal output (no provenance.json or zarr.json); "
                         "it is replaced as a whole when the run completes, so pass a new or empty folder")
    _check_can_create_beside(path, name)
    return path


def _check_can_create_beside(path: Path, name: str) -> None:
    """Refuse, before any work, an output whose staging sibling could not be created: a file in
    the way of a parent folder, or a place where no folder can be made (permissions, a read-only
    or virtual file system), probed by creating and removing a temporary folder there."""
    import tempfile

    anc = path.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{name}: cannot create {path}: {anc} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".xmodal-probe-", dir=anc))
    except OSError as exc:
        raise PermissionError(f"{name}: cannot create {path}: no folder can be made in {anc} "
                              f"({exc.strerror or exc})") from None


def begin_folder(path, *, name: str = "out", keep: Iterable[str] | None = None) -> Path:
    """Prepare the staging folder of the output folder ``path`` and return it.

    The run writes everything into the returned folder and calls :func:`commit_folder` at the end.
    A staging folder left by a killed run is emptied, except the entries named in ``keep``
    (resumable parts, e.g. a zarr store with its progress ledger, which verify their content
    before reusing anything). ``path`` itself is not touched here.
    """
    path = check_output_folder(path, name=name)
    stage = staging_path(path)
    if stage.exists() and not stage.is_dir():
        stage.unlink()
    keep = set(keep or ())
    if stage.is_dir():
        for entry in os.listdir(stage):
            if entry in keep:
                continue
            p = stage / entry
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for old in path.parent.glob(f".{path.name}.xmodal-old-*") if path.parent.is_dir() else ():
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed inside commit_folder's fallback
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_RENAMEAT2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False when unsupported."""
    global _RENAMEAT2
    if _RENAMEAT2 is None:
        _RENAMEAT2 = False
        if os.name == "posix":
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _RENAMEAT2 = fn
            except (OSError, AttributeError):
                _RENAMEAT2 = False
    if not _RENAMEAT2:
        return False
    import ctypes

    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), f"{a} <-> {b}")


def commit_folder(stage, path) -> Path:
    """Move the finished staging folder ``stage`` to ``path``, replacing a previous output there.

    With no folder at ``path`` this is one rename. Otherwise the two folders are exchanged
    atomically (Linux ``renameat2(RENAME_EXCHANGE)``) and the previous output, now at ``stage``,
    is deleted; where that call is not available the previous output is first renamed aside
    (a kill between the two renames leaves no folder at ``path``, never a mixed one).
    """
    stage, path = Path(stage), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.rename(stage, path)
    elif _exchange(stage, path):
        shutil.rmtree(stage)
    else:
        aside = path.parent / f".{path.name}.xmodal-old-{os.getpid()}"
        os.rename(path, aside)
        os.rename(stage, path)
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_dir(path.parent)
    return path
