"""OME-Zarr groups with damaged NGFF metadata (wrong types, empty lists, missing fields, numbers
that are not numbers) get a ValueError naming the path and the field from every reader
(:func:`xmodal.io.open_array`, the declared voxel size, the NGFF / napari image reader), instead
of a KeyError, IndexError, TypeError or AttributeError from inside the parsing; a level the
metadata names but the group lacks is a FileNotFoundError naming both."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from xmodal.io import open_array  # noqa: E402
from xmodal.io._ngff import read_ngff_image  # noqa: E402
from xmodal.io._ngff_check import first_multiscale  # noqa: E402
from xmodal.io._ome import declared_scale  # noqa: E402


def _ms(**over):
    m = {"axes": [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space",
                                                                          "unit": "micrometer"}],
         "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0]}]}]}
    m.update(over)
    return {"ome": {"version": "0.5", "multiscales": [m]}}


DAMAGED = {
    "multiscales a dict": ({"ome": {"multiscales": {"datasets": []}}}, "'multiscales' must be a non-empty list"),
    "multiscales empty": ({"ome": {"multiscales": []}}, "'multiscales' must be a non-empty list"),
    "multiscales of strings (0.4)": ({"multiscales": ["a"]}, "'multiscales' must be a non-empty list"),
    "no datasets": (_ms(datasets=None), "'datasets' must be"),
    "datasets empty": (_ms(datasets=[]), "'datasets' must be"),
    "dataset without path": (_ms(datasets=[{}]), "'datasets' must be"),
    "dataset path a number": (_ms(datasets=[{"path": 0}]), "'datasets' must be"),
    "axes numbers": (_ms(axes=[1, 2]), "'axes' must be"),
    "axis without name": (_ms(axes=[{}, {}]), "'axes' must be"),
    "unit a list": (_ms(axes=[{"name": "y", "unit": ["um"]}, {"name": "x"}]), "'axes' must be"),
    "scale of strings": (_ms(datasets=[{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": ["a", 1]}]}]), "datasets\\[0\\] scale must be a list of finite numbers"),
    "scale with null": (_ms(datasets=[{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [None, 1]}]}]), "scale must be a list of finite numbers"),
    "translation not finite": (
        _ms(coordinateTransformations=[{"type": "translation", "translation": [1, float("nan")]}]),
        "multiscales\\[0\\] translation must be"),
    "transformations a dict": (_ms(datasets=[{"path": "0", "coordinateTransformations": {"type": "scale"}}]),
                               "'coordinateTransformations' must be a list"),
}


def _group(tmp_path, attrs):
    path = tmp_path / "img.ome.zarr"
    g = zarr.open_group(str(path), mode="w")
    g.create_array("0", shape=(8, 8), dtype="u1")
    g.attrs.update(attrs)
    return path


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_metadata_named(tmp_path, case):
    attrs, message = DAMAGED[case]
    path = _group(tmp_path, attrs)
    for read, arg in ((open_array, "source"), (lambda p: declared_scale(p, 2), "path"), (read_ngff_image, "path")):
        with pytest.raises(ValueError, match=message) as info:
            read(str(path))
        assert str(info.value).startswith(f"{arg}: ") and str(path) in str(info.value)


def test_missing_level_named(tmp_path):
    path = _group(tmp_path, _ms(datasets=[{"path": "s0"}]))
    with pytest.raises(FileNotFoundError, match="names 's0' as its full resolution level, which it lacks"):
        open_array(str(path))


def test_level_that_is_a_group(tmp_path):
    path = _group(tmp_path, _ms(datasets=[{"path": "sub"}]))
    zarr.open_group(str(path / "sub"), mode="w")
    with pytest.raises(ValueError, match="'sub' .* is a group, not an array"):
        open_array(str(path))


def test_good_metadata_still_read(tmp_path):
    path = _group(tmp_path, _ms())
    assert open_array(str(path)).shape == (8, 8)
    assert declared_scale(str(path), 2) == ((2.0, 2.0), "micrometer")
    image = read_ngff_image(str(path))
    assert image.scale == [2.0, 2.0] and image.units == ["micrometer", "micrometer"]
    assert first_multiscale({"labels": ["a"]}, "x") is None and first_multiscale(None, "x") is None
    # a string "ome" attribute is no NGFF metadata: the group is refused as having none
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").attrs.update({"ome": "x"})
    with pytest.raises(ValueError, match="without OME-Zarr multiscales metadata"):
        open_array(str(plain))
    assert np.asarray(open_array(str(path))[:]).sum() == 0
