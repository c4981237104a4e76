"""xmodal.io: zarr v3 / OME-Zarr helpers, chunk-aligned writes, block ledger."""

import json
import os

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from xmodal import io as xio  # noqa: E402


def test_ome_zarr_image_roundtrip(tmp_path):
    path = tmp_path / "img.zarr"
    prov = xio.provenance_attributes("test", {"tile": (8, 8), "fn": object()}, {"image": "x.zarr"})
    arr = xio.create_ome_zarr_image(path, (2, 10, 20, 30), "float32", axes="czyx", chunks=(2, 5, 10, 10),
                                    spacing=(2.0, 0.5, 0.5), units="micrometer", name="pred", provenance=prov)
    arr[:] = np.arange(arr.size, dtype=np.float32).reshape(arr.shape)
    meta = json.loads((path / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["axes"][0]["type"] == "channel" and ms["axes"][1]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.5, 0.5]
    assert meta["attributes"]["xmodal"]["parameters"]["tile"] == [8, 8]
    assert meta["attributes"]["xmodal"]["parameters"]["fn"].startswith("<object")
    again = xio.open_array(path)  # the group resolves to its level 0
    assert again.shape == (2, 10, 20, 30) and np.array_equal(again[:], arr[:])
    # reopening with the same layout returns the existing data (resume), another layout is refused
    same = xio.create_ome_zarr_image(path, (2, 10, 20, 30), "float32", axes="czyx", chunks=(2, 5, 10, 10))
    assert same[1, 2, 3, 4] == arr[1, 2, 3, 4] != 0
    with pytest.raises(ValueError, match="holds an array"):
        xio.create_ome_zarr_image(path, (2, 10, 20, 31), "float32", axes="czyx")
    with pytest.raises(ValueError, match="spacing"):
        xio.ome_image_metadata("zyx", spacing=(1, 1))
    with pytest.raises(ValueError, match="axes"):
        xio.ome_image_metadata("zyq")


def test_chunk_aligned_writes(tmp_path):
    arr = xio.create_array(tmp_path / "a.zarr", (20, 25), "float32", chunks=(10, 10))
    xio.write_region(arr, (slice(10, 20), slice(20, 25)), np.ones((10, 5), np.float32))  # reaches the end
    assert arr[15, 22] == 1
    # chunks larger than the array are capped at its shape (zarr allocates a whole chunk per write)
    big = xio.create_array(tmp_path / "big.zarr", (3, 5), "uint32", chunks=(2**40, 2))
    assert big.chunks == (3, 2)
    big[:] = 7
    assert (big[:] == 7).all()
    with pytest.raises(ValueError, match="not aligned"):
        xio.write_region(arr, (slice(5, 15), slice(0, 10)), np.ones((10, 10), np.float32))
    assert xio.local_store_path(arr) == os.fspath(tmp_path / "a.zarr")
    assert xio.is_zarr_array(arr) and not xio.is_zarr_array(np.zeros(3))
    with pytest.raises(TypeError, match="source"):
        xio.open_array(3)


def test_block_ledger(tmp_path):
    d = tmp_path / "progress"
    led = xio.BlockLedger(d, "job A")
    assert not led.is_done((0, 1))
    led.mark_done((0, 1))
    assert xio.BlockLedger(d, "job A").is_done((0, 1))  # same job: kept
    assert xio.BlockLedger.attach(d).is_done((0, 1))
    assert not xio.BlockLedger(d, "job B").is_done((0, 1))  # another job: cleared
    xio.atomic_write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        xio.atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.txt") == 0o640


def test_block_ledger_reuses_a_block_only_for_the_same_input(tmp_path):
    led = xio.BlockLedger(tmp_path / "p", "job")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    led.mark_done((0, 0), xio.data_digest(a), n_labels=3)
    assert led.is_done((0, 0), xio.data_digest(a)) and led.record((0, 0))["n_labels"] == 3
    b = a.copy()
    b[1, 2] += 1e-6  # the smallest change of a value
    assert not led.is_done((0, 0), xio.data_digest(b))
    assert not led.is_done((0, 0), xio.data_digest(a.astype(np.float64)))  # same values, other dtype
    assert not led.is_done((0, 0), xio.data_digest(a.reshape(4, 3)))  # same bytes, other shape
    assert xio.data_digest(a, None) != xio.data_digest(a) and xio.data_digest(np.asfortranarray(a)) == xio.data_digest(a)


def test_job_signature_is_stable_and_parameter_sensitive():
    from xmodal.inference import Standardize as _Standardize

    base = {"tile": (16, 16), "offsets": np.array([[-1, 0], [0, -1]]), "norm": _Standardize(0.5, 2.0)}
    assert xio.job_signature(base) == xio.job_signature(dict(base, norm=_Standardize(0.5, 2.0)))
    for change in ({"tile": (16, 32)}, {"offsets": np.array([[-1, 0], [0, -2]])}, {"norm": _Standardize(0.5, 2.1)}):
        assert xio.job_signature({**base, **change}) != xio.job_signature(base)
    # an object that cannot be pickled never matches another one (work is recomputed, not reused)
    assert xio.object_token(lambda x: x) != xio.object_token(lambda x: x)


def test_completion_status_and_open_array(tmp_path):
    path = tmp_path / "o.zarr"
    arr = xio.create_array(path, (4, 6), "float32", chunks=(2, 3), writer="test writer")
    assert xio.output_status(arr)["complete"] is False  # born incomplete, before any chunk
    arr[:2] = 1.0
    with pytest.raises(ValueError, match=r"incomplete output of test writer.*allow_incomplete"):
        xio.open_array(path)
    with pytest.warns(RuntimeWarning, match="incomplete"):
        part = xio.open_array(path, allow_incomplete=True)
    assert part[0, 0] == 1 and part[3, 0] == 0
    assert xio.open_array(path, mode="r+") is not None  # the write modes are for resuming
    xio.mark_complete(arr, "test writer", signature="s", input_digest="d")
    status = xio.output_status(xio.open_array(path))
    assert status["complete"] and status["signature"] == "s" and status["input_digest"] == "d"
    # an OME-Zarr image resolves to its level 0, whose status is checked the same way
    img = xio.create_ome_zarr_image(tmp_path / "img.zarr", (2, 4, 4), "float32", axes="cyx", writer="w")
    with pytest.raises(ValueError, match="incomplete"):
        xio.open_array(tmp_path / "img.zarr")
    xio.mark_complete(img, "w")
    assert xio.open_array(tmp_path / "img.zarr").shape == (2, 4, 4)
    # arrays that xmodal did not write have no status and open as before
    plain = xio.create_array(tmp_path / "plain.zarr", (3,), "int32")
    assert xio.output_status(plain) is None and xio.is_complete(plain)


def test_staged_output_folder_replaces_the_previous_one_whole(tmp_path):
    out = tmp_path / "res"
    stage = xio.begin_folder(out)
    assert stage == xio.staging_path(out) and stage.is_dir() and not out.exists()
    xio.atomic_write_text(stage / "provenance.json", "{\"run\": 1}")
    xio.atomic_write_text(stage / "only_in_run_1.txt", "1")
    assert xio.commit_folder(stage, out) == out and not stage.exists()
    stage = xio.begin_folder(out)
    xio.atomic_write_text(stage / "provenance.json", "{\"run\": 2}")
    assert (out / "only_in_run_1.txt").exists()  # the previous output is intact until the commit
    xio.commit_folder(stage, out)
    assert sorted(os.listdir(out)) == ["provenance.json"] and "2" in (out / "provenance.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["res"]  # nothing left beside it
    # a staging folder left by a killed run is emptied, except the resumable entries named
    stage = xio.begin_folder(out)
    (stage / "keep.zarr").mkdir()
    (stage / "stale.json").write_text("{}")
    stage = xio.begin_folder(out, keep=("keep.zarr",))
    assert os.listdir(stage) == ["keep.zarr"]
    # only empty folders and previous xmodal outputs are replaced; files are refused
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an xmodal output"):
        xio.begin_folder(other)
    with pytest.raises(ValueError, match="existing file"):
        xio.begin_folder(other / "notes.txt")


def test_commit_folder_without_atomic_exchange(tmp_path, monkeypatch):
    from xmodal.io import _resume

    monkeypatch.setattr(_resume, "_exchange", lambda a, b: False)  # e.g. a file system without renameat2
    out = tmp_path / "res"
    for run in (1, 2):
        stage = xio.begin_folder(out)
        xio.atomic_write_text(stage / "provenance.json", str(run))
        xio.commit_folder(stage, out)
        assert (out / "provenance.json").read_text() == str(run)
    assert sorted(os.listdir(tmp_path)) == ["res"]


def test_remove_temporaries(tmp_path):
    (tmp_path / "c" / "0").mkdir(parents=True)
    for name in ("c/0/1.abc.partial", "c/0/1", ".tmp-x", "zarr.json"):
        (tmp_path / name).write_text("x")
    assert xio.remove_temporaries(tmp_path, recursive=False) == 1
    assert xio.remove_temporaries(tmp_path) == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == ["c/0/1", "zarr.json"]


def test_iter_blocks_tiles_the_array_once():
    shape, block = (7, 10, 5), (3, 4, 5)
    seen = np.zeros(shape, np.int64)
    regions = list(xio.iter_blocks(shape, block))
    for sl in regions:
        seen[sl] += 1
        assert all(s.stop - s.start <= b for s, b in zip(sl, block))
    assert (seen == 1).all() and len(regions) == 3 * 3 * 1
    assert regions[0] == (slice(0, 3), slice(0, 4), slice(0, 5)) and regions[-1][0] == slice(6, 7)


def test_labels_group_of_an_ome_zarr_image(tmp_path):
    zarr = pytest.importorskip("zarr")
    root = tmp_path / "img.ome.zarr"
    xio.create_ome_zarr_image(root, (2, 6, 8), np.float32, axes=("c", "y", "x"))
    cells = xio.create_ome_zarr_labels(root, "cells", (6, 8), axes=("y", "x"), chunks=(4, 100), spacing=(0.5, 0.25),
                                       writer="test")
    assert cells.shape == (6, 8) and cells.chunks == (4, 8) and cells.dtype == np.uint32
    assert not xio.is_complete(cells)  # born incomplete with a writer
    cells[...] = 1
    xio.mark_complete(cells, "test")
    xio.create_ome_zarr_labels(root, "nuclei", (6, 8), np.uint16, axes=("y", "x"))
    labels = zarr.open_group(str(root / "labels"), mode="r")
    assert labels.attrs["ome"]["labels"] == ["cells", "nuclei"]
    meta = zarr.open_group(str(root / "labels" / "cells"), mode="r").attrs["ome"]
    assert meta["image-label"]["source"]["image"] == "../../"
    assert meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.25]
    assert np.asarray(xio.open_array(root / "labels" / "cells")[...]).sum() == 48  # opened as an image
    with pytest.raises(ValueError, match="axes"):
        xio.create_ome_zarr_labels(root, "bad", (6, 8), axes=("x",))


def test_readers_and_writers_name_their_files(tmp_path):
    table = tmp_path / "t.csv"
    xio.write_csv(table, ["id", "z", "y", "x"], [np.array(["a", "b"]), np.arange(2.0), np.ones(2), np.zeros(2)])
    cols = xio.read_table(table)
    assert cols["id"].tolist() == ["a", "b"] and cols["z"].tolist() == [0.0, 1.0]
    ps = xio.load_points(table, id_column="id", spacing=2.0)
    assert isinstance(ps, xio.PointSet) and ps.points.tolist() == [[0, 2, 0], [2, 2, 0]]
    with pytest.raises(ValueError, match="column 'id' must be numeric; line 2"):
        xio.numeric_column(cols, "id", table)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="obj.npy: holds Python objects"):
        xio.read_image(tmp_path / "obj.npy")
    with pytest.raises(ValueError, match="t.csv: a table"):
        xio.read_image(table)
    doc = xio.write_json(tmp_path / "d.json", {"a": np.arange(2), "b": np.float32(0.5)})
    assert json.loads(doc.read_text()) == {"a": [0, 1], "b": 0.5}
    rec = xio.provenance_record("step", {"k": np.int64(3)}, {"x": tmp_path})
    assert rec["step"] == "step" and rec["parameters"] == {"k": 3}
    assert rec["inputs"] == {"x": {"path": str(tmp_path), "absolute": str(tmp_path), "kind": "folder"}}


def test_per_axis_expands_and_names_the_argument():
    from xmodal._validation import per_axis

    assert per_axis(3, 2, "halo") == (3, 3)
    assert per_axis((1, np.int64(2), 3), 3, "halo") == (1, 2, 3)
    for bad, exc in (((1, 2), ValueError), ((1.0, 2, 3), TypeError), ((True, 1, 1), TypeError), ("abc", TypeError),
                     (None, TypeError), ((0, 1, -1), ValueError)):
        with pytest.raises(exc, match="halo"):
            per_axis(bad, 3, "halo")
    assert per_axis((0, 1, 1), 3, "halo") == (0, 1, 1)
    with pytest.raises(ValueError, match="tile_shape: expected integers >= 1"):
        per_axis((0, 1, 1), 3, "tile_shape", minimum=1)


def test_integer_id_column_stays_integer(tmp_path):
    """Ids of whole numbers come back as int64 (and so are written back as given, not as 100.0)."""
    path = tmp_path / "cells.csv"
    path.write_text("label_id,name,z,y,x\n100,a,1,2,3\n7,b,4,5,6\n")
    ps = xio.load_points(path, id_column="label_id")
    assert ps.ids.dtype == np.int64 and ps.ids.tolist() == [100, 7]
    assert xio.load_points(path, id_column="name").ids.tolist() == ["a", "b"]
    path.write_text("label_id,z,y,x\n1.5,1,2,3\n7,4,5,6\n")
    assert xio.load_points(path, id_column="label_id").ids.tolist() == [1.5, 7.0]  # not whole: unchanged


def test_id_column_must_name_every_row_once(tmp_path):
    """Repeated or empty ids would make the output tables impossible to join back: refused."""
    path = tmp_path / "cells.csv"
    path.write_text("cell,z,y,x\nABa,1,2,3\nABp,4,5,6\nABa,7,8,9\n")
    with pytest.raises(ValueError, match=r"id_column: 'cell' of .*cells.csv repeats 1 id\(s\) \(e.g. 'ABa', 2 times\)"):
        xio.load_points(path, id_column="cell")
    path.write_text("cell,z,y,x\nABa,1,2,3\n,4,5,6\n")
    with pytest.raises(ValueError, match=r"id_column: 'cell' of .*cells.csv is empty on 1 row\(s\) \(first: data row 2\)"):
        xio.load_points(path, id_column="cell")
    path.write_text("label_id,z,y,x\n3,1,2,3\n3.0,4,5,6\n")  # the same number written twice
    with pytest.raises(ValueError, match="repeats 1 id"):
        xio.load_points(path, id_column="label_id")
