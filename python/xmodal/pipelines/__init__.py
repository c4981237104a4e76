"""End-to-end workflows built on the xmodal capabilities (pure Python).

- :func:`register_cells`: cross-modal cell registration and matching with error estimates.
- :func:`register_beads`: fiducial (bead) affine registration by match maximisation.
- :func:`prealign`: principal-axes pre-alignment with a search over proper rotations.
- :func:`segment`: large-volume segmentation (tiled prediction, mutex watershed, metrics).
"""

from .beads import BeadRegistration, register_beads
from .prealign import PrealignResult, prealign, principal_axes, proper_signed_permutations
from .register import CellRegistration, register_cells
from .segment import SegmentationResult, segment
from ._inputs import PointSet, label_centroids, load_points, read_table
from ._transforms import CompositeTransform, load_transform

__all__ = [
    "register_cells", "CellRegistration", "register_beads", "BeadRegistration", "prealign",
    "PrealignResult", "principal_axes", "proper_signed_permutations", "load_points", "label_centroids",
    "read_table", "PointSet", "CompositeTransform", "load_transform", "segment", "SegmentationResult",
]
