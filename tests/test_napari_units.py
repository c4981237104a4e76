"""Physical units (napari 0.6+ ``layer.units``) of the layers the napari plugin makes: registration
results are in the fixed layer's unit and say so (also when the moving layer is in another length
unit), layers on a source layer's data take the source's units and whole transform, the reader
gives a registration folder the units recorded in it, the segment widget records the image's
units in its OME-Zarr output. A layer without units among layers with units switches napari's
unit conversion off for the whole viewer (``viewer.layers.units`` None): each test checks that it
stays on. Runs on a ``napari.components.ViewerModel`` (no window, no OpenGL) under
``QT_QPA_PLATFORM=offscreen`` (pytest-qt's ``qtbot`` runs the widgets' thread workers)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.components import ViewerModel  # noqa: E402
from xmodal.datasets import celegans_embryos  # noqa: E402

TIMEOUT_MS = 120_000
#: Whether this napari's layers have units (napari 0.6 and later).
HAS_UNITS = "units" in inspect.signature(napari.layers.Points.__init__).parameters
needs_units = pytest.mark.skipif(not HAS_UNITS, reason="napari before 0.6 has no layer units")
UM = ("micrometer",) * 3


def _wait(qtbot, panel, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)
    assert panel.last_error is None, panel.last_error


def _units(layer) -> tuple[str, ...]:
    return tuple(str(u) for u in layer.units)


def _to_world(layer, data) -> np.ndarray:
    return np.array([layer.data_to_world(p) for p in np.asarray(data, dtype=np.float64)], dtype=np.float64)


def _is_identity(layer) -> bool:
    from xmodal.napari._common import data_to_world_matrix

    return bool(np.allclose(data_to_world_matrix(layer), np.eye(layer.ndim + 1)))


def _cells(n=40):
    return list(celegans_embryos().values())[0].points[:n] / 10.0  # about 3.6 µm apart


def _result_layers(viewer, name):
    return [layer for layer in viewer.layers if layer.name.startswith(name)]


# ----------------------------------------------------------------------------------- helpers

def test_registration_layers_take_units():
    """Every layer of a registration gets the units given (none without): pure numpy tuples."""
    from xmodal.napari._layers import MatchTable, registration_layers

    f = np.random.default_rng(0).uniform(0, 50, (6, 3))
    table = MatchTable(f, f + 1.0, f, np.arange(6), np.arange(6), np.linspace(0, 1, 6),
                       regions=(f, np.repeat(np.eye(3)[None], 6, axis=0)))
    layers = registration_layers(table, name="r", units=UM)
    assert len(layers) == 6
    assert all(tuple(kw["units"]) == UM for _, kw, _ in layers)
    assert all("units" not in kw for _, kw, _ in registration_layers(table, name="r"))


def test_layer_units_of_the_last_axes():
    """The units of a layer's last d axes (a time axis before z, y, x dropped); None for a layer
    without units (napari before 0.6, stand-ins)."""
    from xmodal.napari._common import layer_units

    assert layer_units(SimpleNamespace(scale=(1.0, 1.0), translate=(0.0, 0.0)), 2) is None
    if HAS_UNITS:
        layer = napari.layers.Points(np.zeros((1, 4)), units=("s", "um", "um", "um"))
        assert tuple(str(u) for u in layer_units(layer, 3)) == UM


# ----------------------------------------------------------------------------------- register widget

@needs_units
def test_register_results_in_the_fixed_unit(qtbot):
    """Moving cells in nm, fixed in µm: every result layer says µm, has no transform of its own
    and lies on its input in the world (fixed and moved cells on the fixed layer's points, the
    moving cells of their own frame on the moving layer's, converted); napari's unit conversion
    stays on."""
    from xmodal.napari._register_widget import RegisterWidget

    pts = _cells()
    viewer = ViewerModel()
    fixed = viewer.add_points(pts, name="fixed", units=("um",) * 3, scale=(2.0, 1.0, 1.0), translate=(5, 0, 0))
    moving = viewer.add_points((pts * (2.0, 1.0, 1.0) + (5.2, 0.2, 0.2)) * 1000.0, name="moving",
                               units=("nm",) * 3)
    w = RegisterWidget(viewer)
    w.fixed_layer.value, w.moving_layer.value = fixed, moving
    w.transform.value, w.prealign.value = "rigid", "none"
    assert w.run() is not None
    _wait(qtbot, w.panel)
    results = _result_layers(viewer, "moving -> fixed: ")
    assert len(results) == 6  # fixed, moving, moved, matches, match distance, error ellipses
    for layer in results:
        assert _units(layer) == UM, layer.name
        assert _is_identity(layer), layer.name
    assert viewer.layers.units is not None  # napari still converts between nm and µm
    by = {layer.name.split(": ", 1)[1]: layer for layer in results}
    np.testing.assert_allclose(by["fixed"].data, _to_world(fixed, fixed.data), atol=1e-9)
    np.testing.assert_allclose(by["moving (own frame)"].data, _to_world(moving, moving.data) / 1000.0, atol=1e-9)
    np.testing.assert_allclose(by["moved"].data, _to_world(fixed, fixed.data), atol=1e-3)


@needs_units
def test_register_output_folder_records_units_and_reader_gives_them(qtbot, tmp_path):
    """The register widget's output folder records the fixed layer's units (provenance.json
    ``units``); the reader gives every layer of the folder those units. A folder without them
    (``register_cells`` called directly) gives layers without units, as before."""
    from xmodal.napari._common import add_layers
    from xmodal.napari._reader import read_xmodal
    from xmodal.napari._register_widget import RegisterWidget
    from xmodal.pipelines import register_cells

    pts = _cells(30)
    viewer = ViewerModel()
    fixed = viewer.add_points(pts, name="fixed", units=("um",) * 3)
    moving = viewer.add_points(pts * 1000.0, name="moving", units=("nm",) * 3)
    w = RegisterWidget(viewer)
    w.fixed_layer.value, w.moving_layer.value = fixed, moving
    w.transform.value, w.prealign.value, w.errors.value = "rigid", "none", False
    w.out.value = tmp_path / "reg"
    assert w.run() is not None
    _wait(qtbot, w.panel)
    assert json.loads((tmp_path / "reg" / "provenance.json").read_text())["units"] == list(UM)
    layers = read_xmodal(tmp_path / "reg")
    assert all(tuple(kw["units"]) == UM for _, kw, _ in layers)
    added = add_layers(viewer, layers)
    assert all(_units(layer) == UM for layer in added) and viewer.layers.units is not None
    register_cells(pts, pts + 0.1, transform="rigid", prealign=False, errors=False, out=tmp_path / "plain")
    assert all("units" not in kw for _, kw, _ in read_xmodal(tmp_path / "plain"))


def test_reader_units_from_provenance(tmp_path, monkeypatch):
    """The reader takes a registration folder's units from provenance.json (``units``, or
    ``parameters.units``: one length unit, or one per axis); napari without layer units gets none;
    anything that is no length unit is ignored."""
    from xmodal.napari import _reader
    from xmodal.pipelines import register_cells

    pts = _cells(20)
    register_cells(pts, pts + 0.1, transform="rigid", prealign=False, errors=False, out=tmp_path / "reg")
    prov_path = tmp_path / "reg" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    monkeypatch.setattr(_reader, "_napari_takes_units", lambda: True)
    for record, expected in (({"units": "nm"}, ("nanometer",) * 3),
                             ({"parameters": {**prov["parameters"], "units": ["um", "um", "nm"]}},
                              ("micrometer", "micrometer", "nanometer")),
                             ({"units": ["pixel"] * 3}, None), ({"units": ["um"] * 2}, None)):
        prov_path.write_text(json.dumps({**prov, **record}))
        for _, kw, _ in _reader.read_xmodal(tmp_path / "reg"):
            assert (tuple(kw["units"]) if "units" in kw else None) == expected, record
    prov_path.write_text(json.dumps({**prov, "units": "um"}))
    monkeypatch.setattr(_reader, "_napari_takes_units", lambda: False)
    assert all("units" not in kw for _, kw, _ in _reader.read_xmodal(tmp_path / "reg"))


# ----------------------------------------------------------------------------------- review

@needs_units
def test_review_keeps_the_matches_layers_units():
    """A review edit redraws the matches layer in place: its units and transform stay."""
    from xmodal.napari._common import add_layers
    from xmodal.napari._layers import MatchTable, registration_layers
    from xmodal.napari._review_widget import ReviewWidget

    viewer = ViewerModel()
    viewer.add_points(np.zeros((1, 3)), units=("um",) * 3, name="image cells")
    f = np.random.default_rng(0).uniform(0, 50, (6, 3))
    table = MatchTable(f, f + 1.0, f, np.arange(6), np.arange(6), np.linspace(0, 1, 6))
    add_layers(viewer, registration_layers(table, name="r", units=UM))
    w = ReviewWidget(viewer)
    assert w.matches_layer.value.name == "r: matches"
    w.reject_button.changed.emit(True)
    w.new_fixed.value = 3
    w.reassign_button.changed.emit(True)
    layer = viewer.layers["r: matches"]
    assert _units(layer) == UM and _is_identity(layer) and viewer.layers.units is not None


# ----------------------------------------------------------------------------------- identify, segment

@needs_units
def test_identify_names_layer_takes_the_points_units(qtbot, tmp_path, monkeypatch):
    import xmodal.atlas
    from xmodal.napari._identify_widget import IdentifyWidget

    def fake_identify(points, atlas, top_k=5, allow_reflection=False):
        n = len(points)
        return SimpleNamespace(names=np.array([f"c{i}" for i in range(n)], dtype=object),
                               confidence=np.full(n, 0.9), n_named=n, diagnostics={},
                               top_k_names=[[f"c{i}"] for i in range(n)], top_k_probabilities=[[1.0]] * n)

    monkeypatch.setattr(xmodal.atlas, "identify", fake_identify)
    monkeypatch.setattr(xmodal.atlas, "Atlas", SimpleNamespace(load=lambda path: "atlas"))
    (tmp_path / "atlas.json").write_text("{}")
    viewer = ViewerModel()
    points = viewer.add_points(_cells(10) * 1000.0, name="embryo", units=("nm",) * 3, rotate=20)
    w = IdentifyWidget(viewer)
    w.atlas_file.value, w.points_layer.value = tmp_path / "atlas.json", points
    assert w.run() is not None
    _wait(qtbot, w.panel)
    assert _units(w.layer) == ("nanometer",) * 3 and viewer.layers.units is not None
    np.testing.assert_allclose(_to_world(w.layer, w.layer.data), _to_world(points, points.data), atol=1e-9)


@needs_units
def test_segment_labels_take_the_image_units_and_the_output_records_them(qtbot, tmp_path, monkeypatch):
    """The labels layer gets the image's units with its transform; the output folder's OME-Zarr
    axes record them, so the reader opens the segmentation in the same units where the image is."""
    import xmodal.pipelines
    from xmodal.io import create_ome_zarr_image, create_ome_zarr_labels
    from xmodal.napari._reader import read_xmodal
    from xmodal.napari._segment_widget import SegmentWidget

    labels = np.zeros((20, 24), np.uint32)
    labels[2:6, 3:9], labels[12:18, 10:20] = 4, 9

    def fake_segment(data, progress=None, out=None, spacing=None, **opts):
        if out is not None:  # what segment writes: an image group with its label image, a provenance
            root = Path(out) / "segmentation.ome.zarr"
            create_ome_zarr_image(root, (1,) + labels.shape, np.float32, axes=("c", "y", "x"), spacing=spacing)
            create_ome_zarr_labels(root, "cells", labels.shape, axes=("y", "x"), spacing=spacing)[...] = labels
            (Path(out) / "provenance.json").write_text("{}")
        return SimpleNamespace(labels=labels, n_segments=2)

    monkeypatch.setattr(xmodal.pipelines, "segment", fake_segment)
    viewer = ViewerModel()
    image = viewer.add_image(np.zeros(labels.shape, np.float32), name="EM", scale=(4.0, 4.0),
                             translate=(40.0, -8.0), units=("nm", "nm"))
    w = SegmentWidget(viewer)
    w.image_layer.value = image
    w.out.value = tmp_path / "seg"
    assert w.run() is not None
    _wait(qtbot, w.panel)
    seg = viewer.layers["EM: segments"]
    assert _units(seg) == ("nanometer",) * 2 and tuple(seg.scale) == (4.0, 4.0)
    reopened = [kw for _, kw, kind in read_xmodal(tmp_path / "seg") if kind == "labels"]
    assert len(reopened) == 1 and tuple(reopened[0]["units"]) == ("nanometer",) * 2
    assert list(reopened[0]["scale"]) == [4.0, 4.0] and list(reopened[0]["translate"]) == [40.0, -8.0]
    for data, kw, kind in read_xmodal(tmp_path / "seg"):  # as napari adds a reader's layers
        getattr(viewer, f"add_{kind}")(data, **kw)
    assert all(_units(layer) == ("nanometer",) * 2 for layer in viewer.layers)
    assert viewer.layers.units is not None
