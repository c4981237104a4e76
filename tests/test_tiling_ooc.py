"""Tiled inference out of core: zarr in/out, resume after a crash, dask arrays and clusters."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zarr = pytest.importorskip("zarr")

from xmodal import io as xio  # noqa: E402
from xmodal.inference import predict_tiled  # noqa: E402

nn = torch.nn


class Net(nn.Module):
    """conv-BN-ReLU, max pooling, up-sampling, skip; 2 input and 3 output channels."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.p = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.c3 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        a = torch.relu(self.bn(self.c1(x)))
        b = self.up(torch.relu(self.c2(self.p(a))))
        return self.c3(torch.cat([a, b], 1))


class Crashing(nn.Module):
    """Wraps a network and raises on its n-th forward pass (counting every call)."""

    def __init__(self, inner, fail_at=None):
        super().__init__()
        self.inner = inner
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        return self.inner(x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = Net()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=(2, 90, 130)).astype(np.float32)


def _ref(net, x):
    with torch.inference_mode():
        return net(torch.from_numpy(x)[None])[0].numpy()


def test_zarr_in_ome_zarr_out(tmp_path, net, image):
    zin = xio.create_array(tmp_path / "in.zarr", image.shape, np.float32, chunks=(1, 32, 32))
    zin[:] = image
    y = predict_tiled(net, os.fspath(tmp_path / "in.zarr"), tile_shape=(32, 32), out=tmp_path / "out.zarr",
                      progress=False)
    assert isinstance(y, zarr.Array) and y.shape == (3, 90, 130) and y.chunks == (3, 32, 32)
    assert np.abs(y[:] - _ref(net, image)).max() <= 1e-5
    group = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert group.attrs["ome"]["multiscales"][0]["axes"][0]["name"] == "c"
    assert group.attrs["xmodal"]["parameters"]["tile_shape"] == [32, 32]
    assert not (tmp_path / "out.zarr" / "0.xmodal-progress").exists()  # markers removed when complete
    # an existing zarr array with chunks dividing the tile
    out = xio.create_array(tmp_path / "o2.zarr", (3, 90, 130), np.float32, chunks=(1, 16, 32))
    predict_tiled(net, zin, tile_shape=(32, 64), out=out, progress=False)
    assert np.abs(out[:] - _ref(net, image)).max() <= 1e-5
    with pytest.raises(ValueError, match="chunks"):
        predict_tiled(net, zin, tile_shape=(24, 24), out=out, progress=False)


def test_resume_after_crash(tmp_path, net, image):
    path = tmp_path / "res.zarr"
    crashing = Crashing(net, fail_at=8).eval()
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(crashing, image, tile_shape=(32, 32), out=path, progress=False)
    markers = [n for n in os.listdir(path / "0.xmodal-progress") if n != "signature"]
    assert 0 < len(markers) < 15  # 3 x 5 tiles, some finished
    # the interrupted output says so: it does not open as an ordinary (partly zero) array
    with pytest.raises(ValueError, match="incomplete"):
        xio.open_array(path)
    with pytest.warns(RuntimeWarning, match="incomplete"):
        assert xio.open_array(path, allow_incomplete=True).shape == (3, 90, 130)
    rerun = Crashing(net).eval()
    y = predict_tiled(rerun, image, tile_shape=(32, 32), out=path, progress=False)
    setup_calls = 2  # torch.fx trace + probe
    assert rerun.calls - setup_calls == 15 - len(markers)  # only the unfinished tiles ran
    assert np.abs(y[:] - _ref(net, image)).max() <= 1e-5
    status = xio.output_status(xio.open_array(path))
    assert status["complete"] and status["writer"] == "xmodal.predict_tiled" and len(status["input_digest"]) == 64
    # complete for this input and these parameters: reused as it is, no tile predicted
    again = Crashing(net).eval()
    predict_tiled(again, image, tile_shape=(32, 32), out=path, progress=False)
    assert again.calls - setup_calls == 0
    # changed parameters: the old markers do not apply, everything is recomputed
    crashing2 = Crashing(net, fail_at=setup_calls + 5).eval()
    with pytest.raises(RuntimeError):
        predict_tiled(crashing2, image, tile_shape=(32, 32), halo=8, out=path, progress=False)
    again = Crashing(net).eval()
    predict_tiled(again, image, tile_shape=(32, 32), halo=6, out=path, progress=False)
    assert again.calls - setup_calls == 15


def test_resume_on_other_data_recomputes(tmp_path, net, image):
    """Same shape and dtype, other values: finished tiles of the first image are not reused."""
    other = image.copy()
    other[:, 40:50, 60:70] += 1.0  # changes the windows of a few tiles only
    path = tmp_path / "res.zarr"
    with pytest.raises(RuntimeError, match="injected"):
        predict_tiled(Crashing(net, fail_at=2 + 12).eval(), image, tile_shape=(32, 32), out=path, progress=False)
    rerun = Crashing(net).eval()
    y = predict_tiled(rerun, other, tile_shape=(32, 32), out=path, progress=False)
    assert np.array_equal(y[:], predict_tiled(net, other, tile_shape=(32, 32), progress=False))
    assert 4 <= rerun.calls - 2 < 15  # the tiles whose windows changed, plus those never done
    # a complete output of one image is not taken for the result of another
    y = predict_tiled(net, image, tile_shape=(32, 32), out=path, progress=False)
    assert np.array_equal(y[:], predict_tiled(net, image, tile_shape=(32, 32), progress=False))


def test_dask_array_input(net, image):
    da = pytest.importorskip("dask.array")
    y = predict_tiled(net, da.from_array(image, chunks=(2, 40, 50)), tile_shape=(32, 32), progress=False)
    assert np.abs(y - _ref(net, image)).max() <= 1e-5


def test_dask_cluster_same_as_local(tmp_path, net, image):
    distributed = pytest.importorskip("distributed")
    local = predict_tiled(net, image, tile_shape=(32, 32), normalize="quantile", progress=False)
    zin = xio.create_array(tmp_path / "in.zarr", image.shape, np.float32, chunks=(2, 32, 32))
    zin[:] = image
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        y1 = predict_tiled(net, image, tile_shape=(32, 32), normalize="quantile", client=client, progress=False)
        y2 = predict_tiled(net, zin, tile_shape=(32, 32), normalize="quantile", client=client,
                           out=tmp_path / "d.zarr", progress=False)
        y3 = predict_tiled(net, image, tile_shape=(32, 32), normalize="quantile", client=cluster.scheduler_address,
                           progress=False)  # a scheduler address: connected for the run
        y4 = predict_tiled(net, image, tile_shape=(32, 32), blend="linear", client=client, progress=False)
    assert np.array_equal(y4, predict_tiled(net, image, tile_shape=(32, 32), blend="linear", progress=False))
    assert np.array_equal(y1, local)
    assert np.array_equal(y2[:], local)
    assert np.array_equal(y3, local)


@pytest.mark.slow
def test_dask_process_workers(tmp_path, net, image):
    distributed = pytest.importorskip("distributed")
    zin = xio.create_array(tmp_path / "in.zarr", image.shape, np.float32, chunks=(2, 32, 32))
    zin[:] = image
    local = predict_tiled(net, image, tile_shape=(32, 32), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        y = predict_tiled(net, zin, tile_shape=(32, 32), client=client, out=tmp_path / "p.zarr", progress=False)
    assert np.array_equal(y[:], local)


def test_blend_into_zarr(tmp_path, net, image):
    mem = predict_tiled(net, image, tile_shape=(32, 32), blend="gaussian", progress=False)
    z = predict_tiled(net, image, tile_shape=(32, 32), blend="gaussian", out=tmp_path / "g.zarr", progress=False)
    assert np.array_equal(z[:], mem)
    assert np.abs(mem - _ref(net, image)).max() < 0.5


@pytest.mark.cuda
def test_cuda_device_matches_cpu(net, image):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import copy

    cpu = predict_tiled(net, image, tile_shape=(32, 32), device="cpu", progress=False)
    gpu_net = copy.deepcopy(net)
    y = predict_tiled(gpu_net, image, tile_shape=(32, 32), device="cuda", batch_size=3, progress=False)
    auto = predict_tiled(gpu_net, image, progress=False)  # parameters on the GPU: runs there, tile probed
    assert np.abs(y - cpu).max() <= 1e-4 and np.abs(auto - cpu).max() <= 1e-4
