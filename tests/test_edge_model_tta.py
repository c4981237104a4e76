"""Learned edge weights (segmentation.edge_model) and dihedral test-time augmentation
(inference.DihedralTTA), and their options in superpixel_agglomeration / segment / predict."""

import json
import sys

import numpy as np
import pytest

from xmodal.metrics import adapted_rand_error
from xmodal.models.em import EM_OFFSETS
from xmodal.segmentation import (EdgeClassifier, distance_transform_watershed, edge_feature_matrix,
                                 edge_feature_names, edge_labels_from_ground_truth, fit_edge_classifier,
                                 superpixel_agglomeration)
from xmodal.segmentation.agglomeration import boundaries_from_affinities

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_segment_methods import _SEGMENT_MODULE, _affinities, _Model  # noqa: E402

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- learned edge weights

def _training_graph(seed):
    aff, lab = _affinities((96, 96), seed=seed)
    sp = distance_transform_watershed(boundaries_from_affinities(aff, EM_OFFSETS, n_attractive=2),
                                      threshold=0.5, sigma_seeds=0.5, min_size=5)
    rag, X, count = edge_feature_matrix(sp, aff, EM_OFFSETS, n_attractive=2)
    y, valid = edge_labels_from_ground_truth(sp, lab, rag.edges)
    return aff, lab, sp, rag, X, count, y, valid


def test_edge_labels_follow_the_majority_ground_truth_segment():
    sp = np.array([[1, 1, 2, 2, 3, 3]] * 4)
    gt = np.array([[5, 5, 5, 7, 7, 7]] * 4)  # superpixel 2 is half 5 / half 7: tie -> smallest label
    gt[:, 2] = 5
    gt[0, 3] = 0
    y, valid = edge_labels_from_ground_truth(sp, gt, np.array([[1, 2], [2, 3], [1, 3]]))
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.0])
    assert valid.all()
    y, valid = edge_labels_from_ground_truth(sp, np.where(sp == 3, 0, gt), np.array([[1, 2], [2, 3]]))
    np.testing.assert_array_equal(valid, [True, False])
    with pytest.raises(ValueError, match="ground_truth"):
        edge_labels_from_ground_truth(sp, gt[:, :3], np.array([[1, 2]]))


def test_edge_features_have_the_named_columns_and_separate_the_classes():
    aff, lab, sp, rag, X, count, y, valid = _training_graph(0)
    names = edge_feature_names(EM_OFFSETS, 2)
    assert X.shape == (rag.n_edges, len(names)) and np.isfinite(X).all() and (count >= 0).all()
    assert names[:3] == ["mean", "min", "max"] and "long27_mean" in names
    mean_col = X[:, names.index("mean")]
    assert mean_col[valid & (y == 1)].mean() < mean_col[valid & (y == 0)].mean()  # boundary: low inside objects


def test_shape_features_are_the_shared_face_fractions():
    # region 2 (a 4 x 4 island) lies inside region 1; regions 1 and 3 share the column 8 / 9 face
    sp = np.ones((12, 16), np.int32)
    sp[:, 9:] = 3
    sp[4:8, 2:6] = 2
    aff = np.full((len(EM_OFFSETS), *sp.shape), 0.5, np.float32)
    rag, X, count = edge_feature_matrix(sp, aff, EM_OFFSETS, n_attractive=2, shape=True)
    names = edge_feature_names(EM_OFFSETS, 2, shape=True)
    assert names[-2:] == ["shared_min", "shared_max"] and X.shape[1] == len(names)
    edges = [tuple(e) for e in rag.edges.tolist()]
    e12, e13 = edges.index((1, 2)), edges.index((1, 3))
    c = {e: count[i] for i, e in enumerate(edges)}
    total1 = c[(1, 2)] + c[(1, 3)]
    np.testing.assert_allclose(X[e12, -2:], [c[(1, 2)] / total1, 1.0])  # the island: all its faces
    np.testing.assert_allclose(X[e13, -2:], [c[(1, 3)] / total1, 1.0])
    plain = edge_feature_matrix(sp, aff, EM_OFFSETS, n_attractive=2)[1]
    np.testing.assert_array_equal(X[:, :-2], plain)
    # a classifier trained with them is used with them by superpixel_agglomeration
    tr = [_training_graph(s) for s in (0, 1)]
    Xs = [edge_feature_matrix(t[2], t[0], EM_OFFSETS, n_attractive=2, shape=True)[1] for t in tr]
    clf = fit_edge_classifier(np.vstack([x[t[7]] for x, t in zip(Xs, tr)]), np.concatenate([t[6][t[7]] for t in tr]),
                              feature_names=names)
    aff2, lab = _affinities((96, 96), seed=4)
    seg = superpixel_agglomeration(affinities=aff2, offsets=EM_OFFSETS, n_attractive=2, threshold=0.5,
                                   sigma_seeds=0.5, superpixel_min_size=5, edge_model=clf)
    assert adapted_rand_error(seg, lab).error < 0.1


def test_fitted_classifier_predicts_held_out_edges_and_round_trips_json():
    tr = [_training_graph(s) for s in (0, 1)]
    X = np.vstack([t[4][t[7]] for t in tr])
    y = np.concatenate([t[6][t[7]] for t in tr])
    clf = fit_edge_classifier(X, y, feature_names=edge_feature_names(EM_OFFSETS, 2))
    te = _training_graph(2)
    p = clf.merge_probability(te[4])
    acc = np.mean((p[te[7]] > 0.5) == (te[6][te[7]] == 1))
    assert acc > 0.85
    again = EdgeClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    np.testing.assert_allclose(again.merge_probability(te[4]), p)
    # a sample weight of 0 removes a sample exactly as leaving it out
    w = np.ones(len(y))
    w[:5] = 0
    a = fit_edge_classifier(X, y, feature_names=clf.feature_names, weights=w)
    b = fit_edge_classifier(X[5:], y[5:], feature_names=clf.feature_names)
    np.testing.assert_allclose(a.merge_probability(te[4]), b.merge_probability(te[4]), atol=1e-6)


def test_fit_and_classifier_reject_bad_input():
    names = ["a", "b"]
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = (X[:, 0] > 0).astype(float)
    with pytest.raises(ValueError, match="y: expected"):
        fit_edge_classifier(X, y + 2, feature_names=names)
    with pytest.raises(ValueError, match="feature_names"):
        fit_edge_classifier(X, y, feature_names=["a"])
    with pytest.raises(ValueError, match="weights"):
        fit_edge_classifier(X, y, feature_names=names, weights=-np.ones(20))
    with pytest.raises(ValueError, match="l2"):
        fit_edge_classifier(X, y, feature_names=names, l2=-1)
    with pytest.raises(ValueError, match="X: expected"):
        fit_edge_classifier(np.zeros((0, 2)), y[:0], feature_names=names)
    clf = fit_edge_classifier(X, y, feature_names=names)
    with pytest.raises(ValueError, match="X: expected shape"):
        clf.merge_probability(np.zeros((3, 5)))
    d = clf.to_dict()
    with pytest.raises(ValueError, match="kind"):
        EdgeClassifier.from_dict(d | {"kind": "forest"})
    with pytest.raises(ValueError, match="coef"):
        EdgeClassifier.from_dict(d | {"coef": [1.0]})
    with pytest.raises(ValueError, match="scale"):
        EdgeClassifier.from_dict(d | {"scale": [0.0, 1.0]})
    with pytest.raises(ValueError, match="missing"):
        EdgeClassifier.from_dict({"kind": "logistic_regression"})
    with pytest.raises(TypeError, match="edge_model"):
        EdgeClassifier.from_dict([1, 2])


def test_superpixel_agglomeration_with_learned_edge_weights():
    tr = [_training_graph(s) for s in (0, 1)]
    clf = fit_edge_classifier(np.vstack([t[4][t[7]] for t in tr]), np.concatenate([t[6][t[7]] for t in tr]),
                              feature_names=edge_feature_names(EM_OFFSETS, 2))
    aff, lab = _affinities((96, 96), seed=4)
    kw = dict(affinities=aff, offsets=EM_OFFSETS, n_attractive=2, threshold=0.5, sigma_seeds=0.5,
              superpixel_min_size=5)
    seg, info = superpixel_agglomeration(edge_model=clf.to_dict(), return_info=True, **kw)
    assert adapted_rand_error(seg, lab).error < 0.1
    # the same as agglomerating the graph weighted by 1 - p_merge by hand
    from xmodal.segmentation.agglomeration import agglomerate_graph

    rag, X, count = edge_feature_matrix(info.superpixels, aff, EM_OFFSETS, n_attractive=2)
    ok = count > 0
    nl = agglomerate_graph(rag.n_nodes, rag.edges[ok], 1 - clf.merge_probability(X)[ok], count[ok].astype(float))
    nl = nl.astype(np.int64)
    nl[0] = 0
    assert adapted_rand_error(seg, nl[info.superpixels.astype(np.int64)]).error == 0.0
    # a classifier trained on other features is refused, and so are boundaries
    other = EdgeClassifier(("a",), np.zeros(1), np.ones(1), np.ones(1), 0.0)
    with pytest.raises(ValueError, match="edge_model: trained on features"):
        superpixel_agglomeration(edge_model=other, **kw)
    with pytest.raises(ValueError, match="edge_model: learned edge weights need affinities"):
        superpixel_agglomeration(boundaries_from_affinities(aff, EM_OFFSETS, n_attractive=2), edge_model=clf)
    with pytest.raises(TypeError, match="edge_model"):
        superpixel_agglomeration(edge_model="logistic", **kw)


def test_segment_uses_the_stored_edge_model_and_can_turn_it_off(monkeypatch):
    from xmodal.pipelines import segment
    from xmodal.pipelines._agglomerate import resolve_method

    tr = [_training_graph(s) for s in (0, 1)]
    clf = fit_edge_classifier(np.vstack([t[4][t[7]] for t in tr]), np.concatenate([t[6][t[7]] for t in tr]),
                              feature_names=edge_feature_names(EM_OFFSETS, 2))
    hand = {"beta": 0.3, "linkage": "sum", "threshold": 0.5, "sigma_seeds": 0.5, "superpixel_min_size": 5,
            "min_size": 0}
    learned = {"beta": 0.45, "linkage": "mean", "threshold": 0.5, "sigma_seeds": 0.5, "superpixel_min_size": 5,
               "min_size": 0, "edge_model": clf.to_dict(), "hand_weighted": hand}
    model = _Model({"method": "gasp", "gasp": learned})
    m, ms, extra = resolve_method(model, None, None, None)
    assert extra["edge_model"] == clf.to_dict() and "hand_weighted" not in extra and extra["beta"] == 0.45
    m, ms, extra = resolve_method(model, None, None, {"edge_model": None})
    assert "edge_model" not in extra and extra["beta"] == 0.3 and extra["linkage"] == "sum"

    aff, lab = _affinities((96, 96), seed=6)
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: aff)
    kw = dict(affinities=aff, offsets=EM_OFFSETS, n_attractive=2)
    res = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None)
    np.testing.assert_array_equal(res.labels, superpixel_agglomeration(
        **kw, **{k: v for k, v in learned.items() if k != "hand_weighted"}))
    off = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, graph_options={"edge_model": None})
    np.testing.assert_array_equal(off.labels, superpixel_agglomeration(**kw, **hand))
    # blockwise: the learned weights on stitched blocks (xmodal.segmentation.stitched_graph)
    blocks = segment(np.zeros(aff.shape[1:], np.float32), model=model, normalize=None, block_shape=(48, 48))
    assert adapted_rand_error(np.asarray(blocks.labels), res.labels).error < 0.05


# ---------------------------------------------------------------- test-time augmentation

class _ExactAffinities(torch.nn.Module):
    """A 'network' whose output is exact: channel c at p is 1 where the input (a label image) has
    the same value at p and p + offsets[c], 0 where not, and 0.5 where the partner is outside."""

    def __init__(self, offsets):
        super().__init__()
        self.offsets = np.asarray(offsets)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = x[:, 0]
        h, w = x.shape[-2:]
        out = torch.full((x.shape[0], len(self.offsets), h, w), 0.5)
        for c, (dy, dx) in enumerate(self.offsets.tolist()):
            if abs(dy) >= h or abs(dx) >= w:
                continue
            ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
            xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
            out[:, c, ys, xs] = (x[:, ys, xs] == x[:, yd, xd]).float()
        return out * self.scale.detach()


def test_tta_of_an_equivariant_network_is_the_network():
    from xmodal.inference import DihedralTTA

    rng = np.random.default_rng(0)
    lab = np.kron(rng.integers(0, 6, (9, 9)), np.ones((5, 5)))[:41, :38]  # non-square, not multiples
    x = torch.from_numpy(lab).float()[None, None]
    net = _ExactAffinities(EM_OFFSETS)
    for n in (1, 2, 4, 8):
        np.testing.assert_allclose(DihedralTTA(net, transforms=n)(x).numpy(), net(x).numpy(), atol=1e-6)
    # windows narrower than the longest offsets: those channels average over fewer transforms
    small = x[..., :12, :20]
    np.testing.assert_allclose(DihedralTTA(net)(small).numpy(), net(small).numpy(), atol=1e-6)
    # the wrapper takes the wrapped network's mode (prediction warns about a network in training mode)
    assert DihedralTTA(net.eval()).training is False and DihedralTTA(net.train()).training is True


def test_tta_averages_the_transforms_with_channels_remapped():
    """For a network that is not equivariant, the average equals the mean of the 8 predictions on
    the transformed images, each read back in the input's frame (checked on interior pixels)."""
    from xmodal.inference import DihedralTTA

    offs = np.array([[-1, 0], [0, -1], [-2, -2], [-2, 2]])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Sigmoid())
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        got = DihedralTTA(net, offs)(x)[0].numpy()
        img = x[0, 0].numpy()
        ref = np.zeros_like(got)
        for k in range(4):
            for flip in (False, True):
                t = np.rot90(img[:, ::-1] if flip else img, k)
                y = net(torch.from_numpy(t.copy())[None, None])[0].numpy()
                # pair (p, p + o) in the transformed frame: brute force over pixels
                inv = np.rot90(np.arange(144).reshape(12, 12)[:, ::-1] if flip else np.arange(144).reshape(12, 12), k)
                pos = {int(v): (i, j) for (i, j), v in np.ndenumerate(inv)}
                for c, (dy, dx) in enumerate(offs):
                    for i in range(3, 9):
                        for j in range(3, 9):
                            p, q = pos[i * 12 + j], pos[(i + dy) * 12 + (j + dx)]
                            d = np.subtract(q, p)
                            ch = [e for e, o in enumerate(offs) if tuple(o) == tuple(d)]
                            if ch:
                                ref[c, i, j] += y[ch[0], p[0], p[1]]
                            else:
                                ch = [e for e, o in enumerate(offs) if tuple(o) == tuple(-d)][0]
                                ref[c, i, j] += y[ch, q[0], q[1]]
        np.testing.assert_allclose(got[:, 3:9, 3:9], ref[:, 3:9, 3:9] / 8, atol=1e-5)


def test_tta_rejects_bad_input_and_widens_the_receptive_field():
    from xmodal.inference import DihedralTTA, receptive_field

    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    with pytest.raises(ValueError, match="closed under rotations"):
        DihedralTTA(net, [[-1, 0], [0, -2]])
    with pytest.raises(ValueError, match="offsets"):
        DihedralTTA(net, [[0, 0], [0, -1]])
    with pytest.raises(ValueError, match="offsets"):
        DihedralTTA(net, None)
    with pytest.raises(ValueError, match="transforms"):
        DihedralTTA(net, [[-1, 0], [0, -1]], transforms=3)
    with pytest.raises(TypeError, match="model"):
        DihedralTTA(lambda x: x, [[-1, 0], [0, -1]])
    with pytest.raises(ValueError, match="x: expected"):
        DihedralTTA(net, [[-1, 0], [0, -1]])(torch.zeros(1, 4, 4))
    inner = receptive_field(net, 2)
    wide = receptive_field(DihedralTTA(net, [[-3, 0], [0, -3]]), 2)
    assert wide.size == tuple(s + 6 for s in inner.size) and wide.factor == inner.factor


def test_segment_and_predict_with_tta(monkeypatch):
    from xmodal.inference import DihedralTTA
    from xmodal.models.em import predict_em_affinities
    from xmodal.pipelines import segment

    net = _ExactAffinities(EM_OFFSETS)
    net.offsets, net.n_attractive, net.divisor = EM_OFFSETS, 2, 1
    x = np.kron(np.random.default_rng(2).integers(0, 4, (6, 6)), np.ones((6, 6))).astype(np.float32)
    np.testing.assert_allclose(predict_em_affinities(net, x, tta=True), predict_em_affinities(net, x), atol=1e-6)
    with pytest.raises(TypeError, match="tta"):
        predict_em_affinities(net, x, tta="yes")
    seen = {}
    monkeypatch.setattr(_SEGMENT_MODULE, "_predict", lambda job, *a, **k: seen.setdefault("m", job.model) and
                        _affinities((36, 36))[0])
    res = segment(x, model=net, normalize=None, method="mws", tta=True)
    assert isinstance(seen["m"], DihedralTTA) and res.parameters["tta"] is True
    with pytest.raises(TypeError, match="tta"):
        segment(x, model=net, normalize=None, tta=1)
    with pytest.raises(ValueError, match="tta"):
        segment(x, model=_Model(), normalize=None, tta=True)
