"""xmodal.registration.selection: held-out model selection (matching cost, likelihood) and the
subsampled pre-alignment."""

import numpy as np
import pytest

from xmodal.registration import cpd
from xmodal.pipelines.prealign import fast_prealign
from xmodal.registration.selection import (
    CRITERIA,
    heldout_log_likelihood,
    heldout_matching_cost,
    heldout_split,
    select_model,
)


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
    sel = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], criterion="likelihood")
    assert sel.best == "affine" and sel.scores["affine"] > sel.scores["rigid"] + 0.5
    assert sel.criterion == "likelihood" and sel.repeats == CRITERIA["likelihood"] == 1
    # a rigid truth: affine is no better out of sample, the simpler model wins within a small margin
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rot *= np.sign(np.linalg.det(rot))
    fixed = moving @ rot.T + 2.0 + rng.normal(scale=0.5, size=moving.shape)
    sel = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], margin=0.05,
                       criterion="likelihood")
    assert sel.best == "rigid"
    assert sel.scores["rigid"] > sel.scores["affine"] - 0.05
    with pytest.raises(TypeError, match="fit"):
        select_model(fixed, None, ["rigid"])


def _fit_grid(moving):
    """rigid, affine, and affine then a soft deformable field (a model that can bend to noise)."""

    def fit(candidate, fixed_train):
        if candidate != "deformable":
            return _fit(candidate, fixed_train, moving)
        res = cpd(moving, fixed_train, transform="affine", w=0.1, max_iter=80)
        res = cpd(np.asarray(res.moved), fixed_train, transform="deformable", w=0.1, max_iter=80, beta=12.0,
                  lam=0.1)
        return np.asarray(res.moved), res.sigma2

    return fit


def test_heldout_matching_cost_measures_the_held_out_cells_only():
    rng = np.random.default_rng(5)
    fixed = rng.uniform(0, 100, (300, 3))
    mask = heldout_split(300, 0.2, seed=0)
    noise = rng.normal(scale=0.3, size=fixed.shape)
    exact = heldout_matching_cost(fixed + noise, fixed, mask, unmatched_cost=10.0)
    assert 0 < exact < 1.0  # every held-out cell matched to itself, about 0.3 * sqrt(3) away
    # moved cells that miss exactly the held-out cells leave them unmatched (cost u each) ...
    assert heldout_matching_cost(fixed[~mask] + noise[~mask], fixed, mask, unmatched_cost=10.0) == \
        pytest.approx(10.0)
    # ... while the same gap among the training cells costs the held-out cells nothing
    keep = ~mask
    keep[np.flatnonzero(~mask)[:60]] = False
    keep |= mask
    assert heldout_matching_cost(fixed[keep] + noise[keep], fixed, mask, unmatched_cost=10.0) == \
        pytest.approx(exact, rel=0.2)
    shifted = heldout_matching_cost(fixed + noise + [3.0, 0, 0], fixed, mask, unmatched_cost=10.0)
    assert shifted > exact + 1.0


@pytest.mark.parametrize("truth", ["rigid", "affine", "deformable"])
def test_matching_criterion_prefers_the_true_model(truth):
    """A rigid motion, a shear, a bend: the held-out matching cost prefers the model that made the
    data (for a rigid motion the simplest, for a bend the deformable field) and records both
    criteria from the same fits."""
    rng = np.random.default_rng({"rigid": 11, "affine": 12, "deformable": 13}[truth])
    moving = _cloud(300, rng)
    if truth == "rigid":
        t = 0.3
        rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
        fixed = moving @ rot.T + 2.0
    elif truth == "affine":
        fixed = moving @ np.array([[1.0, 0.45, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]]).T
    else:
        fixed = moving.copy()
        fixed[:, 1] += 12.0 * np.sin(moving[:, 0] / 15.0)
    fixed = fixed + rng.normal(scale=0.5, size=moving.shape)
    sel = select_model(fixed, _fit_grid(moving), ["rigid", "affine", "deformable"])
    assert sel.criterion == "matching" and sel.repeats == CRITERIA["matching"] == 3
    assert sel.best == truth, sel.scores
    assert sel.scores[truth] == min(sel.scores.values())
    assert set(sel.all_scores) == {"matching", "likelihood"} and sel.all_scores["matching"] == sel.scores
    assert len(sel.split_scores) == 3
    assert np.mean([s[truth] for s in sel.split_scores]) == pytest.approx(sel.scores[truth])
    assert sel.unmatched_cost > 0
    if truth != "rigid":  # the wrong, simpler models leave held-out cells clearly farther away
        assert sel.scores["rigid"] > 1.5 * sel.scores[truth]


def test_select_model_is_deterministic_for_a_seed():
    rng = np.random.default_rng(14)
    moving = _cloud(200, rng)
    fixed = moving @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.9]]).T + rng.normal(scale=0.5,
                                                                                                    size=moving.shape)
    a = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], seed=4)
    b = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], seed=4)
    c = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], seed=5)
    assert a.best == b.best and a.scores == b.scores and a.all_scores == b.all_scores
    assert np.array_equal(a.heldout, b.heldout) and np.array_equal(a.heldout, heldout_split(200, 0.2, 4))
    assert not np.array_equal(a.heldout, c.heldout) and a.scores != c.scores
    one = select_model(fixed, lambda c, f: _fit(c, f, moving), ["rigid", "affine"], seed=4, repeats=1)
    assert one.split_scores == a.split_scores[:1]  # split r uses seed + r


def test_select_model_bad_input_is_named():
    rng = np.random.default_rng(15)
    fixed = _cloud(50, rng)

    def fit(c, f):
        return fixed[:40], 1.0

    with pytest.raises(ValueError, match="criterion"):
        select_model(fixed, fit, ["rigid"], criterion="aic")
    with pytest.raises(ValueError, match="candidates"):
        select_model(fixed, fit, [])
    with pytest.raises(ValueError, match="repeats"):
        select_model(fixed, fit, ["rigid"], repeats=0)
    with pytest.raises(ValueError, match="unmatched_cost"):
        select_model(fixed, fit, ["rigid"], unmatched_cost=-1.0)
    with pytest.raises(ValueError, match="fraction"):
        select_model(fixed, fit, ["rigid"], fraction=1.0)
    with pytest.raises(ValueError, match="fixed"):
        select_model(fixed[:2], fit, ["rigid"])
    with pytest.raises(ValueError, match="fixed"):
        select_model(np.full((10, 3), np.nan), fit, ["rigid"])
    with pytest.raises(TypeError, match="fit"):
        select_model(fixed, lambda c, f: fixed, ["rigid"])  # not (moved, sigma2)
    with pytest.raises(ValueError, match="fit"):
        select_model(fixed, lambda c, f: (fixed[:, :2], 1.0), ["rigid"])  # 2-D moved points
    # a fit without a variance: fine for the matching cost (the likelihood diagnostic is NaN) ...
    sel = select_model(fixed, lambda c, f: (fixed[:40], None), ["rigid"])
    assert np.isfinite(sel.scores["rigid"]) and np.isnan(sel.all_scores["likelihood"]["rigid"])
    # ... but the likelihood criterion needs it
    with pytest.raises(TypeError, match="sigma2"):
        select_model(fixed, lambda c, f: (fixed[:40], None), ["rigid"], criterion="likelihood")
    with pytest.raises(ValueError, match="heldout"):
        heldout_matching_cost(fixed, fixed, np.ones(49, bool), unmatched_cost=1.0)
    with pytest.raises(ValueError, match="heldout"):
        heldout_matching_cost(fixed, fixed, np.zeros(50, bool), unmatched_cost=1.0)
    with pytest.raises(ValueError, match="unmatched_cost"):
        heldout_matching_cost(fixed, fixed, np.ones(50, bool), unmatched_cost=0.0)


def test_fast_prealign_recovers_the_orientation_of_a_large_cloud():
    rng = np.random.default_rng(2)
    fixed = _cloud(4000, rng)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    moving = (fixed[rng.permutation(4000)[:3500]] + rng.normal(scale=0.3, size=(3500, 3))) @ rot.T + 7.0
    pre = fast_prealign(moving, fixed, n_points=300)
    assert np.allclose(pre.matrix, rot.T, atol=0.05)
