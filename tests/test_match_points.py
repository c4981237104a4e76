"""xmodal.match_points on real nuclei (C. elegans embryos shipped with xmodal)."""

import numpy as np
import pytest

import xmodal
from xmodal.datasets import celegans_embryos


@pytest.fixture(scope="module")
def embryos():
    return list(celegans_embryos().values())


def perturbed(points, seed, missing=0.08, noise=1.0):
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(points))[: int(round((1 - missing) * len(points)))])
    return keep, points[keep] + rng.normal(scale=noise, size=(keep.size, 3))


def test_one_to_one_recovers_correspondence_and_equals_highs(embryos):
    a = embryos[0].points
    keep, b = perturbed(a, 0)
    res = xmodal.match_points(a, b, k=10)
    assert res.problem == "one-to-one" and len(res) == len(b)
    assert np.mean(keep[res.cols] == res.rows) > 0.95  # noise 1 px, nuclei ~10+ px apart
    hi = xmodal.match_points(a, b, k=10, solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-9)
    np.testing.assert_allclose(res.pair_costs, np.linalg.norm(a[res.rows] - b[res.cols], axis=1), rtol=1e-12)
    assert res.info["graph_pairs"] > 0 and res.info["graph_time_s"] >= 0


@pytest.mark.parametrize("u", [2.0, 5.0, 15.0])
def test_partial_equals_highs(embryos, u):
    a = embryos[1].points
    _, b = perturbed(a, 1, noise=3.0)
    res = xmodal.match_points(a, b, k=8, radius=10.0, unmatched_cost=u)
    hi = xmodal.match_points(a, b, k=8, radius=10.0, unmatched_cost=u, solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-9)
    assert np.all(res.pair_costs <= 2 * u)
    assert res.unmatched_rows.size >= len(a) - len(b)


def test_cover_between_two_embryos_equals_highs(embryos):
    a = embryos[2].points - embryos[2].points.mean(axis=0)
    b = embryos[3].points - embryos[3].points.mean(axis=0)
    res = xmodal.match_points(a, b, k=12, radius=15.0, mode="cover")
    hi = xmodal.match_points(a, b, k=12, radius=15.0, mode="cover", solver="highs")
    assert res.cost == pytest.approx(hi.cost, rel=1e-9)
    big = res.rows if len(a) >= len(b) else res.cols
    small = res.cols if len(a) >= len(b) else res.rows
    assert np.array_equal(np.sort(big), np.arange(max(len(a), len(b))))
    assert np.unique(small).size == min(len(a), len(b))
    capped = xmodal.match_points(a, b, k=12, radius=15.0, mode="cover", max_per_target=2)
    capped_hi = xmodal.match_points(a, b, k=12, radius=15.0, mode="cover", max_per_target=2, solver="highs")
    assert capped.cost == pytest.approx(capped_hi.cost, rel=1e-9)
    assert np.bincount(capped.cols if len(a) >= len(b) else capped.rows).max() <= 2


def test_spacing(embryos):
    e = embryos[0]
    vox = e.points / np.array([e.zpixres, 1.0, 1.0])  # back to (plane, px, px)
    _, b = perturbed(e.points, 2)
    bvox = b / np.array([e.zpixres, 1.0, 1.0])
    r1 = xmodal.match_points(vox, bvox, k=6, spacing=[e.zpixres, 1.0, 1.0], unmatched_cost=4.0)
    r2 = xmodal.match_points(e.points, b, k=6, unmatched_cost=4.0)
    np.testing.assert_array_equal(r1.rows, r2.rows)
    np.testing.assert_array_equal(r1.cols, r2.cols)
    assert r1.cost == pytest.approx(r2.cost, rel=1e-12)


def test_infeasible_graph_suggests_larger_k():
    a = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [50.0, 0.0]])
    b = np.array([[0.05, 0.0], [0.15, 0.0], [49.0, 0.0], [51.0, 0.0]])
    # k=1 one way: a_0..a_2 only reach b_0/b_1
    with pytest.raises(ValueError, match="larger k or radius"):
        xmodal.match_points(a, b, k=1, symmetric=False)
    res = xmodal.match_points(a, b, k=4)
    assert len(res) == 4


def test_mode_errors():
    a = np.zeros((3, 2))
    with pytest.raises(ValueError, match="mode"):
        xmodal.match_points(a, a, mode="many")
    with pytest.raises(ValueError, match="unmatched_cost"):
        xmodal.match_points(a, a, mode="cover", unmatched_cost=1.0)
    with pytest.raises(ValueError, match="max_per_target"):
        xmodal.match_points(a, a, max_per_target=2)


def test_public_names():
    import xmodal.matching as m

    for name in ["knn_graph", "linear_assignment", "cover_assignment", "match_points", "AssignmentResult"]:
        assert getattr(xmodal, name) is getattr(m, name)
