"""Cross-modal cell registration pipeline, bead registration, inputs and the CLI on small data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from xmodal.datasets import celegans_embryos
from xmodal.pipelines import (
    CompositeTransform,
    label_centroids,
    load_points,
    load_transform,
    prealign,
    proper_signed_permutations,
    register_beads,
    register_cells,
)


def _rotation(axis, deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


@pytest.fixture(scope="module")
def embryo_points():
    e = celegans_embryos()["20241009_JIM767_25_L1"]
    return e.points


def test_proper_signed_permutations():
    for d, n in ((3, 24), (2, 4)):
        mats = proper_signed_permutations(d)
        assert len(mats) == n
        for m in mats:
            assert np.allclose(m @ m.T, np.eye(d)) and np.isclose(np.linalg.det(m), 1)
        assert len({m.tobytes() for m in mats}) == n
    assert len(proper_signed_permutations(3, permute=False)) == 4


def test_prealign_recovers_a_large_rotation(embryo_points):
    fixed = embryo_points
    rot = _rotation(2, 170) @ _rotation(0, 100)
    rng = np.random.default_rng(1)
    moving = (fixed - fixed.mean(0)) @ rot.T + [50, -20, 30] + rng.normal(0, 0.5, fixed.shape)
    res = prealign(moving, fixed)
    assert len(res.scores) == 24
    err = np.linalg.norm(res.apply(moving) - fixed, axis=1)
    # Rigid refinement of the best candidate must bring nearly all points onto their partners.
    assert np.median(err) < 2.0, np.median(err)


def test_prealign_trial_fits_are_quiet(embryo_points, caplog):
    """The trial fits stop at refine_iter on purpose: no "without convergence" note per candidate."""
    import logging

    import xmodal

    fixed = embryo_points
    moving = fixed[::-1] @ _rotation(2, 90).T
    with caplog.at_level(logging.INFO, logger="xmodal"):
        res = prealign(moving, fixed, rotations="flips", refine_iter=3)
    assert len(res.scores) == 4
    assert not [r for r in caplog.records if "without convergence" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xmodal"):  # the filter is gone after the search
        xmodal.cpd(moving, fixed, max_iter=3, tol=0.0)
    assert [r for r in caplog.records if "without convergence" in r.getMessage()]


def test_register_cells_on_a_rotated_and_deformed_copy(embryo_points, tmp_path):
    fixed = embryo_points
    rng = np.random.default_rng(2)
    keep = np.sort(rng.choice(len(fixed), int(0.92 * len(fixed)), replace=False))
    centred = fixed - fixed.mean(0)
    bend = 3.0 * np.sin(centred[:, [2]] / 80.0)  # smooth displacement, ~3 px
    moving_all = (centred + bend) @ _rotation(1, 135).T + [10, 5, -7] + rng.normal(0, 0.3, fixed.shape)
    moving = moving_all[keep]
    res = register_cells(fixed, moving, transform="deformable", out=tmp_path / "reg")
    truth = dict(zip(range(len(keep)), keep))
    correct = np.mean([truth[m] == f for m, f in zip(res.moving_index, res.fixed_index)])
    assert res.n_matched >= 0.9 * len(moving)
    assert correct > 0.95, correct
    # The transform maps the moving points where the result says, and survives JSON.
    assert np.allclose(res.transform.apply(moving), res.moved, atol=1e-8)
    d = json.loads((tmp_path / "reg" / "transform.json").read_text())
    again = load_transform(d)
    assert isinstance(again, CompositeTransform)
    assert np.allclose(again.apply(moving), res.moved, atol=1e-8)
    for name in ("matches.csv", "cells.csv", "report.html", "provenance.json", "errors.json"):
        assert (tmp_path / "reg" / name).exists(), name
    assert not list((tmp_path / "reg").glob(".*.tmp"))
    prov = json.loads((tmp_path / "reg" / "provenance.json").read_text())
    assert prov["parameters"]["transform"] == "deformable" and prov["xmodal"]
    # the report shows the run's time and its steps (the "time" cell is never empty)
    import re

    report = (tmp_path / "reg" / "report.html").read_text()
    total = float(re.search(r"<th>time \(s\)</th><td>([^<]*)</td>", report).group(1))
    steps = re.search(r"<th>time per step \(s\)</th><td>([^<]*)</td>", report).group(1)
    assert 0 < total <= res.timings["total"] and "prealign" in steps and "cpd" in steps


def test_register_cells_cover_mode_matches_every_point_of_the_larger_set(embryo_points):
    fixed = embryo_points
    moving = fixed[:300] + np.random.default_rng(3).normal(0, 0.3, (300, 3))
    res = register_cells(fixed, moving, transform="rigid", matching="cover", prealign=False, errors=False)
    # Cover: every fixed point (the larger set) matched exactly once, every moving at least once.
    assert sorted(res.fixed_index.tolist()) == list(range(len(fixed)))
    assert set(res.moving_index.tolist()) == set(range(len(moving)))


def test_spot_counts_per_matched_cell(embryo_points):
    fixed = embryo_points[:120]
    moving = fixed.copy()
    rng = np.random.default_rng(4)
    per_cell = rng.integers(0, 5, len(fixed))
    spots = np.repeat(moving, per_cell, axis=0) + rng.normal(0, 0.2, (per_cell.sum(), 3))
    res = register_cells(fixed, moving, transform="rigid", prealign=False,
                         spots={"rep1": spots, "rep2": spots[: len(spots) // 2]})
    assert np.array_equal(res.spot_counts["rep1"], per_cell)
    assert res.spot_counts["mean"].sum() == pytest.approx((per_cell.sum() + len(spots) // 2) / 2)


def test_inputs_tables_and_label_images(tmp_path):
    lab = np.zeros((6, 20, 20), np.uint16)
    lab[1:3, 2:6, 2:6] = 7
    lab[4, 10:12, 14:18] = 9
    ps = label_centroids(lab, spacing=[2.0, 0.5, 0.5])
    assert ps.ids.tolist() == [7, 9]
    assert np.allclose(ps.points[0], [2 * 1.5, 0.5 * 3.5, 0.5 * 3.5])
    assert ps.sizes.tolist() == [32, 8]
    np.save(tmp_path / "lab.npy", lab)
    assert np.allclose(load_points(tmp_path / "lab.npy", spacing=[2.0, 0.5, 0.5]).points, ps.points)
    (tmp_path / "t.csv").write_text("cell,x,y,z\na,1,2,3\nb,4,5,6\nc,7,8,10\nd,0,0,1\n")
    t = load_points(tmp_path / "t.csv", id_column="cell")
    assert t.ids.tolist() == ["a", "b", "c", "d"] and t.points[0].tolist() == [3, 2, 1]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(fixed=np.zeros((10, 3)), moving=np.zeros((10, 2))), ValueError, "same dimension"),
        (dict(fixed=np.ones((2, 3)), moving=np.ones((10, 3))), ValueError, "fixed: expected at least 4 cells"),
        (dict(fixed="missing.csv", moving=np.zeros((10, 3))), FileNotFoundError, "missing.csv"),
        (dict(fixed=np.zeros((10, 3)), moving=np.zeros((10, 3)), transform="bspline"), ValueError, "transform"),
        # all cells at one point: named, not the unmatched cost derived from them (the message before)
        (dict(fixed=np.zeros((10, 3)), moving=np.arange(30.0).reshape(10, 3) ** 1.5), ValueError,
         r"fixed: expected spread-out cells, got 10 of which most share their position"),
        (dict(fixed=np.arange(30.0).reshape(10, 3) ** 1.5, moving=np.repeat(np.eye(3), 4, axis=0)), ValueError,
         r"moving: expected spread-out cells"),
        (dict(fixed=np.arange(30.0).reshape(10, 3) ** 1.5, moving=np.arange(30.0).reshape(10, 3), seed=-1),
         ValueError, r"seed: expected an integer >= 0, got -1"),
        (dict(fixed=np.arange(30.0).reshape(10, 3) ** 1.5, moving=np.arange(30.0).reshape(10, 3),
              spot_max_distance=-1.0), ValueError, r"spot_max_distance: expected a positive finite number, got -1.0"),
    ],
)
def test_register_cells_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        register_cells(**kwargs)


def test_empty_table_is_a_clear_error(tmp_path):
    (tmp_path / "e.csv").write_text("z,y,x\n")
    with pytest.raises(ValueError, match="no rows"):
        register_cells(tmp_path / "e.csv", np.zeros((10, 3)))


def test_register_beads_with_flip():
    rng = np.random.default_rng(0)
    fixed = rng.uniform(0, 100, (40, 3))
    a = _rotation(2, 8) @ np.diag([1.05, 1.0, -0.97])
    moving = (fixed - 5) @ np.linalg.inv(a).T + rng.normal(0, 0.1, fixed.shape)
    moving = np.vstack([moving, rng.uniform(0, 100, (10, 3))])  # beads seen in one modality only
    res = register_beads(fixed, moving, radius=2.0)
    assert res.n_matched == 40 and res.reflection
    assert np.allclose(res.matrix, a, atol=0.01)
    assert np.array_equal(res.moving_index, res.fixed_index)
    with pytest.raises(ValueError, match="radius"):
        register_beads(fixed, moving + 1000, radius=0.01)


def test_cli_register_with_config(tmp_path, embryo_points):
    fixed = embryo_points[:150]
    moving = fixed @ _rotation(0, 20).T
    np.savetxt(tmp_path / "f.csv", fixed, delimiter=",", header="z,y,x", comments="")
    np.savetxt(tmp_path / "m.csv", moving, delimiter=",", header="z,y,x", comments="")
    (tmp_path / "run.toml").write_text(
        f'[register]\nfixed = "{tmp_path / "f.csv"}"\nmoving = "{tmp_path / "m.csv"}"\n'
        f'transform = "rigid"\nout = "{tmp_path / "out"}"\n')
    r = subprocess.run([sys.executable, "-m", "xmodal", "register", "--config", str(tmp_path / "run.toml"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "matched 150" in r.stdout
    matches = np.loadtxt(tmp_path / "out" / "matches.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    assert np.array_equal(matches[:, 0], matches[:, 1])
    bad = subprocess.run([sys.executable, "-m", "xmodal", "register", str(tmp_path / "nope.csv"),
                          str(tmp_path / "m.csv")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr  # user error: one line, exit status 2


def test_register_cells_warps_label_images_with_matched_cells(tmp_path):
    import zarr

    # Label images of 'cells' on a grid; the moving modality sees the same cells shifted.
    rng = np.random.default_rng(5)
    shape = (24, 64, 64)
    centres = np.stack([rng.uniform(4, 20, 40), rng.uniform(6, 58, 40), rng.uniform(6, 58, 40)], axis=1)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]

    def paint(cs):
        lab = np.zeros(shape, np.uint16)
        for i, c in enumerate(cs, start=1):
            lab[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 4] = i
        return lab

    fixed_lab = paint(centres)
    moving_lab = paint(centres + [1, 2, -2])
    res = register_cells(fixed_lab, moving_lab, transform="rigid", prealign=False, errors=False,
                         fixed_image=fixed_lab > 0, moving_image=moving_lab > 0,
                         warp_images={"labels": moving_lab},
                         elastix_parameters={"MaximumNumberOfIterations": 100, "FinalGridSpacingInVoxels": (16, 16, 16)},
                         out=tmp_path / "reg")
    warped = res.warped["labels"]
    assert warped.shape == shape and warped.dtype == np.uint16
    fg = fixed_lab > 0
    before = np.mean((moving_lab > 0)[fg])
    after = np.mean((warped > 0)[fg])
    assert after > 0.8 and after > before + 0.2, (before, after)
    stored = zarr.open_array(str(tmp_path / "reg" / "warped" / "labels.ome.zarr" / "0"), mode="r")
    assert np.array_equal(np.asarray(stored[...]), warped)
    assert (tmp_path / "reg" / "elastix" / "TransformParameters.0.txt").exists()


def test_failed_run_writes_nothing(embryo_points, tmp_path):
    fixed = embryo_points[:100]
    with pytest.raises(ValueError, match=r"spots\['bad'\]: expected 3D points"):
        register_cells(fixed, fixed, transform="rigid", prealign=False, spots={"bad": np.zeros((5, 2))},
                       out=tmp_path / "reg")
    assert not (tmp_path / "reg").exists()
    # a missing spot table fails before the registration runs (it used to fail after it)
    import xmodal.pipelines.register as reg

    def no_prealign(*a, **k):
        raise AssertionError("the registration ran before the spot tables were read")

    mp = pytest.MonkeyPatch()
    mp.setattr(reg, "prealign_step", no_prealign)
    try:
        with pytest.raises((FileNotFoundError, ValueError), match="missing-spots.csv"):
            register_cells(fixed, fixed, spots={"a": tmp_path / "missing-spots.csv"}, out=tmp_path / "reg")
    finally:
        mp.undo()
    assert not (tmp_path / "reg").exists()
    with pytest.raises(ValueError, match="spacing"):
        register_cells(fixed, fixed, spacing=[1.0, -1.0, 1.0], out=tmp_path / "reg2")
    assert not (tmp_path / "reg2").exists()


def test_output_folder_is_staged_beside_out_not_in_the_working_directory(embryo_points, tmp_path, monkeypatch):
    # A folder in the working directory named like a CPD stage is not the run's staging folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "affine").mkdir()
    (tmp_path / "affine" / "mine.txt").write_text("user data")
    fixed = embryo_points[:150]
    res = register_cells(fixed, fixed + 0.5, transform="affine", prealign=False, errors=False, out=tmp_path / "reg")
    assert (tmp_path / "affine" / "mine.txt").read_text() == "user data"
    assert not (tmp_path / "reg" / "mine.txt").exists()
    assert set(res.outputs) >= {"transform", "matches", "report"}
    assert all(str(tmp_path / "reg") in p for p in res.outputs.values())
    # The report shows the run's time.
    report = (tmp_path / "reg" / "report.html").read_text()
    cell = report.split("<th>time (s)</th><td>")[1].split("</td>")[0]
    assert float(cell) > 0


def test_register_cells_steps_in_order():
    from xmodal.pipelines._register_steps import cpd_stages

    assert cpd_stages("rigid", False) == ["rigid"]
    assert cpd_stages("similarity", False) == ["rigid", "similarity"]
    assert cpd_stages("similarity", True) == ["similarity"]
    # affine and deformable fits start with the affine stage (no rigid stage after the pre-alignment)
    assert cpd_stages("affine", True) == ["affine"]
    assert cpd_stages("affine", False) == ["affine"]
    assert cpd_stages("deformable", False) == ["affine", "deformable"]


def test_register_cells_deformable_chain_starts_affine():
    # After the pre-alignment an affine or deformable fit runs no rigid stage of its own; the
    # result still recovers a sheared and rotated copy.
    rng = np.random.default_rng(11)
    fixed = rng.uniform(0, 100, (150, 3))
    a = np.array([[0.9, 0.1, 0.0], [-0.1, 1.1, 0.05], [0.0, 0.0, 1.0]])
    moving = (fixed - 50) @ a.T + 50 + rng.normal(0, 0.3, fixed.shape)
    for transform, stages in (("affine", {"affine"}), ("deformable", {"affine", "deformable"})):
        res = register_cells(fixed, moving, transform=transform, prealign=False, errors=False)
        assert set(res.cpd_iterations) == stages
        right = np.mean(res.fixed_index == res.moving_index)
        assert res.n_matched >= 140 and right > 0.95
    res = register_cells(fixed, moving, transform="rigid", prealign=False, errors=False)
    assert set(res.cpd_iterations) == {"rigid"}


def test_register_cells_options_are_checked_before_the_inputs_are_read(tmp_path):
    # Options that need no data fail first, even when an input does not exist.
    with pytest.raises(ValueError, match="fixed_image, moving_image: warp_images"):
        register_cells(tmp_path / "missing.csv", tmp_path / "missing.csv", warp_images={"a": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="intensity_preset"):
        register_cells(tmp_path / "missing.csv", tmp_path / "missing.csv", intensity_preset="bspline")
    with pytest.raises(ValueError, match="unmatched_cost"):
        register_cells(tmp_path / "missing.csv", tmp_path / "missing.csv", unmatched_cost="never")


def test_register_cells_prealigned_by_intensity_registration():
    rng = np.random.default_rng(6)
    shape = (32, 64, 64)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centres = np.stack([rng.uniform(5, 27, 30), rng.uniform(6, 58, 30), rng.uniform(6, 58, 30)], axis=1)
    image = np.zeros(shape, np.float32)
    for c in centres:
        image += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 4.0)
    shift = np.array([3, -5, 4])  # far beyond the spacing of the cells: CPD alone would have to guess
    moving_image = np.roll(image, tuple(shift), axis=(0, 1, 2))
    res = register_cells(centres, centres + shift, transform="rigid", prealign=False, errors=False,
                         fixed_image=image, moving_image=moving_image, intensity_preset="rigid",
                         elastix_parameters={"MaximumNumberOfIterations": 200})
    first = res.transform.transforms[0].apply(centres + shift)
    assert np.abs(first - centres).max() < 0.5  # the intensity registration alone
    assert np.array_equal(res.moving_index, res.fixed_index)
    assert res.prealign is None


def test_cell_tables_carry_every_cells_id(tmp_path):
    """cells.csv / moving.csv name every cell by its id (matched or not), so they join back to the input."""
    from xmodal.io import PointSet, read_table

    rng = np.random.default_rng(4)
    fixed = rng.random((40, 3)) * 50
    moving = fixed[5:] + 0.2  # 5 fixed cells have no partner
    res = register_cells(PointSet(fixed, np.arange(1000, 1040), "fixed"), PointSet(moving, np.arange(35) * 3 + 7, "moving"),
                         transform="rigid", out=tmp_path / "r")
    assert res.fixed_cell_ids.tolist() == list(range(1000, 1040))
    np.testing.assert_array_equal(res.fixed_ids, res.fixed_cell_ids[res.fixed_index])
    cells, mov = read_table(tmp_path / "r" / "cells.csv"), read_table(tmp_path / "r" / "moving.csv")
    assert cells["fixed_id"].tolist() == list(range(1000, 1040))
    assert mov["moving_id"].tolist() == [i * 3 + 7 for i in range(35)]
    unmatched = cells["moving_index"] < 0
    assert unmatched.sum() >= 5 and set(cells["fixed_id"][unmatched].astype(int)) >= set(range(1000, 1005))
