"""xmodal.registration.selection: held-out model selection and the subsampled pre-alignment."""

import numpy as np
import pytest

from xmodal.registration import cpd
from xmodal.pipelines.prealign import fast_prealign
from xmodal.registration.selection import heldout_log_likelihood, heldout_split, select_model


def _cloud(n, rng):
    return rng.normal(size=(n, 3)) * [30.0, 15.0, 8.0]


def _fit(candidate, fixed_train, moving):
    res = cpd(moving, fixed_train, transform=candidate, w=0.1, max_iter=80)
    return np.asarray(res.moved), res.sigma2


def test_heldout_split_is_reproducible():
    a, b = heldout_split(100, 0.2, seed=3), heldout_split(100, 0.2, seed=3)
    assert a.sum() == 20 and np.array_equal(a, b)
    assert not np.array_equal(a, heldout_split(100, 0.2, seed=4))
    with pytest.raises(ValueError, match="fraction"):
        heldout_split(10, 1.5)


def test_heldout_likelihood_prefers_the_right_variance():
    rng = np.random.default_rng(0)
    centres = _cloud(200, rng)
    held = centres[:50] + rng.normal(scale=1.0, size=(50, 3))
    good = heldout_log_likelihood(centres, held, 1.0)
    assert good > heldout_log_likelihood(centres, held, 0.01)  # overconfident fit
    assert good > heldout_log_likelihood(centres, held, 100.0)  # too vague
    assert good > heldout_log_likelihood(centres + 5.0, held, 1.0)  # misregistered


def test_select_model_picks_affine_for_a_shear_and_rigid_within_a_margin():
    rng = np.random.default_rng(1)
    moving = _cloud(300, rng)
    shear = np.array([[1.0, 0.45, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]])
    fixed = moving @ shear.T + rng.normal(scale=0.5, size=moving.shape)
    sel = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"])
    assert sel.best == "affine" and sel.scores["affine"] > sel.scores["rigid"] + 0.5
    # a rigid truth: affine is no better out of sample, the simpler model wins within a small margin
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    fixed = moving @ rot.T + 2.0 + rng.normal(scale=0.5, size=moving.shape)
    sel = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], margin=0.05)
    assert sel.best == "rigid"
    assert sel.scores["rigid"] > sel.scores["affine"] - 0.05
    with pytest.raises(TypeError, match="fit"):
        select_model(fixed, None, ["rigid"])


def test_fast_prealign_recovers_the_orientation_of_a_large_cloud():
    rng = np.random.default_rng(2)
    fixed = _cloud(4000, rng)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    moving = (fixed[rng.permutation(4000)[:3500]] + rng.normal(scale=0.3, size=(3500, 3))) @ rot.T + 7.0
    pre = fast_prealign(moving, fixed, n_points=300)
    assert np.allclose(pre.matrix, rot.T, atol=0.05)
