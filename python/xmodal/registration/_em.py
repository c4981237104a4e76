"""The EM loop of CPD, generic over the array namespace (numpy on the CPU, cupy on the GPU).

:func:`run` takes validated points and options and an E-step of either device (``_cpd_cpu.py``
or ``_cpd_cuda.py``: ``estep(TY, sigma2, c) -> EStepOut``), and follows these steps:

1. normalise both sets (:class:`Frame`) and pick the initial sigma2 (:func:`initial_sigma2`);
2. iterate (:func:`iterate`): E-step, landmark terms, M-step (``_mstep.py``, through
   :class:`Model`), objective, stopping rules; a rejected step restores the previous iterate;
3. return the transform in input units with the diagnostics (:func:`result`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .._device import array_namespace, to_host
from ._mstep import DeformableSolver, ScaleDegenerate, affine_step, rigid_step
from ._result import CPDResult
from .transforms import AffineTransform, RigidTransform, SimilarityTransform

log = logging.getLogger("xmodal.registration")

#: sigma2 floor in normalised units (coordinates scaled to unit RMS radius).
SIGMA2_FLOOR = 1e-10

#: Least truncation of the returned deformable field (terms below exp(-FIELD_CUTOFF) of a
#: coefficient dropped). The M-step solves with the dense kernel, so the field must not inherit a
#: smaller E-step ``cutoff``: at cutoff=8 it moved the moving points 0.02 units off ``moved``, at 2
#: by 13 units (the coefficients of the direct solve are large and cancel).
FIELD_CUTOFF = 36.0


class EStepOut(NamedTuple):
    """What an E-step adapter returns (float64 arrays of its namespace)."""

    P1: Any
    Pt1: Any
    PX: Any
    best: Any
    prob: Any
    log_s_sum: float
    empty: int


@dataclass
class Options:
    """Validated options of :func:`xmodal.cpd` (see its docstring for the meaning)."""

    transform: str
    w: float
    beta: float
    lam: float
    max_iter: int
    tol: float
    sigma2: float | None
    landmarks: np.ndarray | None  # (k, 2) int64 (moving_idx, fixed_idx), checked against M and N
    landmark_weight: float
    low_rank: Any
    callback: Callable | None
    scale: float | None
    weights: np.ndarray | None  # (M,) float64, positive, mean 1
    normalize: bool
    cutoff: float
    dtype: np.dtype
    device: str
    estep: str = "exact"  # "auto", "exact" or "fast" (CPU adapter)
    estep_tol: float = 1e-2
    xtol: float = 0.0  # stop when no point moved more than xtol * sigma in an iteration (0: off)


@dataclass
class Frame:
    """Both sets centred and scaled by the fixed set's RMS radius s0 (unit-free EM)."""

    Xn: Any
    Yn: Any
    xm: np.ndarray
    ym: np.ndarray
    s0: float
    floor: float  # sigma2 floor, normalised units

    @classmethod
    def of(cls, Y, X, normalize: bool) -> "Frame":
        xp = array_namespace(X)
        D = X.shape[1]
        if normalize:
            xm, ym = to_host(X.mean(0)), to_host(Y.mean(0))
            s0 = float(xp.sqrt(((X - xp.asarray(xm)) ** 2).sum(1).mean()))
        else:
            xm, ym, s0 = np.zeros(D), np.zeros(D), 1.0
        Xn = (X - xp.asarray(xm)) / s0
        Yn = (Y - xp.asarray(ym)) / s0
        # relative to the spread of the fixed set: unit-independent, also unnormalised
        spread2 = float(((Xn - Xn.mean(0)) ** 2).sum(1).mean())
        return cls(Xn, Yn, xm, ym, s0, SIGMA2_FLOOR * spread2)

    def to_input(self, TY):
        """Moving points from normalised to input units."""
        return TY * self.s0 + array_namespace(TY).asarray(self.xm)


def initial_sigma2(frame: Frame, sigma2: float | None, warnings: list) -> float:
    """The given sigma2 in normalised units, or the mean squared distance of all pairs (O(M + N));
    at least the floor (with a warning when the given value is below it)."""
    Xn, Yn = frame.Xn, frame.Yn
    M, D = Yn.shape
    N = Xn.shape[0]
    if sigma2 is None:
        s2 = float(M * (Xn * Xn).sum() + N * (Yn * Yn).sum() - 2.0 * Xn.sum(0) @ Yn.sum(0)) / (D * M * N)
    else:
        s2 = float(sigma2 / (frame.s0 * frame.s0))
    if not s2 >= frame.floor:  # also catches an underflow to 0 of sigma2 / s0^2
        unit = frame.s0 * frame.s0
        warnings.append(f"sigma2: the initial value {s2 * unit:.3g} (squared input units) is below the floor "
                        f"{frame.floor * unit:.3g} (1e-10 of the fixed set's squared RMS radius) that EM resolves; "
                        "started from the floor, where the E-step already is a nearest-neighbour assignment")
        s2 = frame.floor
    return s2


class Landmarks:
    """Known correspondences: each adds ``weight`` to the posterior of its pair."""

    def __init__(self, pairs: np.ndarray | None, weight: float, Xn):
        self.active = pairs is not None
        self.weight = weight
        if self.active:
            xp = array_namespace(Xn)
            self.m, self.f = xp.asarray(pairs[:, 0]), xp.asarray(pairs[:, 1])
            self.Xf = Xn[self.f]

    def add(self, P1, Pt1, PX):
        if not self.active:
            return
        xp = array_namespace(P1)
        for a, idx, v in ((P1, self.m, self.weight), (Pt1, self.f, self.weight), (PX, self.m, self.weight * self.Xf)):
            if xp is np:
                np.add.at(a, idx, v)
            else:
                import cupyx

                cupyx.scatter_add(a, idx, v)

    def term(self, TY, s2: float) -> float:
        """The landmarks' part of the objective at moving points TY."""
        if not self.active:
            return 0.0
        return self.weight * float(((self.Xf - TY[self.m]) ** 2).sum()) / (2.0 * s2)


class Model:
    """The transform being estimated (normalised units) and its M-step."""

    def __init__(self, Yn, opt: Options, beta_n: float, lam_n: float):
        D = Yn.shape[1]
        self.kind = opt.transform
        self.fixed_scale = opt.scale
        self.Yn = Yn
        self.B = np.eye(D)
        self.t = np.zeros(D)
        self.s = 1.0 if opt.scale is None else float(opt.scale)
        self.TY = Yn.copy() if opt.scale is None else Yn * self.s
        self.deform = DeformableSolver(Yn, beta_n, lam_n, opt.low_rank) if self.kind == "deformable" else None
        self._xx = None  # |x_n|^2 of the fixed points, computed once (the M-steps' sums)
        self._yy = None  # |y_m|^2 of the moving points (rigid / similarity)

    def snapshot(self):
        return (self.B.copy(), self.t.copy(), self.s, self.TY.copy(),
                None if self.deform is None else self.deform.snapshot())

    def restore(self, snap):
        self.B, self.t, self.s, self.TY, d = snap
        if self.deform is not None:
            self.deform.restore(d)

    def step(self, Xn, e: EStepOut, Np: float, s2: float) -> tuple[float, float]:
        """One M-step from the E-step's output: updates the transform; returns (new sigma2,
        regulariser). Raises LinAlgError or ScaleDegenerate."""
        if self._xx is None:
            self._xx = (Xn * Xn).sum(1)
        if self.kind == "deformable":
            self.TY, reg = self.deform.step(e.P1, e.PX, s2)
            TY = self.TY
            new_s2 = float(e.Pt1 @ self._xx - 2.0 * (e.PX * TY).sum() + e.P1 @ (TY * TY).sum(1))
            return new_s2 / (Np * Xn.shape[1]), reg
        if self.kind == "affine":
            st = affine_step(Xn, self.Yn, e.P1, e.Pt1, e.PX, Np, self._xx)
        else:
            free = self.kind == "similarity" and self.fixed_scale is None
            if self._yy is None:
                self._yy = (self.Yn * self.Yn).sum(1)
            st = rigid_step(Xn, self.Yn, e.P1, e.Pt1, e.PX, Np, estimate_scale=free, sq=(self._xx, self._yy),
                            scale=self.fixed_scale if self.kind == "similarity" else None)
        self.B, self.t, self.s, self.TY = st.B, st.t, st.scale, st.TY
        return st.sigma2, 0.0

    def transform(self, frame: Frame, beta: float, cutoff: float):
        """The estimated transform in input units (moving -> fixed space)."""
        if self.kind == "deformable":
            return self.deform.transform(frame.s0, frame.xm, frame.ym, beta, max(cutoff, FIELD_CUTOFF))
        B = self.B
        translation = frame.xm + frame.s0 * self.t - B @ frame.ym
        if self.kind == "affine":
            return AffineTransform(B, translation)
        D = B.shape[0]
        ss = float(np.cbrt(np.linalg.det(B))) if D == 3 else float(np.sqrt(np.linalg.det(B)))
        R = B / ss
        return RigidTransform(R, translation) if self.kind == "rigid" else SimilarityTransform(R, translation, ss)


@dataclass
class Progress:
    """The state of the iteration that the result reports."""

    s2: float
    it: int = 0
    L: float = float("nan")
    converged: bool = False
    stop: str = "max_iter"
    best: Any = None
    prob: Any = None
    t_e: float = 0.0
    t_m: float = 0.0
    hist_s2: list = field(default_factory=list)
    hist_L: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


class _Stop(Exception):
    """Ends the iteration: stop reason and warning; ``revert`` restores the previous iterate."""

    def __init__(self, reason: str, message: str, revert: bool = True):
        super().__init__(message)
        self.reason, self.message, self.revert = reason, message, revert


def outlier_constant(w: float, s2: float, D: int, M: int, N: int) -> float:
    """The uniform component's constant c of the E-step's denominators."""
    return 0.0 if w == 0 else (2 * math.pi * s2) ** (D / 2) * w / (1 - w) * M / N


def run(Y, X, opt: Options, estep_factory: Callable, t_start: float) -> CPDResult:
    """EM from validated ``(M, d)`` moving and ``(N, d)`` fixed points (numpy or cupy, float64).

    ``estep_factory(Xn, weights)`` returns the device's E-step for the normalised fixed points.
    """
    frame = Frame.of(Y, X, opt.normalize)
    warnings: list[str] = []
    s2 = initial_sigma2(frame, opt.sigma2, warnings)
    estep = estep_factory(frame.Xn, opt.weights)
    lam_n = opt.lam * frame.s0 * frame.s0
    model = Model(frame.Yn, opt, opt.beta / frame.s0, lam_n)
    xp = array_namespace(frame.Yn)
    M = frame.Yn.shape[0]
    prog = Progress(s2=s2, best=xp.full(M, -1, dtype=xp.int64), prob=xp.zeros(M))
    prog.info = {"w": opt.w, "normalize_scale": frame.s0, "dtype": str(np.dtype(opt.dtype)), "device": opt.device,
                 "transform": opt.transform, "sigma2_floor": frame.floor * frame.s0 * frame.s0}
    if model.deform is not None:
        prog.info["solver"] = model.deform.solver
        prog.info["rank"] = model.deform.rank
    iterate(frame, model, estep, Landmarks(opt.landmarks, opt.landmark_weight, frame.Xn), opt, lam_n, prog,
            warnings)
    return result(frame, model, estep, opt, prog, warnings, t_start)


def iterate(frame: Frame, model: Model, estep, lm: Landmarks, opt: Options, lam_n: float, prog: Progress,
            warnings: list) -> None:
    """EM iterations until convergence, ``max_iter`` or a stop (recorded in ``prog``)."""
    N, D = frame.Xn.shape
    M = frame.Yn.shape[0]
    L_prev, reg_prev = None, 0.0
    for it in range(1, opt.max_iter + 1):
        prog.it = it
        c = outlier_constant(opt.w, prog.s2, D, M, N)
        t0 = time.perf_counter()
        e = estep(model.TY, prog.s2, c)
        prog.t_e += time.perf_counter() - t0
        if e.best is not None:  # None: the caller asked for no matches (kept at -1 / 0)
            prog.best, prog.prob = e.best, e.prob
        lm.add(e.P1, e.Pt1, e.PX)
        Np = float(e.P1.sum())
        if Np <= 1e-12:
            warnings.append(_no_support_message(it, Np, prog.s2, frame.s0, opt.cutoff))
            prog.stop = "no_support"
            return
        snap = model.snapshot()
        try:
            new_s2, reg = _mstep(model, frame.Xn, e, Np, prog, it)
            L = -e.log_s_sum + N * D / 2.0 * math.log(prog.s2) + lam_n / 2.0 * reg
            prog.L = L
            prog.hist_L.append(L)
            if new_s2 <= frame.floor:
                checked = _CollapseCheck(e, snap, c, reg, reg_prev, lam_n)
                _accept_collapse(frame, model, estep, lm, checked, prog, warnings)
                _report(opt, frame, model, it, prog.s2, L)  # the accepted step changed the transform
                return
        except _Stop as stop:
            if stop.revert:
                model.restore(snap)
            warnings.append(stop.message)
            prog.stop = stop.reason
            return
        reg_prev = reg
        moved_little = opt.xtol > 0 and _max_step2(model.TY, snap[3]) <= opt.xtol * opt.xtol * prog.s2
        prog.s2 = new_s2
        prog.hist_s2.append(new_s2 * frame.s0 * frame.s0)
        _report(opt, frame, model, it, new_s2, L)
        if L_prev is not None and abs(L - L_prev) <= opt.tol * max(abs(L), 1.0):
            prog.converged, prog.stop = True, "converged"
            return
        if moved_little:
            prog.converged, prog.stop = True, "converged"
            prog.info["stop_rule"] = "xtol"
            return
        L_prev = L


def _report(opt: Options, frame: Frame, model: Model, it: int, s2: float, L: float) -> None:
    """The user's callback after an accepted iteration (sigma2 in squared input units, as in
    ``history``; ``moved`` a fresh array in input units, of the points' namespace)."""
    if opt.callback is not None:
        opt.callback(iteration=it, sigma2=s2 * frame.s0 * frame.s0, objective=L, moved=frame.to_input(model.TY))


def _max_step2(TY, TY_prev) -> float:
    """The largest squared displacement of a moving point between two iterates (normalised units)."""
    xp = array_namespace(TY)
    return float(xp.max(((TY - TY_prev) ** 2).sum(1)))


def _no_support_message(it: int, Np: float, s2: float, s0: float, cutoff: float) -> str:
    hint = ""
    if math.isfinite(cutoff):
        hint = (f" within the truncation radius sqrt(2 sigma2 cutoff) = {math.sqrt(2 * s2 * cutoff) * s0:.3g} "
                "(input units); start from a larger sigma2 or use cutoff=inf")
    return f"iteration {it}: no fixed point is explained by the moving points (sum P = {Np:.3g}){hint}; stopped"


def _mstep(model: Model, Xn, e: EStepOut, Np: float, prog: Progress, it: int) -> tuple[float, float]:
    """The M-step with its failure modes turned into stops."""
    t0 = time.perf_counter()
    try:
        new_s2, reg = model.step(Xn, e, Np, prog.s2)
    except ScaleDegenerate as exc:  # raised before the transform changed
        raise _Stop("scale_degenerate", f"iteration {it}: {exc}; kept the previous transform and stopped",
                    revert=False) from None
    except np.linalg.LinAlgError as exc:
        solver = f" ({prog.info['solver']})" if "solver" in prog.info else ""
        prog.info["m_step_error"] = f"LinAlgError: {exc}"
        raise _Stop("m_step_failed", f"iteration {it}: the {model.kind} M-step{solver} failed (LinAlgError: {exc}); "
                    "reverted to the previous transform and stopped") from None
    prog.t_m += time.perf_counter() - t0
    new_s2 = float(new_s2)
    xp = array_namespace(model.TY)
    if not (bool(xp.all(xp.isfinite(model.TY))) and np.isfinite(new_s2) and np.isfinite(reg)):
        raise _Stop("non_finite_update",
                    f"iteration {it}: non-finite update; reverted to the previous transform and stopped")
    return new_s2, reg


class _CollapseCheck(NamedTuple):
    e: EStepOut  # the E-step of the step being checked (at the previous transform)
    snap: tuple  # the previous transform
    c: float
    reg: float
    reg_prev: float
    lam_n: float


def _accept_collapse(frame: Frame, model: Model, estep, lm: Landmarks, k: _CollapseCheck, prog: Progress,
                     warnings: list) -> None:
    """sigma2 fell to the floor: accept the step only if, at the previous sigma2, it does not raise
    the objective (EM is monotone, so a step that does came from a broken M-step); raises _Stop
    (reverted) otherwise."""
    t0 = time.perf_counter()
    chk = estep(model.TY, prog.s2, k.c)
    prog.t_e += time.perf_counter() - t0
    L_old = -k.e.log_s_sum + k.lam_n / 2.0 * k.reg_prev + lm.term(k.snap[3], prog.s2)
    L_new = -chk.log_s_sum + k.lam_n / 2.0 * k.reg + lm.term(model.TY, prog.s2)
    slack = 1e-6 * max(abs(L_old), abs(L_new), float(frame.Xn.shape[0]))
    if not (np.isfinite(L_new) and L_new <= L_old + slack):
        raise _Stop("sigma2_collapse_rejected",
                    f"iteration {prog.it}: sigma2 collapsed to the floor, but the step raises the objective at the "
                    f"previous sigma2 ({L_old:.6g} -> {L_new:.6g}); reverted to the previous transform and stopped "
                    "(not converged)")
    unit = frame.s0 * frame.s0
    if chk.best is not None:
        prog.best, prog.prob = chk.best, chk.prob
    prog.s2 = frame.floor
    prog.hist_s2.append(frame.floor * unit)
    warnings.append(_collapse_message(frame, model.TY, chk, prog))
    prog.converged, prog.stop = True, "sigma2_collapse"


def _collapse_message(frame: Frame, TY, e: EStepOut, prog: Progress) -> str:
    """What a sigma2 collapse means, from the check's E-step ``e``: the matched points coincide; fixed
    points explained by the outlier term (posterior mass Pt1 < 0.5) and moving points matched to no
    fixed point (P1 < 0.5) are counted, since the fit says nothing about them."""
    xp = array_namespace(TY)
    N, M = int(e.Pt1.shape[0]), int(e.P1.shape[0])
    n_out, matched = int((e.Pt1 < 0.5).sum()), e.P1 >= 0.5
    n_free = M - int(matched.sum())
    r = 0.0
    if n_free < M:  # distance of each matched moving point to the mean of its fixed partners
        d2 = ((TY[matched] - e.PX[matched] / e.P1[matched][:, None]) ** 2).sum(1)
        r = math.sqrt(float(xp.max(d2))) * frame.s0
    parts = [f"iteration {prog.it}: sigma2 collapsed to the floor {frame.floor * frame.s0 ** 2:.3g} (squared "
             f"input units): the matched points coincide (largest residual {r:.3g} input units)"]
    if n_out:
        parts.append(f"{n_out} of {N} fixed points ({100.0 * n_out / N:.1f}%) are treated as outliers (left to "
                     f"the uniform term, w={prog.info.get('w', 0.0):g}, or beyond the truncation radius) and "
                     "are not fitted")
    if n_free:
        parts.append(f"{n_free} of {M} moving points match no fixed point")
    if not (n_out or n_free):
        parts.append("the sets match (almost) exactly")
    return "; ".join(parts) + " (step checked: it does not raise the objective at the previous sigma2). Stopped."


def result(frame: Frame, model: Model, estep, opt: Options, prog: Progress, warnings: list,
           t_start: float) -> CPDResult:
    """The CPDResult in input units."""
    info = prog.info
    info["stop"] = prog.stop
    tr = model.transform(frame, opt.beta, opt.cutoff)
    moved = frame.to_input(model.TY).astype(opt.dtype, copy=False)
    info["pairs"] = getattr(estep, "pairs", None)
    if hasattr(estep, "report"):
        info["estep"] = estep.report()
    info["seconds"] = {"e_step": prog.t_e, "m_step": prog.t_m, "total": time.perf_counter() - t_start}
    if not prog.converged and prog.it == opt.max_iter:
        log.info("cpd: %d iterations without convergence (tol=%g)", prog.it, opt.tol)
    N, D = frame.Xn.shape
    c = outlier_constant(opt.w, prog.s2, D, frame.Yn.shape[0], N)
    posterior = estep.posterior(frame.Xn, model.TY, prog.s2, c, opt.weights)
    xp = array_namespace(model.TY)
    unit = frame.s0 * frame.s0
    return CPDResult(_posterior=posterior, moved=moved, transform=tr, sigma2=float(prog.s2 * unit),
                     iterations=prog.it, converged=prog.converged, match=prog.best.astype(xp.int64, copy=False),
                     match_probability=xp.clip(prog.prob, 0.0, 1.0), objective=float(prog.L),
                     history={"sigma2": prog.hist_s2, "objective": prog.hist_L}, warnings=warnings, info=info)
