"""Audit of the thread setting: XMODAL_NUM_THREADS as the native kernels read it, and num_threads()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import xmodal

_CODE = ("import warnings; warnings.simplefilter('always')\n"
         "import xmodal; print(xmodal.get_num_threads(), xmodal.backends()['hardware_threads'])")


def _run(value: str):
    env = {**os.environ, "XMODAL_NUM_THREADS": value, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-W", "always", "-c", _CODE], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\uff13", "3\u00a0"])
def test_non_ascii_digits_warn_and_never_break_the_import(value):
    """'²' passed str.isdigit() and then int() raised at import; '٣' was accepted by the check
    but ignored by the native kernels: both now warn, and all cores are used."""
    out = _run(value)
    assert out.returncode == 0, out.stderr
    n, hw = out.stdout.split()
    assert n == hw
    assert "RuntimeWarning" in out.stderr and "XMODAL_NUM_THREADS" in out.stderr


@pytest.mark.parametrize("value", ["+1", "\t1\n", "01"])
def test_values_the_native_kernels_accept_are_not_warned_about(value):
    """The warning says all cores are used: it must not appear when the kernels take the value."""
    out = _run(value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "1"
    assert "RuntimeWarning" not in out.stderr, out.stderr


def test_num_threads_restores_after_an_exception_and_when_nested():
    before = xmodal.get_num_threads()
    with pytest.raises(KeyError):
        with xmodal.num_threads(1):
            with xmodal.num_threads(2):
                assert xmodal.get_num_threads() == 2
            assert xmodal.get_num_threads() == 1
            raise KeyError("x")
    assert xmodal.get_num_threads() == before
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        with xmodal.num_threads(0):
            pass  # pragma: no cover
    assert xmodal.get_num_threads() == before


def test_num_threads_inside_a_capped_worker_restores_the_process_setting():
    """A thread under a per-thread cap (the block / slice workers) saw the cap as the setting and
    wrote it back process-wide on leaving num_threads(): every thread was then held to the cap."""
    from xmodal._config import capped_threads

    with xmodal.num_threads(2):
        with capped_threads(1):
            assert xmodal.get_num_threads() == 1
            with xmodal.num_threads(2):
                pass
            assert xmodal.get_num_threads() == 1  # the cap still holds in this thread
        assert xmodal.get_num_threads() == 2
