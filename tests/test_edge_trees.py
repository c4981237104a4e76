"""Boosted-tree edge classifier (segmentation.edge_model.BoostedEdgeClassifier, segmentation._edge_trees)
and the image-rank edge features."""

import json
import sys

import numpy as np
import pytest

from xmodal.metrics import adapted_rand_error
from xmodal.models.em import EM_OFFSETS
from xmodal.segmentation import (BoostedEdgeClassifier, edge_classifier_from_dict, edge_feature_matrix,
                                 edge_feature_names, fit_boosted_edge_classifier, fit_edge_classifier,
                                 superpixel_agglomeration)
from xmodal.segmentation._edge_trees import fit_trees, predict_trees

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_edge_model_tta import _training_graph  # noqa: E402
from test_segment_methods import _affinities  # noqa: E402


def test_one_stump_splits_where_the_classes_separate():
    x = np.arange(20, dtype=float)[:, None]
    y = (x[:, 0] >= 12).astype(float)
    m = fit_trees(x, y, np.ones(20), n_trees=1, depth=1, learning_rate=1.0, l2=0.0, min_child_weight=0.0)
    assert m["feature"][0, 0] == 0 and 11 <= m["threshold"][0, 0] < 12
    s = predict_trees(x, **m)
    assert (s[y == 1] > m["base"]).all() and (s[y == 0] < m["base"]).all()
    # leaf value: Newton step -G/H on the child's gradients
    p0 = y.mean()
    g, h = p0 - y, p0 * (1 - p0)
    np.testing.assert_allclose(m["value"][0, 2], -g[12:].sum() / (h * 8))


def test_trees_learn_a_band_that_a_linear_model_cannot():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = (np.abs(x[:, 1]) < 0.7).astype(float)  # about half the samples, in the middle of feature 1
    names = list("abcd")
    trees = fit_boosted_edge_classifier(x[:2000], y[:2000], feature_names=names, n_trees=30, depth=2)
    linear = fit_edge_classifier(x[:2000], y[:2000], feature_names=names)
    acc_t = np.mean((trees.merge_probability(x[2000:]) > 0.5) == (y[2000:] == 1))
    acc_l = np.mean((linear.merge_probability(x[2000:]) > 0.5) == (y[2000:] == 1))
    assert acc_t > 0.95 and acc_l < 0.65
    again = fit_boosted_edge_classifier(x[:2000], y[:2000], feature_names=names, n_trees=30, depth=2)
    np.testing.assert_array_equal(again.value, trees.value)  # deterministic


def test_boosted_classifier_round_trips_json_and_selects_columns_by_name():
    tr = [_training_graph(s) for s in (0, 1)]
    names = edge_feature_names(EM_OFFSETS, 2)
    clf = fit_boosted_edge_classifier(np.vstack([t[4][t[7]] for t in tr]), np.concatenate([t[6][t[7]] for t in tr]),
                                      feature_names=names, n_trees=20, depth=3)
    te = _training_graph(2)
    p = clf.merge_probability(te[4])
    assert np.mean((p[te[7]] > 0.5) == (te[6][te[7]] == 1)) > 0.85
    again = edge_classifier_from_dict(json.loads(json.dumps(clf.to_dict())))
    assert isinstance(again, BoostedEdgeClassifier)
    np.testing.assert_array_equal(again.merge_probability(te[4]), p)
    wide = names + ["extra"]
    np.testing.assert_array_equal(clf.merge_probability(np.hstack([te[4], np.zeros((len(p), 1))]), wide), p)
    with pytest.raises(ValueError, match="lack"):
        clf.merge_probability(te[4][:, 1:], names[1:])
    bad = clf.to_dict() | {"feature": [[0, 1]]}
    with pytest.raises(ValueError, match="edge_model"):
        edge_classifier_from_dict(bad)
    with pytest.raises(ValueError, match="depth"):
        fit_boosted_edge_classifier(te[4], te[6], feature_names=names, depth=0)
    with pytest.raises(ValueError, match="learning_rate"):
        fit_boosted_edge_classifier(te[4], te[6], feature_names=names, learning_rate=0)


def test_rank_features_ignore_a_contrast_change_of_the_network_output():
    aff, lab = _affinities((96, 96), seed=3)
    from xmodal.segmentation import distance_transform_watershed
    from xmodal.segmentation.agglomeration import boundaries_from_affinities

    sp = distance_transform_watershed(boundaries_from_affinities(aff, EM_OFFSETS, n_attractive=2), threshold=0.5,
                                      sigma_seeds=0.5, min_size=5)
    names = edge_feature_names(EM_OFFSETS, 2, ranks=True)
    rag, X, count = edge_feature_matrix(sp, aff, EM_OFFSETS, n_attractive=2, ranks=True)
    _, X2, _ = edge_feature_matrix(sp, 0.2 + 0.6 * aff, EM_OFFSETS, n_attractive=2, ranks=True)  # contrast
    r = [i for i, n in enumerate(names) if n.startswith("rank_")]
    assert X.shape[1] == len(names) and len(r) == len(edge_feature_names(EM_OFFSETS, 2)) - 3
    assert ((X[:, r] >= 0) & (X[:, r] <= 1)).all()
    ok = count > 0
    np.testing.assert_allclose(X[ok][:, r], X2[ok][:, r], atol=1e-12)
    assert not np.allclose(X[:, 0], X2[:, 0])


def test_superpixel_agglomeration_with_a_boosted_rank_model():
    aff, lab = _affinities((96, 96), seed=4)
    kw = dict(affinities=aff, offsets=EM_OFFSETS, n_attractive=2, threshold=0.5, sigma_seeds=0.5,
              superpixel_min_size=5)
    from xmodal.segmentation import edge_labels_from_ground_truth

    Xs, ys = [], []
    for seed in (0, 1):
        a, g = _affinities((96, 96), seed=seed)
        _, info = superpixel_agglomeration(**(kw | {"affinities": a}), return_info=True)
        rag, X, count = edge_feature_matrix(info.superpixels, a, EM_OFFSETS, n_attractive=2, ranks=True)
        y, valid = edge_labels_from_ground_truth(info.superpixels, g, rag.edges)
        Xs.append(X[valid])
        ys.append(y[valid])
    clf = fit_boosted_edge_classifier(np.vstack(Xs), np.concatenate(ys), n_trees=20,
                                      feature_names=edge_feature_names(EM_OFFSETS, 2, ranks=True))
    seg = superpixel_agglomeration(edge_model=clf.to_dict(), **kw)
    assert adapted_rand_error(seg, lab).error < 0.1
