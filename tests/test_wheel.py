"""The wheel installs and imports in a fresh virtual environment (slow: run with ``-m slow``).

By default the test builds the wheel as a user's ``pip wheel .`` does (an isolated build, several
minutes). To test a wheel that is already built (e.g. by a CI build step), name it in
``XMODAL_WHEEL=path/to/xmodal-*.whl``: it is installed as is and nothing is rebuilt.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _source_version() -> str:
    text = (ROOT / "python" / "xmodal" / "_version.py").read_text()
    return re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text).group(1)


def _wheel(tmp_path) -> pathlib.Path:
    given = os.environ.get("XMODAL_WHEEL")
    if given:
        wheel = pathlib.Path(given)
        assert wheel.is_file(), f"XMODAL_WHEEL={given}: no such file"
        return wheel
    wheels = tmp_path / "wheels"
    # A build in an isolated environment, as a user's `pip wheel .` does.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(ROOT),
         "-Cbuild-dir=" + str(tmp_path / "build")],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("xmodal-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_and_imports_in_fresh_venv(tmp_path):
    wheel = _wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, text=True)
    probe = ("import xmodal, json; xmodal.show_config(); "
             "print(json.dumps({'version': xmodal.__version__, 'openmp': xmodal.backends()['openmp']}))")
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True, cwd=str(tmp_path),
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.stdout.startswith("xmodal ")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["version"] == _source_version() and isinstance(info["openmp"], bool)
    cli = subprocess.run([str(env_dir / "bin" / "xmodal"), "--version"], check=True, capture_output=True, text=True)
    assert cli.stdout.strip() == f"xmodal {_source_version()}"


@pytest.mark.slow
def test_wheel_ships_the_napari_manifest_and_its_entry_point(tmp_path):
    # napari finds the plugin through the `napari.manifest` entry point of the installed wheel,
    # which names xmodal/napari/napari.yaml: both must be in the wheel.
    import zipfile

    with zipfile.ZipFile(_wheel(tmp_path)) as whl:
        names = whl.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = whl.read(entry_points).decode()
    assert "xmodal/napari/napari.yaml" in names
    assert "[napari.manifest]" in text and "xmodal = xmodal.napari:napari.yaml" in text
