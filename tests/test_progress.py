"""Progress of long work: tqdm on a terminal, log lines otherwise, nothing when disabled."""

import io
import logging
import sys

from xmodal._progress import progress_bar


def test_disabled_bar_does_nothing(caplog):
    with caplog.at_level(logging.INFO), progress_bar(5, desc="work", enabled=False, interval=0) as bar:
        for _ in range(5):
            bar.update()
    assert not caplog.records


def test_without_a_terminal_the_bar_logs(caplog):
    log = logging.getLogger("xmodal.test_progress")
    with caplog.at_level(logging.INFO, logger="xmodal"), progress_bar(4, desc="tiles", unit="tile", logger=log,
                                                                       interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("tiles: 1/4 tile (25 %)") and "left" in lines[0]
    assert lines[-1].startswith("tiles: 4/4 tile (100 %)")  # the final line at close


def test_short_runs_stay_quiet(caplog):
    with caplog.at_level(logging.INFO, logger="xmodal"), progress_bar(3, desc="quick", interval=60) as bar:
        bar.update(3)
    assert not caplog.records


def test_on_a_terminal_the_bar_is_tqdm(monkeypatch):
    import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress_bar(3, desc="tiles", unit="tile")
    try:
        assert isinstance(bar, tqdm.tqdm)
        bar.update(3)
    finally:
        bar.close()
    assert "tiles" in sys.stderr.getvalue()
