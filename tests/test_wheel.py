"""`pip wheel .` builds a wheel that installs and imports in a fresh virtual environment."""

import os
import pathlib
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_installs_and_imports_in_fresh_venv(tmp_path):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    wheels = tmp_path / "wheels"
    # A build in an isolated environment, as a user's `pip wheel .` does.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(ROOT),
         "-Cbuild-dir=" + str(tmp_path / "build")],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("xmodal-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True, text=True)
    out = subprocess.run(
        [str(py), "-c", "import xmodal, json; xmodal.show_config(); print(json.dumps(xmodal.backends()['openmp']))"],
        check=True, capture_output=True, text=True, cwd=str(tmp_path),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.stdout.startswith("xmodal ")
    assert out.stdout.strip().splitlines()[-1] in ("true", "false")
    cli = subprocess.run([str(env_dir / "bin" / "xmodal"), "--version"], check=True, capture_output=True, text=True)
    assert cli.stdout.strip().startswith("xmodal ")
