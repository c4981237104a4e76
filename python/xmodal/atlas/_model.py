"""The :class:`Atlas` of named cells and its JSON storage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "xmodal-atlas"
SCHEMA_VERSION = 1


@dataclass
class Atlas:
    """Per-name statistics of annotated cells in a common reference frame.

    Reference frame
    ---------------
    The frame of the group-wise (generalised Procrustes) mean shape: the origin is the centroid of
    the name means, the axes are the principal axes of the name means (column 0 the longest, then
    decreasing variance; right-handed; each of the first d-1 axes oriented so that the third
    moment of the means along it is positive), and the unit is the unit of the training samples
    (their mean size is kept: the root-mean-square radius of the mean shape equals the mean
    root-mean-square radius of the samples). :func:`identify` maps a new sample into this frame.

    Attributes
    ----------
    names : (m,) str array
        The cell names, sorted.
    means : (m, d) array
        Mean position of each name, atlas frame.
    covariances : (m, d, d) array
        Predictive covariance of each name's position (the spread across samples after their
        registration to the mean, shrunk towards the pooled covariance for names seen in few
        samples, times ``1 + 1/count`` for the uncertainty of the mean).
    counts : (m,) int array
        Number of training samples in which each name occurs.
    presence : (m,) array
        Probability that a new sample has the name: ``(count + 0.5) / (n_samples + 1)``.
    n_samples : int
    transform : str
        Transform class of the group-wise registration ("rigid", "similarity" or "affine").
    pooled_covariance : (d, d) array
        Covariance of all residuals pooled over names (the shrinkage target).
    feature_names : list of str or None
    feature_means : (m, f) array or None
        Mean of each feature per name, in per-sample standardised units (see
        ``feature_normalization``).
    feature_covariances : (m, f, f) array or None
    pooled_feature_covariance : (f, f) array or None
    feature_normalization : {"sample", "none"}
        "sample": every feature is centred on its median and divided by its robust spread
        (1.4826 × MAD) within each sample before use, so that per-animal intensity or colour
        scales cancel; "none": raw values.
    calibration : dict
        Temperature of the confidence (``temperature``) and the leave-one-sample-out figures it
        was chosen from (accuracy, ECE, accuracy at confidence >= 0.9, ...); empty when the atlas
        was built with ``calibrate=False``.
    relations : dict
        Which names move together (see :func:`xmodal.atlas.build_atlas`): ``partners`` (m, p) atlas
        rows (-1 = none), ``weights`` (m, p) regression weights of a name's residual on its
        partners' residuals (each divided by its ``scale``), ``factor`` (m,) share of the variance
        left when the partners are placed, ``scale`` (m,) residual RMS per name. Empty arrays
        (p = 0) when the atlas has fewer than 4 samples.
    sample_transforms : list of dict
        Per training sample, the affine map of its points into the atlas frame
        (``{"matrix": (d, d), "translation": (d,), "reflected": bool}``).
    parameters : dict
        The build options (for provenance).
    """

    names: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    counts: np.ndarray
    presence: np.ndarray
    n_samples: int
    transform: str
    pooled_covariance: np.ndarray
    feature_names: list | None = None
    feature_means: np.ndarray | None = None
    feature_covariances: np.ndarray | None = None
    pooled_feature_covariance: np.ndarray | None = None
    feature_normalization: str = "sample"
    calibration: dict = field(default_factory=dict)
    relations: dict = field(default_factory=dict)
    sample_transforms: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def ndim(self) -> int:
        return int(self.means.shape[1])

    @property
    def n_names(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return 0 if self.feature_means is None else int(self.feature_means.shape[1])

    @property
    def temperature(self) -> float:
        """Temperature of the confidence (1 when the atlas is not calibrated)."""
        return float(self.calibration.get("temperature", 1.0))

    def index(self, names) -> np.ndarray:
        """Row of each name in the atlas (-1 for names it does not have; bytes are read as UTF-8, as
        :func:`build_atlas` reads them)."""
        lookup = {n: i for i, n in enumerate(self.names.tolist())}

        def key(n):
            return n.decode("utf-8", "replace") if isinstance(n, bytes) else n if isinstance(n, str) else None

        return np.array([lookup.get(key(n), -1) for n in np.asarray(names).ravel().tolist()], dtype=np.int64)

    def __repr__(self) -> str:
        feats = f", features={self.feature_names}" if self.feature_names else ""
        cal = f", temperature={self.temperature:.3g}" if self.calibration else ", uncalibrated"
        return (f"Atlas(names={self.n_names}, ndim={self.ndim}, n_samples={self.n_samples}, "
                f"transform={self.transform!r}{feats}{cal})")

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the schema of :meth:`save`)."""
        from .._version import __version__

        def arr(a):
            return None if a is None else np.asarray(a).tolist()

        return {
            "format": FORMAT,
            "version": SCHEMA_VERSION,
            "xmodal_version": __version__,
            "ndim": self.ndim,
            "n_samples": int(self.n_samples),
            "transform": self.transform,
            "reference_frame": "generalised Procrustes mean; origin = centroid of the name means; axes = their "
                               "principal axes (decreasing variance, right-handed); units of the samples",
            "names": [str(n) for n in self.names.tolist()],
            "means": arr(self.means),
            "covariances": arr(self.covariances),
            "counts": arr(self.counts),
            "presence": arr(self.presence),
            "pooled_covariance": arr(self.pooled_covariance),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "feature_means": arr(self.feature_means),
            "feature_covariances": arr(self.feature_covariances),
            "pooled_feature_covariance": arr(self.pooled_feature_covariance),
            "feature_normalization": self.feature_normalization,
            "calibration": _jsonable(self.calibration),
            "relations": _jsonable(self.relations),
            "sample_transforms": _jsonable(self.sample_transforms),
            "parameters": _jsonable(self.parameters),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Atlas":
        """Rebuild an atlas from :meth:`to_dict` output; checks the format and the version."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = (repr(d["format"]) if "format" in d else "a dict without a 'format' key") if isinstance(d, dict) \
                else type(d).__name__
            raise ValueError(f"atlas: expected a dict with format {FORMAT!r}, got {got}")
        version = d.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"atlas: version: expected an integer schema version, got {version!r}")
        if version < 1 or version > SCHEMA_VERSION:
            raise ValueError(f"atlas: schema version {version!r} is not supported by this xmodal "
                             f"(it reads versions 1 to {SCHEMA_VERSION}); upgrade xmodal")

        def opt(key, dtype=np.float64):
            v = d.get(key)
            return None if v is None else np.asarray(v, dtype=dtype)

        try:
            names = np.asarray(d["names"], dtype=str)
            means = np.asarray(d["means"], dtype=np.float64)
            m = len(names)
            nd = means.shape[1] if means.ndim == 2 else -1
            fm = opt("feature_means")
            fc = opt("feature_covariances")
            atlas = cls(
                names=names, means=means.reshape(m, nd),
                covariances=np.asarray(d["covariances"], np.float64).reshape(m, nd, nd),
                counts=np.asarray(d["counts"], np.int64), presence=np.asarray(d["presence"], np.float64),
                n_samples=int(d["n_samples"]), transform=str(d["transform"]),
                pooled_covariance=np.asarray(d["pooled_covariance"], np.float64).reshape(nd, nd),
                feature_names=None if d.get("feature_names") is None else [str(x) for x in d["feature_names"]],
                feature_means=fm, feature_covariances=fc,
                pooled_feature_covariance=opt("pooled_feature_covariance"),
                feature_normalization=str(d.get("feature_normalization", "sample")),
                calibration=dict(_mapping(d.get("calibration"), "calibration")),
                relations={k: np.asarray(v, dtype=np.int64 if k == "partners" else np.float64)
                           for k, v in _mapping(d.get("relations"), "relations").items()},
                sample_transforms=list(d.get("sample_transforms") or []),
                parameters=dict(_mapping(d.get("parameters"), "parameters")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"atlas: malformed atlas record ({exc})") from exc
        atlas.check()
        return atlas

    def save(self, path: str | os.PathLike) -> None:
        """Write the atlas as one JSON file (schema ``xmodal-atlas`` version 1), atomically: an
        existing file is replaced only once the new one is complete. A path ending in ``.zarr`` is
        refused (the atlas is not a zarr store; name it ``.json``)."""
        from ..io import atomic_write_text

        if os.fsdecode(path).rstrip("/\\").lower().endswith(".zarr"):
            raise ValueError(f"path: Atlas.save writes one JSON file, not a zarr store; got {os.fspath(path)!r} "
                             "(use a .json name)")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Atlas":
        """Read an atlas written by :meth:`save` (ValueError for a file that is not one, or one of a
        newer schema version than this xmodal reads)."""
        with open(path, encoding="utf-8") as fh:
            try:
                d = json.load(fh)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"atlas file {os.fspath(path)!r} is not valid JSON ({exc})") from exc
        return cls.from_dict(d)

    def check(self) -> None:
        """Consistency of the arrays (ValueError naming the first problem)."""
        m = len(self.names)
        if self.means.ndim != 2 or self.means.shape[0] != m or self.means.shape[1] not in (2, 3):
            raise ValueError(f"atlas: means: expected ({m}, 2 or 3), got {self.means.shape}")
        d = self.ndim
        if self.covariances.shape != (m, d, d):
            raise ValueError(f"atlas: covariances: expected {(m, d, d)}, got {self.covariances.shape}")
        for key in ("counts", "presence"):
            if getattr(self, key).shape != (m,):
                raise ValueError(f"atlas: {key}: expected ({m},), got {getattr(self, key).shape}")
        if len(set(self.names.tolist())) != m:
            raise ValueError("atlas: names must be unique")
        if self.transform not in _TRANSFORMS:
            raise ValueError(f"atlas: transform: expected one of {_TRANSFORMS}, got {self.transform!r}")
        if self.feature_normalization not in _FEATURE_NORMALIZATIONS:
            raise ValueError(f"atlas: feature_normalization: expected one of {_FEATURE_NORMALIZATIONS}, "
                             f"got {self.feature_normalization!r}")
        if (self.counts < 0).any() or (self.counts > self.n_samples).any():
            raise ValueError(f"atlas: counts: expected integers in [0, n_samples = {self.n_samples}] (samples in "
                             f"which each name occurs), got values from {self.counts.min()} to {self.counts.max()}")
        if not (np.isfinite(self.presence) & (self.presence >= 0) & (self.presence <= 1)).all():
            raise ValueError("atlas: presence: expected fractions in [0, 1] (the share of samples with each name)")
        if not (np.isfinite(self.means).all() and np.isfinite(self.covariances).all()):
            raise ValueError("atlas: means and covariances must be finite")
        if self.feature_means is not None:
            f = self.feature_means.shape[1] if self.feature_means.ndim == 2 else -1
            if self.feature_means.shape != (m, f) or self.feature_covariances is None or \
                    self.feature_covariances.shape != (m, f, f):
                raise ValueError("atlas: feature_means / feature_covariances: inconsistent shapes")
            if self.feature_names is None or len(self.feature_names) != f:
                raise ValueError(f"atlas: feature_names: expected {f} names")


_TRANSFORMS = ("rigid", "similarity", "affine")  # the kinds of build_atlas (atlas._assemble.KINDS)
_FEATURE_NORMALIZATIONS = ("sample", "none")


def _mapping(value, key: str) -> dict:
    """An optional JSON object of an atlas record (None -> {}); ValueError naming ``key`` otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a JSON object, got {type(value).__name__}")
    return value


def _jsonable(v: Any):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if np.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return repr(v)
