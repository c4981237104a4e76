"""Shared set-up of the benchmark suites.

Every result file records the machine it was measured on (CPU model, cores, memory, GPU, thread
setting), the versions (xmodal's commit, Python, numpy, torch, the peers) and the date, so figures
from different machines or commits are never compared by accident. See README.md here.

Result files are never overwritten: ``--benchmark-json PATH`` naming an existing file stops the run
before anything is measured (a quiet rerun once replaced committed files, and the docs then quoted
figures no file held).

A peer that could not be measured (not installed, broken, failed) is recorded in the benchmark's
``extra_info`` (``<peer>_status``), warned about, and listed at the end of the run; with
``XMODAL_BENCH_REQUIRE_PEERS=1`` it fails the benchmark instead. A benchmark whose only peer is
missing is skipped before it runs (:func:`require_peer`).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

#: distributions whose versions every result file records (peers and the libraries the timings hang on)
VERSIONED = ("numpy", "scipy", "torch", "cupy-cuda13x", "cupy-cuda12x", "cupy", "pytest-benchmark", "pycpd",
             "cycpd", "probreg", "open3d", "cpd-pytorch", "bioimage-cpp", "mwatershed", "monai", "lap", "ortools",
             "highspy", "pykdtree", "scikit-image", "zarr", "dask", "distributed", "pandas", "threadpoolctl")

#: environment variables that change what a run measures
ENV_KEYS = ("XMODAL_BENCH_QUICK", "XMODAL_BENCH_SCALE", "XMODAL_BENCH_MACHINE", "XMODAL_BENCH_PEER_BUDGET",
            "XMODAL_NUM_THREADS", "OMP_NUM_THREADS", "XMODAL_DATA", "XMODAL_BCPD", "XMODAL_BENCH_REQUIRE_PEERS",
            "CUDA_VISIBLE_DEVICES")


class PeerNotMeasured(UserWarning):
    """A peer tool of a benchmark could not be timed: no ratio against it in this run."""


#: (benchmark node id or name, peer, reason) of every peer not measured in this process
NOT_MEASURED: list[tuple[str, str, str]] = []


def _run(cmd, timeout=10.0) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPOSITORY)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def machine_description() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import xmodal

        b = xmodal.backends()
        info["xmodal"] = b["version"]
        info["xmodal_threads"] = b["num_threads"]
        info["gpus"] = [d["name"] for d in b["cuda"]["devices"]]
    except Exception as exc:  # the description must never break a run
        info["xmodal_error"] = repr(exc)
    smi = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader"])
    if smi:
        info["nvidia_smi"] = smi.splitlines()
    info["machine_label"] = os.environ.get("XMODAL_BENCH_MACHINE", "")
    return info


def versions() -> dict:
    """xmodal's commit (and whether the tree had local changes), Python, and the installed versions of
    numpy, torch and the peers (read from the distributions' metadata: nothing is imported)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "python_executable": sys.executable}
    commit = _run(["git", "rev-parse", "HEAD"])
    out["xmodal_commit"] = commit
    if commit:
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
        out["xmodal_tree_dirty"] = bool(status) if status is not None else None
    try:
        import xmodal

        out["xmodal"] = xmodal.__version__ if hasattr(xmodal, "__version__") else xmodal.backends()["version"]
        out["xmodal_path"] = str(Path(xmodal.__file__).resolve().parent)
    except Exception as exc:
        out["xmodal"] = f"not importable: {exc!r}"[:200]
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "torch" in sys.modules:  # only when a suite imported it: importing torch here costs seconds
        torch = sys.modules["torch"]
        out["torch_cuda"] = getattr(torch.version, "cuda", None)
    bcpd = os.environ.get("XMODAL_BCPD")
    if bcpd:
        out["bcpd_binary"] = bcpd
    return out


def run_record() -> dict:
    """When and how the run was started: the date (UTC and local), the command line and the settings."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"date_utc": now.isoformat(timespec="seconds"),
            "date_local": now.astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv, "cwd": os.getcwd(),
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}


# ----------------------------------------------------------------------------- peers
def _require_all() -> bool:
    return os.environ.get("XMODAL_BENCH_REQUIRE_PEERS", "") not in ("", "0")


def peer_available(module: str, *, import_it: bool = True) -> str | None:
    """None when ``module`` can be used, else why not. ``import_it=False`` only looks it up (for peers
    that run in a subprocess, or that clash with others when imported into this process)."""
    try:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
        if import_it:
            importlib.import_module(module)
    except Exception as exc:  # installed but broken (e.g. probreg without libusb for open3d)
        return f"{module} does not import: {type(exc).__name__}: {exc}"[:300]
    return None


def require_peer(module: str, peer: str | None = None, *, import_it: bool = True) -> None:
    """Skip the calling benchmark (before it measures anything) when its only peer is missing; with
    ``XMODAL_BENCH_REQUIRE_PEERS=1`` fail instead."""
    why = peer_available(module, import_it=import_it)
    if why is None:
        return
    msg = f"peer {peer or module} not available ({why}): no ratio can be measured"
    if _require_all():
        pytest.fail(msg + " (XMODAL_BENCH_REQUIRE_PEERS is set)")
    pytest.skip(msg)


def peer_not_measured(benchmark, peer: str, reason: str) -> None:
    """Record in ``extra_info`` that ``peer`` was not measured in this benchmark (``<peer>_status``),
    warn, and list it at the end of the run; with ``XMODAL_BENCH_REQUIRE_PEERS=1`` fail."""
    reason = str(reason)[:300]
    info = benchmark.extra_info if hasattr(benchmark, "extra_info") else benchmark
    info[f"{peer}_status"] = reason
    info.setdefault("peers_not_measured", []).append(peer)
    name = getattr(benchmark, "name", None) or os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    NOT_MEASURED.append((name, peer, reason))
    warnings.warn(f"{name}: peer {peer} not measured, no ratio recorded: {reason}", PeerNotMeasured, stacklevel=2)
    if _require_all():
        pytest.fail(f"peer {peer} not measured ({reason}) and XMODAL_BENCH_REQUIRE_PEERS is set")


# ----------------------------------------------------------------------------- timings
@pytest.fixture(autouse=True)
def _time_disabled_benchmarks(request):
    """Under ``--benchmark-disable`` (each benchmark body run once, a smoke test) pytest-benchmark keeps
    no statistics; time the single ``pedantic`` call so that :func:`min_seconds` and the peer ratios
    still work."""
    if "benchmark" in request.fixturenames:
        bm = request.getfixturevalue("benchmark")
        if getattr(bm, "disabled", False):
            import time

            orig = bm.pedantic

            def pedantic(target, *args, **kwargs):
                t0 = time.perf_counter()
                out = orig(target, *args, **kwargs)
                bm.xmodal_disabled_seconds = time.perf_counter() - t0
                return out

            bm.pedantic = pedantic
    yield


def min_seconds(benchmark) -> float:
    """The best round of the benchmark's timed call (its one call under ``--benchmark-disable``)."""
    if benchmark.stats is not None:
        return benchmark.stats.stats.min
    return benchmark.xmodal_disabled_seconds


# ----------------------------------------------------------------------------- pytest hooks
def _free_name(path: Path) -> Path:
    for i in range(2, 1000):
        cand = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not cand.exists():
            return cand
    return path.with_name(f"{path.stem}-new{path.suffix}")


def _plugin_version() -> str:
    try:
        from importlib.metadata import version
        return version("pytest-benchmark")
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown version"


def pytest_configure(config):
    path = config.getoption("benchmark_json", default=None)
    if path is None:
        return
    if hasattr(path, "write"):
        # pytest-benchmark < 5.3 opens the file for writing while parsing the command line, before any
        # conftest runs: an existing file is already emptied here, and no check can keep it. The run
        # goes on (a lent GPU machine may have such a version; run_device.sh picks free names itself).
        warnings.warn(pytest.PytestConfigWarning(
            f"--benchmark-json {path.name}: this pytest-benchmark ({_plugin_version()}) empties the file as it "
            "parses the command line, so an existing result file cannot be protected; install "
            "pytest-benchmark>=5.3 (the version the test and bench extras require)."))
        return
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        raise pytest.UsageError(
            f"--benchmark-json {path}: the file exists; benchmark results are never overwritten (committed "
            f"files are quoted by the docs). Write to a new name, e.g. {_free_name(path)}, or remove the old "
            "file yourself if it is a scratch file.")


#: benchmarks that were interrupted before their first round ended (a timeout, Ctrl-C): no timings
INTERRUPTED: list[str] = []


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Drop the benchmarks that have no timing before pytest-benchmark writes its JSON: one interrupted
    inside its first round (pytest-timeout, a SIGINT from ``timeout``) leaves empty statistics, on which
    pytest-benchmark's writer fails and writes no file at all, losing every other result of the run."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is not None and getattr(bs, "benchmarks", None):
        keep = []
        for b in bs.benchmarks:
            if getattr(getattr(b, "stats", None), "data", None):
                keep.append(b)
            else:
                INTERRUPTED.append(getattr(b, "fullname", None) or getattr(b, "name", "?"))
        bs.benchmarks[:] = keep
    yield


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["xmodal_machine"] = machine_description()
    output_json["xmodal_versions"] = versions()
    output_json["xmodal_run"] = run_record()
    output_json["xmodal_peers_not_measured"] = [{"benchmark": n, "peer": p, "reason": r} for n, p, r in NOT_MEASURED]
    output_json["xmodal_interrupted"] = list(INTERRUPTED)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if INTERRUPTED:
        terminalreporter.section("benchmarks interrupted before a timing (left out of the JSON)")
        for name in INTERRUPTED:
            terminalreporter.write_line(name)
    if not NOT_MEASURED:
        return
    terminalreporter.section("peers not measured (no ratio recorded against them)")
    for name, peer, reason in NOT_MEASURED:
        terminalreporter.write_line(f"{name}: {peer}: {reason}")
