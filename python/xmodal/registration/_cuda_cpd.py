"""GPU path of :func:`xmodal.cpd`: the E-step on the kernels of cuda/cpd.cu, the M-step with cupy.

Inputs: cupy arrays, or CUDA torch tensors (exchanged with cupy through DLPack, no host copy).
The result's ``moved``, ``match`` and ``match_probability`` are of the input's kind; the transform
is a host object (its parameters are small). The GPU E-step uses dense sums (no truncation).
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._device import cuda_module
from .._validation import describe
from . import _cpd


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("xmodal.cpd on CUDA arrays needs cupy (pip install cupy-cuda12x or cupy-cuda13x)") from exc
    return cupy


def _to_cupy(x, name, cp):
    if isinstance(x, cp.ndarray):
        return x, "cupy"
    if type(x).__module__.startswith("torch"):
        return cp.from_dlpack(x.detach()), "torch"
    if hasattr(x, "__cuda_array_interface__"):
        return cp.asarray(x), "cupy"
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        return cp.asarray(np.asarray(x)), "cupy"
    raise TypeError(f"{name}: expected a CUDA array (cupy, torch on cuda) or numpy array, got {describe(x)}")


def _device_points(x, name, cp, dtype):
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an (n, d) array, got shape {tuple(x.shape)}")
    if x.shape[1] not in (2, 3):
        raise ValueError(f"{name}: expected 2 or 3 columns (coordinates), got {x.shape[1]}")
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric (n, d) array, got dtype {x.dtype}")
    a = cp.ascontiguousarray(x, dtype=cp.float64)
    if not bool(cp.isfinite(a).all()):
        bad = int(cp.flatnonzero(~cp.isfinite(a).all(axis=1))[0])
        raise ValueError(f"{name}: coordinates must be finite; row {bad} is {a[bad].get().tolist()}")
    return a


class _CupyEStep:
    def __init__(self, Xn, dtype, weights, cp, mod):
        self.cp, self.mod = cp, mod
        self.dtype = dtype
        self.X = cp.ascontiguousarray(Xn, dtype=dtype)
        self.w = None if weights is None else cp.ascontiguousarray(cp.asarray(weights), dtype=dtype)
        self.pairs = 0

    def __call__(self, TY, sigma2, c):
        cp = self.cp
        TYd = cp.ascontiguousarray(TY, dtype=self.dtype)
        N, D = self.X.shape
        M = TYd.shape[0]
        log_s, g, shift, Pt1 = cp.empty(N), cp.empty(N), cp.empty(N), cp.empty(N)
        P1, PX, prob = cp.empty(M), cp.empty((M, D)), cp.empty(M)
        best = cp.empty(M, dtype=cp.int64)
        stream = cp.cuda.get_current_stream().ptr
        self.mod.cpd_estep(self.X.data.ptr, N, TYd.data.ptr, M, D, 0 if self.w is None else self.w.data.ptr,
                           self.dtype == np.float64, float(sigma2), float(c), log_s.data.ptr, g.data.ptr,
                           shift.data.ptr, Pt1.data.ptr, P1.data.ptr, PX.data.ptr, best.data.ptr, prob.data.ptr,
                           stream)
        self.pairs += 3 * N * M
        # s_n == 0 (no term, no outlier constant): counted as empty, log DBL_MIN in the objective
        zero = (Pt1 == 0) & ~cp.isfinite(log_s) & (c == 0)
        empty = int(zero.sum())
        logsum = float(cp.where(zero, math.log(np.finfo(np.float64).tiny), log_s).sum())
        return P1, Pt1, PX, best, prob, logsum, empty


def cpd_cuda(moving, fixed, *, dtype=None, cutoff=math.inf, **kwargs):
    cp = _cupy()
    mod = cuda_module()
    if mod is None or not hasattr(mod, "cpd_estep"):
        raise RuntimeError("xmodal.cpd on CUDA arrays: xmodal._cuda was not built with the CPD kernels")
    t_start = time.perf_counter()
    Yc, kind = _to_cupy(moving, "moving", cp)
    Xc, _ = _to_cupy(fixed, "fixed", cp)
    dt = _cpd._check_dtype(dtype, Yc, Xc)
    Y = _device_points(Yc, "moving", cp, dt)
    X = _device_points(Xc, "fixed", cp, dt)
    res = _cpd._run(Y, X, dtype=dt, cutoff=cutoff, device="cuda", t_start=t_start,
                    estep_factory=lambda Xn, wts: _CupyEStep(Xn, dt, wts, cp, mod), **kwargs)
    if kind == "torch":
        import torch

        res.moved = torch.from_dlpack(res.moved)
        res.match = torch.from_dlpack(res.match)
        res.match_probability = torch.from_dlpack(res.match_probability)
    return res
