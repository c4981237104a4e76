"""OME-NGFF 0.4 (zarr v2: .zgroup / .zattrs, ``multiscales`` at the top level of the attributes) as
written by other tools (ome-zarr-py, bioformats2raw), read by the napari reader and the io readers
like NGFF 0.5: images, label images, voxel size (``coordinateTransformations``) and units.

The 0.4 fixtures are written with the zarr package directly (``zarr_format=2``), not with xmodal's
writer, which writes NGFF 0.5 only.
"""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

SCALE = (2.0, 0.5, 0.25)


def _axes(names, unit):
    types = {"t": "time", "c": "channel"}
    return [{"name": n, "type": types.get(n, "space"), **({"unit": unit} if n in "zyx" and unit else {})}
            for n in names]


def write_ngff04(root, shape=(4, 6, 8), *, scale=SCALE, unit="micrometer", channels=None, levels=2,
                 translation=None, label_unit=None, label_scale=None):
    """An NGFF 0.4 image at ``root`` (uint16 ramp, ``levels`` resolution levels downsampled by 2 in
    every spatial axis) with a label image ``labels/cells`` (two objects, ids 3 and 7)."""
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    names = ("c" if channels else "") + "zyx"[-len(shape):]
    full = ((channels,) if channels else ()) + tuple(shape)
    data = np.arange(np.prod(full), dtype=np.uint16).reshape(full)
    datasets = []
    for lvl in range(levels):
        f = 2 ** lvl
        sl = (slice(None),) * bool(channels) + (slice(None, None, f),) * len(shape)
        arr = g.create_array(str(lvl), shape=data[sl].shape, dtype=data.dtype, chunks=data[sl].shape)
        arr[...] = data[sl]
        ct = [{"type": "scale", "scale": [1.0] * bool(channels) + [s * f for s in scale]}]
        if translation is not None:
            ct.append({"type": "translation", "translation": [0.0] * bool(channels) + list(translation)})
        datasets.append({"path": str(lvl), "coordinateTransformations": ct})
    g.attrs["multiscales"] = [{"version": "0.4", "name": "img", "axes": _axes(names, unit), "datasets": datasets}]
    labels = g.require_group("labels")
    labels.attrs["labels"] = ["cells"]
    cells = labels.require_group("cells")
    lab = np.zeros(shape, dtype=np.uint32)
    lab[(slice(1, 3), slice(1, 4), slice(2, 6))[-len(shape):]] = 7
    lab[(0,) * len(shape)] = 3
    arr = cells.create_array("0", shape=shape, dtype=np.uint32, chunks=shape)
    arr[...] = lab
    lscale = list(label_scale or scale)
    cells.attrs["multiscales"] = [{
        "version": "0.4", "name": "cells", "axes": _axes("zyx"[-len(shape):], label_unit or unit),
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": lscale}]}]}]
    cells.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    return data, lab


def _read(path):
    from xmodal.napari._reader import get_reader

    reader = get_reader(str(path))
    assert reader is not None, f"the reader declines {path}"
    return reader(str(path))


def test_reader_opens_ngff04_image_and_labels(tmp_path):
    data, lab = write_ngff04(tmp_path / "img.ome.zarr")
    layers = _read(tmp_path / "img.ome.zarr")
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    (img, img_kw, _), (labels, lab_kw, _) = layers
    levels = img if isinstance(img, list) else [img]
    np.testing.assert_array_equal(np.asarray(levels[0]), data)
    assert list(img_kw["scale"]) == list(SCALE) and list(lab_kw["scale"]) == list(SCALE)
    np.testing.assert_array_equal(np.asarray(labels), lab)
    assert lab_kw["name"] == "cells"


def test_reader_ngff04_multiscale_translation_and_channels(tmp_path):
    data, _ = write_ngff04(tmp_path / "img.zarr", channels=2, levels=3, translation=(1.0, -2.0, 3.0))
    layers = _read(tmp_path / "img.zarr")
    img, kw, kind = layers[0]
    assert kind == "image" and kw["channel_axis"] == 0
    assert list(kw["scale"]) == list(SCALE) and list(kw["translate"]) == [1.0, -2.0, 3.0]
    # every resolution level, full resolution first (napari's multiscale data)
    assert isinstance(img, list) and [a.shape for a in img] == [(2, 4, 6, 8), (2, 2, 3, 4), (2, 1, 2, 2)]
    np.testing.assert_array_equal(np.asarray(img[0]), data)


def test_reader_ngff04_label_image_opened_alone(tmp_path):
    _, lab = write_ngff04(tmp_path / "img.zarr")
    layers = _read(tmp_path / "img.zarr" / "labels" / "cells")
    assert [kind for _, _, kind in layers] == ["labels"]
    np.testing.assert_array_equal(np.asarray(layers[0][0]), lab)
    assert list(layers[0][1]["scale"]) == list(SCALE)


def test_reader_ngff05_label_image_opened_alone(tmp_path):
    from xmodal.io import create_ome_zarr_image, create_ome_zarr_labels

    create_ome_zarr_image(tmp_path / "img.ome.zarr", (3, 4), np.uint8, axes=("y", "x"), spacing=(2.0, 3.0))
    create_ome_zarr_labels(tmp_path / "img.ome.zarr", "cells", (3, 4), axes=("y", "x"), spacing=(2.0, 3.0))[...] = 5
    layers = _read(tmp_path / "img.ome.zarr" / "labels" / "cells")
    assert [kind for _, _, kind in layers] == ["labels"] and list(layers[0][1]["scale"]) == [2.0, 3.0]


def test_reader_units_other_than_micrometer(tmp_path):
    """An image in nanometres with labels in micrometres: the labels' scale is converted into the
    image's unit so that both overlay, and napari is told the unit when it takes one."""
    write_ngff04(tmp_path / "img.zarr", scale=(200.0, 50.0, 50.0), unit="nanometer",
                 label_unit="micrometer", label_scale=(0.2, 0.05, 0.05))
    (_, img_kw, _), (_, lab_kw, _) = _read(tmp_path / "img.zarr")
    assert list(img_kw["scale"]) == [200.0, 50.0, 50.0]
    np.testing.assert_allclose(lab_kw["scale"], [200.0, 50.0, 50.0])
    if "units" in img_kw:
        assert tuple(img_kw["units"]) == ("nanometer",) * 3 and tuple(lab_kw["units"]) == ("nanometer",) * 3


def test_reader_ngff04_layers_build_in_napari(tmp_path):
    napari = pytest.importorskip("napari")
    from napari.components import ViewerModel

    write_ngff04(tmp_path / "img.zarr", channels=2, unit="nanometer")
    viewer = ViewerModel()
    for data, kwargs, kind in _read(tmp_path / "img.zarr"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Image", "Labels"]
    assert all(tuple(layer.scale) == SCALE for layer in viewer.layers)
    assert viewer.layers[0].multiscale and np.asarray(viewer.layers[2].data).max() == 7
    if hasattr(viewer.layers[0], "units"):
        assert all(str(u) == "nanometer" for layer in viewer.layers for u in layer.units)
    assert napari is not None


def test_reader_opens_bioformats2raw_layout(tmp_path):
    """bioformats2raw: a root group ``{"bioformats2raw.layout": 3}`` whose series are the NGFF
    images ``0``, ``1``, ... (listed in ``OME/.zattrs`` ``series`` when present)."""
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    write_ngff04(tmp_path / "b2r.zarr" / "0")
    write_ngff04(tmp_path / "b2r.zarr" / "1", shape=(5, 7), scale=SCALE[1:])
    ome = root.require_group("OME")
    ome.attrs["series"] = ["0", "1"]
    layers = _read(tmp_path / "b2r.zarr")
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "labels"]
    assert list(layers[2][1]["scale"]) == list(SCALE[1:])
    assert layers[0][1]["name"] != layers[2][1]["name"]


def test_reader_declines_plain_v2_groups(tmp_path):
    from xmodal.napari._reader import get_reader

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2).attrs["foo"] = 1
    zarr.create_array(str(tmp_path / "arr.zarr"), shape=(3,), dtype="u1", zarr_format=2)
    assert get_reader(str(tmp_path / "plain.zarr")) is None
    assert get_reader(str(tmp_path / "arr.zarr")) is None


def test_io_readers_ngff04(tmp_path):
    """read_image and load_points take NGFF 0.4 images and label images, with their voxel size."""
    from xmodal.io import load_points, read_image

    data, lab = write_ngff04(tmp_path / "img.zarr")
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "img.zarr")), data)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "img.zarr" / "labels" / "cells")), lab)
    ps = load_points(tmp_path / "img.zarr" / "labels" / "cells")
    assert ps.spacing == SCALE and list(ps.ids) == [3, 7]
    np.testing.assert_allclose(ps.points[1], [1.5 * 2.0, 2.0 * 0.5, 3.5 * 0.25])
