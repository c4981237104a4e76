"""The readers of the pipelines' inputs live in :mod:`xmodal.io` (``read_image``, ``read_table``,
``load_points``, ``PointSet``); this module keeps their old import path working, and reads a raw
image with the voxel size it declares (:func:`read_raw`: OME-Zarr or TIFF metadata)."""

from pathlib import Path

from .._validation import as_spacing
from ..io._files import numeric_column, read_image, read_table
from ..io._ome import declared_scale
from ..io._points import PointSet, label_centroids, load_points

__all__ = ["PointSet", "label_centroids", "load_points", "numeric_column", "read_image", "read_raw", "read_table"]


def read_raw(raw, spacing):
    """``(image, spacing, units)`` of a raw image (path or array): ``spacing`` checked against its
    dimension (a tuple of floats, or None), else the voxel size and unit an OME-Zarr or TIFF path
    declares (:func:`xmodal.io._ome.declared_scale`; None when it declares none); ``units`` is None
    unless the path's metadata names one (an explicit ``spacing`` wins and has no unit)."""
    import numpy as np

    image = read_image(raw) if isinstance(raw, (str, Path)) else raw
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    units = None
    if spacing is None and isinstance(raw, (str, Path)):
        spacing, units = declared_scale(raw, len(image.shape))
    if spacing is not None and len(image.shape) in (2, 3):
        spacing = tuple(float(v) for v in as_spacing(spacing, len(image.shape)))
    return image, spacing, units
