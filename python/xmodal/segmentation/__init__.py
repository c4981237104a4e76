"""Segmentation: mutex watershed on grids and region graphs, blockwise for large volumes, and the
two-stage route superpixels -> region adjacency graph -> GASP / multicut / graph mutex watershed.

See ``docs/mws.md`` for the conventions (merge vs boundary probabilities, offset signs) and how to
convert from bioimage-cpp, elf and mwatershed, and ``docs/segmentation_graph.md`` for the
superpixel route.
"""

from .agglomeration import (
    AgglomerationInfo,
    agglomerate_graph,
    boundaries_from_affinities,
    superpixel_agglomeration,
)
from .blockwise import BlockwiseResult, blockwise_mutex_watershed
from .blockwise_graph import BlockwiseAgglomerationResult, blockwise_superpixel_agglomeration
from .slicewise_graph import SlicewiseAgglomerationResult, slicewise_superpixel_agglomeration
from .stitched_graph import stitched_superpixel_agglomeration
from ._gasp import GaspInfo, boundary_to_signed_weights, gasp
from ._multicut import multicut, probabilities_to_costs
from .mws import (
    MutexWatershedInfo,
    mutex_watershed,
    mutex_watershed_graph,
    seeded_mutex_watershed,
)
from ._size_filter import remove_small_segments
from .edge_model import (
    BoostedEdgeClassifier,
    EdgeClassifier,
    edge_classifier_from_dict,
    edge_feature_matrix,
    edge_feature_names,
    edge_labels_from_ground_truth,
    fit_boosted_edge_classifier,
    fit_edge_classifier,
)
from .rag import EdgeFeatures, RegionAdjacencyGraph, edge_features, region_adjacency_graph
from .superpixels import distance_transform_watershed, seeded_watershed

__all__ = [
    "EdgeClassifier",
    "BoostedEdgeClassifier",
    "edge_classifier_from_dict",
    "fit_boosted_edge_classifier",
    "edge_feature_matrix",
    "edge_feature_names",
    "edge_labels_from_ground_truth",
    "fit_edge_classifier",
    "mutex_watershed",
    "mutex_watershed_graph",
    "seeded_mutex_watershed",
    "remove_small_segments",
    "blockwise_mutex_watershed",
    "MutexWatershedInfo",
    "BlockwiseResult",
    # superpixel route
    "distance_transform_watershed",
    "seeded_watershed",
    "region_adjacency_graph",
    "edge_features",
    "RegionAdjacencyGraph",
    "EdgeFeatures",
    "gasp",
    "GaspInfo",
    "boundary_to_signed_weights",
    "multicut",
    "probabilities_to_costs",
    "agglomerate_graph",
    "boundaries_from_affinities",
    "superpixel_agglomeration",
    "AgglomerationInfo",
    "blockwise_superpixel_agglomeration",
    "BlockwiseAgglomerationResult",
    "slicewise_superpixel_agglomeration",
    "SlicewiseAgglomerationResult",
    "stitched_superpixel_agglomeration",
]
