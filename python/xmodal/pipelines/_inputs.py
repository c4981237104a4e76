"""The readers of the pipelines' inputs live in :mod:`xmodal.io` (``read_image``, ``read_table``,
``load_points``, ``PointSet``); this module keeps their old import path working, and reads a raw
image with the voxel size it declares (:func:`read_raw`)."""

from pathlib import Path

from .._validation import as_spacing
from ..io._files import numeric_column, read_image, read_table
from ..io._ome import ome_zarr_scale
from ..io._points import PointSet, label_centroids, load_points

__all__ = ["PointSet", "label_centroids", "load_points", "numeric_column", "read_image", "read_raw", "read_table"]


def read_raw(raw, spacing):
    """``(image, spacing, units)`` of a raw image (path or array): ``spacing`` checked against its
    dimension (a tuple of floats, or None), else the voxel size and unit an OME-Zarr path declares
    (None when it declares none); ``units`` is None unless the OME-Zarr names one."""
    import numpy as np

    image = read_image(raw) if isinstance(raw, (str, Path)) else raw
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    units = None
    if spacing is None and isinstance(raw, (str, Path)) and Path(raw).is_dir():
        spacing, units = ome_zarr_scale(raw, len(image.shape))
    if spacing is not None and len(image.shape) in (2, 3):
        spacing = tuple(float(v) for v in as_spacing(spacing, len(image.shape)))
    return image, spacing, units
