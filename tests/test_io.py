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
