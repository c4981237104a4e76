"""register_cells' match confidence (issue 12): calibrated probabilities, the reliability figures and
the report's plot; per-cell feature costs (fixed_features / moving_features / feature_weight)."""

import json

import numpy as np
import pytest

from xmodal.pipelines import register_cells
from xmodal.pipelines._confidence import FEATURES, calibrate, match_confidence, match_features, reliability


def _cloud(n=300, noise=6.0, seed=0):
    """Cells in a 100 um cube (median nearest-neighbour distance ~7 um), the moving set a noisy,
    shuffled copy. Returns fixed, moving, truth (moving index of each fixed cell), permutation."""
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(0, 100, (n, 3))
    perm = rng.permutation(n)
    moving = (fixed + rng.normal(0, noise, fixed.shape))[perm]
    return fixed, moving, np.argsort(perm), perm


def _right(res, truth):
    return truth[res.fixed_index] == res.moving_index


def test_reliability_figures_by_hand():
    conf = np.array([0.05, 0.15, 0.95, 0.95, 0.92, 0.55])
    ok = np.array([0, 0, 1, 1, 0, 1])
    r = reliability(conf, ok)
    # bins: [0,.1): conf .05 acc 0; [.1,.2): .15 / 0; [.5,.6): .55 / 1; [.9,1]: .94 / .667
    expected = (0.05 + 0.15 + 0.45 + 3 * abs(0.94 - 2 / 3)) / 6
    assert r["ece"] == pytest.approx(expected)
    assert r["accuracy_at_0.9"] == pytest.approx(2 / 3) and r["share_at_0.9"] == pytest.approx(0.5)
    assert sum(r["bins"]["count"]) == 6 and r["bins"]["count"][9] == 3
    with pytest.raises(ValueError, match="correct"):
        reliability(conf, ok[:3])


def test_confidence_is_a_probability_and_orders_right_before_wrong():
    fixed, moving, truth, _ = _cloud(noise=4.0)
    res = register_cells(fixed, moving, transform="rigid", prealign=False, errors=False)
    ok = _right(res, truth)
    assert 0.3 < ok.mean() < 0.95  # a mix of right and wrong pairs
    c = res.confidence
    assert c.shape == (res.n_matched,) and np.all((c >= 0) & (c <= 1))
    assert c[ok].mean() > c[~ok].mean() + 0.1
    # fitted on real embryo pairs, where a short distance is worth less than under independent noise:
    # on simulated data it is conservative, never over-confident (every bin of >= 10 pairs is right
    # at least as often as it says, within 0.1), and pairs at >= 0.9 are right
    r = reliability(c, ok)
    for conf, acc, n in zip(r["bins"]["confidence"], r["bins"]["accuracy"], r["bins"]["count"]):
        assert n < 10 or acc >= conf - 0.1, (conf, acc, n)
    assert r["accuracy_at_0.9"] is None or r["accuracy_at_0.9"] >= 0.9
    feats = match_features(res.moved, fixed, res.moving_index, res.fixed_index)
    assert feats.shape == (res.n_matched, len(FEATURES)) and np.isfinite(feats).all()
    np.testing.assert_allclose(calibrate(feats), c)


def test_confidence_is_high_for_an_exact_copy_and_empty_without_pairs():
    fixed, _, _, _ = _cloud()
    idx = np.arange(len(fixed))
    c = match_confidence(fixed + 0.01, fixed, idx, idx)
    assert np.median(c) > 0.9
    assert match_confidence(fixed, fixed, idx[:0], idx[:0]).shape == (0,)


def test_report_plots_a_reliability_curve_with_names_and_a_histogram_without(tmp_path):
    pytest.importorskip("matplotlib")
    fixed, moving, truth, perm = _cloud(n=120, noise=3.0)
    names = np.array([f"cell{i}" for i in range(len(fixed))])
    header = "id,z,y,x\n"
    (tmp_path / "f.csv").write_text(header + "".join(f"{n},{p[0]},{p[1]},{p[2]}\n" for n, p in zip(names, fixed)))
    (tmp_path / "m.csv").write_text(header + "".join(f"{n},{p[0]},{p[1]},{p[2]}\n"
                                                     for n, p in zip(names[perm], moving)))
    res = register_cells(tmp_path / "f.csv", tmp_path / "m.csv", id_column="id", transform="rigid", prealign=False,
                         errors=False, out=tmp_path / "named")
    assert (tmp_path / "named" / "reliability.png").stat().st_size > 1000
    assert not (tmp_path / "named" / "confidence_histogram.png").exists()
    report = (tmp_path / "named" / "report.html").read_text()
    assert "reliability.png" in report and "calibration error (ECE)" in report
    assert res.outputs["reliability"].endswith("reliability.png")
    register_cells(fixed, moving, transform="rigid", prealign=False, errors=False, out=tmp_path / "plain")
    assert (tmp_path / "plain" / "confidence_histogram.png").stat().st_size > 1000
    assert not (tmp_path / "plain" / "reliability.png").exists()
    assert "pairs with confidence &gt;= 0.9" in (tmp_path / "plain" / "report.html").read_text()


def test_features_identify_cells_whose_positions_are_ambiguous(tmp_path):
    # positions displaced by about two cell spacings: the nearest cell is rarely the partner; two
    # feature channels (e.g. colours) nearly identify every cell
    fixed, moving, truth, perm = _cloud(n=250, noise=12.0, seed=3)
    rng = np.random.default_rng(4)
    f = rng.normal(0, 1, (len(fixed), 2))
    ff, mf = f + rng.normal(0, 0.03, f.shape), (f + rng.normal(0, 0.03, f.shape))[perm]
    kw = dict(transform="rigid", prealign=False, errors=False, k=80)
    plain = register_cells(fixed, moving, **kw)
    assert np.sum(_right(plain, truth)) / len(fixed) < 0.35
    res = register_cells(fixed, moving, fixed_features=ff, moving_features=mf, out=tmp_path / "reg", **kw)
    assert np.sum(_right(res, truth)) / len(fixed) > 0.97
    assert res.features["feature_weight"] > 0 and res.features["selection"]["heldout_with_features"] > \
        res.features["selection"]["heldout_without_features"]
    assert np.median(res.confidence) > 0.8  # the confidence sees the features too
    prov = json.loads((tmp_path / "reg" / "provenance.json").read_text())
    assert prov["parameters"]["features"]["feature_weight"] == pytest.approx(res.features["feature_weight"])
    # a fixed weight is used as given; 0 is positions only
    fixed_w = register_cells(fixed, moving, fixed_features=ff, moving_features=mf, feature_weight=0.5, **kw)
    assert fixed_w.features["feature_weight"] == 0.5 and "selection" not in fixed_w.features
    zero = register_cells(fixed, moving, fixed_features=ff, moving_features=mf, feature_weight=0, **kw)
    np.testing.assert_array_equal(zero.fixed_index, plain.fixed_index)


def test_features_of_another_gain_and_heavy_tails_still_help():
    # the moving set's channel is measured with another gain and offset, and is heavy-tailed (a few
    # very bright cells): normal scores within each set make the two comparable
    fixed, moving, truth, perm = _cloud(n=250, noise=12.0, seed=3)
    rng = np.random.default_rng(7)
    f = np.exp(rng.normal(0, 1.5, (len(fixed), 2)))  # log-normal intensities
    ff = f * np.exp(rng.normal(0, 0.02, f.shape))
    mf = (40.0 * f * np.exp(rng.normal(0, 0.02, f.shape)) + 300.0)[perm]
    kw = dict(transform="rigid", prealign=False, errors=False, k=80)
    res = register_cells(fixed, moving, fixed_features=ff, moving_features=mf, **kw)
    assert res.features["normalisation"] == "normal scores within each set"
    assert res.features["feature_weight"] > 0
    assert np.sum(_right(res, truth)) / len(fixed) > 0.9
    # the features' units do not matter at all
    again = register_cells(fixed, moving, fixed_features=np.log(ff), moving_features=mf / 1000.0, **kw)
    np.testing.assert_array_equal(again.fixed_index, res.fixed_index)


def test_uninformative_features_get_no_weight():
    fixed, moving, truth, _ = _cloud(n=250, noise=2.0, seed=5)
    rng = np.random.default_rng(6)
    res = register_cells(fixed, moving, fixed_features=rng.normal(size=(250, 1)),
                         moving_features=rng.normal(size=(250, 1)), transform="rigid", prealign=False, errors=False)
    assert res.features["feature_weight"] == 0.0
    assert np.mean(_right(res, truth)) > 0.9


@pytest.mark.parametrize("kw, err, match", [
    (dict(fixed_features=np.ones((30, 1))), ValueError, "moving_features: features are needed for both"),
    (dict(fixed_features=np.ones((29, 1)), moving_features=np.ones((30, 1))), ValueError, "expected 30 rows"),
    (dict(fixed_features=np.ones((30, 2)), moving_features=np.ones((30, 1))), ValueError, "expected 2 columns"),
    (dict(fixed_features=np.r_[np.ones(29), np.nan], moving_features=np.ones(30)), ValueError, "row 29"),
    (dict(fixed_features=np.array(["a"] * 30), moving_features=np.ones(30)), TypeError, "numeric"),
    (dict(fixed_features=np.ones(30), moving_features=np.ones(30), feature_weight=-1), ValueError, "feature_weight"),
    (dict(fixed_features=np.ones(30), moving_features=np.ones(30), feature_weight="big"), ValueError,
     "feature_weight"),
])
def test_feature_errors_are_clear(kw, err, match):
    fixed, moving, _, _ = _cloud(n=30)
    with pytest.raises(err, match=match):
        register_cells(fixed, moving, transform="rigid", prealign=False, errors=False, **kw)


def test_cli_register_features_columns(tmp_path, capsys):
    from xmodal import cli

    fixed, moving, truth, perm = _cloud(n=150, noise=12.0, seed=7)
    rng = np.random.default_rng(8)
    f = rng.normal(0, 1, (len(fixed), 2))
    mf = (f + rng.normal(0, 0.03, f.shape))[perm]
    head = "z,y,x,volume,red\n"
    (tmp_path / "f.csv").write_text(head + "".join(",".join(map(str, [*p, *q])) + "\n" for p, q in zip(fixed, f)))
    (tmp_path / "m.csv").write_text(head + "".join(",".join(map(str, [*p, *q])) + "\n" for p, q in zip(moving, mf)))
    args = ["register", tmp_path / "f.csv", tmp_path / "m.csv", "--transform", "rigid", "--no-prealign", "--k", "80",
            "-q"]
    code = cli.main([str(a) for a in args + ["--features-columns", "volume,red", "--out", tmp_path / "reg"]])
    assert code == 0, capsys.readouterr().err
    m = np.loadtxt(tmp_path / "reg" / "matches.csv", delimiter=",", skiprows=1, usecols=(0, 1)).astype(int)
    assert np.mean(truth[m[:, 0]] == m[:, 1]) > 0.95
    prov = json.loads((tmp_path / "reg" / "provenance.json").read_text())
    assert prov["parameters"]["features"]["columns"] == 2
    assert prov["parameters"]["feature_cpd"] is True and min(prov["parameters"]["features"]["cpd"]["iterations"]) > 0
    code = cli.main([str(a) for a in args + ["--features-columns", "volume,red", "--no-feature-cpd",
                                             "--out", tmp_path / "plain"]])
    assert code == 0
    prov = json.loads((tmp_path / "plain" / "provenance.json").read_text())
    assert prov["parameters"]["feature_cpd"] is False and prov["parameters"]["features"]["cpd"] is None
    capsys.readouterr()
    code = cli.main([str(a) for a in args + ["--features-columns", "volume", "blue", "--out", tmp_path / "r2"]])
    err = capsys.readouterr().err
    assert code == 2 and "blue" in err and "Traceback" not in err
    code = cli.main([str(a) for a in args + ["--features-columns", "red", "--feature-weight", "x",
                                             "--out", tmp_path / "r3"]])
    assert code == 2 and "--feature-weight" in capsys.readouterr().err
