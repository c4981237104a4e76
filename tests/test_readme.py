"""README.md: the Quick start runs as written; the two commands are the ones CI and users run."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_quick_start_runs_as_written(tmp_path, monkeypatch):
    code = _blocks(_section(README.read_text(), "Quick start"), "python")
    assert code, "README.md: no python block under '## Quick start'"
    monkeypatch.chdir(tmp_path)  # it writes reg/, seg/ and aff.ome.zarr into the current folder
    namespace: dict = {"__name__": "__readme__"}
    for block in code:
        exec(compile(block, "README.md (Quick start)", "exec"), namespace)
    # what it claims to make
    assert (tmp_path / "reg" / "report.html").is_file()
    assert (tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells").is_dir()
    assert namespace["reg"].n_matched > 300 and namespace["seg"].metrics["mean"]["arand"] < 0.1
    assert np.mean(namespace["named"].names == namespace["held"].cells) > 0.6
    assert namespace["labels"].max() >= 1 and namespace["big"].n_labels >= namespace["labels"].max()


def test_test_command_is_what_ci_runs():
    """.ci/run runs the line two below the marker (after the fence) as written."""
    lines = README.read_text().splitlines()
    at = lines.index("<!-- test-command -->")
    assert lines[at + 1] == "```bash"
    cmd = lines[at + 2]
    assert cmd.startswith('pip install ".[test]" && python -m pytest') and '-m "not slow"' in cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert "/<!-- test-command -->/{getline; getline; print; exit}" in ci


def test_first_command_installs_what_the_demo_needs():
    first = _blocks(_section(README.read_text(), "Two commands"), "bash")[0].strip()
    assert first == 'pip install ".[demo]" && xmodal demo'
    pyproject = (ROOT / "pyproject.toml").read_text()
    demo = re.search(r"^demo = \[(.*?)\]", pyproject, flags=re.M | re.S)
    assert demo, "pyproject.toml: no demo extra"
    names = re.findall(r'"([A-Za-z0-9_.-]+)', demo.group(1))
    assert "torch" in names  # the segmentation half of the demo
    assert not re.search(r'"torch\s*==', demo.group(1))  # never pinned: an installed torch is kept


@pytest.mark.parametrize("name", ["README.md", "ARCHITECTURE.md", "benchmarks/README.md"])
def test_docs_cite_only_files_that_exist(name):
    """Source and documentation files named in backticks exist (from the root, beside the document,
    or inside the package ``python/xmodal``)."""
    doc = ROOT / name
    cited = set(re.findall(r"`([\w./-]+\.(?:py|md|toml|cpp|hpp|cu|json))`", doc.read_text()))
    cited = {c for c in cited if "/" in c or not c.endswith(".json")}  # bare *.json: output file names
    bases = (ROOT, doc.parent, ROOT / "python" / "xmodal")
    missing = sorted(c for c in cited if not any((base / c).exists() for base in bases))
    assert not missing, f"{name} cites files that are not in the repository: {missing}"
