"""Output metadata found by an end-to-end audit: the inputs a provenance record names (absolute
paths, file sizes and SHA-256, in-memory arrays), the transform model in the registration report,
ids kept as written (zero-padded), NGFF 0.5 label metadata, and the voxel size a TIFF declares."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

from _cli_helpers import run
from xmodal import io as xio
from xmodal.io._ome import declared_scale
from xmodal.io._provenance import input_record

tifffile = pytest.importorskip("tifffile")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _imagej_tiff(path, data, *, yx=(0.5, 0.25), z=2.0, unit="um"):
    """A TIFF as ImageJ writes it: x / y resolution in pixels per unit, z ``spacing``, ``unit``."""
    meta = {"unit": unit, "axes": "ZYX" if data.ndim == 3 else "YX"}
    if data.ndim == 3:
        meta["spacing"] = z
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / yx[1], 1 / yx[0]), metadata=meta)
    return path


# ------------------------------------------------------------------------------- provenance


def test_input_record_of_files_folders_and_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "store.zarr").mkdir()
    rec = input_record("a.csv")
    assert rec == {"path": "a.csv", "absolute": str(tmp_path / "a.csv"), "kind": "file", "bytes": 8,
                   "sha256": _sha(tmp_path / "a.csv")}
    assert input_record(tmp_path / "store.zarr") == {"path": str(tmp_path / "store.zarr"),
                                                     "absolute": str(tmp_path / "store.zarr"), "kind": "folder"}
    assert input_record(np.zeros((3, 4), np.uint16)) == {"kind": "array", "type": "ndarray", "shape": [3, 4],
                                                         "dtype": "uint16"}
    assert input_record("not a path") == "not a path" and input_record(None) is None
    assert input_record(tmp_path / "gone.npy")["kind"] == "missing"


def test_large_files_are_not_hashed(tmp_path, monkeypatch):
    import xmodal.io._provenance as prov

    big = tmp_path / "big.npy"
    big.write_bytes(b"\0" * 100)
    monkeypatch.setattr(prov, "HASH_LIMIT", 99)
    rec = prov.input_record(big)
    assert rec["bytes"] == 100 and "sha256" not in rec


def test_provenance_record_keeps_arrays_out_of_the_json(tmp_path):
    rec = xio.provenance_record("step", {"k": 1}, {"raw": np.ones((50, 60), np.float32), "gt": tmp_path})
    assert rec["inputs"]["raw"] == {"kind": "array", "type": "ndarray", "shape": [50, 60], "dtype": "float32"}
    assert rec["inputs"]["gt"]["kind"] == "folder"
    json.dumps(rec)  # serialisable as it is


@pytest.fixture(scope="module")
def em_tiff(tmp_path_factory):
    """A 64 × 64 ssTEM-like slice as an ImageJ TIFF (0.5 × 0.25 µm pixels) and its ground truth."""
    from xmodal.datasets import isbi2012_slices

    raw, gt = isbi2012_slices()
    d = tmp_path_factory.mktemp("em_tiff")
    _imagej_tiff(d / "raw.tif", raw[0, :64, :64].copy())
    np.save(d / "gt.npy", gt[0, :64, :64].astype(np.uint32))
    return d


def test_segment_records_its_inputs_and_the_tiff_voxel_size(em_tiff, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    zarr = pytest.importorskip("zarr")
    from xmodal.pipelines import segment

    monkeypatch.chdir(em_tiff)
    res = segment("raw.tif", model="isbi2012", method="mws", out=tmp_path / "seg", ground_truth="gt.npy")
    prov = json.loads((tmp_path / "seg" / "provenance.json").read_text())
    raw, gt = prov["inputs"]["raw"], prov["inputs"]["ground_truth"]
    assert raw["path"] == "raw.tif" and raw["absolute"] == str(em_tiff / "raw.tif")
    assert raw["kind"] == "file" and raw["bytes"] == (em_tiff / "raw.tif").stat().st_size
    assert raw["sha256"] == _sha(em_tiff / "raw.tif") and gt["sha256"] == _sha(em_tiff / "gt.npy")
    # the TIFF's ImageJ voxel size and unit reach the labels' OME-Zarr metadata and the parameters
    assert prov["parameters"]["spacing"] == [0.5, 0.25]
    cells = zarr.open_group(str(tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells"), mode="r")
    ms = cells.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    assert {a["unit"] for a in ms["axes"]} == {"micrometer"}
    # an explicit spacing wins over the declared one
    px = segment(str(em_tiff / "raw.tif"), model="isbi2012", method="mws", spacing=1.0, out=tmp_path / "px")
    assert json.loads((tmp_path / "px" / "provenance.json").read_text())["parameters"]["spacing"] == [1.0, 1.0]
    assert "ground_truth" not in json.loads((tmp_path / "px" / "provenance.json").read_text())["inputs"]
    np.testing.assert_array_equal(np.asarray(res.labels), np.asarray(px.labels))


def test_segment_describes_in_memory_inputs(tmp_path):
    pytest.importorskip("torch")
    from xmodal.pipelines import segment

    raw = np.full((32, 40), 100, np.uint8)
    segment(raw, model="isbi2012", method="mws", out=tmp_path / "seg", ground_truth=np.ones((32, 40), np.int32))
    inputs = json.loads((tmp_path / "seg" / "provenance.json").read_text())["inputs"]
    assert inputs == {"raw": {"kind": "array", "type": "ndarray", "shape": [32, 40], "dtype": "uint8"},
                      "ground_truth": {"kind": "array", "type": "ndarray", "shape": [32, 40], "dtype": "int32"}}


# ------------------------------------------------------------------------------- NGFF 0.5 labels


def test_label_metadata_is_ngff_05(tmp_path):
    zarr = pytest.importorskip("zarr")
    root = tmp_path / "img.ome.zarr"
    xio.create_ome_zarr_image(root, (6, 8), np.float32, axes=("y", "x"))
    xio.create_ome_zarr_labels(root, "cells", (6, 8), axes=("y", "x"), spacing=(0.5, 0.25), units="micrometer")
    ome = zarr.open_group(str(root / "labels" / "cells"), mode="r").attrs["ome"]
    assert ome["version"] == "0.5" and "version" not in ome["image-label"]  # once, in the "ome" object
    assert ome["image-label"] == {"source": {"image": "../../"}}
    assert all("version" not in ms for ms in ome["multiscales"])
    assert zarr.open_group(str(root / "labels"), mode="r").attrs["ome"] == {"version": "0.5", "labels": ["cells"]}
    from xmodal.io._ome import ome_zarr_scale  # the labels still read back with their scale

    assert ome_zarr_scale(root / "labels" / "cells", 2) == ((0.5, 0.25), "micrometer")


# ------------------------------------------------------------------------------- TIFF voxel size


def test_tiff_voxel_size_imagej_and_ome(tmp_path):
    stack = np.zeros((3, 8, 10), np.uint16)
    assert declared_scale(_imagej_tiff(tmp_path / "ij.tif", stack), 3) == ((2.0, 0.5, 0.25), "micrometer")
    assert declared_scale(tmp_path / "ij.tif", 2) == (None, None)  # another number of spatial axes
    assert declared_scale(_imagej_tiff(tmp_path / "ij2.tif", stack[0], unit="micron"), 2) == ((0.5, 0.25), "micrometer")
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")  # no ImageJ / OME metadata: nothing declared
    assert declared_scale(tmp_path / "plain.tif", 3) == (None, None)
    tifffile.imwrite(tmp_path / "px.tif", stack, imagej=True, metadata={"axes": "ZYX"})  # ImageJ's "pixel" unit
    assert declared_scale(tmp_path / "px.tif", 3) == (None, None)
    tifffile.imwrite(tmp_path / "o.ome.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 1.5, "PhysicalSizeY": 0.4, "PhysicalSizeX": 300.0, "PhysicalSizeXUnit": "nm"})
    assert declared_scale(tmp_path / "o.ome.tif", 3) == ((1500.0, 400.0, 300.0), "nanometer")  # in x's unit
    np.save(tmp_path / "a.npy", stack)
    assert declared_scale(tmp_path / "a.npy", 3) == (None, None)


def test_label_tiff_centroids_are_in_its_declared_units(tmp_path):
    lab = np.zeros((3, 8, 10), np.uint16)
    lab[1, 2:4, 4:6] = 7
    ps = xio.load_points(_imagej_tiff(tmp_path / "lab.tif", lab))
    assert ps.spacing == (2.0, 0.5, 0.25) and ps.ids.tolist() == [7]
    np.testing.assert_allclose(ps.points, [[2.0, 2.5 * 0.5, 4.5 * 0.25]])
    assert xio.load_points(tmp_path / "lab.tif", spacing=1.0).points.tolist() == [[1.0, 2.5, 4.5]]  # explicit wins


# ------------------------------------------------------------------------------- ids as written


def _cells(path, ids, pts):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell", "z", "y", "x"])
        for i, p in zip(ids, pts):
            w.writerow([i, *[f"{v:.4f}" for v in p]])
    return path


def test_zero_padded_ids_are_kept_as_written(tmp_path):
    pts = np.arange(12, dtype=float).reshape(4, 3)
    ps = xio.load_points(_cells(tmp_path / "a.csv", ["00123", "00007", "1e3", "42"], pts), id_column="cell")
    assert ps.ids.tolist() == ["00123", "00007", "1e3", "42"]
    plain = xio.load_points(_cells(tmp_path / "b.csv", ["123", "7", "1000", "-4"], pts), id_column="cell")
    assert plain.ids.dtype == np.int64 and plain.ids.tolist() == [123, 7, 1000, -4]  # unchanged: numbers
    table = xio.read_table(tmp_path / "a.csv")
    assert table["cell"].dtype == np.float64 and table.text["cell"].tolist() == ["00123", "00007", "1e3", "42"]
    assert "z" not in table.text  # coordinates as numbers only, whole ones ("3.0000") too
    dec = xio.load_points(_cells(tmp_path / "d.csv", ["1.0", "2.0", "3.0", "4.0"], pts), id_column="cell")
    assert dec.ids.tolist() == [1, 2, 3, 4]  # decimals are numbers (e.g. ids of a float column)
    with pytest.raises(ValueError, match="repeats 1 id"):  # "007" and "0007" are different ids; "7" twice is not
        xio.load_points(_cells(tmp_path / "c.csv", ["007", "007", "7", "8"], pts), id_column="cell")


def test_register_cli_writes_zero_padded_ids_back(tmp_path, capsys):
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(20, 3)) * [3.0, 20.0, 20.0]
    ids = [f"{i * 7:05d}" for i in range(20)]
    a = _cells(tmp_path / "fixed.csv", ids, pts)
    b = _cells(tmp_path / "moving.csv", ids[::-1], pts[::-1] + 0.01)
    code, _, err = run(capsys, "register", a, b, "--id-column", "cell", "--transform", "rigid", "--no-prealign",
                       "--out", tmp_path / "reg", "-q")
    assert code == 0, err
    with open(tmp_path / "reg" / "matches.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["fixed_id"] for r in rows) == sorted(ids) and all(r["fixed_id"] == r["moving_id"] for r in rows)
    with open(tmp_path / "reg" / "cells.csv") as fh:
        assert {r["fixed_id"] for r in csv.DictReader(fh)} == set(ids)
    prov = json.loads((tmp_path / "reg" / "provenance.json").read_text())
    assert prov["inputs"]["fixed"]["sha256"] == _sha(a) and prov["inputs"]["moving"]["absolute"] == str(b)
    pytest.importorskip("napari")
    from xmodal.napari._reader import read_registration_folder

    table = read_registration_folder(tmp_path / "reg")  # the napari reader shows them as written too
    assert set(table.fixed_ids.tolist()) == set(ids) and set(table.moving_ids.tolist()) == set(ids)


def test_atlas_names_written_as_zero_padded_numbers_are_kept(tmp_path):
    from xmodal.atlas import read_annotated_table

    path = tmp_path / "named.csv"
    path.write_text("cell,z,y,x\n00123,1,2,3\n7,4,5,6\n,1,1,1\n")
    assert read_annotated_table(path, names_column="cell")[1].tolist() == ["00123", "7"]


# ------------------------------------------------------------------------------- registration report


def test_report_names_the_model_auto_chose_and_the_scores(tmp_path):
    from xmodal.pipelines import register_cells

    rng = np.random.default_rng(0)
    fixed = rng.normal(size=(60, 3)) * [5.0, 30.0, 30.0]
    rot = np.array([[1, 0, 0], [0, 0.96, -0.28], [0, 0.28, 0.96]])
    moving = fixed @ rot.T + [1.0, 2.0, 3.0] + rng.normal(scale=0.2, size=fixed.shape)
    res = register_cells(fixed, moving, transform="auto", errors=False, out=tmp_path / "auto")
    html = (tmp_path / "auto" / "report.html").read_text()
    chosen = res.model_selection["chosen"]
    assert f"<th>transform model (auto)</th><td>{chosen}, chosen by the held-out" in html
    for name, score in res.model_selection["scores"].items():
        assert f"{name}{' (chosen)' if name == chosen else ''}: {score:.4g}" in html
    fixed_model = register_cells(fixed, moving, transform="rigid", errors=False, out=tmp_path / "rigid")
    assert fixed_model.model_selection is None or not fixed_model.model_selection
    assert "<th>transform model</th><td>rigid</td>" in (tmp_path / "rigid" / "report.html").read_text()
