"""xmodal: multimodal bioimage analysis with a C++/CUDA core.

Register and match cells across imaging modalities and segment volumes larger than memory:

- point registration by Coherent Point Drift (:func:`cpd`),
- sparse k-NN cost matrices and exact assignment (:func:`knn_graph`, :func:`linear_assignment`,
  :func:`cover_assignment`, :func:`match_points`),
- halo tiled network inference (:func:`predict_tiled`),
- mutex watershed segmentation (:func:`mutex_watershed`, :func:`blockwise_mutex_watershed`),
- superpixels + region-graph agglomeration (:func:`superpixel_agglomeration`, :func:`gasp`),
- end-to-end workflows in :mod:`xmodal.pipelines` and the ``xmodal`` command line.

Arrays in are numpy arrays (or CUDA arrays where a function says so); arrays out are of the same
kind. Points are ``(n, d)`` arrays, d = 2 or 3, columns in image axis order (z, y, x), in physical
units. Native kernels use :func:`get_num_threads` threads (``XMODAL_NUM_THREADS`` or all cores) and
release the GIL.
"""

from __future__ import annotations

import importlib

from ._config import backends, get_num_threads, num_threads, set_num_threads, show_config
from ._version import __version__

# Public functions live in their capability subpackage and are imported on first use, so that
# ``import xmodal`` stays fast and never pulls in optional dependencies.
_LAZY = {
    # matching
    "knn_graph": "xmodal.matching",
    "linear_assignment": "xmodal.matching",
    "cover_assignment": "xmodal.matching",
    "match_points": "xmodal.matching",
    "AssignmentResult": "xmodal.matching",
    # registration
    "cpd": "xmodal.registration",
    "cpd_coarse_to_fine": "xmodal.registration",
    "CPDResult": "xmodal.registration",
    "RigidTransform": "xmodal.registration",
    "SimilarityTransform": "xmodal.registration",
    "AffineTransform": "xmodal.registration",
    "DeformableTransform": "xmodal.registration",
    "transform_from_dict": "xmodal.registration",
    # segmentation
    "mutex_watershed": "xmodal.segmentation",
    "mutex_watershed_graph": "xmodal.segmentation",
    "seeded_mutex_watershed": "xmodal.segmentation",
    "remove_small_segments": "xmodal.segmentation",
    "blockwise_mutex_watershed": "xmodal.segmentation",
    "gasp": "xmodal.segmentation",
    "superpixel_agglomeration": "xmodal.segmentation",
    "blockwise_superpixel_agglomeration": "xmodal.segmentation",
    "slicewise_superpixel_agglomeration": "xmodal.segmentation",
    "stitched_superpixel_agglomeration": "xmodal.segmentation",
    # inference
    "predict_tiled": "xmodal.inference",
    "receptive_field": "xmodal.inference",
    "find_tile_shape": "xmodal.inference",
    "tile_mismatch": "xmodal.inference",
}
_SUBMODULES = {"matching", "registration", "segmentation", "inference", "pipelines", "metrics", "io", "cli", "atlas",
               "models", "datasets", "demo"}

__all__ = [
    "__version__",
    "backends",
    "show_config",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"xmodal.{name}")
    raise AttributeError(f"module 'xmodal' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
