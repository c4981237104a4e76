"""GPU benchmarks: xmodal's CUDA kernels against GPU peers on the same input, in the same run.

Skipped without a CUDA GPU, cupy and ``xmodal._cuda``. Run on a GPU machine with
``benchmarks/run_device.sh`` (build, CUDA tests, these benchmarks, results under ``$OUT``).

Workloads (``bench_cpd_scale.nucleus_cloud``: tiled, randomly rotated copies of the 11,497
Platynereis EM nuclei, µm; a jittered 8 µm lattice without the data set):
- ``test_cpd_rigid_200k``: rigid CPD, 200k fixed points, the moving set rotated 0.3 rad, shifted
  10 µm, 1 µm noise, 8 % missing; float32 on both sides, w = 0, the same iteration count.
  Peer: cpd-pytorch (``RigidRegistration`` with ``device="cuda"``, float32), the PyTorch CPD.
- ``test_cpd_deformable_100k``: deformable CPD, 100k points, a smooth ~6 µm field (length scale
  60 µm), beta = 30 µm, lam = 0.1, w = 1e-5. Peer: cpd-pytorch ``DeformableRegistration`` with
  ``low_rank=True`` (its option for large sets; the dense solve needs M x M).
  Accuracy of both: mean distance of the registered points to their true positions.
- ``test_knn``: ``xmodal.knn_graph`` (k = 8, symmetric) on 200k and 1M points, GPU (numpy in and
  cupy in; the automatic choice of the uniform-grid search or brute force, and brute force alone)
  against xmodal's CPU path, scipy cKDTree (all cores) and a blocked torch ``cdist`` + ``topk`` on
  the GPU; the GPU graph must equal the CPU graph.

- ``test_cpd_estep_grid``: one E-step at sigma = 1.5 µm (the late iterations) on 200k and 1M points:
  the GPU's cell-grid path against its dense path (``grid=False``) and the CPU's exact kernel (all
  cores); the results must agree.
- ``test_cpd_estep_features``: one E-step with two feature columns (CPD with features) at sigma =
  1.5 µm on 100k points, float64: the GPU kernel against the CPU kernel (all cores).
- ``test_cpd_rigid_1m_coarse_to_fine``: ``cpd_coarse_to_fine`` rigid 1M x 920k (45 iterations on
  20k-point subsamples, 5 on all points) with cupy arrays against the same call on the CPU.

Peers that take long run fewer iterations (sized from a 2-iteration probe to ``PEER_BUDGET_S``) and
are compared per iteration (``ratio_vs_<peer>`` = peer s/iteration / xmodal s/iteration).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpd_scale import nucleus_cloud, perturb  # noqa: E402
from conftest import machine_description, min_seconds, peer_not_measured  # noqa: E402

import xmodal  # noqa: E402
from xmodal._device import cuda_available  # noqa: E402

cp = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not (cuda_available() and torch.cuda.is_available()),
                                reason="needs a CUDA GPU, cupy and xmodal._cuda")

QUICK = os.environ.get("XMODAL_BENCH_QUICK", "") not in ("", "0")
PEER_BUDGET_S = float(os.environ.get("XMODAL_BENCH_PEER_BUDGET", 25))


def _sync():
    cp.cuda.Device().synchronize()
    torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def _error(moved, X, keep):
    return float(np.linalg.norm(np.asarray(moved, np.float64) - X[keep], axis=1).mean())


def _xmodal_cpd(Y, X, iters, **kw):
    Yd, Xd = cp.asarray(Y, cp.float32), cp.asarray(X, cp.float32)
    xmodal.cpd(Yd[:2000], Xd[:2000], max_iter=2, tol=0.0, **kw)  # warm-up: module load, cupy kernels
    secs, r = _timed(lambda: xmodal.cpd(Yd, Xd, max_iter=iters, tol=0.0, **kw))
    return secs, r


def _peer_cpd(cls, Y, X, iters, **kw):
    """cpd-pytorch on the GPU in float32: (seconds, iterations run, moved) or an error string."""
    try:
        import cpd_pytorch
    except ImportError as exc:
        return f"unavailable: {exc}"
    R = getattr(cpd_pytorch, cls)
    Xt = torch.as_tensor(X, dtype=torch.float32, device="cuda")
    Yt = torch.as_tensor(Y, dtype=torch.float32, device="cuda")
    try:
        # probe: 2 iterations, to size the run to the budget
        t_probe, _ = _timed(lambda: R(Xt, Yt, max_iterations=2, tolerance=0.0, **kw).register())
        n = int(max(2, min(iters, PEER_BUDGET_S / max(t_probe / 2, 1e-6))))
        reg = R(Xt, Yt, max_iterations=n, tolerance=0.0, **kw)
        secs, (TY, _) = _timed(reg.register)
        return secs, int(reg.iteration), TY.double().cpu().numpy()
    except Exception as exc:  # out of memory or an API change: recorded, never hidden
        return f"failed: {type(exc).__name__}: {exc}"[:300]


def _record_cpd(info, name, secs, iters, moved, X, keep, x_per_iter):
    info[f"{name}_seconds"] = secs
    info[f"{name}_iterations"] = iters
    info[f"{name}_seconds_per_iteration"] = secs / iters
    info[f"{name}_mean_error_um"] = _error(moved, X, keep)
    info[f"ratio_vs_{name}"] = (secs / iters) / x_per_iter


def test_cpd_rigid_200k(benchmark):
    n = 20_000 if QUICK else 200_000
    iters = 50
    X, cloud = nucleus_cloud(n)
    Y, keep = perturb(X, "rigid", seed=1)
    out = {}

    def run():
        out["x"] = _xmodal_cpd(Y, X, iters, transform="rigid")

    benchmark.pedantic(run, rounds=1, iterations=1)
    secs, r = out["x"]
    info = benchmark.extra_info
    per_iter = secs / r.iterations
    info.update(machine=machine_description(), cloud=cloud, n_fixed=len(X), n_moving=len(Y), xmodal_seconds=secs,
                xmodal_iterations=r.iterations, xmodal_seconds_per_iteration=per_iter,
                xmodal_e_step_seconds=r.info["seconds"]["e_step"], xmodal_kernel_pairs=r.info.get("pairs"),
                xmodal_mean_error_um=_error(cp.asnumpy(r.moved), X, keep), mean_error_before_um=_error(Y, X, keep),
                gpu=torch.cuda.get_device_name())
    peer = _peer_cpd("RigidRegistration", Y, X, iters, w=0.0)
    if isinstance(peer, str):
        peer_not_measured(benchmark, "cpd_pytorch", peer)
    else:
        _record_cpd(info, "cpd_pytorch", *peer, X, keep, per_iter)
    assert info["xmodal_mean_error_um"] < info["mean_error_before_um"]


def test_cpd_deformable_100k(benchmark):
    n = 10_000 if QUICK else 100_000
    iters = 30
    params = dict(beta=30.0, w=1e-5)
    X, cloud = nucleus_cloud(n)
    Y, keep = perturb(X, "deformable", seed=1)
    out = {}

    def run():
        out["x"] = _xmodal_cpd(Y, X, iters, transform="deformable", lam=0.1, **params)

    benchmark.pedantic(run, rounds=1, iterations=1)
    secs, r = out["x"]
    info = benchmark.extra_info
    per_iter = secs / r.iterations
    info.update(machine=machine_description(), cloud=cloud, n_fixed=len(X), n_moving=len(Y), params=params,
                lam=0.1, xmodal_seconds=secs, xmodal_iterations=r.iterations, xmodal_seconds_per_iteration=per_iter,
                xmodal_e_step_seconds=r.info["seconds"]["e_step"], xmodal_m_step_seconds=r.info["seconds"]["m_step"],
                xmodal_rank=r.info.get("rank"), xmodal_mean_error_um=_error(cp.asnumpy(r.moved), X, keep),
                mean_error_before_um=_error(Y, X, keep), gpu=torch.cuda.get_device_name())
    peer = _peer_cpd("DeformableRegistration", Y, X, iters, alpha=0.1, low_rank=True, **params)
    if isinstance(peer, str):
        peer_not_measured(benchmark, "cpd_pytorch", peer)
    else:
        _record_cpd(info, "cpd_pytorch", *peer, X, keep, per_iter)
    assert info["xmodal_mean_error_um"] < info["mean_error_before_um"]


def _torch_knn(a, b, k):
    """Brute-force k nearest of b for every a on the GPU (cdist + topk in blocks of <= 2e9 distances)."""
    A = torch.as_tensor(a, dtype=torch.float32, device="cuda")
    B = torch.as_tensor(b, dtype=torch.float32, device="cuda")
    block = max(1, int(2e9 // len(B)))
    idx = torch.empty((len(A), k), dtype=torch.int64, device="cuda")
    for s in range(0, len(A), block):
        d = torch.cdist(A[s:s + block], B)
        idx[s:s + block] = d.topk(k, largest=False).indices
    return idx


@pytest.mark.parametrize("n", [20_000, 100_000] if QUICK else [200_000, 1_000_000])
def test_knn(benchmark, n):
    from scipy.spatial import cKDTree

    k = 8
    X, cloud = nucleus_cloud(n)
    Y, _ = perturb(X, "rigid", seed=1)
    xmodal.knn_graph(X[:1000], Y[:1000], k=k, device="cuda")  # warm-up
    out = {}

    def run():
        out["g"] = xmodal.knn_graph(X, Y, k=k, device="cuda")

    benchmark.pedantic(run, rounds=2, iterations=1)
    t_gpu = min_seconds(benchmark)
    Xd, Yd = cp.asarray(X), cp.asarray(Y)
    t_gpu_dev, gd = _timed(lambda: xmodal.knn_graph(Xd, Yd, k=k))
    t_cpu, gc = _timed(lambda: xmodal.knn_graph(X, Y, k=k, device="cpu"))
    g = out["g"]
    diff = abs(g - gc)
    from xmodal._device import native_cuda

    mod = native_cuda("knn_graph")
    paths = {}
    for alg in ("auto", "brute"):  # the automatic choice (grid or brute force) and brute force alone
        paths[alg] = _timed(lambda alg=alg: mod.knn_graph(Xd, Yd, k, -1.0, True, 0, alg))
    t_kd, _ = _timed(lambda: (cKDTree(Y).query(X, k, workers=-1), cKDTree(X).query(Y, k, workers=-1)))
    t_torch, _ = _timed(lambda: (_torch_knn(X, Y, k), _torch_knn(Y, X, k)))
    info = benchmark.extra_info
    info.update(machine=machine_description(), cloud=cloud, n=n, k=k, symmetric=True, gpu=torch.cuda.get_device_name(),
                xmodal_gpu_numpy_io_s=t_gpu, xmodal_gpu_cupy_io_s=t_gpu_dev, xmodal_cpu_s=t_cpu,
                xmodal_cpu_threads=xmodal.get_num_threads(), ckdtree_all_cores_s=t_kd, torch_cdist_topk_gpu_s=t_torch,
                ratio_vs_xmodal_cpu=t_cpu / t_gpu, ratio_vs_ckdtree=t_kd / t_gpu, ratio_vs_torch=t_torch / t_gpu,
                algorithm=paths["auto"][1]["algorithm"], algorithm_reverse=paths["auto"][1]["algorithm_reverse"],
                native_auto_s=paths["auto"][0], native_brute_s=paths["brute"][0],
                ratio_grid_vs_brute=paths["brute"][0] / paths["auto"][0],
                nnz=int(g.nnz), nnz_cpu=int(gc.nnz), nnz_cupy_io=int(gd.nnz),
                max_abs_diff_vs_cpu=float(diff.max()) if diff.nnz else 0.0)
    assert g.nnz == gc.nnz and gd.nnz == gc.nnz
    assert (diff.nnz == 0) or diff.max() == 0.0


@pytest.mark.parametrize("n", [20_000, 100_000] if QUICK else [200_000, 1_000_000])
def test_cpd_estep_grid(benchmark, n):
    from xmodal import _core
    from xmodal._device import native_cuda

    mod = native_cuda("cpd_estep")
    X, cloud = nucleus_cloud(n)
    Y, _ = perturb(X, "rigid", seed=1)
    Y = X[np.sort(np.random.default_rng(2).choice(len(X), len(Y), replace=False))] + \
        np.random.default_rng(3).normal(scale=1.0, size=Y.shape)  # a late iteration: aligned, 1 µm off
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    Xd, Yd = cp.asarray(X32), cp.asarray(Y32)
    sigma2, c, cutoff = 1.5 ** 2, 1e-6, 36.0
    mod.cpd_estep(Xd[:1000], Yd[:1000], None, sigma2, c, cutoff, 0, True)  # warm-up
    out = {}

    def run():
        out["g"] = mod.cpd_estep(Xd, Yd, None, sigma2, c, cutoff, 0, True)

    benchmark.pedantic(run, rounds=3, iterations=1)
    t_grid = min_seconds(benchmark)
    t_dense, dense = _timed(lambda: mod.cpd_estep(Xd, Yd, None, sigma2, c, cutoff, 0, False))
    t_cpu, cpu = _timed(lambda: _core.cpd_estep(X32, Y32, None, sigma2, c, cutoff, True))
    g = {k: cp.asarray(out["g"][k]).get() for k in ("P1", "Pt1", "best_idx")}
    dn = {k: cp.asarray(dense[k]).get() for k in ("P1", "Pt1", "best_idx")}
    info = benchmark.extra_info
    info.update(machine=machine_description(), cloud=cloud, n_fixed=len(X), n_moving=len(Y), sigma=1.5,
                gpu=torch.cuda.get_device_name(), grid_s=t_grid, dense_s=t_dense, cpu_exact_s=t_cpu,
                cpu_threads=xmodal.get_num_threads(), grid_pairs=int(out["g"]["pairs"]),
                dense_pairs=int(dense["pairs"]), ratio_grid_vs_dense=t_dense / t_grid,
                grid_cells=int(out["g"]["grid_cells"]), cell_edge=float(out["g"]["cell_edge"]),
                ratio_vs_cpu_exact=t_cpu / t_grid,
                max_rel_diff_p1_vs_dense=float(np.max(np.abs(g["P1"] - dn["P1"]) / np.maximum(np.abs(dn["P1"]), 1e-30))),
                max_abs_diff_pt1_vs_cpu=float(np.max(np.abs(g["Pt1"] - cpu["Pt1"]))),
                best_idx_agreement_vs_dense=float(np.mean(g["best_idx"] == dn["best_idx"])),
                best_idx_agreement_vs_cpu=float(np.mean(g["best_idx"] == cpu["best_idx"])))
    assert info["best_idx_agreement_vs_cpu"] > 0.99 and info["max_abs_diff_pt1_vs_cpu"] < 1e-4


@pytest.mark.parametrize("n", [20_000] if QUICK else [100_000])
def test_cpd_estep_features(benchmark, n):
    """One E-step with two feature columns (CPD with features) at sigma = 1.5 µm: the GPU's grid path
    against the CPU kernel (all cores) on the same input; the results must agree."""
    from xmodal import _core
    from xmodal._device import native_cuda

    mod = native_cuda("cpd_estep")
    X, cloud = nucleus_cloud(n)
    rng = np.random.default_rng(4)
    Y = X[np.sort(rng.choice(len(X), int(0.9 * len(X)), replace=False))] + rng.normal(scale=1.0, size=(int(0.9 * len(X)), 3))
    FX = rng.normal(size=(len(X), 2))
    FY = rng.normal(size=(len(Y), 2))
    sigma2, c, cutoff, finv = 1.5 ** 2, 1e-6, 36.0, 1.0
    d = [cp.asarray(a) for a in (X, Y, FX, FY)]
    mod.cpd_estep_features(d[0][:1000], d[1][:1000], None, d[2][:1000], d[3][:1000], finv, sigma2, c, cutoff, 0, True)
    out = {}

    def run():
        out["g"] = mod.cpd_estep_features(d[0], d[1], None, d[2], d[3], finv, sigma2, c, cutoff, 0, True)

    benchmark.pedantic(run, rounds=3, iterations=1)
    t_gpu = min_seconds(benchmark)
    t_cpu, cpu = _timed(lambda: _core.cpd_estep_features(X, Y, None, FX, FY, finv, sigma2, c, cutoff, True))
    g = {k: cp.asarray(out["g"][k]).get() for k in ("P1", "Pt1", "best_idx")}
    info = benchmark.extra_info
    info.update(machine=machine_description(), cloud=cloud, n_fixed=len(X), n_moving=len(Y), sigma=1.5,
                feature_columns=2, gpu=torch.cuda.get_device_name(), gpu_s=t_gpu, cpu_s=t_cpu,
                cpu_threads=xmodal.get_num_threads(), ratio_vs_cpu=t_cpu / t_gpu,
                pairs_gpu=int(out["g"]["pairs"]), pairs_cpu=int(cpu["pairs"]),
                max_abs_diff_pt1_vs_cpu=float(np.max(np.abs(g["Pt1"] - cpu["Pt1"]))),
                best_idx_agreement_vs_cpu=float(np.mean(g["best_idx"] == cpu["best_idx"])))
    assert info["best_idx_agreement_vs_cpu"] > 0.999 and info["max_abs_diff_pt1_vs_cpu"] < 1e-9


def test_cpd_rigid_1m_coarse_to_fine(benchmark):
    n = 50_000 if QUICK else 1_000_000
    X, cloud = nucleus_cloud(n)
    Y, keep = perturb(X, "rigid", seed=1)
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    kw = dict(transform="rigid", n_coarse=20_000, max_iter=50, refine_iter=5, tol=0.0, w=1e-5)
    Xd, Yd = cp.asarray(X32), cp.asarray(Y32)
    xmodal.cpd_coarse_to_fine(Yd[:5000], Xd[:5000], **dict(kw, n_coarse=1000))  # warm-up
    out = {}

    def run():
        out["r"] = xmodal.cpd_coarse_to_fine(Yd, Xd, **kw)
        _sync()

    benchmark.pedantic(run, rounds=1, iterations=1)
    t_gpu = min_seconds(benchmark)
    t_cpu, rc = _timed(lambda: xmodal.cpd_coarse_to_fine(Y32, X32, **kw))
    r = out["r"]
    info = benchmark.extra_info
    info.update(machine=machine_description(), cloud=cloud, n_fixed=len(X), n_moving=len(Y),
                gpu=torch.cuda.get_device_name(), xmodal_gpu_s=t_gpu, xmodal_cpu_s=t_cpu,
                cpu_threads=xmodal.get_num_threads(), ratio_vs_cpu=t_cpu / t_gpu,
                gpu_stages_s=r.info["coarse_to_fine"]["seconds"], cpu_stages_s=rc.info["coarse_to_fine"]["seconds"],
                xmodal_mean_error_um=_error(cp.asnumpy(r.moved), X, keep),
                cpu_mean_error_um=_error(rc.moved, X, keep), mean_error_before_um=_error(Y, X, keep),
                fine_pairs=r.info.get("pairs"))
    assert info["xmodal_mean_error_um"] < 2.0
