"""Point-set registration: Coherent Point Drift (:func:`cpd`), its transforms, and registration error
estimates of point fits (:mod:`xmodal.registration.uncertainty`)."""

from ._coarse import cpd_coarse_to_fine
from ._cpd import CPDResult, cpd, farthest_point_centers
from .transforms import (
    AffineTransform,
    DeformableTransform,
    RigidTransform,
    SimilarityTransform,
    transform_from_dict,
)
from .uncertainty import (
    AffineFit,
    PredictionRegion,
    RigidFit,
    fit_affine,
    fit_rigid,
    fitzpatrick_tre,
    leave_one_out_residuals,
    prediction_region,
)

__all__ = [
    "cpd",
    "cpd_coarse_to_fine",
    "CPDResult",
    "RigidTransform",
    "SimilarityTransform",
    "AffineTransform",
    "DeformableTransform",
    "transform_from_dict",
    "farthest_point_centers",
    "fit_rigid",
    "fit_affine",
    "prediction_region",
    "leave_one_out_residuals",
    "fitzpatrick_tre",
    "AffineFit",
    "RigidFit",
    "PredictionRegion",
]
