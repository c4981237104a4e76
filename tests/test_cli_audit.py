"""Command-line audit: TOML config values checked like command-line values, errors naming the
command-line option (not the Python argument), a prediction that carries its offsets to ``mws``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli_helpers import assert_user_error, run


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("a.csv", "b.csv"):
        pts = rng.random((15, 3)) * 10
        vol = rng.random(15) * 5 + 1
        np.savetxt(name, np.column_stack([pts, vol]), delimiter=",", header="z,y,x,volume", comments="")
    return tmp_path


def _toml(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, needles", [
    ('k = 0\n', ["k", "expected an integer >= 1, got 0"]),
    ('k = 5.5\n', ["k", "5.5"]),
    ('k = true\n', ["k", "true"]),
    ('quiet = "false"\n', ["quiet", "expected true or false"]),
    ('mode = "nope"\n', ["mode", "'nope'", "one-to-one"]),
    ('radius = "x"\n', ["radius", "'x'"]),
    ('[match]\nk = [1, 2]\n', ["k", "[1, 2]"]),
    ('[mtach]\nk = 3\n', ["mtach", "not a command"]),
    ('[match.extra]\nk = 3\n', ["extra"]),
])
def test_config_values_are_checked_like_the_command_line(files, capsys, text, needles):
    cfg = _toml(files / "c.toml", text)
    code, _, err = run(capsys, "match", "a.csv", "b.csv", "--config", cfg, "--out", "m.csv")
    assert_user_error(code, err, "--config", "c.toml", *needles)
    assert not (files / "m.csv").exists()


def test_config_lists_and_strings_and_flag_names(files, capsys):
    # a list for a comma-separated option, a string for an option taking several values, the flag
    # --no-feature-cpd by its option name: all as on the command line
    cfg = _toml(files / "r.toml", 'columns = ["z", "y", "x"]\nfeatures_columns = "volume"\nno-feature-cpd = true\n'
                                  'transform = "rigid"\nno_prealign = true\nquiet = true\n')
    code, _, err = run(capsys, "register", "a.csv", "b.csv", "--config", cfg, "--out", "reg")
    assert code == 0, err
    params = json.loads((files / "reg" / "provenance.json").read_text())["parameters"]
    assert params["features"]["columns"] == 1 and params["feature_cpd"] is False
    assert params["transform"] == "rigid"


def test_config_top_level_keys_apply_beside_the_command_table(files, capsys):
    cfg = _toml(files / "t.toml", 'threads = 1\nunmatched_cost = 50\n[match]\nk = 4\n[cpd]\ntransform = "affine"\n')
    code, _, err = run(capsys, "match", "a.csv", "b.csv", "--config", cfg, "--out", "m.csv", "--k", "5", "-q")
    assert code == 0, err
    params = json.loads((files / "m.provenance.json").read_text())["parameters"]
    assert params["threads"] == 1 and params["unmatched_cost"] == 50 and params["k"] == 5  # command line wins


def test_threads_option_does_not_outlive_the_command(files, capsys):
    """``--threads`` (or ``threads`` in a config) sets the kernels' threads for the command only: an
    in-process ``cli.main`` (a workflow engine, a test) leaves the caller's setting as it found it."""
    import warnings

    import xmodal

    fmt = warnings.formatwarning
    with xmodal.num_threads(2):
        for argv in (("match", "a.csv", "b.csv", "--threads", "1", "--out", "t.csv", "-q"),
                     ("match", "a.csv", "b.csv", "--threads", "1", "--radius", "-3")):  # also after an error
            run(capsys, *argv)
            assert xmodal.get_num_threads() == 2
            assert warnings.formatwarning is fmt  # the one-line format too


@pytest.mark.parametrize("argv, option", [
    (("match", "a.csv", "b.csv", "--radius", "-3"), "--radius"),
    (("match", "a.csv", "b.csv", "--unmatched-cost", "-3"), "--unmatched-cost"),
    (("register", "a.csv", "b.csv", "--features-columns", "nope", "--transform", "rigid", "--no-prealign"),
     "--features-columns"),
    (("register", "a.csv", "b.csv", "--id-column", "nope", "--transform", "rigid", "--no-prealign"),
     "--id-column"),
])
def test_errors_name_the_command_line_option(files, capsys, argv, option):
    code, _, err = run(capsys, *argv, "--out", "o")
    assert_user_error(code, err, option)
    assert f"error: {option}" in err, err  # the option first (a different Python name may follow in parentheses)


def test_register_out_folder_error_names_the_option_not_the_inputs(files, capsys):
    (files / "notes").mkdir()
    (files / "notes" / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "register", "a.csv", "b.csv", "--out", "notes")
    assert_user_error(code, err, "--out", "notes")
    assert "inputs:" not in err
    assert (files / "notes" / "keep.txt").read_text() == "mine"


def test_hints_name_the_option(files, capsys):
    # the infeasible-matching hint of the library speaks of unmatched_cost: on the command line, --unmatched-cost
    code, _, err = run(capsys, "match", "a.csv", "b.csv", "--k", "1", "--out", "m.csv")
    assert_user_error(code, err, "--unmatched-cost")
    assert "unmatched_cost" not in err


def test_prediction_carries_its_offsets_to_mws(files, capsys):
    """README: 'xmodal predict raw --out aff.ome.zarr' then 'xmodal mws aff.ome.zarr': the built-in
    model's offsets (with a 0 z component on a stack) and attractive channels travel with the prediction."""
    pytest.importorskip("torch")
    import zarr

    from xmodal.datasets import isbi2012_slices
    from xmodal.models import load_model
    from xmodal.segmentation import mutex_watershed

    raw, _ = isbi2012_slices()
    np.save("raw.npy", raw[:1, :96, :96])
    assert run(capsys, "predict", "raw.npy", "--out", "aff.ome.zarr", "-q")[0] == 0
    code, _, err = run(capsys, "mws", "aff.ome.zarr", "--out", "l.zarr", "-q")
    assert code == 0, err
    model = load_model("em")
    offs = np.column_stack([np.zeros(len(model.offsets), np.int64), model.offsets])
    aff = np.asarray(zarr.open_array("aff.ome.zarr/0", mode="r")[...])
    want = mutex_watershed(aff, offs, n_attractive=model.n_attractive)
    np.testing.assert_array_equal(np.asarray(zarr.open_array("l.zarr", mode="r")[...]), want)
    # an explicit --offsets still wins; a plain array without a record still needs one
    np.save("aff.npy", aff)
    assert_user_error(*run(capsys, "mws", "aff.npy", "--out", "m.zarr")[::2], "--offsets", "got none")
