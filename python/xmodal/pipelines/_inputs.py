"""The readers of the pipelines' inputs live in :mod:`xmodal.io` (``read_image``, ``read_table``,
``load_points``, ``PointSet``); this module keeps their old import path working."""

from ..io._files import numeric_column, read_image, read_table
from ..io._points import PointSet, label_centroids, load_points

__all__ = ["PointSet", "label_centroids", "load_points", "numeric_column", "read_image", "read_table"]
