"""Halo tiled network inference.

- :func:`predict_tiled`: predict a network over an image of any size (numpy, zarr, dask), tile by
  tile with a halo of real context, exact in ``blend="crop"`` mode, out of core, resumable,
  distributed on dask.
- :func:`receptive_field`: the network's receptive field and down-sampling factor (analytic, with
  a gradient check).
- :func:`find_tile_shape`: the largest tile that fits memory.
- :func:`tile_mismatch`: the tiling-artifact metric (disagreement of overlapping tiles).
- Global normalisation computed out of core (:mod:`xmodal.inference._normalize`, the one home of
  xmodal's normalisers): :func:`global_mean_std` with :class:`Standardize`, and
  :func:`quantile_normalizer` with :class:`QuantileNormalizer`, and :func:`model_normalizer` (the
  one a shipped model's metadata asks for).
- :class:`DihedralTTA`: test-time augmentation of a 2D affinity network (mean over the 8 rotations
  and flips, with the affinity channels remapped to the input's frame).
"""

from ._mismatch import TileMismatch, tile_mismatch
from ._normalize import QuantileNormalizer, Standardize, global_mean_std, model_normalizer, quantile_normalizer
from ._predict import predict_tiled
from ._receptive import ReceptiveField, measure_receptive_field, receptive_field
from ._tile_shape import activation_bytes_per_voxel, find_tile_shape
from ._tta import DihedralTTA

__all__ = [
    "predict_tiled",
    "receptive_field",
    "find_tile_shape",
    "tile_mismatch",
    "ReceptiveField",
    "TileMismatch",
    "measure_receptive_field",
    "activation_bytes_per_voxel",
    "Standardize",
    "global_mean_std",
    "QuantileNormalizer",
    "quantile_normalizer",
    "model_normalizer",
    "DihedralTTA",
]
