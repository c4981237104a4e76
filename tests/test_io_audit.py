"""Audit of the io layer as a user meets it: point tables (BOM, delimiters, duplicate or extra
columns), OME-Zarr writing (metadata that other tools can read: positive voxel sizes, NGFF unit
names, unique axes, integer labels), array access modes, provenance of numpy parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xmodal import io as xio


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# ----------------------------------------------------------------------------------- tables

def test_table_with_utf8_bom_keeps_its_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte order mark: the first column is still "z", so the
    points are 3D (the BOM made it "\\ufeffz" and the table was silently read as (y, x))."""
    p = _write(tmp_path / "cells.csv", "\ufeffz,y,x\n1,2,3\n4,5,6\n")
    assert list(xio.read_table(p)) == ["z", "y", "x"]
    np.testing.assert_array_equal(xio.load_points(p).points, [[1, 2, 3], [4, 5, 6]])
    q = _write(tmp_path / "cells.tsv", "\ufeffid\tz\ty\tx\n7\t1\t2\t3\n8\t4\t5\t6\n")
    assert list(xio.load_points(q, id_column="id").ids) == [7, 8]


def test_table_with_semicolons(tmp_path):
    """Excel in locales with a decimal comma writes ';'-separated CSV."""
    p = _write(tmp_path / "cells.csv", "id;z;y;x\n1;1;2;3\n2;4;5;6\n")
    ps = xio.load_points(p, id_column="id")
    np.testing.assert_array_equal(ps.points, [[1, 2, 3], [4, 5, 6]])
    # commas inside quoted fields do not decide the delimiter
    q = _write(tmp_path / "named.csv", 'name,z,y,x\n"a;b",1,2,3\n"c;d",4,5,6\n')
    assert list(xio.read_table(q)["name"]) == ["a;b", "c;d"]


def test_table_with_a_repeated_column_name_is_refused(tmp_path):
    p = _write(tmp_path / "cells.csv", "z,y,x,x\n1,2,3,9\n4,5,6,9\n")
    with pytest.raises(ValueError, match=r"cells\.csv.*'x'.*(twice|more than once|repeat)"):
        xio.read_table(p)


def test_row_longer_than_the_header_is_refused(tmp_path):
    """A row with more values than the header has names is misaligned (e.g. a decimal comma)."""
    p = _write(tmp_path / "cells.csv", "z,y,x\n1,2,3\n4,5,6,5\n")
    with pytest.raises(ValueError, match=r"cells\.csv.*line 3.*4 values.*3 column"):
        xio.read_table(p)
    # a trailing delimiter (an empty last field) is not an extra value
    q = _write(tmp_path / "trailing.csv", "z,y,x\n1,2,3,\n4,5,6,\n")
    np.testing.assert_array_equal(xio.load_points(q).points, [[1, 2, 3], [4, 5, 6]])


def test_blank_lines_with_spaces_are_skipped(tmp_path):
    p = _write(tmp_path / "cells.csv", "z,y,x\n1,2,3\n   \n4,5,6\n \t \n")
    np.testing.assert_array_equal(xio.load_points(p).points, [[1, 2, 3], [4, 5, 6]])


# ----------------------------------------------------------------------------------- OME-Zarr writing

@pytest.mark.parametrize("spacing", [(-1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)])
def test_ome_metadata_refuses_non_positive_spacing(spacing):
    with pytest.raises(ValueError, match="spacing: expected positive finite"):
        xio.ome_image_metadata(("z", "y", "x"), spacing=spacing)


def test_ome_metadata_scalar_spacing_is_every_axis():
    ms = xio.ome_image_metadata(("c", "y", "x"), spacing=0.5)["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.5]


def test_ome_metadata_units_are_ngff_names():
    """NGFF units are UDUNITS-2 names: common spellings are written as those, unknown ones refused."""
    for given in ("um", "µm", "micron", "micrometer"):
        axes = xio.ome_image_metadata(("y", "x"), units=given)["multiscales"][0]["axes"]
        assert {a["unit"] for a in axes} == {"micrometer"}
    assert xio.ome_image_metadata(("y", "x"), units="nm")["multiscales"][0]["axes"][0]["unit"] == "nanometer"
    with pytest.raises(ValueError, match="units: expected"):
        xio.ome_image_metadata(("y", "x"), units="furlongs")


def test_ome_metadata_refuses_repeated_or_misordered_axes():
    with pytest.raises(ValueError, match="axes"):
        xio.ome_image_metadata(("z", "z", "x"))
    with pytest.raises(ValueError, match="axes"):
        xio.ome_image_metadata(("z", "y", "x", "c"))  # NGFF: time, then channel, then space


@pytest.mark.parametrize("chunks", [(0, 2), (2,), (2, -1)])
def test_chunks_are_checked(tmp_path, chunks):
    with pytest.raises(ValueError, match="chunks: expected"):
        xio.create_ome_zarr_image(tmp_path / "img.zarr", (4, 5), "u1", axes=("y", "x"), chunks=chunks)
    with pytest.raises(ValueError, match="chunks: expected"):
        xio.create_array(tmp_path / "arr.zarr", (4, 5), "u1", chunks=chunks)


def test_label_image_name_and_dtype_are_checked(tmp_path):
    root = tmp_path / "img.ome.zarr"
    xio.create_ome_zarr_image(root, (4, 5), "u1", axes=("y", "x"))
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError, match="name: expected"):
            xio.create_ome_zarr_labels(root, bad, (4, 5), axes=("y", "x"))
    with pytest.raises(TypeError, match="dtype: expected an integer"):
        xio.create_ome_zarr_labels(root, "cells", (4, 5), np.float32, axes=("y", "x"))
    assert not (root / "labels" / "a").exists()


def test_open_array_refuses_a_mode_that_would_erase_the_store(tmp_path):
    arr = xio.create_array(tmp_path / "a.zarr", (4,), "u1")
    arr[...] = 7
    with pytest.raises(ValueError, match="mode: expected one of"):
        xio.open_array(tmp_path / "a.zarr", mode="w")
    np.testing.assert_array_equal(xio.open_array(tmp_path / "a.zarr")[...], 7)


def test_unreadable_images_and_missing_arrays_are_named(tmp_path):
    """A damaged TIFF (tifffile only logs it and returns an empty array) and a path that holds no
    zarr array get errors naming the path, not an empty image or zarr's own error."""
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 12)
    with pytest.raises(ValueError, match=r"bad.tif: not a readable TIFF image \(no image data"):
        xio.read_image(bad)
    np.save(tmp_path / "a.npy", np.ones(3))
    for where in (tmp_path / "a.npy", tmp_path / "none.zarr"):
        with pytest.raises(FileNotFoundError, match=r"source: expected a zarr array or OME-Zarr image at .*found none"):
            xio.open_array(where)


# ----------------------------------------------------------------------------------- provenance

def test_provenance_keeps_numpy_values_as_numbers():
    params = {"block": (np.int64(64), 32), "beta": np.float32(0.5), "flag": np.bool_(True),
              "nested": {"k": np.int64(3)}, "offsets": np.array([[0, 1], [1, 0]])}
    rec = xio.provenance_attributes("f", params)["xmodal"]["parameters"]
    assert rec == {"block": [64, 32], "beta": 0.5, "flag": True, "nested": {"k": 3}, "offsets": [[0, 1], [1, 0]]}
    json.dumps(rec)


def test_write_region_refuses_data_of_another_shape(tmp_path):
    """zarr writes the overlapping part of data of another shape without a word; write_region
    refuses it, naming both shapes (scalars still fill the region)."""
    pytest.importorskip("zarr")
    from xmodal.io import create_array, write_region

    a = create_array(tmp_path / "a.zarr", (4, 6), np.float32, chunks=(2, 3))
    for bad in (np.ones((3, 3)), np.ones((2, 2)), np.ones(3)):
        with pytest.raises(ValueError, match=r"^data: expected shape \(2, 3\) .* got \("):
            write_region(a, (slice(0, 2), slice(3, 6)), bad)
    assert not a[:].any()
    write_region(a, (slice(0, 2), slice(3, 6)), np.arange(6.0).reshape(2, 3))
    write_region(a, (slice(2, None),), 7.0)                                # scalar, open slice
    write_region(np.zeros((4, 6)), (slice(0, 4, 2), slice(0, 6)), np.ones((2, 6)))  # numpy, a step
    np.testing.assert_array_equal(a[:2, 3:], np.arange(6.0).reshape(2, 3))
    assert (a[2:] == 7).all()


def test_iter_blocks_refuses_a_bad_block():
    from xmodal.io import iter_blocks

    for bad in ((0, 2), (2,), (2, 2, 2), (-1, 3)):
        with pytest.raises(ValueError, match=r"^block: expected 2 positive integers"):
            list(iter_blocks((4, 4), bad))
    assert len(list(iter_blocks((4, 5), (2, 2)))) == 6


def test_write_csv_refuses_ragged_or_missing_columns(tmp_path):
    from xmodal.io import write_csv

    for header, cols in ((["a", "b"], [[1, 2], [3]]), (["a", "b"], [[1, 2]]), (["a"], [5])):
        with pytest.raises(ValueError, match=r"^columns: expected \d sequences of equal length"):
            write_csv(tmp_path / "t.csv", header, cols)
    assert not (tmp_path / "t.csv").exists()
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2], ["x", "y"]])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,x\n2,y\n"


def test_create_array_refuses_a_bad_shape_before_touching_the_disk(tmp_path):
    pytest.importorskip("zarr")
    from xmodal.io import create_array

    for bad in ((-1, 3), ("a", 3), 5):
        with pytest.raises(ValueError, match=r"^shape: expected a sequence of non-negative integers"):
            create_array(tmp_path / "a.zarr", bad, np.float32)
    assert not (tmp_path / "a.zarr").exists()


def test_a_float_npy_of_points_is_a_point_array(tmp_path, capsys):
    """A saved (n, 3) float array was read as a label image and refused ('expected an integer label
    image'); float values cannot be labels, so it is a point array now. Integer .npy files stay
    label images."""
    from xmodal.cli import main
    from xmodal.io import load_points

    pts = np.random.default_rng(0).random((20, 3)) * 10
    np.save(tmp_path / "p.npy", pts)
    ps = load_points(tmp_path / "p.npy", spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(ps.points, pts * [2.0, 1.0, 1.0])
    assert ps.ids.tolist() == list(range(20)) and ps.source.endswith("p.npy")
    lab = np.zeros((8, 3), np.int32)
    lab[1:3, 1] = 4
    np.save(tmp_path / "l.npy", lab)
    assert load_points(tmp_path / "l.npy").ids.tolist() == [4]                 # integer: a label image
    np.save(tmp_path / "bad.npy", np.where(pts > 9.5, np.nan, pts))
    with pytest.raises(ValueError, match="coordinates must be finite"):
        load_points(tmp_path / "bad.npy")
    assert main(["match", str(tmp_path / "p.npy"), str(tmp_path / "p.npy"), "--out", str(tmp_path / "m.csv")]) == 0
    assert (tmp_path / "m.csv").read_text().count("\n") == 21
