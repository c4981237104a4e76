"""Ctrl-C inside native kernels: long kernels poll for a pending SIGINT (``xmodal::poll_interrupt``)
and stop with KeyboardInterrupt within a fraction of a second, leaving the package usable.
Each case runs in a child process that sends SIGINT to itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import xmodal

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(xmodal.__file__)))  # the xmodal under test

CHILD = textwrap.dedent("""
    import os, signal, threading, time
    import numpy as np
    from xmodal import _core

    # Python leaves SIGINT ignored when it starts with SIGINT ignored (a background job of a
    # non-interactive shell, as in some CI runners); a user's interpreter has this handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt_after(delay):
        threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

    def timed(fn, delay):
        interrupt_after(delay)
        t0 = time.perf_counter()
        try:
            fn()
        except KeyboardInterrupt:
            return "interrupted", time.perf_counter() - t0
        return "finished", time.perf_counter() - t0
""")


def _child(body: str, timeout: float = 120.0) -> list[str]:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XMODAL_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", CHILD + textwrap.dedent(body)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_a_polling_kernel_stops_on_sigint():
    out = _child("""
        status, seconds = timed(lambda: _core._poll_for(30.0), 0.3)
        print(status, seconds < 2.0, _core._poll_for(0.05) >= 0.05)
    """)
    assert out == ["interrupted", "True", "True"]


def test_mutex_watershed_stops_on_sigint_and_stays_usable():
    out = _child("""
        from xmodal.segmentation import mutex_watershed

        rng = np.random.default_rng(0)
        offs = [[-1, 0], [0, -1], [-9, 0], [0, -9]]
        big = rng.random((4, 2500, 2500)).astype(np.float32)
        status, seconds = timed(lambda: mutex_watershed(big, offs), 0.3)
        small = rng.random((4, 40, 40)).astype(np.float32)
        a, b = mutex_watershed(small, offs), mutex_watershed(small, offs)  # nothing left behind
        print(status, seconds < 2.0, bool((a == b).all()) and a.max() > 1)
    """)
    assert out == ["interrupted", "True", "True"]


def test_without_a_signal_nothing_changes():
    out = _child("""
        print(_core._poll_for(0.2) >= 0.2)
    """)
    assert out == ["True"]
