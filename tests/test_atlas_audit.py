"""xmodal.atlas: findings of a fresh-eyes audit of the public API (names of any string kind, argument
checks that name the argument, a sample of which nothing is named, features that carry nothing,
what ``Atlas.save`` / ``load`` accept)."""

import json
import warnings

import numpy as np
import pytest

from test_atlas import _base_shape, _names, _sample
from xmodal.atlas import Atlas, build_atlas, identify
from xmodal.atlas._fitcheck import FIT_MIN_CELLS, fit_check


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(21)
    base, names = _base_shape(24, rng), _names(24)
    train = [_sample(base, names, rng, noise=0.05) for _ in range(3)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train], calibrate=False)
    return train, atlas


# ----------------------------------------------------------------------------- names
def test_bytes_names_are_decoded_not_written_as_python_literals(small):
    train, atlas = small
    pts = [t[0] for t in train]
    got = build_atlas(pts, names=[t[1].astype(bytes) for t in train], calibrate=False)
    assert got.names.tolist() == atlas.names.tolist()
    obj = [np.array([n.encode() for n in t[1]], dtype=object) for t in train]
    assert build_atlas(pts, names=obj, calibrate=False).names.tolist() == atlas.names.tolist()


@pytest.mark.parametrize("bad", [float("nan"), 7, None])
def test_names_of_other_kinds_in_an_object_array_are_refused_with_their_row(small, bad):
    # a pandas column with a missing name holds NaN: it must not become a name "nan"
    train, _ = small
    nm = train[0][1].astype(object)
    nm[3] = bad
    with pytest.raises((TypeError, ValueError), match=r"names\[0\].*row 3"):
        build_atlas([t[0] for t in train], names=[nm, train[1][1], train[2][1]], calibrate=False)


# ----------------------------------------------------------------------------- argument checks
def test_feature_names_as_one_string_is_refused(small):
    train, _ = small
    feats = [np.random.default_rng(0).normal(size=(len(t[0]), 2)) for t in train]
    with pytest.raises(TypeError, match="feature_names: expected a list of 2 str"):
        build_atlas([t[0] for t in train], names=[t[1] for t in train], features=feats, feature_names="ab",
                    calibrate=False)


def test_a_feature_constant_in_every_sample_is_refused(small):
    # its per-name variance is 0: the atlas would hold covariances of 1e-306
    train, _ = small
    rng = np.random.default_rng(1)
    feats = [np.c_[rng.normal(size=len(t[0])), np.full(len(t[0]), 3.0)] for t in train]
    with pytest.raises(ValueError, match=r"features: column 1 \('size'\) is constant"):
        build_atlas([t[0] for t in train], names=[t[1] for t in train], features=feats,
                    feature_names=["red", "size"], calibrate=False)


@pytest.mark.parametrize("kw,match", [
    (dict(relations=5), "relations"), (dict(relations=(10,)), "relations"), (dict(relations=(-1, 5, False)), "relations"),
    (dict(identify_options={"bogus": 1}), r"identify_options: unknown options \['bogus'\]"),
    (dict(identify_options={"features": None}), "identify_options"),
])
def test_build_rejects_bad_options_before_building(small, kw, match):
    train, _ = small
    with pytest.raises((TypeError, ValueError), match=match):
        build_atlas([t[0] for t in train], names=[t[1] for t in train], **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(search_iter=-1), "search_iter"), (dict(search_iter=1.5), "search_iter"),
    (dict(keep_poses=0), "keep_poses"), (dict(refine_poses=0), "refine_poses"),
    (dict(search_points=0), "search_points"), (dict(in_plane=0), "in_plane"),
    (dict(cpd_iter=0), "cpd_iter"), (dict(relational_iter=-1), "relational_iter"),
    (dict(relational_iter=2.5), "relational_iter"), (dict(deformable="yes"), "deformable"),
])
def test_identify_names_the_bad_option(small, kw, match):
    train, atlas = small
    with pytest.raises((TypeError, ValueError), match=match):
        identify(train[0][0], atlas, **kw)


def test_unmatched_cost_takes_numpy_integers(small):
    train, atlas = small
    a = identify(train[0][0], atlas, unmatched_cost=np.int64(12))
    b = identify(train[0][0], atlas, unmatched_cost=12.0)
    assert a.names.tolist() == b.names.tolist() and a.diagnostics["unmatched_cost"] == 12.0


# ----------------------------------------------------------------------------- nothing named
def test_a_sample_of_which_nothing_is_named_is_flagged(small):
    train, atlas = small
    index = -np.ones(FIT_MIN_CELLS, np.int64)
    y = np.zeros((FIT_MIN_CELLS, 3))
    cal = Atlas.from_dict({**atlas.to_dict(), "calibration": {"loo_fit_median_d2": [2.0, 2.5, 3.0]}})
    with pytest.warns(UserWarning, match="no cell"):
        fit = fit_check(y, index, cal)
    assert fit["ok"] is False
    # end to end: an unmatched cost below every pair's leaves every cell unnamed
    with pytest.warns(UserWarning, match="no cell"):
        res = identify(train[0][0], cal, unmatched_cost=-1e3)
    assert res.n_named == 0 and res.diagnostics["fit"]["ok"] is False
    # without the reference no verdict, but still the warning
    with pytest.warns(UserWarning, match="no cell"):
        res = identify(train[0][0], atlas, unmatched_cost=-1e3)
    assert res.diagnostics["fit"]["ok"] is None


def test_a_normal_identification_does_not_warn(small):
    train, atlas = small
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = identify(train[0][0], atlas)
    assert res.n_named == len(train[0][0])


# ----------------------------------------------------------------------------- storage
def test_save_refuses_a_zarr_path(small, tmp_path):
    _, atlas = small
    with pytest.raises(ValueError, match=r"path: .*JSON.*\.zarr"):
        atlas.save(tmp_path / "atlas.zarr")
    assert list(tmp_path.iterdir()) == []


def test_save_load_is_exact_and_keeps_the_version(small, tmp_path):
    _, atlas = small
    path = tmp_path / "a.json"
    atlas.save(str(path))
    back = Atlas.load(path)
    assert back.to_dict() == json.loads(json.dumps(atlas.to_dict()))
    assert back.parameters["relations"] == list(atlas.parameters["relations"])
    assert json.loads(path.read_text())["version"] == 1


def test_load_errors_name_the_file(tmp_path):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.json.*not valid JSON"):
        Atlas.load(binary)
    text_version = tmp_path / "v.json"
    text_version.write_text(json.dumps({"format": "xmodal-atlas", "version": "1"}))
    with pytest.raises(ValueError, match="version: expected an integer"):
        Atlas.load(text_version)


@pytest.mark.parametrize("key, value, message", [
    ("relations", [1, 2], "relations: expected a JSON object, got list"),
    ("calibration", [1], "calibration: expected a JSON object"),
    ("parameters", "abc", "parameters: expected a JSON object, got str"),
    ("transform", {"a": 1}, "transform: expected one of"),
    ("transform", "projective", "transform: expected one of"),
    ("feature_normalization", [1], "feature_normalization: expected one of"),
    ("counts", -1, "counts: expected integers in \\[0, n_samples"),
    ("counts", 99, "counts: expected integers in \\[0, n_samples"),
    ("presence", None, "presence: expected fractions in \\[0, 1\\]"),
    ("presence", 2.0, "presence: expected fractions in \\[0, 1\\]"),
])
def test_damaged_record_refused_naming_the_field(small, key, value, message):
    """A hand-edited or damaged atlas record: every field of the wrong kind or out of range is a
    ValueError naming it (a list for an object was an AttributeError; a transform that is no kind
    of build_atlas, negative counts and presence outside [0, 1] were accepted)."""
    from xmodal.atlas._assemble import KINDS
    from xmodal.atlas._model import _TRANSFORMS

    assert _TRANSFORMS == KINDS
    _, atlas = small
    d = atlas.to_dict()
    d[key] = [value] * len(d["names"]) if key in ("counts", "presence") else value
    with pytest.raises(ValueError, match=message):
        Atlas.from_dict(d)


def test_atlas_index_reads_names_as_build_atlas_does(small):
    _, atlas = small
    names = atlas.names[:3]
    assert atlas.index(names.astype(bytes)).tolist() == [0, 1, 2]
    assert atlas.index(np.array([names[0], None, float("nan"), "nope"], dtype=object)).tolist() == [0, -1, -1, -1]
