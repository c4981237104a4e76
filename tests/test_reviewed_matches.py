"""Reviewed match tables (issue 14) without napari: the CSV the review widget exports, read back by
register_cells(reviewed=...); the constrained matching; the registration layer data and the
reader's folder parsing (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.napari._layers import MatchTable, ellipse_corners, registration_layers
from xmodal.napari._review import accept, export_csv, reassign, reject
from xmodal.pipelines._reviewed import (ReviewedMatches, constrained_match, read_reviewed_matches,
                                        write_reviewed_matches)


def _grid(n=6, spacing=10.0):
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2) * spacing
    return g.astype(float)


def _table():
    fixed = _grid()
    moving = fixed + 0.5
    k = len(fixed)
    return MatchTable(fixed, moving, moving - 0.5, np.arange(k), np.arange(k), np.linspace(0, 1, k))


def test_review_edits_round_trip(tmp_path):
    t = _table()
    accept(t, 0)
    reject(t, 1)
    changed = reassign(t, 2, 3)
    assert changed == [3] and list(t.status[:4]) == ["accepted", "rejected", "reassigned", "rejected"]
    assert np.isnan(t.confidence[2]) and t.fixed_index[2] == 3
    path = export_csv(t, tmp_path / "r.csv")
    rev = read_reviewed_matches(path)
    assert {tuple(p) for p in rev.accepted} == {(0, 0), (2, 3)}
    assert {tuple(p) for p in rev.rejected} == {(1, 1), (3, 3)}
    with pytest.raises(ValueError, match="pair"):
        accept(t, len(t.fixed_index))
    with pytest.raises(ValueError, match="fixed_index"):
        reassign(t, 0, -1)


def test_reviewed_table_errors(tmp_path):
    with pytest.raises(ValueError, match="accepted pairs must index"):
        ReviewedMatches(np.array([[0, 99]]), np.zeros((0, 2), int)).check(5, 5)
    with pytest.raises(ValueError, match="share a fixed cell"):
        ReviewedMatches(np.array([[0, 1], [2, 1]]), np.zeros((0, 2), int)).check(5, 5)
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed_index,moving_index,status\n0,0,maybe\n")
    with pytest.raises(ValueError, match="status"):
        read_reviewed_matches(bad)
    with pytest.raises(ValueError, match="status"):
        write_reviewed_matches(tmp_path / "x.csv", fixed=np.zeros((1, 2)), moving=np.zeros((1, 2)), fixed_index=[0],
                               moving_index=[0], fixed_ids=[0], moving_ids=[0], distance=[0.0], confidence=[1.0],
                               status=["maybe"])


def test_constrained_match_keeps_accepted_and_avoids_rejected():
    fixed = _grid()
    moved = fixed + 0.3
    # accept a wrong pair (0 -> 1) and reject the right pair of cell 5
    rev = ReviewedMatches(np.array([[0, 1]]), np.array([[5, 5]]))
    mi, fi, dist = constrained_match(moved, fixed, rev, k=8, radius=None, unmatched_cost=4.0)
    pairs = dict(zip(mi.tolist(), fi.tolist()))
    assert pairs[0] == 1
    assert pairs.get(5, -1) != 5
    assert 1 not in [f for m, f in pairs.items() if m != 0]  # one-to-one
    assert all(pairs[i] == i for i in range(len(fixed)) if i not in (0, 1, 5) and i in pairs)
    np.testing.assert_allclose(dist, np.linalg.norm(moved[mi] - fixed[fi], axis=1))


def test_register_cells_reviewed_needs_one_to_one():
    from xmodal.pipelines import register_cells

    pts = np.random.default_rng(0).uniform(0, 50, (30, 3))
    with pytest.raises(ValueError, match="one-to-one"):
        register_cells(pts, pts, matching="cover", reviewed={"accepted": [[0, 0]]})
    with pytest.raises(ValueError, match="must index"):
        register_cells(pts, pts, reviewed={"accepted": [[0, 30]]})


def test_ellipse_corners_follow_the_shape_matrix():
    c = np.array([5.0, 1.0, 2.0])
    s = np.diag([9.0, 4.0, 1.0])  # semi-axes 3 (z), 2 (y), 1 (x)
    corners = ellipse_corners(c, s)
    assert corners.shape == (4, 3) and np.all(corners[:, 0] == 5.0)
    np.testing.assert_allclose(np.sort(np.abs(corners[:, 1] - 1.0)), [2, 2, 2, 2])
    np.testing.assert_allclose(np.sort(np.abs(corners[:, 2] - 2.0)), [1, 1, 1, 1])


def test_registration_layers_without_regions():
    t = _table()
    layers = registration_layers(t, name="r")
    kinds = [k for _, _, k in layers]
    assert kinds == ["points", "points", "points", "shapes", "vectors"]
    lines = layers[3][0]
    assert len(lines) == len(t.fixed_index)
    colors = layers[3][1]["edge_color"]
    assert colors[0, 0] > colors[-1, 0] and colors[-1, 1] > colors[0, 1]  # red (low) to green (high)


def test_constrained_match_with_feature_costs():
    """cost_points: the pairs are chosen by the augmented (feature) distances, on the spatial graph."""
    fixed = _grid()
    rng = np.random.default_rng(1)
    moved = fixed + rng.normal(0, 6.0, fixed.shape)  # neighbours mixed up in space
    f = rng.normal(size=(len(fixed), 3))
    rev = ReviewedMatches(np.array([[0, 1]]), np.array([[5, 5]]))
    plain = constrained_match(moved, fixed, rev, k=16, radius=None, unmatched_cost=40.0)
    mi, fi, dist = constrained_match(moved, fixed, rev, k=16, radius=None, unmatched_cost=40.0,
                                     cost_points=(np.hstack([moved, 100 * f]), np.hstack([fixed, 100 * f])))
    pairs = dict(zip(mi.tolist(), fi.tolist()))
    assert pairs[0] == 1 and pairs.get(5, -1) != 5
    free = [i for i in range(len(fixed)) if i not in (0, 1, 5)]
    right = np.mean([pairs.get(i, -1) == i for i in free])
    plain_right = np.mean([dict(zip(plain[0].tolist(), plain[1].tolist())).get(i, -1) == i for i in free])
    assert right > 0.9 and right > plain_right + 0.1, (right, plain_right)
    np.testing.assert_allclose(dist, np.linalg.norm(moved[mi] - fixed[fi], axis=1))  # spatial distances


def test_register_cells_with_features_honours_the_review():
    from xmodal.pipelines import register_cells

    rng = np.random.default_rng(3)
    fixed = rng.uniform(0, 60, (150, 3))
    moving = fixed + rng.normal(0, 4.0, fixed.shape) + np.array([3.0, -2.0, 1.0])
    f = rng.normal(size=(150, 2))
    ff, mf = f + rng.normal(0, 0.05, f.shape), f + rng.normal(0, 0.05, f.shape)
    rev = {"accepted": [[0, 1]], "rejected": [[5, 5]]}
    kw = dict(transform="rigid", prealign=False, errors=False, fixed_features=ff, moving_features=mf)
    res = register_cells(fixed, moving, reviewed=rev, **kw)
    pairs = dict(zip(res.moving_index.tolist(), res.fixed_index.tolist()))
    assert pairs[0] == 1 and pairs.get(5, -1) != 5
    free = [i for i in range(150) if i not in (0, 1, 5)]
    assert np.mean([pairs.get(i, -1) == i for i in free]) > 0.9
    assert res.features["feature_weight"] > 0 and res.features["cpd"] is not None
