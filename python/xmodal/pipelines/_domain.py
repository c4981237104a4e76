"""Does a raw image look like the electron microscopy the built-in models were trained on?

The built-in networks (``model="em"``, ``"isbi2012"``) were trained on ssTEM sections: mid-grey
cytoplasm with thin dark membranes. Scaled to its 1 % / 99 % quantiles such an image has a median
near 0.55-0.6 and a slightly negative skewness (ISBI 2012: 0.57 / -0.26; Drosophila VNC: 0.59 /
-0.3). A fluorescence image of nuclei (dark background, sparse bright objects) has a low median and
a large positive skewness (the DSB 2018 nuclei image: 0.15 / 1.8): the network then draws
"membranes" around noise and the segmentation means nothing. :func:`check_em_input` measures a
central crop and warns.
"""

from __future__ import annotations

import warnings

import numpy as np

EM_MODELS = ("em", "isbi2012")
_MEDIAN_BELOW, _SKEW_ABOVE = 0.3, 1.0  # both: unlike EM (ISBI / VNC: about 0.57, -0.3)


def _central_crop(image, side: int = 1024) -> np.ndarray:
    """A central (y, x) crop of at most ``side`` pixels per axis (of the middle slice of a stack),
    read without loading the whole image (zarr arrays read only the chunks it touches)."""
    shape = tuple(int(s) for s in image.shape)
    lead = tuple(s // 2 for s in shape[:-2])
    box = tuple(slice(max(0, (s - side) // 2), max(0, (s - side) // 2) + min(s, side)) for s in shape[-2:])
    return np.asarray(image[lead + box], dtype=np.float64)


def intensity_profile(image) -> dict:
    """Median and skewness of a central crop scaled to its 1 % / 99 % quantiles (clipped to 0..1)."""
    crop = _central_crop(image)
    crop = crop[np.isfinite(crop)]
    if crop.size == 0:
        return {"median": None, "skewness": None}
    lo, hi = np.quantile(crop, [0.01, 0.99])
    if not hi > lo:
        return {"median": None, "skewness": None}
    x = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
    sd = float(x.std())
    skew = float(((x - x.mean()) ** 3).mean() / sd ** 3) if sd > 0 else 0.0
    return {"median": float(np.median(x)), "skewness": skew}


def check_em_input(image, model) -> dict | None:
    """For a built-in EM model (``model`` "em" or "isbi2012"): the intensity profile of ``image``
    and whether it looks like EM (``"looks_like_em"``); a UserWarning when it does not (median
    below 0.3 and skewness above 1.0 of the 1-99 % scaled intensities). None for other models."""
    if not (isinstance(model, str) and model in EM_MODELS):
        return None
    prof = intensity_profile(image)
    unlike = prof["median"] is not None and prof["median"] < _MEDIAN_BELOW and prof["skewness"] > _SKEW_ABOVE
    prof["looks_like_em"] = not unlike
    if unlike:
        warnings.warn(
            f"raw: the image does not look like the electron microscopy the {model!r} model was trained on "
            f"(scaled to its 1-99 % range: median {prof['median']:.2f}, skewness {prof['skewness']:.2f}; ssTEM "
            "sections: about 0.57 and -0.3). A dark background with sparse bright objects (fluorescence) "
            "gives a meaningless segmentation: use a model trained on such images.", UserWarning, stacklevel=3)
    return prof
