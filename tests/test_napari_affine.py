"""The napari widgets and layers with rotate, shear and a general affine: cells are read through the
layer's whole data-to-world transform (napari: ``affine ∘ (translate, rotate, shear, scale)``), and
a layer that a widget derives from a source layer's data (the names of a Points layer, the labels of
an image) gets the source's whole transform, so that both lie on each other in the world; layers
holding world coordinates (the registration's) get no transform. Runs under
``QT_QPA_PLATFORM=offscreen`` with napari's ``make_napari_viewer`` fixture (pytest-qt)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import test_napari_plugin  # noqa: E402

_without_opengl = test_napari_plugin._without_opengl  # autouse fixture: image/labels layers without OpenGL

TIMEOUT_MS = 120_000
#: A general affine (physical -> world): an anisotropic linear part with a shear and a shift.
AFFINE_2D = np.array([[1.2, 0.3, 5.0], [-0.1, 0.9, -7.0], [0.0, 0.0, 1.0]])


def _wait(qtbot, panel, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not panel.busy, timeout=timeout)
    assert panel.last_error is None, panel.last_error


def _to_world(layer, data) -> np.ndarray:
    """``data`` (n, ndim), data coordinates of ``layer``, mapped point by point through napari's
    own public ``layer.data_to_world`` (the reference the tests compare against)."""
    return np.array([layer.data_to_world(p) for p in np.asarray(data, dtype=np.float64)], dtype=np.float64)


def _blobs(shape=(40, 50)):
    lab = np.zeros(shape, np.uint32)
    lab[3:8, 4:11] = 7
    lab[20:25, 30:34] = 2
    lab[30:37, 8:12] = 9
    return lab


def _data_centroids(lab) -> np.ndarray:
    return np.array([np.argwhere(lab == v).mean(axis=0) for v in np.unique(lab[lab > 0])])


# ----------------------------------------------------------------------------------- reading cells

def test_rotated_points_are_read_through_the_whole_transform():
    from napari.layers import Points

    from xmodal.napari._common import world_cells

    data = np.random.default_rng(0).uniform(0, 40, (12, 2))
    layer = Points(data, rotate=30, scale=(2.0, 0.5), translate=(3.0, -4.0), name="rotated")
    cells = world_cells(layer)
    np.testing.assert_allclose(cells.points, _to_world(layer, data), atol=1e-9)
    np.testing.assert_array_equal(cells.ids, np.arange(12))
    layer = Points(data, rotate=-50, shear=[0.4], affine=AFFINE_2D, name="everything")
    np.testing.assert_allclose(world_cells(layer).points, _to_world(layer, data), atol=1e-9)


def test_sheared_labels_give_their_centroids_through_the_whole_transform():
    """The centroid of an object mapped by an affine map is the mapped centroid: the label
    centroids of the data frame, mapped through the layer's transform."""
    from napari.layers import Labels

    from xmodal.napari._common import world_cells

    lab = _blobs()
    layer = Labels(lab, shear=[0.35], scale=(2.0, 0.5), translate=(1.0, 2.0), name="sheared")
    cells = world_cells(layer)
    np.testing.assert_array_equal(cells.ids, [2, 7, 9])
    np.testing.assert_allclose(cells.points, _to_world(layer, _data_centroids(lab)), atol=1e-9)
    layer = Labels(lab, rotate=20, affine=AFFINE_2D, name="rotated")
    np.testing.assert_allclose(world_cells(layer).points, _to_world(layer, _data_centroids(lab)), atol=1e-9)


def test_rotated_3d_and_multiscale_labels():
    from napari.layers import Labels

    from xmodal.napari._common import world_cells

    lab = np.zeros((6, 32, 32), np.uint32)
    lab[1:3, 4:8, 4:8] = 3
    lab[3:6, 20:24, 10:14] = 5
    t = np.deg2rad(35)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    layer = Labels([lab, lab[:, ::2, ::2]], multiscale=True, rotate=rot, scale=(4.0, 1.0, 1.0),
                   translate=(0.0, 10.0, -3.0), name="multiscale")
    cells = world_cells(layer)  # the full-resolution level (level 0) through the whole transform
    np.testing.assert_allclose(cells.points, _to_world(layer, _data_centroids(lab)), atol=1e-9)
    np.testing.assert_array_equal(cells.ids, [3, 5])


def test_time_axis_before_a_rotated_plane():
    """A (t, z, y, x) Points layer rotated in y-x: the (z, y, x) cells of its one time point, rotated;
    a transform that moves the points of one time point onto several is refused."""
    from napari.layers import Points

    from xmodal.napari._common import world_cells

    zyx = np.random.default_rng(1).uniform(0, 30, (7, 3))
    affine = np.eye(5)
    affine[2:4, 2:4] = [[0.0, -1.0], [1.0, 0.0]]  # 90 degrees in y-x; time and z untouched
    layer = Points(np.column_stack([np.full(7, 3.0), zyx]), affine=affine, name="t z y x")
    np.testing.assert_allclose(world_cells(layer).points, np.column_stack([zyx[:, 0], -zyx[:, 2], zyx[:, 1]]),
                               atol=1e-9)
    affine[0, 1] = 0.5  # world time depends on z: the cells lie on several time points
    with pytest.raises(ValueError, match=r"'t z y x'.*several"):
        world_cells(Points(np.column_stack([np.full(7, 3.0), zyx]), affine=affine, name="t z y x"))


def test_unit_conversion_applies_to_the_world_coordinates():
    """``unit_factors`` converts the world coordinates (after the whole transform): a rotated layer
    in nm, read against one in µm, is the rotated world points / 1000."""
    from napari.layers import Points

    from xmodal.napari._common import unit_factors, world_cells

    data = np.random.default_rng(2).uniform(0, 4000, (5, 3))
    nm = Points(data, rotate=25, scale=(2.0, 1.0, 1.0), translate=(100.0, 0.0, -50.0), units=("nm",) * 3)
    um = Points(np.zeros((1, 3)), units=("um",) * 3)
    factors = unit_factors(nm, um, 3)
    np.testing.assert_allclose(factors, [1e-3] * 3)
    np.testing.assert_allclose(world_cells(nm).points * factors, _to_world(nm, data) * 1e-3, atol=1e-9)


def test_transform_helpers():
    """The homogeneous data-to-world matrix of a layer, and the keyword arguments that give a new
    layer the same transform."""
    from napari.layers import Points

    from xmodal.napari._common import data_to_world_matrix, layer_transform

    layer = Points(np.zeros((1, 2)), rotate=30, shear=[0.2], scale=(2.0, 3.0), translate=(1.0, 1.0),
                   affine=AFFINE_2D)
    m = data_to_world_matrix(layer)
    assert m.shape == (3, 3)
    p = np.array([4.0, -2.0])
    np.testing.assert_allclose(m[:2, :2] @ p + m[:2, 2], layer.data_to_world(p), atol=1e-9)
    copy = Points(np.zeros((1, 2)), **layer_transform(layer))
    np.testing.assert_allclose(data_to_world_matrix(copy), m, atol=1e-12)
    # a stand-in with only scale and translate (duck-typed layers): those two
    plain = SimpleNamespace(scale=(2.0, 0.5), translate=(1.0, 0.0), name="plain")
    np.testing.assert_allclose(data_to_world_matrix(plain), [[2.0, 0, 1.0], [0, 0.5, 0], [0, 0, 1]])


# ----------------------------------------------------------------------------------- result layers

def test_identify_names_layer_lies_on_its_rotated_points(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The names layer holds the points' data: it gets their whole transform (not scale and translate
    alone), and the cells identified are the world points."""
    import xmodal.atlas
    from xmodal.napari._identify_widget import IdentifyWidget

    data = np.random.default_rng(3).uniform(0, 50, (9, 3))
    seen = {}

    def fake_identify(points, atlas, top_k=5, allow_reflection=False):
        seen["points"] = np.asarray(points)
        seen["allow_reflection"] = allow_reflection
        n = len(points)
        return SimpleNamespace(names=np.array([f"c{i}" for i in range(n)], dtype=object),
                               confidence=np.linspace(0.2, 0.9, n), n_named=n, diagnostics={},
                               top_k_names=[[f"c{i}"] for i in range(n)], top_k_probabilities=[[1.0]] * n)

    monkeypatch.setattr(xmodal.atlas, "identify", fake_identify)
    monkeypatch.setattr(xmodal.atlas, "Atlas", SimpleNamespace(load=lambda path: "atlas"))
    (tmp_path / "atlas.json").write_text("{}")
    viewer = make_napari_viewer()
    layer = viewer.add_points(data, name="embryo", rotate=40, shear=[0.1, 0.2, 0.0], scale=(2.0, 1.0, 1.0),
                              translate=(5.0, 0.0, -5.0), affine=np.diag([1.0, 1.5, 1.0, 1.0]))
    w = IdentifyWidget(viewer)
    w.atlas_file.value, w.points_layer.value = tmp_path / "atlas.json", layer
    assert w.run() is not None
    _wait(qtbot, w.panel)
    np.testing.assert_allclose(seen["points"], _to_world(layer, data), atol=1e-9)
    np.testing.assert_allclose(_to_world(w.layer, w.layer.data), _to_world(layer, data), atol=1e-9)
    assert seen["allow_reflection"] is False
    w.reflection.value = True  # the 'allow reflection' box reaches identify
    assert w.run() is not None
    _wait(qtbot, w.panel)
    assert seen["allow_reflection"] is True


def test_segment_labels_lie_on_their_rotated_image(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The labels of an image get the image's whole transform; with an output folder, the status
    line says that the OME-Zarr metadata record only the scale and translation."""
    import xmodal.pipelines
    from xmodal.napari._segment_widget import SegmentWidget

    labels = _blobs()
    monkeypatch.setattr(xmodal.pipelines, "segment",
                        lambda data, progress=None, **opts: SimpleNamespace(labels=labels, n_segments=3))
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros(labels.shape, np.float32), name="EM", rotate=15, shear=[0.2],
                             scale=(4.0, 4.0), translate=(40.0, -8.0), affine=AFFINE_2D)
    w = SegmentWidget(viewer)
    w.image_layer.value = image
    assert w.run() is not None
    _wait(qtbot, w.panel)
    seg = viewer.layers["EM: segments"]
    corners = np.array([[0.0, 0.0], [39.0, 0.0], [0.0, 49.0], [39.0, 49.0], [12.5, 30.25]])
    np.testing.assert_allclose(_to_world(seg, corners), _to_world(image, corners), atol=1e-9)
    assert "scale and translation only" not in w.panel.status.value
    w.out.value = tmp_path / "seg"
    image.translate = (0.0, 0.0)  # nothing to write into the (absent) OME-Zarr output
    assert w.run() is not None
    _wait(qtbot, w.panel)
    assert "scale and translation only" in w.panel.status.value


def test_registration_layers_hold_world_coordinates(make_napari_viewer, qtbot):
    """Register cells of a rotated, sheared fixed layer against a moving layer that its own rotation
    brings onto them: the cells are read in the world, so the registration is the identity; the
    result layers hold world coordinates and get no transform (the fixed cells lie on the fixed
    layer's points, the moved cells on their partners)."""
    from xmodal.napari._register_widget import RegisterWidget

    rng = np.random.default_rng(4)
    cells = []
    while len(cells) < 20:  # well separated cells: an unambiguous registration
        c = rng.uniform(0, 200, 2)
        if all(np.linalg.norm(c - p) > 25 for p in cells):
            cells.append(c)
    cells = np.array(cells)
    viewer = make_napari_viewer()
    fixed = viewer.add_points(cells, name="fixed", size=3, rotate=30, translate=(10.0, -20.0), affine=AFFINE_2D)
    fixed_world = _to_world(fixed, cells)
    t = np.deg2rad(-60)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    moving = viewer.add_points((fixed_world - 100.0) @ rot.T, name="moving", size=3, rotate=60,
                               translate=(100.0, 100.0))
    np.testing.assert_allclose(_to_world(moving, moving.data), fixed_world, atol=1e-9)  # same world
    w = RegisterWidget(viewer)
    w.fixed_layer.value, w.moving_layer.value = fixed, moving
    w.transform.value, w.prealign.value, w.errors.value = "rigid", "none", False
    assert w.run() is not None
    _wait(qtbot, w.panel)
    name = "moving -> fixed: "
    out_fixed, out_moved = viewer.layers[name + "fixed"], viewer.layers[name + "moved"]
    np.testing.assert_allclose(out_fixed.data, fixed_world, atol=1e-9)
    np.testing.assert_allclose(_to_world(out_fixed, out_fixed.data), out_fixed.data)  # identity transform
    np.testing.assert_allclose(_to_world(out_moved, out_moved.data), out_moved.data)
    assert w.result.n_matched == 20
    np.testing.assert_allclose(out_moved.data[w.result.moving_index], fixed_world[w.result.fixed_index],
                               atol=1e-3)
