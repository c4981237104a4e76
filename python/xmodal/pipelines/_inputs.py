"""The readers of the pipelines' inputs live in :mod:`xmodal.io` (``read_image``, ``read_table``,
``load_points``, ``PointSet``); this module keeps their old import path working, and reads a raw
image with the voxel size it declares (:func:`read_raw`: OME-Zarr or TIFF metadata), and puts two
cell sets into one length unit (:func:`in_fixed_units`)."""

import logging
from dataclasses import replace
from pathlib import Path

from .._validation import as_spacing
from ..io._files import numeric_column, read_image, read_table
from ..io._ome import declared_scale
from ..io._points import PointSet, label_centroids, load_points
from ..io._units import convert_length

log = logging.getLogger("xmodal.pipelines")

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


def in_fixed_units(fset, mset):
    """``(moving cells, units)``: when both cell sets declare a length unit (label images whose
    metadata names one, :attr:`xmodal.io.PointSet.units`) and the units differ, the moving cells
    (points and spacing) converted into the fixed cells' unit, e.g. EM centroids in nanometres onto
    light-microscopy ones in micrometres; ``units``: the fixed cells' unit (the unit of every
    output), None when they declare none."""
    fu, mu = fset.units, mset.units
    if fu is None or mu is None or fu == mu:
        return mset, fu
    factor = convert_length([1.0], mu, fu)[0]
    log.info("register_cells: moving cells converted from %s to the fixed cells' %s (x %g)", mu, fu, factor)
    spacing = None if mset.spacing is None else tuple(float(v) * factor for v in mset.spacing)
    return replace(mset, points=mset.points * factor, spacing=spacing, units=fu), fu


def check_cell_sets(fix, mov):
    """ValueError, naming the set, unless ``fix`` and ``mov`` (n, d) are cells of one dimension, at
    least d + 1 of each, and spread out: a set in which most cells share a position with another
    (median nearest-neighbour distance 0, e.g. every cell at one point) has no scale to register by."""
    from .prealign import median_nn_distance

    if fix.shape[1] != mov.shape[1]:
        raise ValueError(f"fixed, moving: expected points of the same dimension, got {fix.shape[1]}D and "
                         f"{mov.shape[1]}D")
    d = fix.shape[1]
    for name, p in (("fixed", fix), ("moving", mov)):
        if len(p) < d + 1:
            raise ValueError(f"{name}: expected at least {d + 1} cells for a {d}D registration, got {len(p)}")
        if not median_nn_distance(p) > 0:
            raise ValueError(f"{name}: expected spread-out cells, got {len(p)} of which most share their position "
                             f"with another cell (median nearest-neighbour distance 0); remove the duplicates")
