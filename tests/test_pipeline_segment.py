"""Large-volume segmentation pipeline, the segmentation CLI commands and the demo."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from xmodal.datasets import isbi2012_slices
from xmodal.pipelines import segment


@pytest.fixture(scope="module")
def isbi():
    raw, gt = isbi2012_slices()
    return raw[:, :256, :256].copy(), gt[:, :256, :256].copy()


def test_segment_isbi_stack_writes_ome_zarr_and_scores(isbi, tmp_path):
    import zarr

    raw, gt = isbi
    res = segment(raw, model="isbi2012", out=tmp_path / "seg", ground_truth=gt, min_size=50, tile_shape=(128, 128))
    labels = np.asarray(res.labels)
    assert labels.shape == raw.shape and labels.min() >= 1
    # Each slice is segmented on its own (2D model): no label spans two slices.
    assert not set(np.unique(labels[0])) & set(np.unique(labels[1]))
    # Better than chance by far: a real EM segmentation.
    m = res.metrics["mean"]
    assert m["arand"] < 0.15 and m["voi_merge"] < 1.0 and m["voi_split"] < 1.0
    root = zarr.open_group(str(tmp_path / "seg" / "segmentation.ome.zarr"), mode="r")
    assert root.attrs["ome"]["multiscales"][0]["axes"][0]["name"] == "c"
    assert root["labels"].attrs["ome"]["labels"] == ["cells"]
    stored = np.asarray(root["labels/cells/0"][...])
    assert np.array_equal(stored, labels)
    assert "image-label" in root["labels/cells"].attrs["ome"]
    assert np.asarray(root["0"]).shape == (len(res.offsets), *raw.shape)
    prov = json.loads((tmp_path / "seg" / "provenance.json").read_text())
    assert prov["step"] == "segment" and prov["parameters"]["min_size"] == 50
    assert json.loads((tmp_path / "seg" / "metrics.json").read_text())["mean"]["arand"] == pytest.approx(m["arand"])


def test_segment_tiled_equals_whole_image_prediction(isbi):
    raw, _ = isbi
    whole = segment(raw[0], model="isbi2012", tile_shape=(256, 256))
    tiled = segment(raw[0], model="isbi2012", tile_shape=(128, 128))
    assert np.abs(np.asarray(whole.affinities) - np.asarray(tiled.affinities)).max() <= 1e-5
    assert np.array_equal(whole.labels, tiled.labels)


def test_segment_blockwise_matches_single_shot(isbi):
    from xmodal.metrics import adapted_rand_error

    raw, _ = isbi
    single = segment(raw[0], model="isbi2012", tile_shape=(128, 128))
    blocks = segment(raw[0], model="isbi2012", tile_shape=(128, 128), block_shape=(128, 128))
    assert adapted_rand_error(np.asarray(blocks.labels), np.asarray(single.labels), ignore_gt=()).error < 0.02


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(raw=np.zeros((4,))), ValueError, "raw: expected a 2D image or a 3D volume"),
        (dict(raw="does-not-exist.zarr"), FileNotFoundError, "does-not-exist"),
        (dict(raw=np.zeros((8, 8)), model="no-such-model"), ValueError, "model: expected"),
        (dict(raw=np.zeros((8, 8)), min_size=-1), ValueError, "min_size"),
        (dict(raw=np.zeros((0, 64))), ValueError, "raw: expected a non-empty image"),
        (dict(raw=np.zeros((2, 0, 64))), ValueError, "raw: expected a non-empty image"),
        (dict(raw=np.full((16, 16), np.nan)), ValueError, "raw: expected finite"),
        (dict(raw=np.zeros((16, 16)), spacing=(-1, -1)), ValueError, "spacing: expected positive"),
        (dict(raw=np.zeros((16, 16)), spacing=0), ValueError, "spacing: expected positive"),
        (dict(raw=np.zeros((16, 16)), spacing=(1, 1, 1)), ValueError, "spacing: expected a scalar or 2 values"),
        (dict(raw=np.zeros((16, 16)), normalize="no"), ValueError, "normalize: expected 'auto', 'standardize'"),
        (dict(raw=np.zeros((16, 16)), progress="no"), TypeError, "progress: expected True, False or a callable"),
        (dict(raw=np.zeros((16, 16)), block_shape=(0, 8)), ValueError, "block_shape"),
        (dict(raw=np.zeros((16, 16)), block_shape=(8, 8, 8)), ValueError, "block_shape"),
        (dict(raw=np.zeros((16, 16)), memory_voxels=0), ValueError, "memory_voxels: expected an integer >= 1"),
        (dict(raw=np.zeros((16, 16)), memory_voxels=1.5), TypeError, "memory_voxels"),
        (dict(raw=np.zeros((40, 40, 3), np.uint8)), ValueError, r"raw: shape \(40, 40, 3\) looks like a colour image"),
        (dict(raw=np.zeros((40, 40, 4), np.uint8)), ValueError, "its last axis holds 4 channels"),
    ],
)
def test_segment_bad_input(kwargs, exc, match, tmp_path):
    with pytest.raises(exc, match=match):
        segment(**kwargs)


@pytest.mark.parametrize("shape", [(60, 60), (100, 100), (37, 203), (2, 61, 70)])
def test_segment_any_image_size(isbi, shape):
    """The shipped model pads to its factor 8 internally: sizes that are not multiples of 8 work."""
    from xmodal.metrics import adapted_rand_error

    raw, gt = isbi
    sl = tuple(slice(0, n) for n in shape) if len(shape) == 3 else (0, slice(0, shape[0]), slice(0, shape[1]))
    res = segment(raw[sl], model="isbi2012")
    labels = np.asarray(res.labels)
    assert labels.shape == shape and labels.min() >= 1 and res.n_segments == labels.max()
    assert np.isfinite(np.asarray(res.affinities)).all()
    if len(shape) == 2 and min(shape) >= 60:
        assert adapted_rand_error(labels, gt[sl]).error < 0.35  # a real segmentation, not noise


def test_shipped_model_pads_and_tiles_exactly(isbi):
    """Padding at the image end keeps tiled prediction equal to a whole-image pass."""
    from xmodal.inference import predict_tiled
    from xmodal.models import load_isbi2012_affinity_unet

    raw, _ = isbi
    model = load_isbi2012_affinity_unet()
    x = (raw[0, :250, :203].astype(np.float32) - 125.0) / 44.0
    whole = predict_tiled(model, x, tile_shape=(256, 208), progress=False)
    tiled = predict_tiled(model, x, tile_shape=(120, 120), progress=False)
    assert whole.shape == (10, 250, 203)
    assert np.abs(whole - tiled).max() <= 1e-5
    with torch.no_grad():
        direct = model(torch.from_numpy(np.ascontiguousarray(x))[None, None])[0].numpy()
    assert np.abs(direct - whole).max() <= 1e-5
    assert model(torch.zeros(1, 1, 1, 3)).shape == (1, 10, 1, 3)  # tiny images too


def test_segment_constant_image_and_scalar_spacing(tmp_path):
    import zarr

    res = segment(np.full((64, 64), 7.0), model="isbi2012", out=tmp_path / "seg", spacing=0.5)  # no NaN from a zero std
    assert np.isfinite(np.asarray(res.affinities)).all() and np.asarray(res.labels).min() >= 1
    root = zarr.open_group(str(tmp_path / "seg" / "segmentation.ome.zarr"), mode="r")
    scale = root["labels/cells"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [0.5, 0.5]
    from xmodal.inference import global_mean_std

    assert global_mean_std(np.full((5, 7), 0.1)) == (pytest.approx(0.1), 0.0)  # exactly 0, not rounding noise


def test_segment_passes_bias_and_strides_to_the_mutex_watershed(isbi):
    from xmodal.segmentation import mutex_watershed

    raw, _ = isbi
    bias = [-0.5] * 2 + [-0.7] * 8
    per = [[1, 1]] * 2 + [[2, 2]] * 8
    res = segment(raw[:2, :64, :64], model="isbi2012", bias=bias, strides=per)  # a 2D model on a stack: (z, y, x) strides
    aff = np.asarray(res.affinities)
    st3 = [[1] + row for row in per]
    expected = np.stack([mutex_watershed(aff[:, z:z + 1], res.offsets, bias=bias, strides=st3)[0] for z in range(2)])
    from xmodal.metrics import adapted_rand_error

    for z in range(2):
        assert adapted_rand_error(np.asarray(res.labels)[z], expected[z], ignore_gt=()).error < 1e-12
    assert res.parameters["bias"] == bias
    with pytest.raises(ValueError, match="per-offset"):
        segment(raw[0, :32, :32], model="isbi2012", bias=-0.5, strides=(2, 2))


def test_segment_ground_truth_of_another_shape(isbi):
    raw, gt = isbi
    with pytest.raises(ValueError, match="ground_truth: expected the shape"):
        segment(raw[0], model="isbi2012", ground_truth=gt, tile_shape=(128, 128))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "xmodal", *args], capture_output=True, text=True)


def test_cli_segment_evaluate_mws_predict(isbi, tmp_path):
    raw, gt = isbi
    np.save(tmp_path / "raw.npy", raw[0])
    np.save(tmp_path / "gt.npy", gt[0])
    r = _run("segment", str(tmp_path / "raw.npy"), "--ground-truth", str(tmp_path / "gt.npy"),
             "--model", "isbi2012", "--tile-shape", "128,128", "--out", str(tmp_path / "seg"), "-q")
    assert r.returncode == 0, r.stderr
    assert "ARand" in r.stdout
    r = _run("evaluate", str(tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells"),
             str(tmp_path / "gt.npy"), "--out", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= scores["arand"] < 0.2
    r = _run("predict", str(tmp_path / "raw.npy"), "--model", "isbi2012", "--tile-shape", "128,128", "--out",
             str(tmp_path / "aff.ome.zarr"), "-q")
    assert r.returncode == 0, r.stderr
    from xmodal.models import ISBI2012_N_ATTRACTIVE, ISBI2012_OFFSETS

    r = _run("mws", str(tmp_path / "aff.ome.zarr"), "--offsets", json.dumps(ISBI2012_OFFSETS.tolist()),
             "--n-attractive", str(ISBI2012_N_ATTRACTIVE), "--out", str(tmp_path / "labels.zarr"), "-q")
    assert r.returncode == 0, r.stderr
    import zarr

    labels = np.asarray(zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")[...])
    seg = np.asarray(zarr.open_array(str(tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells" / "0"),
                                     mode="r")[...])
    from xmodal.metrics import adapted_rand_error

    assert adapted_rand_error(labels, seg, ignore_gt=()).error < 1e-9  # same affinities, same partition
    # blockwise with --min-size: small segments merged into neighbours, as single-shot
    r = _run("mws", str(tmp_path / "aff.ome.zarr"), "--offsets", json.dumps(ISBI2012_OFFSETS.tolist()),
             "--n-attractive", str(ISBI2012_N_ATTRACTIVE), "--block-shape", "64,128", "--min-size", "40",
             "--out", str(tmp_path / "big.zarr"), "-q")
    assert r.returncode == 0, r.stderr
    big = np.asarray(zarr.open_array(str(tmp_path / "big.zarr"), mode="r")[...])
    ids, counts = np.unique(big, return_counts=True)
    assert ids[0] == 1 and counts.min() >= 40 and f"{len(ids)} segments" in r.stdout
    bad = _run("evaluate", str(tmp_path / "missing.npy"), str(tmp_path / "gt.npy"))
    assert bad.returncode == 2 and "not found" in bad.stderr and "missing.npy" in bad.stderr


def test_cli_segment_stack_over_memory_voxels_gives_the_in_memory_labels(isbi, tmp_path):
    """The shipped EM model on a 2-slice stack: in memory, and over --memory-voxels in groups of
    whole slices (--block-shape 1,256,256): the same labels, and no work folder left behind."""
    import zarr

    raw, _ = isbi
    np.save(tmp_path / "raw.npy", raw)
    labels = {}
    for name, extra in (("whole", []), ("groups", ["--memory-voxels", str(256 * 256), "--block-shape", "1,256,256"])):
        r = _run("segment", str(tmp_path / "raw.npy"), "--out", str(tmp_path / name), "-q", *extra)
        assert r.returncode == 0, r.stderr
        labels[name] = zarr.open_array(str(tmp_path / name / "segmentation.ome.zarr" / "labels" / "cells" / "0"),
                                       mode="r")[...]
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["provenance.json", "segmentation.ome.zarr"]
    np.testing.assert_array_equal(labels["groups"], labels["whole"])
    assert labels["whole"].max() > 20
    bad = _run("segment", str(tmp_path / "raw.npy"), "--out", str(tmp_path / "bad"), "--block-shape", "0,256,256")
    assert bad.returncode == 2 and "block_shape" in bad.stderr


@pytest.mark.slow
def test_cli_demo(tmp_path):
    r = _run("demo", "--out", str(tmp_path / "demo"), "-q")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["registration"]["accuracy"] > 0.2
    assert summary["segmentation"]["arand"] < 0.1
    assert (tmp_path / "demo" / "register" / "report.html").exists()
    assert (tmp_path / "demo" / "segment" / "segmentation.ome.zarr").is_dir()


def test_segment_blockwise_size_filter(isbi, tmp_path):
    """min_size means the same blockwise as single-shot: small segments merge into a neighbour."""
    import zarr

    from xmodal.segmentation import remove_small_segments

    raw, _ = isbi
    res = segment(raw[0], model="isbi2012", tile_shape=(128, 128), block_shape=(128, 128), min_size=50, out=tmp_path / "seg")
    labels = np.asarray(zarr.open_array(str(tmp_path / "seg" / "segmentation.ome.zarr" / "labels" / "cells" / "0"),
                                        mode="r")[...])
    ids, counts = np.unique(labels, return_counts=True)
    assert ids[0] == 1 and counts.min() >= 50  # merged into neighbours, none made background
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and res.n_segments == len(ids)
    unfiltered = segment(raw[0], model="isbi2012", tile_shape=(128, 128), block_shape=(128, 128))
    assert unfiltered.n_segments > res.n_segments
    # exactly the single-shot filter applied to the blockwise mutex watershed's labels
    expected = remove_small_segments(np.asarray(unfiltered.labels), 50, affinities=np.asarray(unfiltered.affinities),
                                     offsets=unfiltered.offsets, n_attractive=unfiltered.n_attractive)
    np.testing.assert_array_equal(labels, expected)


def _shifted_stack(raw):
    """Two slices with different intensity ranges: the second is the first, darker and offset."""
    x = raw[0, :128, :128].astype(np.float32)
    return np.stack([x, 0.25 * x + 100.0])


@pytest.mark.parametrize("normalize", ["quantile", "standardize"])
def test_segment_stack_normalises_globally_in_one_prediction(isbi, monkeypatch, normalize):
    """A 2D model on a z stack: one predict_tiled call, normalisation statistics of the whole stack."""
    import xmodal.inference
    from xmodal.inference import predict_tiled
    from xmodal.inference._normalize import quantile_normalizer
    from xmodal.models import load_isbi2012_affinity_unet
    from xmodal.inference import Standardize, global_mean_std

    stack = _shifted_stack(isbi[0])
    calls = []

    def spy(model, image, **kw):
        calls.append((tuple(image.shape), kw.get("client"), kw.get("tile_shape"), kw.get("halo")))
        return predict_tiled(model, image, **kw)

    monkeypatch.setattr(xmodal.inference, "predict_tiled", spy)
    res = segment(stack, model="isbi2012", normalize=normalize, tile_shape=(128, 128))
    assert len(calls) == 1 and calls[0][0] == stack.shape  # planned once, for the whole stack
    assert calls[0][2] == (1, 128, 128) and calls[0][3][0] == 0  # tiles one slice deep, no halo across slices
    monkeypatch.undo()
    model = load_isbi2012_affinity_unet()
    norm = (quantile_normalizer(stack, channel_axis=None) if normalize == "quantile"
            else Standardize(*global_mean_std(stack)))
    aff = np.asarray(res.affinities)
    for z in range(2):  # each slice as a whole-slice 2D prediction with the stack's statistics
        expected = predict_tiled(model, stack[z], normalize=norm, tile_shape=(128, 128), progress=False)
        assert np.abs(aff[:, z] - expected).max() <= 1e-5
    # per-slice statistics would undo the intensity change and give both slices the same prediction
    own = [predict_tiled(model, stack[z], tile_shape=(128, 128), progress=False,
                         normalize="quantile" if normalize == "quantile" else Standardize(*global_mean_std(stack[z])))
           for z in range(2)]
    assert np.abs(own[0] - own[1]).max() < 1e-3
    assert np.abs(aff[:, 0] - aff[:, 1]).max() > 0.1


def test_segment_stack_passes_the_client(isbi, monkeypatch):
    """The dask client runs the stack's prediction, blockwise mutex watershed and size filter."""
    import distributed

    import xmodal.inference
    from xmodal.inference import predict_tiled

    stack = _shifted_stack(isbi[0])
    kw = dict(model="isbi2012", tile_shape=(128, 128), block_shape=(1, 64, 64), min_size=30)
    local = segment(stack, **kw)
    clients = []

    def spy(model, image, **kwargs):
        clients.append(kwargs.get("client"))
        return predict_tiled(model, image, **kwargs)

    monkeypatch.setattr(xmodal.inference, "predict_tiled", spy)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        before = len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.transition_log)))
        remote = segment(stack, client=client, **kw)
        after = len(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.transition_log)))
    assert clients == [client] and after > before  # tasks ran on the cluster
    np.testing.assert_array_equal(np.asarray(remote.affinities), np.asarray(local.affinities))
    np.testing.assert_array_equal(np.asarray(remote.labels), np.asarray(local.labels))
    assert remote.n_segments == local.n_segments


def test_stack_model_wrapper_pickles_to_the_same_bytes(isbi):
    """The 2D model's stack wrapper is the model's identity in the prediction's job signature: the
    same weights give the same token (a resumed run recognises its tiles), and a pickled copy (a
    dask worker's) predicts the same."""
    import pickle

    from xmodal.inference._model import model_token
    from xmodal.models import load_isbi2012_affinity_unet
    from xmodal.pipelines._slicewise import PerSlice

    a, b = PerSlice(load_isbi2012_affinity_unet(), "cpu"), PerSlice(load_isbi2012_affinity_unet(), "cpu")
    assert model_token(a) == model_token(b)
    other = load_isbi2012_affinity_unet()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert model_token(PerSlice(other, "cpu")) != model_token(a)
    x = _shifted_stack(isbi[0])[None, None, :, :64, :64]
    copy = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(copy(x), a(x))
    assert copy(x).shape == (1, len(copy.model.offsets), 2, 64, 64)


def test_segment_defaults_use_the_em_model_and_its_stored_method(isbi):
    """No arguments: the shipped EM model, its quantile normalisation and the method chosen on
    training slices 20-24 (a stack of two held-out slices, 256 x 256 crops)."""
    from xmodal.models import em_affinity_unet_metadata

    raw, gt = isbi
    stored = em_affinity_unet_metadata()["segmentation_defaults"]
    res = segment(raw, ground_truth=gt)
    assert res.parameters["model"] == "em_affinity_unet" and res.parameters["method"] == stored["method"]
    assert res.parameters["min_size"] == stored[stored["method"]]["min_size"]
    assert res.offsets.shape == (14, 3) and not set(np.unique(res.labels[0])) & set(np.unique(res.labels[1]))
    assert res.metrics["mean"]["arand"] < 0.1


def test_cli_segment_tta_flag(isbi, tmp_path):
    """`xmodal segment --tta` averages the 8 dihedral predictions and records it in the provenance."""
    raw, _ = isbi
    np.save(tmp_path / "raw.npy", raw[0][:96, :96])
    r = _run("segment", str(tmp_path / "raw.npy"), "--model", "isbi2012", "--method", "mws", "--tta",
             "--out", str(tmp_path / "seg"), "-q")
    assert r.returncode == 0, r.stderr
    prov = json.loads((tmp_path / "seg" / "provenance.json").read_text())
    assert prov["parameters"]["tta"] is True


def test_demo_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    from xmodal.demo import run_demo

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="out: expected a folder for the demo's outputs, got the existing file"):
        run_demo(f, progress=False)
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
