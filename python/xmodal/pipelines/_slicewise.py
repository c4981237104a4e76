"""A 2D network on a (z, y, x) stack as one tiled 3D prediction.

:func:`slicewise` wraps the 2D model as a callable on ``(B, C, Z, Y, X)`` windows and returns tiles
one slice deep with no halo along z, so that one :func:`xmodal.predict_tiled` call covers the whole
stack: the tiles are planned once, the normalisation is computed once over the whole stack, and a
dask client receives every slice's tiles. Tiles and halo in (y, x) are multiples of the model's
down-sampling factor, so every window edge inside a slice lies on the factor grid of the slice and
the result equals a 2D prediction of each slice with the same normalisation.
"""

from __future__ import annotations

import logging

import numbers

import numpy as np


class PerSlice:
    """A 2D model as a callable on ``(B, C, Z, Y, X)`` float32 windows (every z slice is one input).

    ``model``: a torch module or a callable on ``(B, C, Y, X)`` numpy batches. It runs on ``device``
    (``"auto"``, ``"cpu"``, ``"cuda"``); the wrapper pickles as the model and the device (the same
    bytes for the same weights), and a dask worker rebuilds its runner on arrival.
    """

    def __init__(self, model, device):
        from ..inference._model import Runner

        self.model, self.device = model, device
        self._runner = Runner(model, device)  # checks the device now, not on the first tile

    def __reduce__(self):
        # Deterministic bytes (they are the model's token in predict_tiled's job signature, so a
        # resumed run recognises its tiles): a torch module travels as its structure on the "meta"
        # device plus its weights as numpy arrays (torch's own pickling adds a random id per save).
        return _rebuild, (_portable(self.model), self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b, c, z = x.shape[:3]
        flat = np.ascontiguousarray(np.moveaxis(x, 2, 1)).reshape(b * z, c, *x.shape[3:])
        y = self._runner(flat)
        return np.moveaxis(y.reshape(b, z, *y.shape[1:]), 1, 2)


def _portable(model):
    try:
        import torch
    except ImportError:
        return ("object", model)
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return ("object", model)
    import copy

    skeleton = copy.deepcopy(model).to("meta")
    return ("module", (skeleton, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}))


def _rebuild(portable, device):
    kind, payload = portable
    if kind == "module":
        import torch

        skeleton, state = payload
        model = skeleton.to_empty(device="cpu")
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        payload = model
    return PerSlice(payload, device)


def _plane(value, name: str, minimum: int) -> tuple:
    """An int or 2 ints (y, x) for the 2D model's plane."""
    vals = [value] * 2 if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (not isinstance(vals, (tuple, list)) or len(vals) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in vals)):
        raise TypeError(f"{name}: expected an integer or 2 integers (y, x) for the 2D model, got {value!r}")
    if min(vals) < minimum:
        raise ValueError(f"{name}: expected values >= {minimum}, got {tuple(int(v) for v in vals)}")
    return tuple(int(v) for v in vals)


def slicewise(model, plane, tile_shape, halo, device):
    """``(callable, tile (1, ty, tx), halo (0, hy, hx))`` for :func:`xmodal.predict_tiled` on a stack.

    Parameters
    ----------
    model : torch module (2D) or a callable on ``(B, C, Y, X)`` numpy batches
    plane : (Y, X), the shape of one slice
    tile_shape : None (the largest tile that fits memory, :func:`xmodal.inference.find_tile_shape`),
        an int or (ty, tx), multiples of the model's down-sampling factor
    halo : "auto" (half the receptive field, torch modules only), an int or (hy, hx)
    device : where the model runs
    """
    from ..inference import GlobalFieldError, find_tile_shape, receptive_field

    if isinstance(halo, str) and halo != "auto":
        raise ValueError(f"halo: expected 'auto' or voxel counts, got {halo!r}")
    torch_model = hasattr(model, "modules") and hasattr(model, "parameters")
    if torch_model:
        try:
            rf = receptive_field(model, 2)
            factor = rf.factor
        except GlobalFieldError as exc:  # no halo makes tiles exact: only a given one is used, as predict_tiled
            if isinstance(halo, str):
                raise
            logging.getLogger("xmodal.inference").warning(
                "%s; using the given halo: tiles differ from the whole-slice prediction unless one covers it", exc)
            rf, factor = None, exc.factor or (1, 1)
        hal = rf.halo if isinstance(halo, str) else _plane(halo, "halo", 0)
    else:
        if isinstance(halo, str):
            raise ValueError("halo: 'auto' needs a torch module (analytic receptive field); give the halo in voxels")
        factor, hal = (1, 1), _plane(halo, "halo", 0)
    if tile_shape is None:
        tile = find_tile_shape(model, image_shape=plane, halo=hal, device=device) if torch_model else tuple(plane)
    else:
        tile = _plane(tile_shape, "tile_shape", 1)
        if any(t % f and t < n for t, f, n in zip(tile, factor, plane)):
            raise ValueError(f"tile_shape: must be a multiple of the network's down-sampling factor {factor}, "
                             f"got {tile}")
    return PerSlice(model, device), (1, *tile), (0, *hal)

