"""Intensity registration with itk-elastix, with the settings of the Platynereis atlas thesis as presets.

elastix registers a *moving* image onto a *fixed* image; the result maps fixed-image coordinates to
moving-image coordinates (so that the moving image can be resampled on the fixed grid). Images are
numpy arrays in (z, y, x) order with a voxel ``spacing`` in physical units; elastix itself works in
(x, y, z), which these functions translate. itk-elastix is imported lazily
(``pip install 'xmodal[elastix]'``).

Presets (``PRESETS``; each a list of elastix parameter maps run in sequence):

- ``"view-merging"``: Euler transform with Mattes mutual information, pyramid 64/32/8/4/1, 20,000
  random samples; then Euler with normalised correlation, pyramid 16/8/4/2/1, 50,000 samples.
- ``"rigid"``: the first stage of "view-merging" alone; ``"similarity"``: "view-merging" with a
  similarity transform in the second (normalised-correlation) stage. (A similarity transform driven
  by mutual information alone shrank the image in our tests, so scale is left to the NCC stage.)
- ``"bspline"``: B-spline transform with normalised correlation + mutual information + rigidity
  penalty, weights 1 / 1 / 100, final grid spacing 64 / 64 / 16 voxels (x, y, z).
- ``"bspline-landmarks"``: B-spline driven by normalised correlation between segmentations plus the
  distance of corresponding points, weights 1 and 1000 (the thesis' landmark-guided warp); needs
  ``fixed_points`` and ``moving_points``.

Pyramid factors larger than an image axis are clipped to it, so small images work with every preset.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._optional import optional_import
from .._validation import as_bool, as_spacing, choice

# Every stage: adaptive stochastic gradient descent on random samples, 500 iterations per level.
_SGD = {"Optimizer": "AdaptiveStochasticGradientDescent", "ImageSampler": "RandomCoordinate",
        "MaximumNumberOfIterations": 500}
_MI_STAGE = {**_SGD, "Registration": "MultiResolutionRegistration", "Metric": "AdvancedMattesMutualInformation",
             "NumberOfSpatialSamples": 20000, "NumberOfHistogramBins": 32, "pyramid": (64, 32, 8, 4, 1)}
_NCC_STAGE = {**_SGD, "Registration": "MultiResolutionRegistration", "Metric": "AdvancedNormalizedCorrelation",
              "NumberOfSpatialSamples": 50000, "pyramid": (16, 8, 4, 2, 1)}
_BSPLINE_STAGE = {**_SGD, "Registration": "MultiMetricMultiResolutionRegistration", "Transform": "BSplineTransform",
                  "FinalGridSpacingInVoxels": (64, 64, 16), "NumberOfSpatialSamples": 20000, "pyramid": (8, 4, 2, 1)}

PRESETS: dict[str, list[dict[str, Any]]] = {
    "rigid": [{**_MI_STAGE, "Transform": "EulerTransform"}],
    "similarity": [{**_MI_STAGE, "Transform": "EulerTransform"}, {**_NCC_STAGE, "Transform": "SimilarityTransform"}],
    "view-merging": [{**_MI_STAGE, "Transform": "EulerTransform"}, {**_NCC_STAGE, "Transform": "EulerTransform"}],
    "bspline": [{
        **_BSPLINE_STAGE,
        "Metric": ["AdvancedNormalizedCorrelation", "AdvancedMattesMutualInformation", "TransformRigidityPenalty"],
        "Metric0Weight": 1.0, "Metric1Weight": 1.0, "Metric2Weight": 100.0,
    }],
    "bspline-landmarks": [{
        **_BSPLINE_STAGE,
        "Metric": ["AdvancedNormalizedCorrelation", "CorrespondingPointsEuclideanDistanceMetric"],
        "Metric0Weight": 1.0, "Metric1Weight": 1000.0,
    }],
}


@dataclass
class ElastixResult:
    """Result of :func:`elastix_register`.

    ``parameter_object`` is the elastix transform (maps fixed to moving coordinates) for
    :func:`elastix_warp`; ``warped`` is the moving image resampled on the fixed grid (z, y, x);
    ``parameter_files`` the written ``TransformParameters.<i>.txt`` files (with ``out``).
    """

    parameter_object: Any
    warped: np.ndarray
    preset: str
    parameter_files: list = field(default_factory=list)
    fixed_shape: tuple = ()
    fixed_spacing: np.ndarray | None = None

    def transform_points(self, points) -> np.ndarray:
        """Map ``(k, d)`` points (physical units, z, y, x) of the fixed frame into the moving frame."""
        pts = np.asarray(points, dtype=np.float64)
        d = len(self.fixed_shape)
        if pts.ndim != 2 or pts.shape[1] != d:
            raise ValueError(f"points: expected a (k, {d}) array, got shape {pts.shape}")
        itk = _itk()
        dummy = _to_itk(itk, np.zeros((2,) * d, np.float32), self.fixed_spacing)
        with tempfile.TemporaryDirectory() as tmp:
            path = _point_file(pts, tmp, "points.txt")
            rows = itk.transformix_pointset(dummy, self.parameter_object, fixed_point_set_file_name=path,
                                            output_directory=tmp)
        out = np.empty_like(pts)
        for i, row in enumerate(np.atleast_2d(np.asarray(rows))):
            tokens = [str(t) for t in row]
            k = tokens.index("OutputPoint") + 3  # 'OutputPoint' '=' '[' x y (z) ']'
            out[i] = [float(v) for v in tokens[k:k + d]][::-1]
        return out

    def affine_moving_to_fixed(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, offset)`` mapping moving points into the fixed frame (physical units, z, y, x).

        Exact for the rigid, similarity and affine stages (their inverse); for B-spline stages it is
        the least-squares affine part. Fitted on a grid over the fixed image.
        """
        d = len(self.fixed_shape)
        extent = (np.asarray(self.fixed_shape) - 1) * self.fixed_spacing
        axes = [np.linspace(0, e, 4) for e in extent]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
        moved = self.transform_points(grid)
        x = np.hstack([moved, np.ones((len(moved), 1))])
        sol, *_ = np.linalg.lstsq(x, grid, rcond=None)
        return sol[:d].T, sol[d]

    def transform_parameters(self) -> list[tuple[float, ...]]:
        """The ``TransformParameters`` of every stage (elastix order: x, y, z)."""
        po = self.parameter_object
        return [tuple(float(v) for v in po.GetParameterMap(i)["TransformParameters"])
                for i in range(po.GetNumberOfParameterMaps())]


def _itk():
    return optional_import("itk", purpose="intensity registration with elastix")


def _to_itk(itk, image: np.ndarray, spacing: np.ndarray):
    img = itk.image_view_from_array(np.ascontiguousarray(image, dtype=np.float32))
    img.SetSpacing([float(s) for s in spacing[::-1]])  # itk: x, y, z
    return img


def _map(itk, po, stage: Mapping[str, Any], shape: Sequence[int]) -> Any:
    d = len(shape)
    stage = dict(stage)
    pyramid = stage.pop("pyramid")
    p = po.GetDefaultParameterMap("rigid" if "BSpline" not in stage["Transform"] else "bspline", len(pyramid))
    for key, value in stage.items():
        if isinstance(value, (list, tuple)) and key == "FinalGridSpacingInVoxels":
            value = value[:d] if d == 3 else value[:2]
        if isinstance(value, (list, tuple)):
            p[key] = [str(v) for v in value]
        else:
            p[key] = [str(value)]
    if "FinalGridSpacingInVoxels" in p:
        p.pop("FinalGridSpacingInPhysicalUnits", None)  # elastix accepts only one of the two
    p["NumberOfResolutions"] = [str(len(pyramid))]
    schedule = []
    for f in pyramid:  # per level, per axis (x, y, z); never coarser than the axis itself
        schedule += [str(max(1, min(int(f), int(n) // 4 or 1))) for n in shape[::-1]]
    p["ImagePyramidSchedule"] = schedule
    p["AutomaticTransformInitialization"] = ["true"] if "BSpline" not in stage["Transform"] else ["false"]
    return p


def _point_file(points_zyx: np.ndarray, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    pts = np.asarray(points_zyx, dtype=np.float64)[:, ::-1]
    with open(path, "w") as fh:
        fh.write(f"point\n{len(pts)}\n")
        for p in pts:
            fh.write(" ".join(f"{v:.6f}" for v in p) + "\n")
    return path


def elastix_register(fixed: np.ndarray, moving: np.ndarray, *, preset: str = "view-merging",
                     fixed_spacing=None, moving_spacing=None, fixed_points=None, moving_points=None,
                     parameters: Mapping[str, Any] | None = None, out: str | Path | None = None) -> ElastixResult:
    """Register ``moving`` onto ``fixed`` (2D or 3D intensity or label images) with elastix.

    Parameters
    ----------
    fixed, moving : arrays (z, y, x) or (y, x)
    preset : one of :data:`PRESETS`
    fixed_spacing, moving_spacing : voxel sizes (physical units), default 1
    fixed_points, moving_points : (k, d) corresponding points (physical units, z, y, x) for
        "bspline-landmarks"
    parameters : dict, optional
        elastix parameters overriding those of every stage (e.g. ``{"MaximumNumberOfIterations": 200}``).
    out : folder, optional
        Write the final parameter files ``TransformParameters.<i>.txt`` there.
    """
    choice(preset, "preset", tuple(PRESETS))
    f = np.asarray(fixed)
    m = np.asarray(moving)
    if f.ndim not in (2, 3) or m.ndim != f.ndim:
        raise ValueError(f"fixed, moving: expected two 2D or two 3D images, got shapes {f.shape} and {m.shape}")
    fs = as_spacing(fixed_spacing, f.ndim, "fixed_spacing")
    ms = as_spacing(moving_spacing, m.ndim, "moving_spacing")
    fs = np.ones(f.ndim) if fs is None else fs
    ms = np.ones(m.ndim) if ms is None else ms
    if preset == "bspline-landmarks" and (fixed_points is None or moving_points is None):
        raise ValueError("fixed_points, moving_points: the 'bspline-landmarks' preset needs corresponding points")
    itk = _itk()
    po = itk.ParameterObject.New()
    for stage in PRESETS[preset]:
        stage = {**stage, **(parameters or {})}
        po.AddParameterMap(_map(itk, po, stage, f.shape))
    kwargs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if fixed_points is not None and moving_points is not None:
            fp = np.asarray(fixed_points, dtype=np.float64)
            mp = np.asarray(moving_points, dtype=np.float64)
            if fp.shape != mp.shape or fp.ndim != 2 or fp.shape[1] != f.ndim:
                raise ValueError(f"fixed_points, moving_points: expected two (k, {f.ndim}) arrays of the same "
                                 f"shape, got {fp.shape} and {mp.shape}")
            kwargs["fixed_point_set_file_name"] = _point_file(fp, tmp, "fixed.txt")
            kwargs["moving_point_set_file_name"] = _point_file(mp, tmp, "moving.txt")
        warped, result = itk.elastix_registration_method(_to_itk(itk, f, fs), _to_itk(itk, m, ms),
                                                         parameter_object=po, log_to_console=False, **kwargs)
    files = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(result.GetNumberOfParameterMaps()):
            path = out / f"TransformParameters.{i}.txt"
            single = itk.ParameterObject.New()
            single.AddParameterMap(result.GetParameterMap(i))
            single.WriteParameterFile(str(path))
            files.append(str(path))
    return ElastixResult(result, np.asarray(itk.array_from_image(warped)), preset, files, tuple(f.shape), fs)


def elastix_warp(image: np.ndarray, result: ElastixResult, *, spacing=None, labels: bool = False) -> np.ndarray:
    """Resample ``image`` (in the moving frame) on the fixed grid with the transform of ``result``.

    ``labels=True`` uses nearest-neighbour interpolation (order 0) and keeps the integer dtype.
    """
    labels = as_bool(labels, "labels")
    itk = _itk()
    img = np.asarray(image)
    sp = as_spacing(spacing, img.ndim)
    sp = np.ones(img.ndim) if sp is None else sp
    po = itk.ParameterObject.New()
    for i in range(result.parameter_object.GetNumberOfParameterMaps()):
        p = result.parameter_object.GetParameterMap(i)
        if labels:
            p["FinalBSplineInterpolationOrder"] = ["0"]
            p["ResultImagePixelType"] = ["float"]
        po.AddParameterMap(p)
    out = np.asarray(itk.array_from_image(itk.transformix_filter(_to_itk(itk, img, sp), po)))
    if labels:
        return np.rint(out).astype(img.dtype)
    return out
