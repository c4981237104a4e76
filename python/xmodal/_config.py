"""Build and runtime configuration: threads, native modules, CUDA devices."""

from __future__ import annotations

import contextlib
import numbers
import os
import platform
import re
import sys
import warnings
from typing import Any, Iterator

from . import _core
from ._optional import have_module
from ._version import __version__


ENV_THREADS = "XMODAL_NUM_THREADS"
_MAX_THREADS = 1 << 16
_ENV_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n]*")


def _check_thread_environment() -> str | None:
    """The problem with ``XMODAL_NUM_THREADS``, or None when it is unset or a positive integer."""
    value = os.environ.get(ENV_THREADS)
    if value is None:
        return None
    # the native kernels' own rule (cpp/src/common.cpp, strtol): leading C white space, an optional
    # sign, ASCII digits, then only spaces, tabs or newlines; any other value gives all cores
    match = _ENV_NUMBER.fullmatch(value)
    if match is not None and 1 <= int(match.group(1)) < _MAX_THREADS:
        return None
    return (f"{ENV_THREADS}={value!r} is not a positive integer (below {_MAX_THREADS}); "
            f"the native kernels use all {int(_core.hardware_threads())} cores instead")


def get_num_threads() -> int:
    """Number of threads the native kernels use.

    Defaults to the ``XMODAL_NUM_THREADS`` environment variable (read at import; a value that is not
    a positive integer in ASCII digits, e.g. ``abc``, ``0``, ``-1`` or ``²``, gives a
    ``RuntimeWarning`` naming it and all cores are used), else all cores. The setting is
    process-wide: every Python thread sees and changes the same value (see :func:`num_threads`).
    """
    return int(_core.num_threads())


def set_num_threads(n: int | None) -> None:
    """Set the number of threads of every native kernel, process-wide.

    Parameters
    ----------
    n : int or None
        Threads to use (>= 1). ``None`` restores the default (``XMODAL_NUM_THREADS`` or all cores).

    Raises
    ------
    TypeError
        ``n`` is not an integer (booleans, floats and strings included).
    ValueError
        ``n`` is below 1 or unreasonably large (>= 65536).
    """
    if n is None:
        _core.set_num_threads(0)
        return
    if isinstance(n, (bool,)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected a positive integer or None, got {n!r}")
    if not 1 <= int(n) < _MAX_THREADS:
        raise ValueError(f"n: expected a positive integer or None (below {_MAX_THREADS}), got {int(n)}")
    _core.set_num_threads(int(n))


_problem = _check_thread_environment()
if _problem is not None:  # warn once at import; importing never fails because of it
    warnings.warn(_problem, RuntimeWarning, stacklevel=2)
del _problem


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Context manager: run the enclosed block with ``n`` native threads, then restore.

    The setting is process-wide (not per Python thread): while the block runs, kernels called from
    every thread use ``n``, and it is restored on leaving the block, also when the block raises.
    Blocks nest. Do not use it concurrently from several Python threads with different values (the
    last one to leave restores its own previous value): set the number once, outside the threads.
    """
    old = _process_setting()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


def _process_setting() -> int:
    """The process-wide setting, without this thread's cap (:func:`capped_threads`)."""
    cap = int(_core.thread_cap())
    _core.set_thread_cap(0)
    try:
        return int(_core.num_threads())
    finally:
        _core.set_thread_cap(cap)


def thread_share(n_workers: int) -> int:
    """The native threads each of ``n_workers`` concurrent workers should use: an equal share of
    :func:`get_num_threads` (at least 1), so that workers x kernel threads stay within the setting."""
    return max(1, get_num_threads() // max(1, int(n_workers)))


@contextlib.contextmanager
def capped_threads(n: int | None) -> Iterator[None]:
    """Context manager: the native kernels called from *this thread* use at most ``n`` threads
    (None: no cap), then the previous cap. Thread-local: other threads are not affected (used by
    the block and slice workers, which call the kernels from several threads at once)."""
    if n is None:
        yield
        return
    old = int(_core.thread_cap())
    _core.set_thread_cap(max(1, int(n)))
    try:
        yield
    finally:
        _core.set_thread_cap(old)


def _cuda_report() -> dict[str, Any]:
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as exc:
        return {"built": False, "error": str(exc) if "No module named" not in str(exc) else None,
                "version": None, "driver": None, "devices": []}
    return {
        "built": True,
        "error": None,
        "version": str(_cuda.cuda_version),
        "driver": int(_cuda.driver_version()),
        "devices": list(_cuda.devices()),
    }


def backends() -> dict[str, Any]:
    """Report what this installation of xmodal can use.

    Returns
    -------
    dict
        ``version``; ``compiler`` (of the C++ kernels); ``openmp`` (bool); ``num_threads`` (threads
        the kernels use now) and ``hardware_threads``; ``cuda`` (a dict: ``built`` whether the
        module ``xmodal._cuda`` exists, ``version`` of the CUDA toolkit it was built with,
        ``driver`` version (0 without a driver), ``devices``: the visible GPUs as dicts with
        ``index``, ``name``, ``compute_capability``, ``total_memory`` in bytes);
        ``optional``: which optional packages can be imported; ``python``, ``numpy``, ``platform``.
    """
    import numpy

    return {
        "version": __version__,
        "compiler": str(_core.compiler()),
        "openmp": bool(_core.have_openmp()),
        "num_threads": get_num_threads(),
        "hardware_threads": int(_core.hardware_threads()),
        "cuda": _cuda_report(),
        "optional": {
            name: have_module(name)
            for name in ("torch", "cupy", "dask", "distributed", "itk", "zarr", "highspy")
        },
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def format_config(info: dict[str, Any] | None = None) -> str:
    """The report of :func:`backends` as text."""
    info = backends() if info is None else info
    cuda = info["cuda"]
    lines = [
        f"xmodal {info['version']}",
        f"  python      {info['python']} ({info['platform']})",
        f"  numpy       {info['numpy']}",
        f"  compiler    {info['compiler']}",
        f"  openmp      {'yes' if info['openmp'] else 'no'}",
        f"  threads     {info['num_threads']} of {info['hardware_threads']} cores",
    ]
    if cuda["built"]:
        lines.append(f"  cuda module built (CUDA {cuda['version']}, driver {cuda['driver'] or 'none'})")
        if cuda["devices"]:
            for d in cuda["devices"]:
                cc = ".".join(map(str, d["compute_capability"]))
                lines.append(f"    gpu {d['index']}: {d['name']} (sm {cc}, {d['total_memory'] / 2**30:.1f} GiB)")
        else:
            lines.append("    no CUDA device visible")
    else:
        lines.append("  cuda module not built" + (f" ({cuda['error']})" if cuda["error"] else ""))
    opt = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["optional"].items())
    lines.append(f"  optional    {opt}")
    return "\n".join(lines)


def show_config(file=None) -> None:
    """Print the report of :func:`backends` (to ``sys.stdout`` unless ``file`` is given)."""
    print(format_config(), file=sys.stdout if file is None else file)
