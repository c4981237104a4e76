"""Progress of long work: tqdm on a terminal, log lines otherwise, nothing when disabled."""

import io
import logging
import sys

import pytest

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


def test_callable_progress_sees_every_tile_and_can_abort():
    """predict_tiled(progress=fn): fn(done, total, "predict_tiled") at the start and per tile; an
    exception it raises stops the run and reaches the caller."""
    import numpy as np
    import pytest
    import torch

    from xmodal.inference import predict_tiled

    net = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    x = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    calls = []
    predict_tiled(net, x, tile_shape=(32, 32), channel_axis=None, progress=lambda *a: calls.append(a))
    assert calls[0] == (0, 4, "predict_tiled") and calls[-1] == (4, 4, "predict_tiled")
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    class Stop(Exception):
        pass

    def stop_after_one(done, total, stage):
        if done >= 1:
            raise Stop(stage)

    with pytest.raises(Stop):
        predict_tiled(net, x, tile_shape=(32, 32), channel_axis=None, progress=stop_after_one)
    with pytest.raises(TypeError, match="progress: expected True, False or a callable"):
        predict_tiled(net, x, tile_shape=(32, 32), channel_axis=None, progress="yes")


def test_segment_reports_its_stages_and_stops_between_them(monkeypatch):
    import sys

    import numpy as np
    import pytest

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_segment_methods import _affinities, _Model

    from xmodal.pipelines import segment

    seg_module = sys.modules["xmodal.pipelines.segment"]
    aff, lab = _affinities()
    monkeypatch.setattr(seg_module, "_predict", lambda job, *a, **k: aff)
    model = _Model({"method": "mws", "mws": {"min_size": 20}})
    stages = []
    segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, ground_truth=lab,
            progress=lambda done, total, stage: stages.append(stage))
    assert stages == ["agglomerate", "size_filter", "evaluate"]

    def cancel_at_size_filter(done, total, stage):
        if stage == "size_filter":
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, progress=cancel_at_size_filter)


def test_a_progress_callable_of_the_wrong_arity_is_refused_up_front():
    from xmodal._validation import as_progress

    with pytest.raises(TypeError, match=r"^progress: expected a callable progress\(done, total, stage\)"):
        as_progress(lambda done: None)
    with pytest.raises(TypeError, match=r"^on_step: expected"):
        as_progress(lambda a, b, c, d: None, "on_step")
    for ok in (lambda *a: None, lambda done, total, stage, extra=1: None, print):
        assert as_progress(ok) is ok
