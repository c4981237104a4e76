"""Long runs off the GUI thread, with progress and cancel.

A :class:`Job` wraps ``fn(job)``; :class:`JobPanel` (a magicgui container: Run, Cancel, progress
bar, status line) starts it in a napari thread worker. The computation runs in a background
thread; the worker polls it a few times a second and forwards ``job.report(...)`` to the progress
bar, so the viewer stays responsive whatever the computation does.

Cancel: the panel is free again at once and the job's result is dropped. A cooperative job (one
that calls ``job.check()``, as the registration does after every CPD iteration) stops at its next
check; a job in a step that cannot be interrupted (one native call) finishes that step in the
background first, and nothing it returns reaches the viewer.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable


class JobCancelled(Exception):
    """Raised by :meth:`Job.check` once the job was cancelled."""


class Job:
    """A cancellable computation ``fn(job)`` with progress (``fraction`` in [0, 1] or None, ``message``)."""

    def __init__(self, fn: Callable[["Job"], Any], name: str = "job"):
        self.fn, self.name = fn, name
        self.fraction: float | None = None
        self.message = ""
        self._cancel = threading.Event()

    def report(self, fraction: float | None = None, message: str | None = None) -> None:
        if fraction is not None:
            self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message is not None:
            self.message = str(message)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`JobCancelled` when the job was cancelled (call it between steps)."""
        if self._cancel.is_set():
            raise JobCancelled(f"{self.name}: cancelled")

    def poll(self, interval: float = 0.1):
        """Generator for a napari thread worker: runs ``fn`` in a daemon thread, yields
        ``(fraction, message)`` while it runs, returns its value (re-raises its error)."""
        box: dict = {}

        def target():
            try:
                box["value"] = self.fn(self)
            except BaseException as exc:  # handed to the worker's errored signal
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"xmodal-{self.name}", daemon=True)
        t0 = time.perf_counter()
        thread.start()
        while thread.is_alive():
            thread.join(interval)
            yield self.fraction, self.message, time.perf_counter() - t0
            if self.cancelled:
                return None
        if "error" in box:
            raise box["error"]
        return box.get("value")


@functools.lru_cache(maxsize=None)
def _panel_class():
    from magicgui.widgets import Container, Label, ProgressBar, PushButton

    class JobPanel(Container):
        """Run / Cancel buttons, a progress bar and a status line for one job at a time."""

        def __init__(self, run_text: str = "Run"):
            self.run_button = PushButton(text=run_text)
            self.cancel_button = PushButton(text="Cancel", enabled=False)
            self.progress = ProgressBar(min=0, max=100, value=0, visible=False)
            self.status = Label(value="")
            super().__init__(widgets=[self.run_button, self.cancel_button, self.progress, self.status], labels=False)
            self.cancel_button.changed.connect(self.cancel)
            self.job: Job | None = None
            self.worker = None
            self.last_error: BaseException | None = None

        @property
        def busy(self) -> bool:
            return self.job is not None

        def start(self, job: Job, on_done: Callable[[Any], None]) -> None:
            """Run ``job`` in a thread worker; ``on_done(value)`` runs on the GUI thread."""
            from napari.qt.threading import create_worker

            if self.busy:
                raise RuntimeError("a job is already running; cancel it first")
            self.job, self.last_error = job, None
            self.run_button.enabled, self.cancel_button.enabled = False, True
            self.progress.visible, self.progress.value = True, 0
            self.status.value = f"{job.name}: running"
            # _ignore_errors: the panel shows the error (``_failed``); without it superqt re-raises it on
            # the GUI thread, which aborts a Qt application that has no excepthook (PyQt5)
            worker = create_worker(job.poll, _start_thread=False, _ignore_errors=True)
            worker.yielded.connect(lambda p, j=job: self._progress(j, p))
            worker.returned.connect(lambda v, j=job: self._done(j, v, on_done))
            worker.errored.connect(lambda e, j=job: self._failed(j, e))
            self.worker = worker
            worker.start()

        def _progress(self, job, p) -> None:
            if job is not self.job:
                return
            fraction, message, elapsed = p
            self.progress.max = 100 if fraction is not None else 0  # 0: busy indicator
            self.progress.value = int(round(100 * (fraction or 0.0)))
            self.status.value = f"{job.name}: {message or 'running'} ({elapsed:.0f} s)"

        def _done(self, job, value, on_done) -> None:
            if job is not self.job or job.cancelled:
                return
            try:
                self.status.value = f"{job.name}: done"
                on_done(value)  # may say more in the status line
            except Exception as exc:  # a result the viewer cannot show: say so, keep the panel usable
                self.last_error = exc
                self.status.value = f"{job.name}: failed to show the result: {exc}"
            self._idle()

        def _failed(self, job, exc) -> None:
            if job is not self.job:
                return
            self.last_error = exc
            message = str(exc) or type(exc).__name__  # MemoryError() has no message
            self.status.value = f"{job.name}: {'cancelled' if isinstance(exc, JobCancelled) else f'error: {message}'}"
            self._idle()

        def cancel(self, *_) -> None:
            """Cancel the running job: the panel is free at once, the job's result is dropped."""
            if self.job is None:
                return
            self.job.cancel()
            if self.worker is not None:
                self.worker.quit()
            self.status.value = f"{self.job.name}: cancelled"
            self._idle()

        def _idle(self) -> None:
            self.job, self.worker = None, None
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.progress.visible = False

    return JobPanel


def JobPanel(run_text: str = "Run"):  # noqa: N802 - a class made on first use (magicgui imported lazily)
    return _panel_class()(run_text)
