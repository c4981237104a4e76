"""Bad input to tiled inference (``xmodal.predict_tiled`` and ``xmodal predict``): a clear error
naming the argument, never a silent result; and ``xmodal.inference`` without torch.

Cases: the package imported without torch (a plain callable still predicts), a 2-D model over a
(z, y, x) stack in ``xmodal predict`` (slice by slice), non-finite input, an out-of-range
``channel_axis``, ``--halo`` with one value, ``--out`` naming an existing file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xmodal
from _cli_helpers import assert_user_error, run as run_cli
from xmodal.inference import predict_tiled


def double(batch):
    """A plain numpy model: (B, C, *spatial) -> (B, C, *spatial)."""
    return batch * 2.0






@pytest.fixture
def tiny_model(monkeypatch):
    """A tiny 2-D network (1 -> 2 channels, one 3x3 convolution), given to the CLI as ``--model tiny``."""
    torch = pytest.importorskip("torch")
    import xmodal.models

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Sigmoid()).eval()
    real = xmodal.models.load_model
    monkeypatch.setattr(xmodal.models, "load_model", lambda m: net if m == "tiny" else real(m))
    return "tiny", net


def _per_slice(net, stack):
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(stack[:, None].astype(np.float32))).numpy()  # (Z, C, Y, X)
    return np.moveaxis(y, 0, 1)


# ----------------------------------------------------------------------------------- 1. no torch

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)

    sys.meta_path.insert(0, NoTorch())
""")


def test_inference_imports_and_predicts_without_torch():
    code = BLOCKER + textwrap.dedent("""
        import numpy as np
        import xmodal, xmodal.inference
        from xmodal.inference import *  # noqa: F403 (every listed name resolves without torch)

        x = np.arange(24 * 20, dtype=np.float32).reshape(24, 20)
        y = xmodal.predict_tiled(lambda b: b * 2.0, x, tile_shape=(8, 8), halo=0, channel_axis=None,
                                 progress=False)
        assert y.shape == (1, 24, 20) and np.array_equal(y[0], 2 * x)
        assert xmodal.tile_mismatch(lambda b: b + 1.0, x, tile_shape=(8, 8), halo=0).max_abs_diff == 0
        for call in (lambda: xmodal.inference.DihedralTTA, lambda: xmodal.receptive_field(lambda b: b, 2),
                     lambda: xmodal.find_tile_shape(lambda b: b, image_shape=(64, 64))):
            try:
                call()
            except ImportError as exc:
                assert "xmodal[torch]" in str(exc), exc
            else:
                raise AssertionError("expected an ImportError naming the torch extra")
        import sys
        assert "torch" not in sys.modules
        print("OK")
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(xmodal.__file__)),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_dihedral_tta_is_a_torch_module_with_torch():
    torch = pytest.importorskip("torch")
    from xmodal.inference import DihedralTTA
    from xmodal.inference._tta_torch import DihedralTTA as same

    assert same is DihedralTTA and issubclass(DihedralTTA, torch.nn.Module)
    net = torch.nn.Conv2d(1, 4, 3, padding=1).eval()
    tta = DihedralTTA(net, [[-1, 0], [0, -1], [-1, -1], [-1, 1]], transforms=1)
    x = torch.rand(1, 1, 8, 8)
    assert torch.allclose(tta(x), net(x), atol=1e-6)


def test_callable_without_tile_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tile_shape: .*torch module.*got None"):
        predict_tiled(double, np.ones((16, 16), np.float32), halo=0, progress=False)


# ----------------------------------------------------------------------------------- 2. 2-D model on a stack

def test_cli_predicts_a_2d_model_over_a_stack_slice_by_slice(tiny_model, tmp_path, capsys):
    import zarr

    path, net = tiny_model
    stack = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "pred.ome.zarr"
    code, _, err = run_cli(capsys, "predict", tmp_path / "stack.npy", "--model", path, "--out", out,
                           "--tile-shape", "8,8", "--halo", "2", "--normalize", "none", "-q")
    assert code == 0, err
    got = np.asarray(zarr.open_array(str(out / "0"), mode="r")[...])
    assert got.shape == (2, 3, 20, 24)
    np.testing.assert_allclose(got, _per_slice(net, stack), atol=1e-5)
    # a 3-D image with --channel-axis is still a channel image of the 2-D model (here: too many channels)
    code, _, err = run_cli(capsys, "predict", tmp_path / "stack.npy", "--model", path, "--out", tmp_path / "c.ome.zarr",
                           "--channel-axis", "0", "--normalize", "none", "-q")
    assert_user_error(code, err, "input channel")
    # a colour image (y, x, 3) is not a stack of 3-pixel-wide sections
    np.save(tmp_path / "rgb.npy", np.random.default_rng(1).random((20, 24, 3)).astype(np.float32))
    code, _, err = run_cli(capsys, "predict", tmp_path / "rgb.npy", "--model", path, "--out", tmp_path / "r.ome.zarr",
                           "--normalize", "none", "-q")
    assert_user_error(code, err, "looks like a colour image", "--channel-axis 2")
    assert not (tmp_path / "r.ome.zarr").exists()
    # an output named like a file is refused before anything is read
    code, _, err = run_cli(capsys, "predict", tmp_path / "stack.npy", "--model", path, "--out", tmp_path / "p.npy", "-q")
    assert_user_error(code, err, "--out", "OME-Zarr image (a folder)", "p.zarr")
    assert not (tmp_path / "p.npy").exists()


# ----------------------------------------------------------------------------------- 3. non-finite input

def test_nan_input_is_rejected_numpy_and_zarr(tmp_path):
    import zarr

    x = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    x[21, 5] = np.nan
    with pytest.raises(ValueError, match=r"image: expected finite values.*\(21, 5\)"):
        predict_tiled(double, x, tile_shape=(16, 16), halo=0, channel_axis=None, progress=False)
    x[21, 5] = -np.inf
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=x.shape, chunks=(8, 8), dtype=np.float32)
    z[...] = x
    with pytest.raises(ValueError, match=r"image: expected finite values.*\(21, 5\)"):
        predict_tiled(double, z, tile_shape=(16, 16), halo=0, channel_axis=None, progress=False,
                      out=str(tmp_path / "o.ome.zarr"))
    with pytest.raises(ValueError, match=r"image: expected finite values"):  # with a normaliser too
        predict_tiled(double, z, tile_shape=(16, 16), halo=0, normalize="quantile", progress=False)
    # integer images cannot hold NaN and pass
    ok = predict_tiled(double, np.ones((16, 16), np.uint8), tile_shape=(8, 8), halo=0, progress=False)
    assert np.array_equal(ok, np.full((1, 16, 16), 2.0, np.float32))


def test_cli_nan_input_with_normalize_none(tiny_model, tmp_path, capsys):
    path, _ = tiny_model
    x = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    x[3, 3] = np.nan
    np.save(tmp_path / "nanraw.npy", x)
    code, _, err = run_cli(capsys, "predict", tmp_path / "nanraw.npy", "--model", path, "--normalize", "none",
                           "--halo", "1", "--out", tmp_path / "n.ome.zarr", "-q")
    assert_user_error(code, err, "image", "finite", "nanraw.npy")


# ----------------------------------------------------------------------------------- 4. channel_axis

@pytest.mark.parametrize("shape, axis", [((16, 16), 5), ((16, 16), -7), ((2, 8, 8, 8), 7), ((2, 8, 8, 8), -5)])
def test_channel_axis_out_of_range(shape, axis):
    with pytest.raises(ValueError, match=rf"channel_axis: expected None or an axis of the {len(shape)}-D image.*"
                                         rf"got {axis}"):
        predict_tiled(double, np.ones(shape, np.float32), tile_shape=8, halo=0, channel_axis=axis, progress=False)


def test_cli_channel_axis_out_of_range(tiny_model, tmp_path, capsys):
    path, _ = tiny_model
    np.save(tmp_path / "raw2d.npy", np.ones((16, 16), np.float32))
    code, _, err = run_cli(capsys, "predict", tmp_path / "raw2d.npy", "--model", path, "--channel-axis", "7",
                           "--halo", "1", "--out", tmp_path / "c.ome.zarr", "-q")
    assert_user_error(code, err, "channel_axis", "7", "-2")
    assert not (tmp_path / "c.ome.zarr").exists()


# ----------------------------------------------------------------------------------- 5. --halo N

def test_cli_halo_one_value_means_every_axis(tiny_model, tmp_path, capsys):
    import zarr

    path, net = tiny_model
    x = np.random.default_rng(3).random((24, 20)).astype(np.float32)
    np.save(tmp_path / "raw.npy", x)
    outs = []
    for halo in ("5", "5,5"):
        out = tmp_path / f"h{len(halo)}.ome.zarr"
        code, _, err = run_cli(capsys, "predict", tmp_path / "raw.npy", "--model", path, "--halo", halo,
                               "--tile-shape", "12", "--normalize", "none", "--out", out, "-q")
        assert code == 0, err
        outs.append(np.asarray(zarr.open_array(str(out / "0"), mode="r")[...]))
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], _per_slice(net, x[None])[:, 0], atol=1e-5)


# ----------------------------------------------------------------------------------- 6. --out a file

def test_out_naming_an_existing_file(tiny_model, tmp_path, capsys):
    path, _ = tiny_model
    np.save(tmp_path / "raw.npy", np.ones((16, 16), np.float32))
    (tmp_path / "a.csv").write_text("z,y,x\n1,2,3\n")
    code, _, err = run_cli(capsys, "predict", tmp_path / "raw.npy", "--model", path, "--halo", "1",
                           "--out", tmp_path / "a.csv", "-q")
    assert_user_error(code, err, "--out", "a.csv", "file")
    assert (tmp_path / "a.csv").read_text() == "z,y,x\n1,2,3\n"  # untouched
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("x")
    code, _, err = run_cli(capsys, "predict", tmp_path / "raw.npy", "--model", path, "--halo", "1",
                           "--out", tmp_path / "notes", "-q")
    assert_user_error(code, err, "--out", "notes", "not a zarr")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["n.txt"]


def test_predict_tiled_out_naming_an_existing_file(tmp_path):
    (tmp_path / "a.csv").write_text("1\n")
    with pytest.raises(ValueError, match=r"out: .*a\.csv.* is an existing file"):
        predict_tiled(double, np.ones((16, 16), np.float32), tile_shape=8, halo=0, out=str(tmp_path / "a.csv"),
                      progress=False)
    assert (tmp_path / "a.csv").read_text() == "1\n"


def test_torch_model_returning_numpy_is_predicted_exactly():
    """A torch module whose forward returns a numpy array (the output of ``.numpy()``): the
    wrapper's float32 cast called torch's ``.to`` on it (AttributeError, reported as a failed probe);
    now the array is taken as it is, and the tiles equal the whole-volume prediction."""
    torch = pytest.importorskip("torch")

    class ReturnsNumpy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).detach().numpy()

    model = ReturnsNumpy().eval()
    x = np.random.default_rng(0).random((1, 24, 40, 40)).astype(np.float32)
    got = predict_tiled(model, x, tile_shape=(8, 16, 16), halo=(2, 2, 2), progress=False)
    with torch.no_grad():
        whole = model(torch.from_numpy(x[None]))[0]
    assert got.dtype == np.float32 and np.array_equal(got, whole)


def test_probe_notes_summarise_repeated_failures():
    from xmodal.inference._probe import _distinct

    errs = [f"w{i}: TypeError: same" for i in range(6)]
    assert _distinct(errs) == ["w0: TypeError: same", "... 4 more windows failed ...", "w5: TypeError: same"]
    assert _distinct(errs[:2]) == errs[:2]
