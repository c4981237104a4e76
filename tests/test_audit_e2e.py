"""End-to-end output checks found by auditing real-data runs (synthetic or built-in data only):
the voxel size an OME-Zarr input declares reaches the centroids, the segmentation's OME-Zarr and
its metrics; an image unlike EM is flagged; the atlas records how its tables were read and
``identify`` leaves a provenance record; ``register --columns`` reads named coordinate columns."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from _cli_helpers import run

zarr = pytest.importorskip("zarr")

SPACING = (0.05, 0.004, 0.004)


def _ome_group(path, data, spacing, *, v04=False, unit="micrometer"):
    """An OME-Zarr image as another tool writes it (NGFF 0.5 on zarr v3, or 0.4 on zarr v2)."""
    axes = [{"name": a, "type": "space", "unit": unit} for a in "zyx"[-data.ndim:]]
    ms = {"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": [
        {"type": "scale", "scale": list(spacing)}]}]}
    g = zarr.open_group(str(path), mode="w", zarr_format=2 if v04 else 3)
    g.create_array("s0", data=data, chunks=data.shape)
    if v04:
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.mark.parametrize("v04", [False, True])
def test_ome_zarr_scale_read_and_plain_arrays_declare_none(tmp_path, v04):
    from xmodal.io._ome import ome_zarr_scale

    p = _ome_group(tmp_path / "img.zarr", np.zeros((2, 4, 4), np.uint8), SPACING, v04=v04)
    assert ome_zarr_scale(p, 3) == (SPACING, "micrometer")
    assert ome_zarr_scale(p, 2) == (None, None)  # another number of spatial axes
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(2, 4, 4), dtype="u1")
    assert ome_zarr_scale(tmp_path / "plain.zarr", 3) == (None, None)


def test_label_centroids_of_an_ome_zarr_are_in_its_physical_units(tmp_path):
    from xmodal.io import load_points

    lab = np.zeros((4, 20, 20), np.uint16)
    lab[1:3, 2:6, 2:6] = 7
    lab[2:4, 10:16, 12:18] = 9
    p = _ome_group(tmp_path / "labels.ome.zarr", lab, SPACING)
    ps = load_points(p)
    px = load_points(lab)
    assert ps.spacing == SPACING and px.spacing is None
    np.testing.assert_allclose(ps.points, px.points * np.array(SPACING))
    given = load_points(p, spacing=1.0)  # an explicit spacing wins
    np.testing.assert_allclose(given.points, px.points)


def _em_like(shape, seed=0):
    """Mid-grey cells with thin dark membranes (a Voronoi tessellation), as ssTEM looks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    seeds = rng.uniform(0, shape[-1], size=(40, 2))
    d = np.sort(np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1]), axis=-1)
    img = np.where(d[..., 1] - d[..., 0] < 2.0, 40.0, 150.0) + rng.normal(0, 12, size=shape[-2:])
    return np.clip(np.broadcast_to(img, shape), 0, 255).astype(np.uint8)


def _fluorescence_like(shape, seed=0):
    """Sparse bright nuclei on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(5, 2, size=shape)
    for cy, cx in rng.uniform(10, shape[0] - 10, size=(12, 2)):
        img += 200 * (np.hypot(yy - cy, xx - cx) < 6)
    return np.clip(img, 0, 255).astype(np.uint16)


def test_em_input_check_flags_fluorescence_not_em():
    from xmodal.datasets import isbi2012_slices
    from xmodal.pipelines._domain import check_em_input

    with pytest.warns(UserWarning, match="does not look like the electron microscopy"):
        prof = check_em_input(_fluorescence_like((128, 128)), "em")
    assert prof["looks_like_em"] is False and prof["skewness"] > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_em_input(isbi2012_slices()[0], "em")["looks_like_em"] is True  # real ssTEM
        assert check_em_input(_em_like((2, 96, 96)), "isbi2012")["looks_like_em"] is True
        assert check_em_input(_fluorescence_like((64, 64)), "my_model.pt") is None  # not a built-in EM model


def test_segment_carries_an_ome_zarr_voxel_size_to_outputs_and_metrics(tmp_path):
    pytest.importorskip("torch")
    from xmodal.pipelines import segment

    raw = _em_like((2, 96, 96))
    gt = np.stack([np.arange(96 * 96).reshape(96, 96) // 1500 + 1] * 2).astype(np.uint32)
    p = _ome_group(tmp_path / "raw.ome.zarr", raw, SPACING)
    res = segment(str(p), method="mws", out=tmp_path / "seg", ground_truth=gt)
    root = zarr.open_group(str(tmp_path / "seg" / "segmentation.ome.zarr"), mode="r")
    for node, lead in ((root, [1.0]), (root["labels/cells"], [])):
        ms = node.attrs["ome"]["multiscales"][0]
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == lead + list(SPACING)
        assert {a.get("unit") for a in ms["axes"] if a["type"] == "space"} == {"micrometer"}
    prov = json.loads((tmp_path / "seg" / "provenance.json").read_text())
    assert prov["parameters"]["spacing"] == list(SPACING)
    px = segment(raw, method="mws", ground_truth=gt)  # the same image in pixels
    np.testing.assert_array_equal(np.asarray(res.labels), np.asarray(px.labels))
    # Chamfer distances of a 2D model's stack are in the (y, x) units of the spacing
    assert res.metrics["mean"]["chamfer"] == pytest.approx(px.metrics["mean"]["chamfer"] * SPACING[1])


def test_set_ome_zarr_scale_keeps_channel_axis(tmp_path):
    from xmodal.io import create_ome_zarr_image
    from xmodal.io._ome import ome_zarr_scale, set_ome_zarr_scale

    create_ome_zarr_image(tmp_path / "pred.ome.zarr", (3, 2, 8, 8), np.float32, axes=("c", "z", "y", "x"))
    assert set_ome_zarr_scale(tmp_path / "pred.ome.zarr", SPACING, "micrometer")
    ms = zarr.open_group(str(tmp_path / "pred.ome.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, *SPACING]
    assert ome_zarr_scale(tmp_path / "pred.ome.zarr", 3) == (SPACING, "micrometer")
    assert not set_ome_zarr_scale(tmp_path / "pred.ome.zarr", SPACING[1:])  # 2 values for 3 spatial axes


def _table(path, pts, names, columns=("z", "y", "x"), extra=True):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell", *columns] + (["size", "note"] if extra else []))
        for n, p in zip(names, pts):
            w.writerow([n, *[f"{v:.5f}" for v in p]] + ([7, "x"] if extra else []))
    return path


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    rng = np.random.default_rng(3)
    d = tmp_path_factory.mktemp("audit_atlas")
    base = rng.normal(size=(30, 3)) * [4.0, 40.0, 25.0]  # z in planes (anisotropic), y and x in px
    names = [f"c{i:02d}" for i in range(30)]
    paths = []
    for s in range(4):
        pts = base + rng.normal(scale=0.3, size=base.shape) * [0.1, 1, 1]
        paths.append(_table(d / f"s{s}.csv", pts, names))
    return d, paths


def test_atlas_records_its_tables_and_identify_writes_provenance(samples, capsys):
    d, paths = samples
    atlas = d / "atlas.json"
    code, _, err = run(capsys, "atlas", "build", *paths[:3], "--names-column", "cell", "--spacing", "5,1,1",
                       "--no-calibration", "--out", atlas, "-q")
    assert code == 0, err
    tables = json.loads(atlas.read_text())["parameters"]["tables"]
    assert tables["spacing"] == [5.0, 1.0, 1.0] and tables["names_column"] == "cell"
    out = d / "names.csv"
    code, _, err = run(capsys, "identify", paths[3], "--atlas", atlas, "--id-column", "cell", "--out", out, "-q")
    assert code == 0 and "built with --spacing 5,1,1" in err and "(none)" in err, err
    prov = json.loads(out.with_suffix(".provenance.json").read_text())
    assert prov["step"] == "identify" and prov["inputs"]["atlas"]["path"] == str(atlas)
    assert prov["result"]["n_cells"] == 30 and 0 <= prov["result"]["mean_confidence"] <= 1
    code, _, err = run(capsys, "identify", paths[3], "--atlas", atlas, "--spacing", "5,1,1", "--out", out, "-q")
    assert code == 0 and "warning" not in err, err


def test_register_reads_named_coordinate_columns(samples, capsys, tmp_path):
    d, _ = samples
    rng = np.random.default_rng(8)
    pts = rng.normal(size=(25, 3)) * 10
    names = [f"n{i}" for i in range(25)]
    cols = ("anchor_z", "anchor_y", "anchor_x")
    a = _table(tmp_path / "a.csv", pts, names, cols)
    b = _table(tmp_path / "b.csv", pts[::-1] + 0.01, names[::-1], cols)
    code, _, err = run(capsys, "register", a, b, "--columns", ",".join(cols), "--id-column", "cell",
                       "--spacing", "2,1,1", "--transform", "rigid", "--no-prealign", "--out", tmp_path / "reg", "-q")
    assert code == 0, err
    with open(tmp_path / "reg" / "matches.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 25 and all(r["fixed_id"] == r["moving_id"] for r in rows)
    with open(tmp_path / "reg" / "cells.csv") as fh:
        first = next(csv.DictReader(fh))
    assert float(first["fixed_z"]) == pytest.approx(2 * pts[0, 0], abs=1e-4)  # spacing applied once
    prov = json.loads((tmp_path / "reg" / "provenance.json").read_text())
    assert prov["parameters"]["fixed_spacing"] == [2.0, 1.0, 1.0]
