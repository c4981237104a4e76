"""The command line's one clear-error path: one line naming the file (and column), exit status 2.

Every case of issue 10 item 7 is here: ``--out`` of the wrong kind, ``--offsets`` naming a folder,
non-numeric CSV columns, pickled .npy files, a CSV given as an image, a bad TOML file,
``--block-shape 0,0`` (nothing created), NaN affinities. Real bugs keep their traceback.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xmodal import cli

from _cli_helpers import assert_user_error, run

OFFSETS = [[-1, 0], [0, -1], [-3, 0], [0, -3]]






@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savetxt("a.csv", rng.random((15, 3)) * 10, delimiter=",", header="z,y,x", comments="")
    np.savetxt("b.csv", rng.random((15, 3)) * 10, delimiter=",", header="z,y,x", comments="")
    (tmp_path / "bad.csv").write_text("z,y,x\n1,2,3\n4,abc,6\n")
    np.save("pickled.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    aff = rng.random((4, 16, 16)).astype(np.float32)
    np.save("aff.npy", aff)
    nan = aff.copy()
    nan[2, 12, 13] = np.nan
    np.save("nan.npy", nan)
    (tmp_path / "bad.toml").write_text("k = = 3\n")
    (tmp_path / "offs.json").write_text(json.dumps(OFFSETS))
    np.save("labels.npy", rng.integers(1, 5, (16, 16)))
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    return tmp_path


def test_out_of_the_wrong_kind(files, capsys):
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--out", "folder")[::2], "--out", "folder", "is a folder")
    assert_user_error(*run(capsys, "evaluate", "labels.npy", "labels.npy", "--out", "folder")[::2], "folder")
    assert_user_error(*run(capsys, "cpd", "a.csv", "b.csv", "--out", "file")[::2], "file", "--overwrite")
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--out", "file")[::2], "file")
    assert (files / "file").read_text() == "x"  # untouched
    # an output that names an input is refused before anything is written
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--out", "aff.npy")[::2],
                      "aff.npy", "also an input")
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--out", "b.csv")[::2], "b.csv")
    assert np.load("aff.npy").shape == (4, 16, 16)


def test_out_overwrite_semantics(files, capsys):
    import zarr

    # outputs of the same command are replaced on a rerun (file outputs always)
    for _ in range(2):
        assert run(capsys, "match", "a.csv", "b.csv", "--out", "m.csv", "-q")[0] == 0
        assert run(capsys, "cpd", "a.csv", "b.csv", "--out", "cpd-out", "-q")[0] == 0
        assert run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--out", "l.zarr", "-q")[0] == 0
    # a zarr array that xmodal mws did not write is not replaced without --overwrite
    zarr.create_array(store=str(files / "other.zarr"), shape=(3,), dtype="i4")
    code, _, err = run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--out", "other.zarr")
    assert_user_error(code, err, "other.zarr", "did not write", "--overwrite")
    assert zarr.open_array(str(files / "other.zarr"), mode="r").shape == (3,)
    assert run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--out", "other.zarr", "--overwrite", "-q")[0] == 0
    assert zarr.open_array(str(files / "other.zarr"), mode="r").shape == (16, 16)
    # --overwrite replaces a file by the output folder
    assert run(capsys, "cpd", "a.csv", "b.csv", "--out", "file", "--overwrite", "-q")[0] == 0
    assert (files / "file" / "transform.json").is_file()
    # a non-empty folder of something else
    (files / "notes").mkdir()
    (files / "notes" / "keep.txt").write_text("mine")
    assert_user_error(*run(capsys, "cpd", "a.csv", "b.csv", "--out", "notes")[::2], "notes")
    assert (files / "notes" / "keep.txt").read_text() == "mine"


def test_offsets_option(files, capsys):
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "folder", "--out", "l.zarr")[::2],
                      "--offsets", "folder", "is a folder")
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "[[1, 2", "--out", "l.zarr")[::2], "--offsets")
    (files / "offs-bad.json").write_text("{not json")
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "offs-bad.json", "--out", "l.zarr")[::2],
                      "offs-bad.json")
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "[[1,2],[3,4],[5,6]]", "--out", "l.zarr")[::2],
                      "offsets", "aff.npy")
    assert not (files / "l.zarr").exists()


def test_counts_are_checked_by_the_parser(files, capsys):
    for argv, needle in ((("mws", "aff.npy", "--offsets", "offs.json", "--min-size", "-4", "--out", "l.zarr"),
                          "--min-size: expected an integer >= 0, got -4"),
                         (("match", "a.csv", "b.csv", "--k", "0", "--out", "m.csv"), "--k: expected an integer >= 1"),
                         (("match", "a.csv", "b.csv", "--k", "x", "--out", "m.csv"), "--k: expected an integer >= 1, got 'x'")):
        assert_user_error(*run(capsys, *argv)[::2], needle)
    assert not (files / "l.zarr").exists() and not (files / "m.csv").exists()


def test_bad_input_files_are_named(files, capsys):
    assert_user_error(*run(capsys, "match", "bad.csv", "b.csv", "--out", "m.csv")[::2],
                      "bad.csv", "'y'", "line 3", "'abc'")
    assert_user_error(*run(capsys, "mws", "pickled.npy", "--offsets", "offs.json", "--out", "l.zarr")[::2],
                      "pickled.npy", "Python objects")
    assert_user_error(*run(capsys, "mws", "a.csv", "--offsets", "offs.json", "--out", "l.zarr")[::2],
                      "a.csv", "a table")
    assert_user_error(*run(capsys, "evaluate", "folder", "labels.npy")[::2], "folder", "not a zarr array")
    assert_user_error(*run(capsys, "evaluate", "missing.npy", "labels.npy")[::2], "missing.npy", "not found")
    (files / "text.npy").write_text("not numpy")
    assert_user_error(*run(capsys, "evaluate", "text.npy", "labels.npy")[::2], "text.npy", "not a .npy file")
    assert not (files / "l.zarr").exists() and not (files / "m.csv").exists()


def test_bad_config(files, capsys):
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--config", "bad.toml")[::2],
                      "--config bad.toml", "not valid TOML", "line 1")
    (files / "unknown.toml").write_text("frobnicate = 3\n")
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--config", "unknown.toml")[::2],
                      "unknown.toml", "frobnicate")
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--config", "nope.toml")[::2], "nope.toml")


def test_block_shape_checked_before_anything_is_created(files, capsys):
    for bad in ("0,0", "8", "8,x", "-1,8"):
        code, _, err = run(capsys, "mws", "aff.npy", "--offsets", "offs.json", f"--block-shape={bad}", "--out", "l.zarr")
        assert_user_error(code, err, "--block-shape")
        assert not (files / "l.zarr").exists() and not (files / "l.zarr.xmodal-work").exists()
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--threads", "0", "--out", "m.csv")[::2], "--threads")


def test_out_that_cannot_be_created_is_refused_before_any_work(files, capsys):
    """A file in the way of --out's parent folder, or a place where no folder can be made, is one
    usage error before the work (it was an OSError after the registration had run); a run refused
    for its arguments leaves no staging folder behind."""
    assert_user_error(*run(capsys, "match", "a.csv", "b.csv", "--out", "file/m.csv")[::2],
                      "--out", "file is a file, not a folder")
    assert_user_error(*run(capsys, "register", "a.csv", "b.csv", "--out", "file/sub/out")[::2], "--out", "file")
    import os

    if os.path.isdir("/proc/self"):  # Linux: nothing can be created in /proc, even by root
        code, out, err = run(capsys, "register", "a.csv", "b.csv", "--out", "/proc/xmodal-out")
        assert_user_error(code, err, "--out", "no folder can be made in /proc")
        assert "matched" not in out + err  # refused before the registration
    assert_user_error(*run(capsys, "cpd", "a.csv", "labels.npy", "--out", "c")[::2], "dimension")
    np.save("raw.npy", np.zeros((16, 16), np.uint8))
    assert_user_error(*run(capsys, "segment", "raw.npy", "--tile-shape", "0,0", "--out", "s")[::2], "--tile-shape")
    assert sorted(p.name for p in files.iterdir() if "xmodal" in p.name or p.name in ("c", "s")) == []


def test_nan_affinities_are_an_error(files, capsys):
    code, _, err = run(capsys, "mws", "nan.npy", "--offsets", "offs.json", "--out", "l.zarr")
    assert_user_error(code, err, "nan.npy", "finite", "channel 2 at (12, 13)")
    # blockwise: the voxel is reported in volume coordinates, not block coordinates
    code, _, err = run(capsys, "mws", "nan.npy", "--offsets", "offs.json", "--block-shape", "8,8", "--out", "lb.zarr",
                       "-q")
    assert_user_error(code, err, "nan.npy", "finite", "channel 2 at (12, 13)")
    # bad input fails the same way on every rerun: no staging or work folder is left behind
    assert sorted(p.name for p in files.iterdir() if "zarr" in p.name) == []


def test_bugs_keep_their_traceback(files, capsys, monkeypatch):
    def broken(args):
        return {}["missing"]  # a bug, not a user error

    monkeypatch.setattr(cli.commands, "cmd_info", broken)
    with pytest.raises(KeyError):
        cli.main(["info"])

    def third_party_value_error(args):
        import numpy as np

        np.linspace(0, 1, -5)  # ValueError raised inside numpy: may be a bug, so not hidden

    monkeypatch.setattr(cli.commands, "cmd_info", third_party_value_error)
    with pytest.raises(ValueError):
        cli.main(["info"])
    # XMODAL_TRACEBACK=1 shows user errors with their traceback too
    monkeypatch.setenv("XMODAL_TRACEBACK", "1")
    with pytest.raises(cli.UsageError):
        cli.main(["match", "a.csv", "b.csv", "--out", "folder"])


def test_subprocess_one_line_and_status_2(files):
    import os

    import xmodal

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(xmodal.__file__)),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "xmodal", "mws", "pickled.npy", "--offsets", "offs.json"],
                       capture_output=True, text=True, cwd=files, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr and "pickled.npy" in r.stderr
    assert pickle  # the pickled file above was never unpickled by xmodal (allow_pickle=False)


def test_mws_bias_option(files, capsys):
    import zarr

    from xmodal.segmentation import mutex_watershed

    aff = np.load("aff.npy")
    assert run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--bias=-0.5,-0.5,-0.7,-0.7", "--out", "b.zarr",
               "-q")[0] == 0
    got = np.asarray(zarr.open_array(str(files / "b.zarr"), mode="r")[...])
    np.testing.assert_array_equal(got, mutex_watershed(aff, OFFSETS, bias=[-0.5, -0.5, -0.7, -0.7]))
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--bias", "-0.5", "--n-attractive", "2",
                           "--out", "c.zarr")[::2], "--bias")
    assert_user_error(*run(capsys, "mws", "aff.npy", "--offsets", "offs.json", "--bias=-0.5,x", "--out", "c.zarr")[::2],
                      "--bias")
    assert not (files / "c.zarr").exists()


def test_mws_blockwise_stack_of_2d_affinities(files, capsys):
    """2D offsets on a stack split along z: no offset crosses z, the halo there is still one section
    (the library needs one to stitch on) and each section is segmented as single-shot does."""
    import zarr

    from xmodal.segmentation import mutex_watershed

    rng = np.random.default_rng(3)
    aff = rng.random((3, 4, 24, 24)).astype(np.float32)
    np.save("stack.npy", aff)
    offs = [[0, -1, 0], [0, 0, -1], [0, -3, 0]]
    assert run(capsys, "mws", "stack.npy", "--offsets", json.dumps(offs), "--n-attractive", "2",
               "--block-shape", "2,24,24", "--out", "z.zarr", "-q")[0] == 0
    got = np.asarray(zarr.open_array(str(files / "z.zarr"), mode="r")[...])
    want = mutex_watershed(aff, offs, n_attractive=2)
    for z in range(4):  # the same partition of every section
        pairs = np.unique(np.stack([got[z].ravel(), want[z].ravel()]), axis=1)
        assert pairs.shape[1] == len(np.unique(got[z])) == len(np.unique(want[z]))


def test_ctrl_c_stops_with_status_130_and_one_line(files, capsys, monkeypatch):
    from xmodal import _cli_commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_commands, "cmd_match", interrupted, raising=False)
    parser, subs = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: (parser, subs))
    subs["match"].set_defaults(func=interrupted)
    code, out, err = run(capsys, "match", "a.csv", "b.csv", "--out", "m.csv")
    assert code == 130 and err.strip() == "xmodal match: interrupted" and "Traceback" not in err
    monkeypatch.setenv("XMODAL_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["match", "a.csv", "b.csv", "--out", "m.csv"])


@pytest.mark.parametrize("argv", [
    ["mws", "aff.npy", "--offsets", "[[-1, 0], [0, -1]]", "--out", "labels.npy"],
    ["cpd", "a.csv", "b.csv", "--out", "result.json"],
    ["segment", "raw.npy", "--out", "seg.tif"],
    ["register", "a.csv", "b.csv", "--out", "cells.csv"],
])
def test_folder_outputs_named_like_files_are_refused(argv, tmp_path, capsys, monkeypatch):
    """These commands write a folder (or a zarr array); '--out labels.npy' made a folder of that name."""
    monkeypatch.chdir(tmp_path)
    np.save("aff.npy", np.random.default_rng(0).random((2, 8, 8)).astype(np.float32))
    np.save("raw.npy", np.random.default_rng(0).random((32, 32)).astype(np.float32))
    for name in ("a.csv", "b.csv"):
        Path(name).write_text("z,y,x\n" + "\n".join(f"{i},{i % 3},{i % 5}" for i in range(8)) + "\n")
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, "--out", "(a folder)", "named like a")
    assert not Path(argv[-1]).exists()
