"""Point transforms estimated by :func:`xmodal.cpd`.

All transforms map points of the moving space to the fixed space, act on ``(n, d)`` arrays
(d = 2 or 3, same axis order and physical units as the points they were estimated from) and
round-trip through JSON via :meth:`to_dict` / :func:`transform_from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import as_points

__all__ = [
    "RigidTransform",
    "SimilarityTransform",
    "AffineTransform",
    "DeformableTransform",
    "transform_from_dict",
]


#: Largest deviation of ``R^T R`` from the identity accepted for a rotation (rounding of composed
#: or JSON-stored rotations is ~1e-15; a rotation written with 5-6 decimals is within this).
ROTATION_TOL = 1e-5


def _finite(a: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` unless every entry of ``a`` is finite."""
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected finite values, got {a.tolist() if a.size <= 9 else 'NaN or inf entries'}")


def _check_rotation(r: np.ndarray) -> None:
    """ValueError naming ``rotation`` unless ``r`` is a proper rotation (orthonormal, det = +1)."""
    err = float(np.abs(r.T @ r - np.eye(r.shape[0])).max())
    det = float(np.linalg.det(r))
    if err > ROTATION_TOL or det <= 0:
        what = "a reflection (det < 0)" if err <= ROTATION_TOL else f"not orthonormal (max |R^T R - I| = {err:.3g})"
        raise ValueError(f"rotation: expected a proper rotation (R^T R = I within {ROTATION_TOL:g}, det = +1), got a "
                         f"matrix that is {what}; use AffineTransform for a general matrix")


def _points(points, d: int) -> tuple[np.ndarray, np.dtype]:
    a = np.asarray(points)
    dtype = a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    p = as_points(a, "points", dims=(d,), min_points=0, dtype=np.float64)
    return p, dtype


@dataclass(frozen=True)
class AffineTransform:
    """``y -> y @ matrix.T + translation`` (``matrix`` is ``(d, d)``, ``translation`` ``(d,)``)."""

    matrix: np.ndarray
    translation: np.ndarray

    kind = "affine"

    def __post_init__(self):
        m = np.array(self.matrix, dtype=np.float64)
        t = np.array(self.translation, dtype=np.float64).reshape(-1)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] not in (2, 3) or t.shape != (m.shape[0],):
            raise ValueError(f"matrix/translation: expected (d, d) and (d,) with d in (2, 3), got {m.shape} and {t.shape}")
        _finite(m, "matrix")
        _finite(t, "translation")
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "translation", t)

    @property
    def ndim(self) -> int:
        return self.matrix.shape[0]

    def apply(self, points) -> np.ndarray:
        """Transform ``(n, d)`` points; returns float64 (float32 for float32 input)."""
        p, dtype = _points(points, self.ndim)
        return (p @ self.matrix.T + self.translation).astype(dtype, copy=False)

    __call__ = apply

    def homogeneous(self) -> np.ndarray:
        """The ``(d + 1, d + 1)`` homogeneous matrix."""
        d = self.ndim
        h = np.eye(d + 1)
        h[:d, :d] = self.matrix
        h[:d, d] = self.translation
        return h

    def inverse(self) -> "AffineTransform":
        """The inverse map; ValueError naming ``matrix`` when it is singular."""
        try:
            inv = np.linalg.inv(self.matrix)
        except np.linalg.LinAlgError:
            raise ValueError(f"matrix: a singular matrix has no inverse, got {self.matrix.tolist()}") from None
        return AffineTransform(inv, -inv @ self.translation)

    def to_dict(self) -> dict:
        return {"type": self.kind, "matrix": self.matrix.tolist(), "translation": self.translation.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "AffineTransform":
        return cls(np.asarray(d["matrix"], float), np.asarray(d["translation"], float))


@dataclass(frozen=True)
class SimilarityTransform:
    """``y -> scale * y @ rotation.T + translation`` with a proper rotation (det = +1)."""

    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0

    kind = "similarity"

    def __post_init__(self):
        r = np.array(self.rotation, dtype=np.float64)
        t = np.array(self.translation, dtype=np.float64).reshape(-1)
        if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] not in (2, 3) or t.shape != (r.shape[0],):
            raise ValueError(f"rotation/translation: expected (d, d) and (d,) with d in (2, 3), got {r.shape} and {t.shape}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale: expected a positive finite number, got {self.scale}")
        _finite(r, "rotation")
        _finite(t, "translation")
        _check_rotation(r)
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation", t)
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def ndim(self) -> int:
        return self.rotation.shape[0]

    @property
    def matrix(self) -> np.ndarray:
        return self.scale * self.rotation

    def apply(self, points) -> np.ndarray:
        p, dtype = _points(points, self.ndim)
        return (self.scale * (p @ self.rotation.T) + self.translation).astype(dtype, copy=False)

    __call__ = apply

    def as_affine(self) -> AffineTransform:
        return AffineTransform(self.matrix, self.translation)

    def inverse(self):
        rt = self.rotation.T
        return type(self)(**self._ctor(rt, -(rt @ self.translation) / self.scale, 1.0 / self.scale))

    def _ctor(self, r, t, s):
        return {"rotation": r, "translation": t, "scale": s}

    def to_dict(self) -> dict:
        return {"type": self.kind, "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(np.asarray(d["rotation"], float), np.asarray(d["translation"], float), float(d.get("scale", 1.0)))


@dataclass(frozen=True)
class RigidTransform(SimilarityTransform):
    """``y -> y @ rotation.T + translation`` with a proper rotation (det = +1); ``scale`` is 1."""

    kind = "rigid"

    def __post_init__(self):
        super().__post_init__()
        if self.scale != 1.0:
            raise ValueError(f"scale: a rigid transform has scale 1, got {self.scale}")

    def _ctor(self, r, t, s):
        return {"rotation": r, "translation": t}

    @classmethod
    def from_dict(cls, d: dict):
        if float(d.get("scale", 1.0)) != 1.0:  # to_dict writes scale 1; another value is not rigid
            raise ValueError(f"scale: a rigid transform has scale 1, got {d['scale']!r} (load it as 'similarity')")
        return cls(np.asarray(d["rotation"], float), np.asarray(d["translation"], float))


@dataclass(frozen=True)
class DeformableTransform:
    """Gaussian radial basis displacement field of deformable CPD.

    ``y -> y + offset + sum_k exp(-|y - centers[k]|^2 / (2 beta^2)) coefficients[k]``

    ``centers`` are the moving points (direct solve) or the low-rank centres (a subset of them),
    ``beta`` the kernel width in the units of the points. The field is evaluated natively, terms
    below ``exp(-cutoff)`` dropped (:func:`xmodal.cpd` returns it with ``cutoff`` = its own
    ``cutoff``, at least 36, so that it reproduces ``moved``). No closed-form inverse.
    """

    centers: np.ndarray
    coefficients: np.ndarray
    beta: float
    offset: np.ndarray
    cutoff: float = 36.0

    kind = "deformable"

    def __post_init__(self):
        c = np.ascontiguousarray(self.centers, dtype=np.float64)
        w = np.ascontiguousarray(self.coefficients, dtype=np.float64)
        o = np.array(self.offset, dtype=np.float64).reshape(-1)
        if c.ndim != 2 or c.shape[1] not in (2, 3) or w.shape != c.shape or o.shape != (c.shape[1],):
            raise ValueError(f"centers/coefficients/offset: expected (k, d), (k, d), (d,), got {c.shape}, {w.shape}, {o.shape}")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta: expected a positive finite number, got {self.beta}")
        if not float(self.cutoff) > 0:  # inf: no truncation
            raise ValueError(f"cutoff: expected a positive number (or inf), got {self.cutoff}")
        for a, name in ((c, "centers"), (w, "coefficients"), (o, "offset")):
            _finite(a, name)
        object.__setattr__(self, "centers", c)
        object.__setattr__(self, "coefficients", w)
        object.__setattr__(self, "offset", o)
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "cutoff", float(self.cutoff))

    @property
    def ndim(self) -> int:
        return self.centers.shape[1]

    def displacement(self, points) -> np.ndarray:
        """The displacement ``T(y) - y`` at ``(n, d)`` points (float64)."""
        from .. import _core

        p, _ = _points(points, self.ndim)
        if p.shape[0] == 0:
            return np.zeros_like(p)
        field = _core.cpd_gauss_transform(self.centers, self.coefficients, p, self.beta, self.cutoff)["values"]
        return field + self.offset

    def apply(self, points) -> np.ndarray:
        p, dtype = _points(points, self.ndim)
        return (p + self.displacement(p)).astype(dtype, copy=False)

    __call__ = apply

    def inverse(self):
        raise NotImplementedError("a deformable CPD transform has no closed-form inverse; register the other way round")

    def to_dict(self) -> dict:
        return {"type": self.kind, "centers": self.centers.tolist(), "coefficients": self.coefficients.tolist(),
                "beta": self.beta, "offset": self.offset.tolist(), "cutoff": self.cutoff}

    @classmethod
    def from_dict(cls, d: dict) -> "DeformableTransform":
        return cls(np.asarray(d["centers"], float), np.asarray(d["coefficients"], float), float(d["beta"]),
                   np.asarray(d["offset"], float), float(d.get("cutoff", 36.0)))


_KINDS = {"rigid": RigidTransform, "similarity": SimilarityTransform, "affine": AffineTransform,
          "deformable": DeformableTransform}


def transform_from_dict(d: dict):
    """Rebuild a transform from :meth:`to_dict` output (e.g. after ``json.loads``)."""
    if not isinstance(d, dict) or d.get("type") not in _KINDS:
        raise ValueError(f"d: expected a dict with 'type' in {sorted(_KINDS)}, got {type(d).__name__}"
                         + (f" with type {d.get('type')!r}" if isinstance(d, dict) else ""))
    try:
        return _KINDS[d["type"]].from_dict(d)
    except KeyError as e:
        raise ValueError(f"d: a {d['type']!r} transform needs the key {e.args[0]!r}; got the keys "
                         f"{sorted(map(str, d))}") from None


@dataclass(frozen=True)
class CompositeTransform:
    """Apply ``transforms[0]``, then ``transforms[1]``, ... to points (physical units).

    Each element has ``apply(points)`` and ``to_dict()``; :meth:`from_dict` rebuilds the chain
    with :func:`transform_from_dict` (a nested chain with :meth:`from_dict` itself).
    """

    transforms: tuple

    kind = "composite"

    @property
    def ndim(self) -> int:
        return self.transforms[0].ndim

    def apply(self, points) -> np.ndarray:
        """Transform ``(n, d)`` points; float64 inside, returned as float32 for float32 input (as
        every element does)."""
        out, dtype = _points(points, self.ndim)
        for t in self.transforms:
            out = t.apply(out)
        return out.astype(dtype, copy=False)

    __call__ = apply

    def inverse(self):
        """The inverse chain, when every element has a closed-form inverse."""
        return CompositeTransform(tuple(t.inverse() for t in reversed(self.transforms)))

    def to_dict(self) -> dict:
        return {"type": self.kind, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: dict) -> "CompositeTransform":
        if not isinstance(d, dict) or d.get("type") != cls.kind:
            raise ValueError(f"d: expected a dict with type 'composite', got "
                             f"{'type ' + repr(d.get('type')) if isinstance(d, dict) else type(d).__name__}")
        return cls(tuple(load_transform(t) for t in d["transforms"]))


def load_transform(d: dict):
    """A transform, single or a :class:`CompositeTransform` chain, from its ``to_dict()`` form."""
    if isinstance(d, dict) and d.get("type") == CompositeTransform.kind:
        return CompositeTransform.from_dict(d)
    return transform_from_dict(d)


__all__ += ["CompositeTransform", "load_transform"]
