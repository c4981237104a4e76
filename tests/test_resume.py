"""Fault injection: every resumable output survives SIGKILL at any point.

For each resumable path (predict_tiled to zarr, blockwise mutex watershed, the segment pipeline,
register_cells(out=), the CLI's mws) a child process runs the operation and kills itself with
SIGKILL just before its k-th write event (k drawn with a fixed seed from the number of events of
an uninterrupted run; see tests/_resume_child.py). Then:

- what the kill left must not pass for a finished result: a zarr output opens only with an
  "incomplete" error (or, killed after its last write, equals the uninterrupted result); an output
  folder is the previous complete one or the new complete one, never a mix;
- the resumed run (same input) gives a result bitwise identical to an uninterrupted run, and
  reuses the finished work (counted network calls / resumed blocks);
- a resumed run on other data of the same shape and dtype recomputes and gives that data's result.

The quick variants use one random kill point per path; the slow ones several.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("dask")

import _resume_child as child  # noqa: E402  (tests/ is on sys.path under pytest)

import xmodal  # noqa: E402
from xmodal import io as xio  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(xmodal.__file__)))
N_TILES = 3 * 5  # predict scenario: (48, 80) image in tiles of 16 x 16
OFFS2 = [[-1, 0], [0, -1], [-3, 0], [0, -3], [-9, 0], [0, -9]]


def run_killed(name, params, kill_at):
    """Run scenario ``name`` in a child process that SIGKILLs itself before write event ``kill_at``."""
    code = f"import sys; sys.path.insert(0, {TESTS!r}); import _resume_child as c; c.main()"
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code, name, json.dumps(params), str(kill_at)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in (-signal.SIGKILL, 0), r.stderr[-3000:]
    return r.returncode == -signal.SIGKILL


def kill_points(seed, n_events, n, *, middle=False):
    """``n`` distinct write events to die at, drawn with ``seed`` (all of them when there are fewer).

    ``middle``: from the middle half of the run only, where some work is done and some is not.
    """
    lo, hi = (n_events // 4, 3 * n_events // 4) if middle else (1, n_events)
    rng = np.random.default_rng(seed)
    return sorted(int(k) for k in rng.choice(np.arange(lo, hi + 1), size=min(n, hi - lo + 1), replace=False))


def clone(src, dst):
    """Copy ``src`` and its siblings named ``src.*`` (staging, progress, work folders) to ``dst``."""
    src, dst = os.fspath(src), os.fspath(dst)
    parent = os.path.dirname(src)
    for name in os.listdir(parent):
        if name == os.path.basename(src) or name.startswith(os.path.basename(src) + "."):
            shutil.copytree(os.path.join(parent, name), os.path.join(os.path.dirname(dst),
                                                                     os.path.basename(dst) + name[len(os.path.basename(src)):]))


def read_zarr_result(path):
    """The array at ``path``: None when absent or flagged incomplete (never zeros posing as data)."""
    if not os.path.exists(path):
        return None
    try:
        return xio.open_array(path)[...]
    except ValueError as exc:
        assert "incomplete" in str(exc)
        return None


def temporaries(path):
    """Files of writes that never reached their rename (zarr's *.partial, xmodal's .tmp-*)."""
    return [f for _, _, files in os.walk(path) for f in files if f.endswith(".partial") or f.startswith(".tmp-")]


def markers(ledger_dir):
    if not os.path.isdir(ledger_dir):
        return 0
    return len([n for n in os.listdir(ledger_dir) if n != "signature" and not n.startswith(".tmp-")])


# ----------------------------------------------------------------------------------- predict_tiled

@pytest.fixture(scope="module")
def predict_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # same shape and dtype, other values
        np.save(d / f"{name}.npy", rng.normal(size=(48, 80)).astype(np.float32))
    refs, events = {}, None
    for name in ("a", "b"):
        _, n, calls = child.run("predict", {"image": str(d / f"{name}.npy"), "out": str(d / f"ref_{name}.zarr")})
        assert calls == 1 + N_TILES  # probe + one call per tile
        refs[name] = xio.open_array(d / f"ref_{name}.zarr")[...]
        events = events or n
    assert not np.array_equal(refs["a"], refs["b"])
    return d, refs, events


def _predict_kill_resume(tmp_path, case, k, *, other=False):
    d, refs, _ = case
    out = tmp_path / f"k{k}.zarr"
    params = {"image": str(d / "a.npy"), "out": str(out)}
    run_killed("predict", params, k)
    left = read_zarr_result(out)
    assert left is None or np.array_equal(left, refs["a"])
    status = xio.output_status(zarr.open_array(str(out / "0"), mode="r")) if (out / "0").exists() else None
    done = markers(out / "0.xmodal-progress")
    if other:  # the same killed state, resumed on image b
        clone(out, tmp_path / f"k{k}b.zarr")
    _, _, calls = child.run("predict", params)  # resume in this process, same input
    assert np.array_equal(xio.open_array(out)[...], refs["a"])  # bitwise
    if status is not None and status["complete"]:
        assert calls == 1  # complete for this input: only the probe ran
    else:
        assert calls == 1 + N_TILES - done  # every tile finished before the kill was reused
    assert not (out / "0.xmodal-progress").exists() and not temporaries(out)
    if other:
        assert 0 < done < N_TILES
        _, _, calls = child.run("predict", {"image": str(d / "b.npy"), "out": str(tmp_path / f"k{k}b.zarr")})
        assert np.array_equal(xio.open_array(tmp_path / f"k{k}b.zarr")[...], refs["b"])
        assert calls == 1 + N_TILES  # nothing of image a was reused


def test_predict_tiled_killed_then_resumed(tmp_path, predict_case):
    """Killed at a random write; resumed on the same image (bitwise, reused) and on another (recomputed)."""
    for k in kill_points(1, predict_case[2], 1, middle=True):
        _predict_kill_resume(tmp_path, predict_case, k, other=True)


@pytest.mark.slow
def test_predict_tiled_killed_then_resumed_many(tmp_path, predict_case):
    for k in kill_points(2, predict_case[2], 8):
        _predict_kill_resume(tmp_path, predict_case, k)


def test_predict_tiled_complete_output_of_other_data_is_recomputed(tmp_path, predict_case):
    d, refs, _ = predict_case
    out = tmp_path / "o.zarr"
    shutil.copytree(d / "ref_b.zarr", out)
    _, _, calls = child.run("predict", {"image": str(d / "a.npy"), "out": str(out)})
    assert np.array_equal(xio.open_array(out)[...], refs["a"]) and calls == 1 + N_TILES
    _, _, calls = child.run("predict", {"image": str(d / "a.npy"), "out": str(out)})
    assert calls == 1  # complete for this very input: reused without writing


# ----------------------------------------------------------------------------------- blockwise MWS

@pytest.fixture(scope="module")
def blockwise_case(tmp_path_factory):
    from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

    d = tmp_path_factory.mktemp("blockwise")
    refs, events = {}, None
    for seed, name in ((1, "a"), (2, "b")):
        affs = noisy_affinities(voronoi_labels((64, 64), 12, seed=seed), OFFS2, sigma=0.2, seed=seed)
        za = xio.create_array(d / f"{name}.zarr", affs.shape, affs.dtype, chunks=(6, 16, 16))
        za[...] = affs
        np.save(d / f"{name}.npy", affs)
        summary, n, _ = child.run("blockwise", _bw_params(d, name, d / f"ref_{name}.zarr", d / f"ref_{name}.work"))
        assert summary["n_blocks_resumed"] == 0
        refs[name] = xio.open_array(d / f"ref_{name}.zarr")[...]
        assert not (d / f"ref_{name}.work").exists()  # removed once complete
        events = events or n
    return d, refs, events


def _bw_params(d, name, out, work):
    return {"affinities": str(d / f"{name}.zarr"), "offsets": OFFS2, "out": str(out), "workdir": str(work)}


def _blockwise_kill_resume(tmp_path, case, k, *, other=False):
    d, refs, _ = case
    params = _bw_params(d, "a", tmp_path / f"k{k}.zarr", tmp_path / f"k{k}.work")
    run_killed("blockwise", params, k)
    left = read_zarr_result(params["out"])
    assert left is None or np.array_equal(left, refs["a"])
    done = markers(os.path.join(params["workdir"], "done"))
    if other:  # the same killed state, resumed on affinities b
        clone(params["out"], tmp_path / f"k{k}b.zarr")
        clone(params["workdir"], tmp_path / f"k{k}b.work")
    summary, _, _ = child.run("blockwise", params)
    assert np.array_equal(xio.open_array(params["out"])[...], refs["a"])  # bitwise
    assert summary["n_blocks_resumed"] == done  # every block finished before the kill was reused
    assert not os.path.exists(params["workdir"]) and not temporaries(params["out"])
    if other:
        assert done > 0
        summary, _, _ = child.run("blockwise", _bw_params(d, "b", tmp_path / f"k{k}b.zarr", tmp_path / f"k{k}b.work"))
        assert summary["n_blocks_resumed"] == 0
        assert np.array_equal(xio.open_array(tmp_path / f"k{k}b.zarr")[...], refs["b"])


def test_blockwise_killed_then_resumed(tmp_path, blockwise_case):
    """Killed at a random write; resumed on the same input (bitwise, reused) and on another (recomputed)."""
    for k in kill_points(3, blockwise_case[2], 1, middle=True):
        _blockwise_kill_resume(tmp_path, blockwise_case, k, other=True)


@pytest.mark.slow
def test_blockwise_killed_then_resumed_many(tmp_path, blockwise_case):
    for k in kill_points(4, blockwise_case[2], 8):
        _blockwise_kill_resume(tmp_path, blockwise_case, k)


# ----------------------------------------------------------------------------------- CLI mws

@pytest.fixture(scope="module")
def cli_case(tmp_path_factory, blockwise_case):
    d = blockwise_case[0]
    refs, events = {}, None
    for name in ("a", "b"):
        summary, n, _ = child.run("cli_mws", _cli_params(d, name, d / f"cli_{name}.zarr"))
        assert summary["rc"] == 0
        refs[name] = xio.open_array(d / f"cli_{name}.zarr")[...]
        events = events or n
    return d, refs, events


def _cli_params(d, name, out):
    return {"affinities": str(d / f"{name}.npy"), "offsets": OFFS2, "out": str(out)}


def _cli_kill_resume(tmp_path, case, k, *, other=False):
    d, refs, _ = case
    out = tmp_path / f"k{k}.zarr"
    shutil.copytree(d / "cli_b.zarr", out)  # a previous complete output, of other data
    run_killed("cli_mws", _cli_params(d, "a", out), k)
    left = read_zarr_result(out)  # the previous output or the new one, complete either way
    assert left is not None and (np.array_equal(left, refs["b"]) or np.array_equal(left, refs["a"]))
    if other:
        clone(out, tmp_path / f"k{k}b.zarr")
    summary, _, _ = child.run("cli_mws", _cli_params(d, "a", out))
    assert summary["rc"] == 0 and np.array_equal(xio.open_array(out)[...], refs["a"])
    assert not (tmp_path / f"k{k}.zarr.xmodal-work").exists() and not (tmp_path / f"k{k}.zarr.xmodal-partial").exists()
    if other:  # a killed run on a, rerun on b: b's labels
        assert child.run("cli_mws", _cli_params(d, "b", tmp_path / f"k{k}b.zarr"))[0]["rc"] == 0
        assert np.array_equal(xio.open_array(tmp_path / f"k{k}b.zarr")[...], refs["b"])


def test_cli_mws_killed_then_resumed(tmp_path, cli_case):
    for k in kill_points(5, cli_case[2], 1, middle=True):
        _cli_kill_resume(tmp_path, cli_case, k, other=True)


@pytest.mark.slow
def test_cli_mws_killed_then_resumed_many(tmp_path, cli_case):
    for k in kill_points(6, cli_case[2], 8):
        _cli_kill_resume(tmp_path, cli_case, k)


def test_cli_mws_other_data_after_a_finished_run(tmp_path, cli_case):
    """The issue's reproducer: a finished run on A, then B to the same --out, must give B's labels."""
    d, refs, _ = cli_case
    out = tmp_path / "st.zarr"
    assert child.run("cli_mws", _cli_params(d, "a", out))[0]["rc"] == 0
    assert child.run("cli_mws", _cli_params(d, "b", out))[0]["rc"] == 0
    assert np.array_equal(xio.open_array(out)[...], refs["b"])


# ----------------------------------------------------------------------------------- segment

def _seg_result(folder):
    """(affinities, labels, parameters) of a segment output folder."""
    root = os.path.join(folder, "segmentation.ome.zarr")
    prov = json.loads(open(os.path.join(folder, "provenance.json")).read())
    return (xio.open_array(root)[...], xio.open_array(os.path.join(root, "labels", "cells"))[...],
            prov["parameters"])


def _same_seg(a, b):
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.fixture(scope="module")
def segment_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("segment")
    rng = np.random.default_rng(3)
    refs, events = {}, None
    for name in ("a", "b"):
        raw = np.kron(rng.random((8, 8)), np.ones((8, 8))) + 0.05 * rng.normal(size=(64, 64))  # blobs
        np.save(d / f"{name}.npy", raw.astype(np.float32))
        summary, n, calls = child.run("segment", {"raw": str(d / f"{name}.npy"), "out": str(d / f"ref_{name}")})
        assert summary["n_segments"] > 1 and calls == 1 + 16
        refs[name] = _seg_result(d / f"ref_{name}")
        events = events or n
    assert not np.array_equal(refs["a"][1], refs["b"][1])
    return d, refs, events


def _segment_kill_resume(tmp_path, case, k, *, other=False):
    d, refs, _ = case
    out = tmp_path / f"k{k}"
    shutil.copytree(d / "ref_b", out)  # a previous complete output, of other data
    params = {"raw": str(d / "a.npy"), "out": str(out)}
    run_killed("segment", params, k)
    left = _seg_result(out)  # the previous folder or the new one, complete, never a mix
    assert _same_seg(left, refs["b"]) or _same_seg(left, refs["a"])
    stage = xio.staging_path(out) / "segmentation.ome.zarr"
    predicted = (stage / "0").exists() and xio.is_complete(zarr.open_array(str(stage / "0"), mode="r"))
    done = markers(stage / "0.xmodal-progress")
    if other:
        clone(out, tmp_path / f"k{k}b")
    _, _, calls = child.run("segment", params)
    assert _same_seg(_seg_result(out), refs["a"])  # bitwise
    assert calls == (1 if predicted else 1 + 16 - done)  # finished prediction tiles were reused
    assert not xio.staging_path(out).exists() and not temporaries(out)
    if other:  # the same killed state, rerun on image b: nothing of a reused
        assert predicted or done > 0
        _, _, calls = child.run("segment", {"raw": str(d / "b.npy"), "out": str(tmp_path / f"k{k}b")})
        assert _same_seg(_seg_result(tmp_path / f"k{k}b"), refs["b"]) and calls == 1 + 16


def test_segment_killed_then_resumed(tmp_path, segment_case):
    for k in kill_points(7, segment_case[2], 1, middle=True):
        _segment_kill_resume(tmp_path, segment_case, k, other=True)


@pytest.mark.slow
def test_segment_killed_then_resumed_many(tmp_path, segment_case):
    for k in kill_points(8, segment_case[2], 8):
        _segment_kill_resume(tmp_path, segment_case, k)


# ----------------------------------------------------------------------------------- register_cells

REGISTER_FILES = ("transform.json", "matches.csv", "cells.csv", "errors.json")


def _same_registration(folder, ref):
    if not all(filecmp.cmp(os.path.join(folder, f), os.path.join(ref, f), shallow=False) for f in REGISTER_FILES):
        return False
    prov = [json.loads(open(os.path.join(f, "provenance.json")).read())["parameters"] for f in (folder, ref)]
    return prov[0] == prov[1] and sorted(os.listdir(folder)) == sorted(os.listdir(ref))


@pytest.fixture(scope="module")
def register_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("register")
    rng = np.random.default_rng(4)
    events = None
    for name in ("a", "b"):
        fixed = rng.random((40, 3)) * 50
        c, s = np.cos(0.2), np.sin(0.2)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        moving = (fixed - 3.0) @ rot + 0.1 * rng.normal(size=fixed.shape)
        np.savez(d / f"{name}.npz", fixed=fixed, moving=moving)
        _, n, _ = child.run("register", {"points": str(d / f"{name}.npz"), "out": str(d / f"ref_{name}")})
        events = events or n
    assert not filecmp.cmp(d / "ref_a" / "matches.csv", d / "ref_b" / "matches.csv", shallow=False) or \
        not filecmp.cmp(d / "ref_a" / "cells.csv", d / "ref_b" / "cells.csv", shallow=False)
    return d, events


def _register_kill_rerun(tmp_path, case, k):
    d, _ = case
    out = tmp_path / f"k{k}"
    shutil.copytree(d / "ref_b", out)  # a previous complete output, of other data
    params = {"points": str(d / "a.npz"), "out": str(out)}
    run_killed("register", params, k)
    assert _same_registration(out, d / "ref_b") or _same_registration(out, d / "ref_a")  # never a mix
    child.run("register", params)
    assert _same_registration(out, d / "ref_a")
    assert not xio.staging_path(out).exists()


def test_register_cells_killed_then_rerun(tmp_path, register_case):
    for k in kill_points(9, register_case[1], 1):
        _register_kill_rerun(tmp_path, register_case, k)


@pytest.mark.slow
def test_register_cells_killed_then_rerun_many(tmp_path, register_case):
    for k in kill_points(10, register_case[1], 8):
        _register_kill_rerun(tmp_path, register_case, k)


def test_output_folder_that_is_not_an_xmodal_output_is_refused(tmp_path, register_case):
    d, _ = register_case
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="out: .*not an xmodal output"):
        child.run("register", {"points": str(d / "a.npz"), "out": str(mine)})
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out: expected a folder path"):
        child.run("register", {"points": str(d / "a.npz"), "out": str(tmp_path / "file")})


def test_cli_refuses_an_incomplete_input(tmp_path, blockwise_case):
    """A killed prediction must not be segmented as if it were finished (the CLI reads via open_array)."""
    d = blockwise_case[0]
    partial = tmp_path / "aff.zarr"
    arr = xio.create_array(partial, (6, 64, 64), np.float32, chunks=(6, 16, 16), writer="xmodal.predict_tiled")
    arr[:, :16, :16] = np.load(d / "a.npy")[:, :16, :16]  # a run killed after one chunk
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "xmodal", "mws", str(partial), "--offsets", json.dumps(OFFS2),
                        "--out", str(tmp_path / "labels.zarr"), "-q"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "incomplete output of xmodal.predict_tiled" in r.stderr
    assert str(partial) in r.stderr and "Traceback" not in r.stderr
    assert "allow_incomplete" not in r.stderr  # a Python argument means nothing on the command line
    assert "Rerun the same command to resume it" in r.stderr
    assert not (tmp_path / "labels.zarr").exists()
    with pytest.raises(xio.IncompleteOutputError, match="allow_incomplete=True"):  # Python callers get it
        xio.open_array(partial)
