"""Halo tiled inference vs MONAI's sliding_window_inference (same model, volume and tile).

Workload (the issue's): MONAI UNet (spatial_dims=3, channels (8, 16, 32), strides (2, 2),
num_res_units=0, BatchNorm so that eval-mode tiles can be exact), eval mode, a 64 x 256 x 256
float32 volume, tile 32 x 128 x 128. MONAI runs at overlap 0.25 with roi_size = the tile; xmodal
runs blend="crop" with the automatic halo (half the receptive field), and with tile_shape=None.
Both are compared with the whole-volume forward pass (max |difference| in extra_info).

Blended mode (test_blend_gaussian_vs_monai): xmodal blend="gaussian" against MONAI mode="gaussian" with the
same window (MONAI's roi_size) and overlap 0.25 (xmodal: tile = window * 0.75, halo = window * 0.125) on a
64 x 384 x 384 volume (48 windows each): time, max |difference| of the two outputs (xmodal's window
grid is offset by the halo, cut at the border where MONAI's last window is shifted inwards) and the
peak RSS increase, each in a fresh subprocess (xmodal writing numpy, xmodal writing an OME-Zarr path, MONAI).

Also: peak RSS of predict_tiled on a 4 GiB float32 zarr volume (zarr in, OME-Zarr out), measured in
a subprocess; a dask LocalCluster run with 2 workers (identical to the local result).

XMODAL_BENCH_QUICK=1 shrinks the volumes (smoke test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai = pytest.importorskip("monai")

import xmodal  # noqa: E402
from conftest import min_seconds  # noqa: E402

QUICK = os.environ.get("XMODAL_BENCH_QUICK", "") not in ("", "0")
SHAPE = (32, 128, 128) if QUICK else (64, 256, 256)
TILE = (32, 64, 64) if QUICK else (32, 128, 128)
# the big out-of-core volume: 4 GiB of float32 (quick: 64 MiB)
BIG = (32, 256, 512) if QUICK else (128, 2048, 4096)
BIG_TILE = (32, 128, 128) if QUICK else (64, 160, 160)
BIG_CHUNKS = (32, 128, 128)  # input chunks

# blended mode: a window equal to MONAI's roi_size and overlap 0.25 (stride = tile = window * 0.75)
BLEND_SHAPE = (32, 128, 128) if QUICK else (64, 384, 384)
BLEND_WINDOW = TILE
BLEND_OVERLAP = 0.25
BLEND_HALO = tuple(int(round(w * BLEND_OVERLAP / 2)) for w in BLEND_WINDOW)
BLEND_TILE = tuple(w - 2 * h for w, h in zip(BLEND_WINDOW, BLEND_HALO))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_model(device="cpu"):
    torch.manual_seed(0)
    m = monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 16, 32),
                                 strides=(2, 2), num_res_units=0, norm="batch")
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm3d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval().to(device)


def volume(shape=SHAPE):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _best_time(fn, rounds):
    best, out = np.inf, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _peers(model, x, device):
    """The whole-volume pass (best of 3) and MONAI (best of 4, the first a warm-up; xmodal: a warm-up and 3)."""
    xt = torch.from_numpy(x)[None, None].to(device)
    with torch.inference_mode():
        t_whole, whole = _best_time(lambda: model(xt)[0].cpu().numpy(), 3)
        t_monai, swi = _best_time(
            lambda: monai.inferers.sliding_window_inference(xt, TILE, 1, model, overlap=0.25)[0].cpu().numpy(), 4)
    return t_whole, whole, t_monai, swi


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tiles", ["same_tile", "auto_tile"])
def test_predict_tiled_vs_monai(benchmark, device, tiles):
    model = make_model(device)
    x = volume()
    t_whole, whole, t_monai, swi = _peers(model, x, device)
    kwargs = dict(tile_shape=TILE if tiles == "same_tile" else None, device=device, progress=False)
    xmodal.predict_tiled(model, x, **kwargs)  # warm-up
    y = benchmark.pedantic(xmodal.predict_tiled, args=(model, x), kwargs=kwargs, rounds=3, iterations=1)
    t_x = min_seconds(benchmark)
    diff_x = float(np.abs(y - whole).max())
    diff_m = float(np.abs(swi - whole).max())
    benchmark.extra_info.update(
        shape=SHAPE, tile=TILE if tiles == "same_tile" else "auto", device=device,
        xmodal_s=t_x, monai_s=t_monai, whole_volume_s=t_whole,
        ratio_vs_monai=t_monai / t_x, whole_volume_ratio_vs_monai=t_monai / t_whole,
        max_abs_diff_xmodal_vs_whole=diff_x, max_abs_diff_monai_vs_whole=diff_m,
    )
    # Crop mode with the automatic halo computes the same function as the whole-volume pass. On the
    # CPU the difference is rounding (<= 1e-4). On a GPU cuDNN picks its convolution algorithm per
    # input shape and runs float32 convolutions in TF32 by default (10-bit mantissa), so a tile and the
    # whole volume differ at that level (H200: 2.0e-4 with outputs of order 1, against 0.66 for MONAI's
    # blended overlap): the bound is TF32's relative precision times the output's magnitude.
    tol = 1e-4 if device == "cpu" else 2e-3 * max(1.0, float(np.abs(whole).max()))
    benchmark.extra_info["tolerance"] = tol
    assert diff_x <= tol


def test_dask_localcluster_two_workers(benchmark):
    distributed = pytest.importorskip("distributed")
    model = make_model()
    x = volume()
    local = xmodal.predict_tiled(model, x, tile_shape=TILE, progress=False)
    xt = torch.from_numpy(x)[None, None]
    with torch.inference_mode():
        t_monai, _ = _best_time(
            lambda: monai.inferers.sliding_window_inference(xt, TILE, 1, model, overlap=0.25), 1)
    with tempfile.TemporaryDirectory() as tmp, \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        zin = xmodal.io.create_array(os.path.join(tmp, "in.zarr"), x.shape, np.float32, chunks=TILE)
        zin[:] = x
        counter = [0]

        def run():
            counter[0] += 1
            return xmodal.predict_tiled(model, zin, tile_shape=TILE, client=client, progress=False,
                                        out=os.path.join(tmp, f"out{counter[0]}.zarr"))

        y = benchmark.pedantic(run, rounds=2, iterations=1)
        same = bool(np.array_equal(y[:], local))
    benchmark.extra_info.update(shape=SHAPE, tile=TILE, workers=2, identical_to_local=same,
                                monai_s=t_monai, ratio_vs_monai=t_monai / min_seconds(benchmark))
    assert same


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, zarr
    sys.path.insert(0, {bench_dir!r})
    from bench_tiling import make_model
    import xmodal
    model = make_model()
    t0 = time.perf_counter()
    out = xmodal.predict_tiled(model, {src!r}, tile_shape={tile!r}, out={dst!r}, progress=False)
    dt = time.perf_counter() - t0
    probe = np.asarray(out[0, :8, :64, :64])
    # VmHWM: this process's own high-water mark (ru_maxrss can include the parent's RSS at fork time)
    try:
        with open("/proc/self/status") as f:
            peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:")][0]
    except (OSError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"seconds": dt, "peak_rss_mib": peak,
                       "out_shape": list(out.shape), "finite": bool(np.isfinite(probe).all())}}))
""")


def test_peak_rss_out_of_core(benchmark, tmp_path):
    pytest.importorskip("zarr")
    src = os.fspath(tmp_path / "big.zarr")
    arr = xmodal.io.create_array(src, BIG, np.float32, chunks=BIG_CHUNKS)
    # fill band by band (smooth structure plus noise, so compression is realistic but the fill quick)
    bz, by = BIG_CHUNKS[0], min(BIG[1], 512)
    noise = np.random.default_rng(0).standard_normal(size=(bz, by, BIG[2]), dtype=np.float32) * 0.1
    xs = np.cos(np.arange(BIG[2]) / 23.0).astype(np.float32)
    for z0 in range(0, BIG[0], bz):
        for y0 in range(0, BIG[1], by):
            ys = np.sin((np.arange(y0, y0 + by) + z0) / 17.0).astype(np.float32)
            arr[z0:z0 + bz, y0:y0 + by] = noise + ys[None, :, None] * xs[None, None, :]
    size_gib = np.prod(BIG) * 4 / 2**30
    script = _RSS_SCRIPT.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), src=src, tile=BIG_TILE,
                                dst=os.fspath(tmp_path / "pred.zarr"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def run():
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])

    info = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(volume_shape=BIG, volume_gib=float(size_gib), tile=BIG_TILE, **info)
    assert info["finite"]
    if not QUICK:
        assert info["peak_rss_mib"] <= 1024


def _status_mib(key):
    with open("/proc/self/status") as f:
        return [int(line.split()[1]) / 1024 for line in f if line.startswith(key)][0]


def _blend_rss_child(mode, dst):
    """Run in a fresh process: one blended prediction of ``volume(BLEND_SHAPE)`` by ``mode`` ("xmodal_numpy",
    "xmodal_zarr" writing an OME-Zarr at ``dst``, "monai"); its time and peak RSS above the resident size
    before the call (model, volume and one window's forward pass already there; the high-water mark reset
    through /proc/self/clear_refs where the kernel allows it, else the whole process's peak)."""
    model = make_model()
    x = volume(BLEND_SHAPE)
    xt = torch.from_numpy(x)[None, None]
    with torch.inference_mode():
        model(torch.zeros((1, 1) + BLEND_WINDOW))  # torch's kernels and pools, the same for every mode
    base = _status_mib("VmRSS:")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    if mode == "monai":
        with torch.inference_mode():
            y = monai.inferers.sliding_window_inference(xt, BLEND_WINDOW, 1, model, overlap=BLEND_OVERLAP,
                                                        mode="gaussian")[0].numpy()
    else:
        y = xmodal.predict_tiled(model, x, tile_shape=BLEND_TILE, halo=BLEND_HALO, blend="gaussian",
                                 out=dst if mode == "xmodal_zarr" else None, progress=False)
    dt = time.perf_counter() - t0
    peak = _status_mib("VmHWM:")
    return {"seconds": dt, "peak_rss_mib": peak, "base_rss_mib": base, "peak_rss_increase_mib": peak - base,
            "peak_reset": reset, "finite": bool(np.isfinite(np.asarray(y[0, :8, :64, :64])).all())}


def test_blend_gaussian_vs_monai(benchmark, tmp_path):
    """xmodal blend="gaussian" vs MONAI mode="gaussian", same window, overlap, model and volume (CPU)."""
    pytest.importorskip("zarr")
    model = make_model()
    x = volume(BLEND_SHAPE)
    xt = torch.from_numpy(x)[None, None]
    with torch.inference_mode():  # best of 4, the first a warm-up (as _peers)
        t_monai, swi = _best_time(lambda: monai.inferers.sliding_window_inference(
            xt, BLEND_WINDOW, 1, model, overlap=BLEND_OVERLAP, mode="gaussian")[0].numpy(), 4)
    kwargs = dict(tile_shape=BLEND_TILE, halo=BLEND_HALO, blend="gaussian", device="cpu", progress=False)
    xmodal.predict_tiled(model, x, **kwargs)  # warm-up
    y = benchmark.pedantic(xmodal.predict_tiled, args=(model, x), kwargs=kwargs, rounds=3, iterations=1)
    t_x = min_seconds(benchmark)
    diff = np.abs(y - swi)
    scale = float(np.abs(swi).max())
    stride = [int(w * (1 - BLEND_OVERLAP)) for w in BLEND_WINDOW]  # MONAI's window count (roi <= image)
    n_monai = int(np.prod([-(-(n - w) // s) + 1 for n, w, s in zip(BLEND_SHAPE, BLEND_WINDOW, stride)]))
    n_xmodal = int(np.prod([-(-n // t) for n, t in zip(BLEND_SHAPE, BLEND_TILE)]))

    script = ("import json, sys; sys.path.insert(0, {!r}); from bench_tiling import _blend_rss_child; "
              "print(json.dumps(_blend_rss_child({!r}, {!r})))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rss = {}
    for mode in ("xmodal_numpy", "xmodal_zarr", "monai"):
        code = script.format(os.path.dirname(os.path.abspath(__file__)), mode, os.fspath(tmp_path / f"{mode}.zarr"))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        rss[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    inc = {m: r["peak_rss_increase_mib"] for m, r in rss.items()}
    benchmark.extra_info.update(
        shape=BLEND_SHAPE, window=BLEND_WINDOW, overlap=BLEND_OVERLAP, tile=BLEND_TILE, halo=BLEND_HALO,
        output_mib=float(np.prod(BLEND_SHAPE) * 4 / 2**20),
        xmodal_s=t_x, monai_s=t_monai, ratio_vs_monai=t_monai / t_x,
        max_abs_diff_vs_monai=float(diff.max()), windows_xmodal=n_xmodal, windows_monai=n_monai,
        mean_abs_diff_vs_monai=float(diff.mean()), max_abs_monai=scale,
        peak_rss_increase_mib=inc, rss_runs=rss,
        rss_ratio_monai_vs_xmodal_zarr=inc["monai"] / max(inc["xmodal_zarr"], 1e-9),
        rss_ratio_xmodal_numpy_vs_xmodal_zarr=inc["xmodal_numpy"] / max(inc["xmodal_zarr"], 1e-9),
    )
    assert all(r["finite"] for r in rss.values())
    # the weights differ (border windows cut vs shifted; MONAI's minimum weight clamp): a loose sanity bound only
    assert float(diff.max()) <= 0.5 * max(scale, 1e-6)
