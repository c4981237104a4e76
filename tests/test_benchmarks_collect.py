"""The benchmark suites collect, and a benchmark run never overwrites an existing result file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args, timeout=300):
    # the xmodal this test session imports (installed, or an in-place build on PYTHONPATH), not the
    # source tree's python/ (which has no compiled extension in an installed checkout)
    import xmodal

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(xmodal.__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_benchmarks_collect():
    r = _pytest("benchmarks", "--collect-only")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "bench_matching.py::test_graph_p" in r.stdout


def test_existing_result_file_is_refused(tmp_path):
    old = tmp_path / "results.json"
    old.write_text('{"kept": true}\n')
    r = _pytest("benchmarks/bench_matching.py", "--collect-only", f"--benchmark-json={old}")
    assert r.returncode != 0
    assert "never overwritten" in r.stdout + r.stderr
    assert old.read_text() == '{"kept": true}\n'


def test_result_file_opened_by_an_old_plugin_is_warned_about(tmp_path):
    # pytest-benchmark < 5.3 hands over a file it opened (and emptied) while parsing the command line:
    # nothing can protect the file any more, so the run goes on with a warning naming the version to install
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_conftest", ROOT / "benchmarks" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)

    class _Config:
        def __init__(self, value):
            self.value = value

        def getoption(self, name, default=None):
            return self.value if name == "benchmark_json" else default

    with open(tmp_path / "results.json", "wb") as fh, pytest.warns(pytest.PytestConfigWarning,
                                                           match=r"pytest-benchmark>=5\.3"):
        conftest.pytest_configure(_Config(fh))
    conftest.pytest_configure(_Config(None))  # no --benchmark-json: nothing to check
    conftest.pytest_configure(_Config(tmp_path / "new.json"))  # a new name is fine
