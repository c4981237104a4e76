"""register_cells with label images whose OME-Zarr metadata declares different length units (EM in
nanometres, light microscopy in micrometres): the moving cells are converted into the fixed cells'
unit, which the outputs record (and the napari reader shows)."""

import numpy as np
import pytest

pytest.importorskip("zarr")

from xmodal.io import create_ome_zarr_image, load_points  # noqa: E402
from xmodal.pipelines import register_cells  # noqa: E402


def _labels(n=40, shape=(20, 64, 64), seed=3):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint32)
    placed = []
    while len(placed) < n:
        c = rng.integers(2, np.array(shape) - 3)
        if all(np.abs(c - q).max() > 4 for q in placed):
            placed.append(c)
            lab[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = len(placed)
    return lab


def _write(path, lab, spacing, units):
    arr = create_ome_zarr_image(path, lab.shape, lab.dtype, axes=("z", "y", "x"), spacing=spacing, units=units)
    arr[...] = lab
    return path


def test_moving_cells_in_nanometres_are_converted_to_micrometres(tmp_path):
    lab = _labels()
    lm = _write(tmp_path / "lm.ome.zarr", lab, (0.5, 0.2, 0.2), "micrometer")
    em = _write(tmp_path / "em.ome.zarr", lab, (500.0, 200.0, 200.0), "nanometer")
    f, m = load_points(lm), load_points(em)
    assert (f.units, m.units) == ("micrometer", "nanometer")
    assert np.allclose(m.points, 1000.0 * f.points)
    res = register_cells(lm, em, transform="rigid", errors=False, out=tmp_path / "reg")
    assert res.parameters["units"] == "micrometer"
    assert np.allclose(np.sort(res.moving_points, axis=0), np.sort(res.fixed_points, axis=0))
    assert len(res.fixed_index) == 40 and np.array_equal(res.fixed_ids, res.moving_ids)
    assert res.distances.max() < 1e-3  # micrometres
    assert np.allclose(res.parameters["moving_spacing"], [0.5, 0.2, 0.2])
    report = (tmp_path / "reg" / "report.html").read_text()
    assert "median pair distance (micrometer)" in report and "input units" not in report
    napari_reader = pytest.importorskip("xmodal.napari._reader")
    if napari_reader._napari_takes_units():
        assert napari_reader.registration_units(tmp_path / "reg", 3) == ("micrometer",) * 3


def test_same_or_undeclared_units_are_left_as_they_are(tmp_path):
    lab = _labels(seed=4)
    a = _write(tmp_path / "a.ome.zarr", lab, (0.5, 0.2, 0.2), "micrometer")
    res = register_cells(a, a, transform="rigid", errors=False)
    assert res.parameters["units"] == "micrometer"
    pts = load_points(a).points
    res = register_cells(pts, a, transform="rigid", errors=False)  # an array declares no unit
    assert res.parameters["units"] is None and np.allclose(np.sort(res.moving_points, 0), np.sort(pts, 0))
    # an explicit spacing wins and has no unit: nothing converted
    res = register_cells(a, a, moving_spacing=(0.5, 0.2, 0.2), transform="rigid", errors=False)
    assert res.parameters["units"] == "micrometer" and res.distances.max() < 1e-3


def test_report_names_the_unit_only_when_declared(tmp_path):
    lab = _labels(seed=5)
    pts = load_points(_write(tmp_path / "a.ome.zarr", lab, (0.5, 0.2, 0.2), "micrometer")).points
    register_cells(pts, pts + 1.0, transform="rigid", errors=False, out=tmp_path / "arrays")
    report = (tmp_path / "arrays" / "report.html").read_text()
    assert "median pair distance (input units)" in report and "micrometer" not in report
