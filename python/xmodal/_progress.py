"""Progress of long work: a tqdm bar on a terminal, else a log line every few seconds; step timings.

Usage (a disabled bar is a no-op, so call sites need no branches)::

    with progress_bar(len(tiles), desc="predict_tiled", unit="tile", enabled=progress) as bar:
        for tile in tiles:
            ...
            bar.update(1)

On a TTY (``sys.stderr.isatty()``) with tqdm installed a tqdm bar is drawn on stderr. Otherwise
(a log file, a pipe, no tqdm) the bar logs ``"<desc>: 12/40 tile (30 %), 25 s, ~58 s left"`` at
INFO level at most every ``interval`` seconds and once at the end, through ``logger``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

_log = logging.getLogger("xmodal")


class _Silent:
    """The disabled bar."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _LogBar(_Silent):
    """Progress as log lines, at most one per ``interval`` seconds (and one at the end)."""

    def __init__(self, total, desc, unit, logger, interval):
        self.total, self.desc, self.unit, self.log, self.interval = total, desc, unit, logger, interval
        self.n = 0
        self.t0 = self.last = time.perf_counter()
        self.closed = False

    def _emit(self) -> None:
        elapsed = time.perf_counter() - self.t0
        if self.total:
            left = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
            self.log.info("%s: %d/%d %s (%.0f %%), %.0f s, ~%.0f s left", self.desc, self.n, self.total, self.unit,
                          100.0 * self.n / self.total, elapsed, left)
        else:
            self.log.info("%s: %d %s, %.0f s", self.desc, self.n, self.unit, elapsed)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.perf_counter()
        if now - self.last >= self.interval and (not self.total or self.n < self.total):
            self.last = now
            self._emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n and time.perf_counter() - self.t0 >= self.interval:
                self._emit()  # short runs stay quiet


class _CallbackBar(_Silent):
    """Progress handed to a caller's ``fn(done, total, stage)`` (which may raise to abort)."""

    def __init__(self, total, desc, fn):
        self.total, self.desc, self.fn, self.n = total, desc, fn, 0
        fn(0, total, desc)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        self.fn(self.n, self.total, self.desc)


def report_stage(progress, stage: str) -> None:
    """Tell a callable ``progress`` that ``stage`` starts (``progress(0, None, stage)``); it may raise
    to abort between stages. A bool ``progress`` does nothing here."""
    if callable(progress):
        progress(0, None, stage)


def progress_bar(total: int | None, *, desc: str, unit: str = "it", enabled=True,
                 logger: logging.Logger | None = None, interval: float = 10.0):
    """A progress bar over ``total`` steps (None: unknown), see the module docstring.

    ``enabled`` may be a callable ``fn(done, total, desc)`` instead of a bool: it is called at the
    start and after every update (and may raise to abort the work).
    Returns an object with ``update(n=1)``, ``close()`` and the context-manager protocol.
    """
    if callable(enabled):
        return _CallbackBar(total, desc, enabled)
    if not enabled or total == 0:
        return _Silent()
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return _LogBar(total, desc, unit, logger or _log, float(interval))


@contextlib.contextmanager
def timed(timings: dict, step: str):
    """``with timed(timings, "predict"):`` adds the block's wall-clock seconds to ``timings[step]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0
