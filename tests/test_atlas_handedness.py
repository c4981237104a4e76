"""xmodal.atlas.identify: a sample whose handedness differs from the atlas's is noticed when its fit
is doubtful (the mirror image is registered too and fits better), with a warning naming
allow_reflection; samples of the right handedness are not flagged."""

import warnings

import numpy as np
import pytest

from xmodal.atlas import build_atlas, identify
from xmodal.atlas._handedness import HAND_GATE, doubtful

from test_atlas import _accuracy, _base_shape, _names, _sample

MIRROR = np.array([1.0, 1.0, -1.0])


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(11)
    base, names = _base_shape(60, rng), _names(60)
    train = [_sample(base, names, rng, noise=0.15, drop=0.05) for _ in range(5)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train])
    return atlas, base, names, rng


def test_a_mirrored_sample_is_flagged(synthetic):
    atlas, base, names, rng = synthetic
    pts, nm, _ = _sample(base, names, rng, noise=0.15, mirror=True)
    with pytest.warns(UserWarning, match=r"mirror image of the sample fits the atlas better.*allow_reflection=True"):
        res = identify(pts, atlas)
    fit = res.diagnostics["fit"]
    assert fit["mirror_fits_better"] is True and fit["ok"] is False
    assert fit["mirror_objective"] < fit["objective"]
    assert "handedness" in res.diagnostics["timings"]
    assert _accuracy(res, nm) < 0.5  # the names are indeed wrong ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ... and right, without a warning, once reflections are allowed
        fixed = identify(pts, atlas, allow_reflection=True)
    assert fixed.reflected and _accuracy(fixed, nm) >= 0.9
    assert "mirror_fits_better" not in fixed.diagnostics["fit"]


def test_right_handed_samples_pass(synthetic):
    atlas, base, names, rng = synthetic
    for _ in range(3):
        pts, nm, _ = _sample(base, names, rng, noise=0.15)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = identify(pts, atlas)
        fit = res.diagnostics["fit"]
        assert fit["ok"] is True and fit.get("mirror_fits_better") in (None, False)
        assert _accuracy(res, nm) >= 0.9


def test_check_can_be_switched_off(synthetic):
    atlas, base, names, rng = synthetic
    pts, _, _ = _sample(base, names, rng, noise=0.15, mirror=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = identify(pts, atlas, check_handedness=False)
    assert "mirror_fits_better" not in res.diagnostics["fit"]
    with pytest.raises(TypeError, match=r"check_handedness: expected True or False, got"):
        identify(pts, atlas, check_handedness="yes")


def test_gate():
    ref = [1.0, 2.0, 3.0]
    assert not doubtful({"loo_median_d2": ref, "median_d2": 0.8 * 3.0, "n_cells": 100})
    assert doubtful({"loo_median_d2": ref, "median_d2": (HAND_GATE + 0.01) * 3.0, "n_cells": 100})
    assert doubtful({"loo_median_d2": ref, "median_d2": None, "n_cells": 100})  # nothing named
    # no verdict without a reference of 3 samples, or for a handful of cells
    assert not doubtful({"loo_median_d2": ref[:2], "median_d2": 30.0, "n_cells": 100})
    assert not doubtful({"loo_median_d2": None, "median_d2": 30.0, "n_cells": 100})
    assert not doubtful({"loo_median_d2": ref, "median_d2": 30.0, "n_cells": 5})


def test_real_embryos():
    """Built-in C. elegans embryos: an atlas of 4, a fifth embryo as recorded (not flagged) and
    mirrored (its fit is doubtful, the mirror image is tried and wins)."""
    from xmodal.datasets import celegans_embryos

    emb = celegans_embryos()
    keys = sorted(emb)
    train, held = keys[2:6], emb[keys[6]]
    atlas = build_atlas([emb[k].points for k in train], names=[emb[k].cells for k in train])
    truth = atlas.index(held.cells)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = identify(held.points, atlas)
    assert res.diagnostics["fit"].get("mirror_fits_better") in (None, False)
    assert np.mean(res.index == truth) > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mirrored = identify(held.points * MIRROR, atlas)
    fit = mirrored.diagnostics["fit"]
    assert np.mean(mirrored.index == truth) < 0.2
    assert doubtful(fit) and fit["mirror_fits_better"] is True and fit["ok"] is False
