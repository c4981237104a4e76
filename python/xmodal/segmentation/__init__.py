"""Segmentation: mutex watershed on grids and region graphs, blockwise for large volumes.

See ``docs/mws.md`` for the conventions (merge vs boundary probabilities, offset signs) and how to
convert from bioimage-cpp, elf and mwatershed.
"""

from .blockwise import BlockwiseResult, blockwise_mutex_watershed
from .mws import (
    MutexWatershedInfo,
    mutex_watershed,
    mutex_watershed_graph,
    seeded_mutex_watershed,
)
from ._size_filter import remove_small_segments

__all__ = [
    "mutex_watershed",
    "mutex_watershed_graph",
    "seeded_mutex_watershed",
    "remove_small_segments",
    "blockwise_mutex_watershed",
    "MutexWatershedInfo",
    "BlockwiseResult",
]
