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

Torch is optional (extra ``xmodal[torch]``): this package imports without it and
:func:`predict_tiled` and :func:`tile_mismatch` run any callable on numpy arrays. What needs torch
(:class:`DihedralTTA`, a ``torch.nn.Module`` imported on first use of the name;
:func:`receptive_field`, :func:`find_tile_shape`) raises ImportError naming the extra when used.
"""

from .._optional import have_module
from ._mismatch import TileMismatch, tile_mismatch
from ._normalize import QuantileNormalizer, Standardize, global_mean_std, model_normalizer, quantile_normalizer
from ._predict import predict_tiled
from ._receptive import (GlobalFieldError, ReceptiveField, ReceptiveFieldError, measure_receptive_field,
                          receptive_field)
from ._tile_shape import activation_bytes_per_voxel, find_tile_shape

__all__ = [
    "predict_tiled",
    "receptive_field",
    "find_tile_shape",
    "tile_mismatch",
    "ReceptiveField",
    "ReceptiveFieldError",
    "GlobalFieldError",
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
if not have_module("torch"):  # ``from xmodal.inference import *`` works without torch
    __all__.remove("DihedralTTA")


def __getattr__(name: str):
    if name == "DihedralTTA":  # a torch.nn.Module: defined on first use (ImportError naming the extra)
        from ._tta_torch import DihedralTTA

        globals()[name] = DihedralTTA
        return DihedralTTA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"DihedralTTA"})
