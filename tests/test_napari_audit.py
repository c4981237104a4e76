"""Audit of the napari widgets as a biologist uses them: bad input shown in the status line (never
raised into Qt), multiscale Labels layers, time-lapse Points layers, layers edited or deleted while
a job runs, a failed export, the job panel's second click and messages. Runs under
``QT_QPA_PLATFORM=offscreen`` with napari's ``make_napari_viewer`` fixture (pytest-qt)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import test_napari_plugin  # noqa: E402
from xmodal.datasets import celegans_embryos  # noqa: E402

_without_opengl = test_napari_plugin._without_opengl  # autouse fixture: image/labels layers without OpenGL

TIMEOUT_MS = 120_000


def _wait(qtbot, panel, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)


# ----------------------------------------------------------------------------------- cells of layers

def test_multiscale_labels_give_full_resolution_centroids():
    """A multiscale Labels layer (the reader's label images of several levels) gives the centroids
    of its full-resolution level, not of the coarsest one (np.asarray of napari's multiscale data)."""
    from napari.layers import Labels

    from xmodal.napari._common import world_cells

    lab = np.zeros((32, 32), np.uint32)
    lab[4:8, 4:8] = 3
    lab[20:24, 10:14] = 5
    layer = Labels([lab, lab[::2, ::2]], multiscale=True, scale=(2.0, 1.0), translate=(1.0, 0.0))
    cells = world_cells(layer)
    np.testing.assert_allclose(cells.points, [[5.5 * 2 + 1, 5.5], [21.5 * 2 + 1, 11.5]])
    np.testing.assert_array_equal(cells.ids, [3, 5])


def test_points_of_several_time_points_are_refused():
    """A Points layer with leading axes (time, channel) is read only when all its points lie on one
    of them: cells of several time points are not merged into one sample."""
    from napari.layers import Points

    from xmodal.napari._common import world_cells

    rng = np.random.default_rng(0)
    zyx = rng.uniform(0, 50, (6, 3))
    one_t = Points(np.column_stack([np.full(6, 2.0), zyx]), name="one t")
    np.testing.assert_allclose(world_cells(one_t).points, zyx)
    two_t = Points(np.column_stack([np.repeat([0.0, 1.0], 3), zyx]), name="two t")
    with pytest.raises(ValueError, match=r"'two t'.*several"):
        world_cells(two_t)


# ----------------------------------------------------------------------------------- identify

@pytest.fixture(scope="module")
def atlas_file(tmp_path_factory):
    from xmodal.atlas import build_atlas

    emb = list(celegans_embryos().values())
    atlas = build_atlas([e.points for e in emb[:3]], names=[e.cells for e in emb[:3]], calibrate=False)
    path = tmp_path_factory.mktemp("atlas") / "atlas.json"
    atlas.save(path)
    return path, emb[3]


def test_identify_unusable_layer_is_reported(make_napari_viewer, atlas_file):
    from xmodal.napari._identify_widget import IdentifyWidget

    path, sample = atlas_file
    viewer = make_napari_viewer()
    pts = np.column_stack([np.arange(len(sample.points)) % 2, sample.points])  # two time points
    viewer.add_points(pts, name="time lapse")
    w = IdentifyWidget(viewer)
    w.atlas_file.value = path
    w.points_layer.value = viewer.layers["time lapse"]
    w.panel.run_button.changed.emit(True)  # the button's callback: nothing raises into Qt
    assert w.run() is None and not w.panel.busy and w.panel.run_button.enabled
    assert "error" in w.panel.status.value and "'time lapse'" in w.panel.status.value


def test_identify_survives_its_layer_edited_and_deleted_while_running(make_napari_viewer, qtbot, atlas_file):
    """The result is shown for the cells as they were when Run was pressed, even when the points
    layer is edited or deleted meanwhile; candidates follow the points of the names layer."""
    from xmodal.napari._identify_widget import IdentifyWidget

    path, sample = atlas_file
    viewer = make_napari_viewer()
    viewer.add_points(sample.points, name="embryo", scale=(2.0, 1.0, 1.0))
    w = IdentifyWidget(viewer)
    w.atlas_file.value = path
    w.points_layer.value = viewer.layers["embryo"]
    assert w.run() is not None
    viewer.layers["embryo"].add([[1.0, 2.0, 3.0]])  # edited while the job runs ...
    viewer.layers.remove("embryo")  # ... then deleted
    _wait(qtbot, w.panel)
    assert w.panel.last_error is None, w.panel.last_error
    assert "done" in w.panel.status.value
    layer = viewer.layers["embryo: names"]
    n = len(sample.points)
    assert len(layer.data) == n and tuple(layer.scale) == (2.0, 1.0, 1.0)
    np.testing.assert_allclose(layer.data, sample.points)
    # a cell deleted from the names layer: the candidates shown are those of the selected point
    layer.selected_data = {0}
    layer.remove_selected()
    layer.selected_data = {0}
    assert w.candidates.value.startswith("cell 1:")
    # a point added by hand has no identification: said so, nothing raises
    layer.selected_data = set()
    layer.add([[5.0, 5.0, 5.0]])
    layer.selected_data = {len(layer.data) - 1}
    assert "not identified" in w.candidates.value


# ----------------------------------------------------------------------------------- segment

def test_segment_refuses_rgb_with_a_clear_message(make_napari_viewer):
    from xmodal.napari._segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="photo", rgb=True)
    w = SegmentWidget(viewer)
    w.image_layer.value = viewer.layers["photo"]
    assert w.run() is None and not w.panel.busy
    assert "RGB" in w.panel.status.value and "got 2D" not in w.panel.status.value


# ----------------------------------------------------------------------------------- review

def _matches_viewer(make_napari_viewer, n=6):
    from xmodal.napari._common import add_layers
    from xmodal.napari._layers import MatchTable, registration_layers

    viewer = make_napari_viewer()
    f = np.random.default_rng(0).uniform(0, 50, (n, 3))
    table = MatchTable(f, f + 1.0, f, np.arange(n), np.arange(n), np.linspace(0, 1, n))
    add_layers(viewer, registration_layers(table, name="r"))
    return viewer


def test_review_export_failure_is_shown_and_keeps_the_old_file(make_napari_viewer, tmp_path):
    from xmodal.napari._review_widget import ReviewWidget

    viewer = _matches_viewer(make_napari_viewer)
    w = ReviewWidget(viewer)
    good = w.export(tmp_path / "reviewed.csv")
    before = good.read_text()
    w.reject_button.changed.emit(True)
    w.path.value = tmp_path  # a folder: cannot be written as a file
    w.export_button.changed.emit(True)  # the button's callback: nothing raises into Qt
    assert w.export() is None
    assert "error" in w.status.value and str(tmp_path) in w.status.value
    assert good.read_text() == before  # the earlier export is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # no half-written file left


def test_review_follows_its_layer_being_deleted(make_napari_viewer):
    from xmodal.napari._review_widget import ReviewWidget

    viewer = _matches_viewer(make_napari_viewer)
    w = ReviewWidget(viewer)
    assert "fixed" in w.info.value
    for name in [layer.name for layer in viewer.layers if type(layer).__name__ == "Shapes"]:
        viewer.layers.remove(name)
    assert w.matches_layer.value is None and "choose a matches layer" in w.info.value
    for button in (w.accept_button, w.reject_button, w.reassign_button, w.export_button):
        button.changed.emit(True)
        assert "no match table" in w.status.value


# ----------------------------------------------------------------------------------- job panel

def test_panel_while_running_and_errors_without_a_message(make_napari_viewer, qtbot):
    """While a job runs the Run button is disabled (a second click does nothing) and starting
    another job is refused; an error without a message is named by its type."""
    from xmodal.napari._jobs import Job, JobPanel

    make_napari_viewer()
    panel = JobPanel()
    release = threading.Event()
    job = Job(lambda j: release.wait(30), name="wait")
    panel.start(job, lambda value: None)
    assert panel.busy and not panel.run_button.enabled and panel.cancel_button.enabled
    with pytest.raises(RuntimeError, match="already running"):
        panel.start(Job(lambda j: None), lambda value: None)
    release.set()
    _wait(qtbot, panel)
    assert panel.status.value == "wait: done" and panel.run_button.enabled

    def fail(j):
        raise MemoryError()

    panel.start(Job(fail, name="big"), lambda value: None)
    _wait(qtbot, panel)
    assert isinstance(panel.last_error, MemoryError)
    assert panel.status.value == "big: error: MemoryError"


# ----------------------------------------------------------------------------------- register: units

def test_register_widget_converts_length_units(make_napari_viewer, qtbot):
    """Layers in different length units (napari 0.6+ ``layer.units``; older napari versions draw them unconverted)
    are registered in the fixed layer's unit: the moving cells in nm meet the fixed ones in µm."""
    from xmodal.napari._register_widget import RegisterWidget

    pts = list(celegans_embryos().values())[0].points[:60] / 10.0  # about 3.6 µm apart
    viewer = make_napari_viewer()
    viewer.add_points(pts, name="fixed um", units=("um", "um", "um"))
    viewer.add_points(pts * 1000.0 + 200.0, name="moving nm", units=("nm", "nm", "nm"))
    w = RegisterWidget(viewer)
    w.fixed_layer.value, w.moving_layer.value = viewer.layers["fixed um"], viewer.layers["moving nm"]
    w.transform.value, w.prealign.value, w.errors.value = "rigid", "none", False
    assert w.run() is not None
    _wait(qtbot, w.panel)
    assert w.panel.last_error is None, w.panel.last_error
    np.testing.assert_allclose(w.result.moving_points, pts + 0.2)  # converted to µm
    assert w.result.n_matched == 60 and np.all(w.result.moving_index == w.result.fixed_index)
    assert "nanometer" in w.panel.status.value and "micrometer" in w.panel.status.value
