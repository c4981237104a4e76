"""CUDA adapter of :func:`xmodal.cpd`: cupy points (CUDA torch tensors through DLPack, no host
copy), the E-step of xmodal._cuda (cuda/cpd.cu, the twin of the CPU kernel: the same support,
shifts, terms and tie rule), the M-step with cupy. The result's ``moved``, ``match`` and
``match_probability`` are of the input's kind; the transform is a host object (its parameters are
small)."""

from __future__ import annotations

import numpy as np

from .._device import as_cupy, as_device_points, cupy_module, current_stream, from_cupy, native_cuda
from ._em import EStepOut

_PURPOSE = "xmodal.cpd on CUDA arrays"


def points(x, name: str):
    """``x`` as validated float64 ``(n, d)`` cupy coordinates."""
    return as_device_points(x, name, cupy_module(_PURPOSE))


def input_kind(*arrays) -> str:
    """"torch" when any input is a torch tensor (the result is returned as torch), else "cupy"."""
    return "torch" if any(type(a).__module__.startswith("torch") for a in arrays) else "cupy"


def finish(result, kind: str):
    """The result's arrays as the input's kind."""
    result.moved = from_cupy(result.moved, kind)
    result.match = from_cupy(result.match, kind)
    result.match_probability = from_cupy(result.match_probability, kind)
    return result


class EStep:
    """E-step on the CUDA kernel (float32 or float64 inside, float64 out), on cupy's current stream.

    ``features``: None, or (fixed (N, f), moving (M, f), 1 / (2 feature_sigma^2)) (host or device
    arrays), for the kernel of ``cpd_estep_features`` (CPD with features)."""

    def __init__(self, Xn, dtype, weights, cutoff: float, features=None):
        self.cp = cp = cupy_module(_PURPOSE)
        self.mod = native_cuda("cpd_estep")
        self.dtype = np.dtype(dtype)
        self.X = cp.ascontiguousarray(Xn, dtype=self.dtype)
        self.w = None if weights is None else cp.ascontiguousarray(as_cupy(weights, "weights", cp)[0],
                                                                    dtype=self.dtype)
        self.cutoff = cutoff
        self.pairs = 0
        self.features = None
        if features is not None:
            with self.X.device:
                self.features = (cp.ascontiguousarray(cp.asarray(features[0]), dtype=self.dtype),
                                 cp.ascontiguousarray(cp.asarray(features[1]), dtype=self.dtype), float(features[2]))

    def __call__(self, TY, sigma2: float, c: float) -> EStepOut:
        cp = self.cp
        with self.X.device:
            TYc = cp.ascontiguousarray(TY, dtype=self.dtype)
            if self.features is not None:
                fx, fy, inv = self.features
                out = self.mod.cpd_estep_features(self.X, TYc, self.w, fx, fy, inv, float(sigma2), float(c),
                                                  float(self.cutoff), current_stream(cp))
            else:
                out = self.mod.cpd_estep(self.X, TYc, self.w, float(sigma2), float(c), float(self.cutoff),
                                         current_stream(cp))
            self.pairs += int(out["pairs"])
            f64 = [cp.asarray(out[k]).astype(cp.float64) for k in ("P1", "Pt1", "PX", "best_prob")]
            return EStepOut(f64[0], f64[1], f64[2], cp.asarray(out["best_idx"]), f64[3], float(out["log_s_sum"]),
                            int(out["empty_columns"]))

    def report(self) -> dict:
        """What ran (the keys of the CPU E-step's report that apply: every call is exact)."""
        feats = None if self.features is None else {"columns": int(self.features[0].shape[1]),
                                                    "feature_sigma": float((2.0 * self.features[2]) ** -0.5)
                                                    if self.features[2] > 0 else float("inf")}
        return {"features": feats, "requested": "exact", "device": "cuda"}

    def posterior(self, Xn, TY, s2: float, c: float, weights):
        return None  # correspondence_matrix: CPU runs only
