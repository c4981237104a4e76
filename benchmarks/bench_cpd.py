"""CPD benchmarks: xmodal.cpd against pycpd, cycpd and probreg on the same inputs and parameters.

Workload P: 11,497 Platynereis 6 dpf EM nuclei (µm) as fixed, a perturbed copy (smooth ~6 µm
displacement, 1 µm noise, 8 % missing, seed 0) as moving; deformable, w = 1e-5, lam = 0.1,
beta = 30 µm, 150 iterations for xmodal. Peers are slow (tens of seconds per iteration), so they
run a few iterations and are compared per iteration (``ratio_vs_<peer>`` = peer seconds per
iteration / xmodal seconds per iteration, both measured in this process on the same input).

Accuracy: the 28 pairs of JIM767 C. elegans embryos (xmodal.datasets.celegans_embryos()),
evaluated by ``cpd_workloads.celegans_accuracy``.

A peer that is missing or fails is recorded as ``<peer>_status`` and listed at the end of the run
(``conftest.py``). ``test_celegans_accuracy`` has no peer: it compares xmodal.cpd with the same
evaluation without CPD (``floor_without_cpd``).

``XMODAL_BENCH_QUICK=1`` shrinks everything for a smoke test. Data: the folder of
``benchmarks/_data.py`` (``XMODAL_DATA``); workload P is skipped when the data set is absent.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import cpd_workloads as W  # noqa: E402
from _data import data_path, missing  # noqa: E402
from conftest import machine_description, peer_not_measured  # noqa: E402

import xmodal  # noqa: E402

QUICK = os.environ.get("XMODAL_BENCH_QUICK", "") not in ("", "0")
PARAMS = dict(w=1e-5, lam=0.1, beta=30.0)


def _workload_p():
    X = W.platynereis_nuclei()
    if X is None:
        pytest.skip(missing(data_path(W.PLATY_DIR), "Platynereis data"))
    if QUICK:
        X = X[np.random.default_rng(0).choice(len(X), 1500, replace=False)]
    Y, keep = W.perturbed_copy(X)
    return X, Y, keep


def _time_peer(name, X, Y, iters):
    """Seconds per iteration of a peer (set-up excluded), or an error string."""
    try:
        if name == "pycpd":
            from pycpd import DeformableRegistration as R
            kw = dict(alpha=PARAMS["lam"], beta=PARAMS["beta"])
        elif name == "cycpd":
            from cycpd import deformable_registration as R
            kw = dict(alpha=PARAMS["lam"], beta=PARAMS["beta"])
        elif name == "probreg":
            from probreg import cpd as pcpd
        else:
            raise ValueError(name)
    except Exception as exc:  # not installed or broken (probreg needs open3d)
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
    try:
        if name == "probreg":
            t0 = time.perf_counter()
            reg = pcpd.NonRigidCPD(Y, beta=PARAMS["beta"], lmd=PARAMS["lam"])
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            reg.registration(X, w=PARAMS["w"], maxiter=iters, tol=0.0)
            return (time.perf_counter() - t0) / iters, setup
        t0 = time.perf_counter()
        reg = R(X=X, Y=Y, w=PARAMS["w"], max_iterations=iters, tolerance=0.0, **kw)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        reg.register()
        return (time.perf_counter() - t0) / max(reg.iteration, 1), setup
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"[:200]


def test_platynereis_deformable(benchmark):
    X, Y, keep = _workload_p()
    iters = 10 if QUICK else 150
    out = {}

    def run():
        out["r"] = xmodal.cpd(Y.astype(np.float32), X.astype(np.float32), transform="deformable",
                              max_iter=iters, tol=0.0, **PARAMS)

    t0 = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1)
    total = time.perf_counter() - t0
    r = out["r"]
    per_iter = r.info["seconds"]["total"] / r.iterations
    info = benchmark.extra_info
    info.update(machine=machine_description(), n_fixed=len(X), n_moving=len(Y), iterations=r.iterations,
                xmodal_seconds_total=total, xmodal_seconds_per_iteration=per_iter,
                xmodal_e_step_seconds=r.info["seconds"]["e_step"], xmodal_m_step_seconds=r.info["seconds"]["m_step"],
                solver=r.info["solver"], rank=r.info["rank"], kernel_pairs=r.info["pairs"],
                final_sigma2=r.sigma2,
                mean_error_um=float(np.linalg.norm(r.moved - X[keep], axis=1).mean()),
                mean_error_before_um=float(np.linalg.norm(Y - X[keep], axis=1).mean()),
                match_accuracy=float(np.mean(r.match == keep)))
    peer_iters = 2 if not QUICK else 1
    for peer in ("pycpd", "probreg"):
        res = _time_peer(peer, X, Y, peer_iters)
        if isinstance(res, str):
            peer_not_measured(benchmark, peer, res)
            continue
        info[f"{peer}_seconds_per_iteration"], info[f"{peer}_setup_seconds"] = res
        info[f"ratio_vs_{peer}"] = res[0] / per_iter
    # cycpd builds its M x M kernel in Python (16 s of set-up at 1,400 points, O(M^2)): it runs on a
    # 2,000-point subset of the fixed set (and its perturbed copy), compared with xmodal on that subset.
    sub = np.random.default_rng(1).choice(len(X), min(len(X), 2000), replace=False)
    Xs = X[sub]
    Ys, _ = W.perturbed_copy(Xs)
    rs = xmodal.cpd(Ys.astype(np.float32), Xs.astype(np.float32), transform="deformable", max_iter=5, tol=0.0,
                    **PARAMS)
    xs_per_iter = rs.info["seconds"]["total"] / rs.iterations
    res = _time_peer("cycpd", Xs, Ys, peer_iters)
    info["subset_points"] = len(Xs)
    info["xmodal_subset_seconds_per_iteration"] = xs_per_iter
    if isinstance(res, str):
        peer_not_measured(benchmark, "cycpd", res)
    else:
        info["cycpd_subset_seconds_per_iteration"], info["cycpd_subset_setup_seconds"] = res
        info["ratio_vs_cycpd_subset"] = res[0] / xs_per_iter


def test_celegans_accuracy(benchmark):
    pairs = [(0, 1), (2, 3), (4, 5)] if QUICK else None
    out = {}

    def run():
        out["res"] = W.celegans_accuracy(pairs=pairs)

    benchmark.pedantic(run, rounds=1, iterations=1)
    mean, per_pair, floor = out["res"]
    benchmark.extra_info.update(machine=machine_description(), pairs=len(per_pair), mean_fraction_correct=mean,
                                per_pair=per_pair, floor_without_cpd=floor)
    assert mean > floor
