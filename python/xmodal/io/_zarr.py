"""zarr v3 / OME-Zarr helpers (see the package docstring for the conventions)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import describe
from ._units import ngff_unit
from ._resume import check_complete, incomplete_status, output_status

_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_TYPE_ORDER = {"time": 0, "channel": 1, "space": 2}  # NGFF: time, then channel, then space axes
_OPEN_MODES = ("r", "r+", "a")


def _check_chunks(chunks: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """``chunks`` as a tuple of ints, one positive integer per axis of ``shape``; ValueError else."""
    try:
        out = tuple(int(c) for c in chunks)
        ok = len(out) == len(shape) and all(c >= 1 and c == float(g) for c, g in zip(out, chunks))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"chunks: expected {len(shape)} positive integers (one per axis of shape {shape}), "
                         f"got {describe(chunks)}")
    return out


def _zarr():
    import zarr  # a core dependency of the io helpers

    return zarr


def is_zarr_array(x: Any) -> bool:
    """Whether ``x`` is a ``zarr.Array``."""
    try:
        zarr = _zarr()
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, zarr.Array)


def open_array(source: Any, *, mode: str = "r", allow_incomplete: bool = False):
    """Open a zarr array from a path, a zarr array or an OME-Zarr image group.

    Parameters
    ----------
    source : str, os.PathLike or zarr.Array
        A path to a zarr array, or to an OME-Zarr image group (its first multiscale level, ``"0"``,
        is returned), or an open array (returned as is).
    mode : {"r", "r+", "a"}
        zarr access mode (read only, read and write, or read and write creating what is missing;
        zarr's "w" and "w-", which erase or refuse an existing store, are not taken here).
    allow_incomplete : bool
        An output that xmodal is still writing, or whose run was killed, carries the attribute
        ``xmodal_output`` with ``complete: false`` (its unwritten chunks read as zeros). Opening
        such a path for reading (``mode="r"``) raises ValueError unless this is True (then a
        RuntimeWarning is issued). The write modes are for resuming and do not check.
    """
    zarr = _zarr()
    if isinstance(source, zarr.Array):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a path or a zarr array, got {describe(source)}")
    if mode not in _OPEN_MODES:
        raise ValueError(f"mode: expected one of {_OPEN_MODES} (opening an existing array), got {mode!r}")
    where = os.fspath(source)
    try:
        node = zarr.open(where, mode=mode)
    except FileNotFoundError as exc:  # zarr's "node not found" errors
        raise FileNotFoundError(f"source: expected a zarr array or OME-Zarr image at {where!r}, found none "
                                f"({' '.join(str(exc).split())})") from None
    if not isinstance(node, zarr.Array):
        from ._ngff_check import first_multiscale

        attrs = dict(node.attrs)
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) and "multiscales" in attrs["ome"] else attrs
        ms = first_multiscale(ome, f"source: {where!r}")
        if ms is None:
            raise ValueError(f"source: {where!r} is a zarr group without OME-Zarr multiscales metadata")
        level = ms["datasets"][0]["path"]
        try:
            node = node[level]
        except KeyError:
            raise FileNotFoundError(f"source: the OME-Zarr image {where!r} names {level!r} as its full resolution "
                                    f"level, which it lacks") from None
        if not isinstance(node, zarr.Array):
            raise ValueError(f"source: the full resolution level {level!r} of the OME-Zarr image {where!r} is a "
                             f"group, not an array")
    if mode == "r":
        check_complete(node, repr(where), allow_incomplete=allow_incomplete)
    return node


def create_array(path, shape: Sequence[int], dtype, *, chunks: Sequence[int] | None = None,
                 fill_value=0, overwrite: bool = False, attributes: Mapping | None = None,
                 writer: str | None = None):
    """Create a zarr v3 array at ``path`` (chunks default to the whole array, capped at 128 per axis;
    chunks given larger than the array are capped at its shape, since zarr allocates whole chunks).

    ``writer`` (e.g. ``"xmodal mws"``): the array is born flagged incomplete by that writer (see
    :func:`mark_complete`), in its first metadata document, so a kill at any later point leaves
    an array that :func:`open_array` recognises as unfinished.
    """
    zarr = _zarr()
    given = shape
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or any(s < 0 for s in shape):
        raise ValueError(f"shape: expected a sequence of non-negative integers, got {describe(given)}")
    if chunks is None:
        chunks = tuple(min(max(s, 1), 128) for s in shape)
    chunks = tuple(max(1, min(s, c)) for s, c in zip(shape, _check_chunks(chunks, shape)))
    attrs = dict(attributes or {})
    if writer is not None:
        attrs.update(incomplete_status(writer))
    return zarr.create_array(store=os.fspath(path), shape=shape, chunks=tuple(int(c) for c in chunks),
                             dtype=np.dtype(dtype), fill_value=fill_value, overwrite=overwrite,
                             attributes=attrs or None)


def ome_image_metadata(axes: Sequence[str], *, spacing: Sequence[float] | None = None,
                       units: str | None = None, name: str | None = None, path: str = "0") -> dict:
    """NGFF 0.5 image metadata (the value of the group attribute ``"ome"``) for one resolution level.

    ``axes`` are distinct axis names among t, c, z, y, x in array order, time before channel before
    the spatial axes (as NGFF requires); ``spacing`` gives the voxel size of the spatial axes (one
    positive value for all, or one per spatial axis; default 1) in ``units``, an NGFF length unit
    (``"micrometer"``, ``"nanometer"``, ...; ``"um"``, ``"µm"``, ``"nm"`` are written as those
    names; see :func:`ngff_unit`).
    """
    from .._validation import as_spacing

    axes = tuple(axes)
    for a in axes:
        if a not in _AXIS_TYPES:
            raise ValueError(f"axes: expected names among {sorted(_AXIS_TYPES)}, got {axes}")
    ranks = [_TYPE_ORDER[_AXIS_TYPES[a]] for a in axes]
    if len(set(axes)) != len(axes) or ranks != sorted(ranks):
        raise ValueError(f"axes: expected distinct names in the order t, c, then spatial axes, got {axes}")
    units = ngff_unit(units)
    spatial = [a for a in axes if _AXIS_TYPES[a] == "space"]
    spacing = [1.0] * len(spatial) if spacing is None else as_spacing(spacing, len(spatial)).tolist()
    scale, it = [], iter(spacing)
    for a in axes:
        scale.append(next(it) if _AXIS_TYPES[a] == "space" else 1.0)
    axes_meta = []
    for a in axes:
        entry = {"name": a, "type": _AXIS_TYPES[a]}
        if units and _AXIS_TYPES[a] == "space":
            entry["unit"] = units
        axes_meta.append(entry)
    ms = {"axes": axes_meta,
          "datasets": [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}
    if name:
        ms["name"] = name
    return {"version": "0.5", "multiscales": [ms]}


def provenance_attributes(function: str, parameters: Mapping[str, Any] | None = None,
                          inputs: Mapping[str, Any] | None = None) -> dict:
    """Provenance record stored under the attribute ``"xmodal"``: version, function, parameters, inputs, time.

    Each input is recorded by :func:`xmodal.io._provenance.input_record`: a path as given and
    absolute (a file with its size and, up to 1 GiB, its SHA-256; a folder such as a zarr store
    marked as a folder), an array by its type, shape and dtype. Values that are not JSON
    serialisable are stored as their ``repr``.
    """
    from .._version import __version__
    from ._provenance import input_records

    def clean(v):
        if isinstance(v, np.generic):
            v = v.item()  # numpy numbers as numbers, not "np.int64(3)"
        elif isinstance(v, np.ndarray) and v.size <= 4096 and v.dtype.kind in "biuf":
            v = v.tolist()  # small numeric arrays (offsets, spacing) in full; larger ones by repr
        elif isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        try:
            json.dumps(v)
            return v
        except (TypeError, ValueError):
            if isinstance(v, (tuple, list)):
                return [clean(x) for x in v]
            return repr(v)

    return {"xmodal": {
        "version": __version__,
        "function": function,
        "parameters": {k: clean(v) for k, v in (parameters or {}).items()},
        "inputs": {k: clean(v) for k, v in input_records(inputs).items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }}


def create_ome_zarr_image(path, shape: Sequence[int], dtype, *, axes: Sequence[str],
                          chunks: Sequence[int] | None = None, spacing=None, units: str | None = None,
                          name: str | None = None, provenance: Mapping | None = None,
                          overwrite: bool = False, fill_value=0, writer: str | None = None):
    """Create an OME-Zarr (NGFF 0.5, zarr v3) image group at ``path``; return its array ``path/0``.

    When the group exists with an array of the same shape, dtype and chunks and ``overwrite`` is
    False, the existing array is returned with its data and status unchanged (so that an interrupted
    run can resume into it; the caller flags it incomplete with :func:`mark_incomplete` before
    writing) and ``provenance`` replaces the group's. ``writer``: a new array is born flagged
    incomplete by that writer (see :func:`create_array`); an existing xmodal output (one with a
    status attribute) of another layout is then replaced instead of refused.
    """
    zarr = _zarr()
    path = os.fspath(path)
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes: expected {len(shape)} names, got {tuple(axes)}")
    if chunks is None:
        chunks = tuple(min(max(s, 1), 128) for s in shape)
    chunks = _check_chunks(chunks, shape)
    meta = ome_image_metadata(axes, spacing=spacing, units=units, name=name)  # checked before any write
    if not overwrite and os.path.exists(os.path.join(path, "0", "zarr.json")):
        arr = zarr.open_array(os.path.join(path, "0"), mode="r+")
        if arr.shape == shape and arr.dtype == np.dtype(dtype) and tuple(arr.chunks) == chunks:
            if provenance:
                zarr.open_group(path, mode="r+").attrs.update(dict(provenance))
            return arr
        if writer is not None and output_status(arr) is not None:
            overwrite = True  # a previous xmodal output of another layout: replaced
        else:
            raise ValueError(f"out: {path!r} holds an array of shape {arr.shape}, dtype {arr.dtype}, chunks "
                             f"{arr.chunks}; expected {shape}, {np.dtype(dtype)}, {chunks} (pass a new path)")
    group = zarr.open_group(path, mode="w" if overwrite or not os.path.exists(path) else "a")
    arr = group.create_array("0", shape=shape, chunks=chunks, dtype=np.dtype(dtype), fill_value=fill_value,
                             overwrite=True, attributes=incomplete_status(writer) if writer is not None else None)
    attrs = {"ome": meta}
    if provenance:
        attrs.update(provenance)
    group.attrs.update(attrs)
    return arr


def create_ome_zarr_labels(image, name: str, shape: Sequence[int], dtype=np.uint32, *, axes: Sequence[str],
                           chunks: Sequence[int] | None = None, spacing=None, units: str | None = None,
                           writer: str | None = None):
    """Create the label image ``<image>/labels/<name>`` of the OME-Zarr image group ``image`` (NGFF 0.5
    ``labels`` and ``image-label`` metadata); return its array ``<image>/labels/<name>/0``.

    ``shape`` and ``axes`` are the spatial ones of the image (no channel axis); ``chunks`` are
    capped at the shape. The array is created anew (a previous one of that name is replaced),
    filled with 0 (background) and, with ``writer``, born flagged incomplete (see
    :func:`create_array`). ``name`` is added to the group's list of labels.
    """
    zarr = _zarr()
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"axes: expected {len(shape)} names, got {tuple(axes)}")
    if not isinstance(name, str) or not name.strip(" .") or "/" in name or "\\" in name:
        raise ValueError(f"name: expected a label image name (not empty, no '/'), got {describe(name)}")
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise TypeError(f"dtype: expected an integer dtype for a label image (NGFF labels), got {np.dtype(dtype)}")
    if chunks is None:
        chunks = shape
    chunks = tuple(max(1, min(int(s), c)) for s, c in zip(shape, _check_chunks(chunks, shape)))
    meta = ome_image_metadata(axes, spacing=spacing, units=units, name=name)  # checked before any write
    labels = zarr.open_group(os.fspath(image), mode="a").require_group("labels")
    names = list(labels.attrs.get("ome", {}).get("labels", []))
    labels.attrs.update({"ome": {"version": "0.5", "labels": names + [name] * (name not in names)}})
    group = labels.require_group(name)
    arr = group.create_array("0", shape=shape, chunks=chunks, dtype=np.dtype(dtype), fill_value=0, overwrite=True,
                             attributes=incomplete_status(writer) if writer is not None else None)
    meta["image-label"] = {"source": {"image": "../../"}}  # NGFF 0.5: the version is the "ome" object's only
    group.attrs.update({"ome": meta})
    return arr


def local_store_path(array) -> str | None:
    """File-system directory of a zarr array in a local store, or None (memory or remote store)."""
    root = getattr(getattr(array, "store", None), "root", None)
    if root is None:
        return None
    return os.path.join(os.fspath(root), *[p for p in str(array.path).split("/") if p])


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting and restoring it (os has no getter)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, flushed to
    disk, then renamed over ``path``, so a reader never sees a half-written file. Returns ``path``
    as a :class:`pathlib.Path`. The one helper for atomic files in xmodal."""
    result = Path(path)
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return result


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class BlockLedger:
    """Record of finished blocks of a resumable job, as marker files in ``directory``.

    A marker is written (atomically) only after the block's data is stored, so a block with a marker
    is complete. It holds the content digest of the block's input (:func:`data_digest` of what the
    block read) and any small facts about the result (JSON). A block is reused only when its input
    digest matches the one read now (:meth:`is_done` with ``digest``), so a resume against other
    data recomputes. The ledger belongs to one job ``signature`` (a string summarising the
    parameters, see :func:`job_signature`): opening it with another signature clears the old
    markers, so a changed job never skips blocks. Safe for concurrent writers (one file per block).
    """

    def __init__(self, directory, signature: str):
        self.directory = os.fspath(directory)
        self.signature = hashlib.sha256(signature.encode()).hexdigest()
        sig_file = os.path.join(self.directory, "signature")
        try:
            with open(sig_file) as f:
                old = f.read().strip()
        except OSError:
            old = None
        if old != self.signature:
            if os.path.isdir(self.directory):
                shutil.rmtree(self.directory)
            os.makedirs(self.directory, exist_ok=True)
            atomic_write_text(sig_file, self.signature)

    @classmethod
    def attach(cls, directory) -> "BlockLedger":
        """The ledger in ``directory`` as another process created it (no signature check; for workers)."""
        self = cls.__new__(cls)
        self.directory = os.fspath(directory)
        with open(os.path.join(self.directory, "signature")) as f:
            self.signature = f.read().strip()
        return self

    @classmethod
    def lookup(cls, directory, index, path, *arrays):
        """For a block task: ``(ledger, digest, record)``, the ledger in ``directory`` (attached), the
        :func:`data_digest` of the block's input ``arrays``, and the block's record when it is done
        from that input and its result file ``path`` exists (else None). ``(None, None, None)`` when
        ``directory`` is None (a run that cannot resume)."""
        if directory is None:
            return None, None, None
        from ._resume import data_digest

        ledger, digest = cls.attach(directory), data_digest(*arrays)
        rec = ledger.record(index)
        done = rec is not None and rec.get("input") == digest and os.path.exists(path)
        return ledger, digest, rec if done else None

    @staticmethod
    def key(index: Sequence[int] | int) -> str:
        if isinstance(index, (int, np.integer)):
            return str(int(index))
        return "_".join(str(int(i)) for i in index)

    def record(self, index) -> dict | None:
        """The marker of block ``index`` (``{"input": digest or None, ...}``), or None when not done."""
        try:
            with open(os.path.join(self.directory, self.key(index))) as f:
                text = f.read()
        except OSError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:
            return {"input": None}
        return rec if isinstance(rec, dict) else {"input": None}

    def is_done(self, index, digest: str | None = None) -> bool:
        """Whether block ``index`` is done, and (with ``digest``) was computed from that input."""
        rec = self.record(index)
        return rec is not None and (digest is None or rec.get("input") == digest)

    def mark_done(self, index, digest: str | None = None, **info) -> None:
        """Record block ``index`` as done from the input with ``digest`` (call after its data is stored)."""
        atomic_write_text(os.path.join(self.directory, self.key(index)),
                          json.dumps({"input": digest, **info}, sort_keys=True))

    def done_blocks(self) -> set[str]:
        return {n for n in os.listdir(self.directory) if n not in ("signature",) and not n.startswith(".tmp-")}

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
