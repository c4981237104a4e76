"""End-to-end workflows built on the xmodal capabilities (pure Python).

- :func:`register_cells`: cross-modal cell registration and matching with error estimates.
- :func:`register_beads`: fiducial (bead) affine registration by match maximisation.
- :func:`prealign`: principal-axes pre-alignment with a search over proper rotations.
- :func:`segment`: large-volume segmentation (tiled prediction, mutex watershed, metrics).
- :func:`compare_segmentation_methods`: every agglomeration and the baseline on one prediction, scored.

``load_points``, ``read_table``, ``PointSet`` (from :mod:`xmodal.io`) and ``CompositeTransform``,
``load_transform`` (from :mod:`xmodal.registration.transforms`) are also importable from here.
"""

from .beads import BeadRegistration, register_beads
from .prealign import PrealignResult, prealign, principal_axes, proper_signed_permutations
from .register import CellRegistration, register_cells
from .segment import SegmentationResult, segment
from .compare import compare_segmentation_methods
from ..io import PointSet, load_points, read_table
from ..io._points import label_centroids
from ..registration.transforms import CompositeTransform, load_transform

__all__ = [
    "register_cells", "CellRegistration", "register_beads", "BeadRegistration", "prealign",
    "PrealignResult", "principal_axes", "proper_signed_permutations", "load_points", "label_centroids",
    "read_table", "PointSet", "CompositeTransform", "load_transform", "segment", "SegmentationResult",
    "compare_segmentation_methods",
]
