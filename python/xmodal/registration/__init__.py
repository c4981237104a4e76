"""Point-set registration: Coherent Point Drift (:func:`cpd`) and its transforms."""

from ._cpd import CPDResult, cpd, farthest_point_centers
from .transforms import (
    AffineTransform,
    DeformableTransform,
    RigidTransform,
    SimilarityTransform,
    transform_from_dict,
)

__all__ = [
    "cpd",
    "CPDResult",
    "RigidTransform",
    "SimilarityTransform",
    "AffineTransform",
    "DeformableTransform",
    "transform_from_dict",
    "farthest_point_centers",
]
