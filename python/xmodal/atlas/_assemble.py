"""The atlas of a set of validated annotated samples (no calibration): group-wise registration,
reference frame, per-name statistics."""

from __future__ import annotations

import numpy as np

from ._deform import groupwise
from ._gpa import _weighted_mean, frame, gpa
from ._inputs import normalise_features
from ._model import Atlas
from ._statistics import relations as partner_relations, shrunk_covariances

KINDS = ("rigid", "similarity", "affine")
PARAMS = {"rigid": lambda d: d * (d + 1) // 2, "similarity": lambda d: d * (d + 1) // 2 + 1,
          "affine": lambda d: d * (d + 1)}


def assemble(pts, nms, feats, feature_names, *, transform, allow_reflection, robust, shrinkage,
           feature_normalization, max_iter, tol, relations=(10, 5, False), deform=None, prior=None,
           prior_features=None):
    S = len(pts)
    d = pts[0].shape[1]
    universe = np.array(sorted(set().union(*[set(n.tolist()) for n in nms])), dtype=str)
    lookup = {n: i for i, n in enumerate(universe.tolist())}
    idx = [np.array([lookup[x] for x in n.tolist()], np.int64) for n in nms]
    m = len(universe)
    counts = np.zeros(m, np.int64)
    for ix in idx:
        counts[ix] += 1
    # affine only when the samples can support it: at least 10 residual degrees of freedom per
    # coordinate left after the per-name means and the per-sample transforms
    dof = float(np.maximum(counts - 1, 0).sum())
    requested = transform
    if transform == "affine" and dof - S * PARAMS["affine"](d) / d < 10.0:
        transform = "similarity"
    X, A_s, t_s, refl_s, W, mu, iters = gpa(pts, idx, m, transform, allow_reflection, robust, max_iter, tol)
    if deform is not None and transform != "affine":
        deform = None  # too few shared names for an affine fit: far too few for a field
    if deform is not None:
        def mean_of(Xs):
            new = _weighted_mean(Xs, idx, W, counts, m, d)
            return new - new.mean(0)
        rms = float(np.sqrt(((mu - mu.mean(0)) ** 2).sum(1).mean()))
        X, mu, _ = groupwise(X, idx, W, mean_of, m, n_centres=deform["centres"], beta=deform["beta"] * rms,
                             lam=deform["lambda"], iterations=deform["iterations"])
    c, E = frame(mu, counts)
    mu = (mu - c) @ E
    X = [(x - c) @ E for x in X]
    A_s = [E.T @ A for A in A_s]
    t_s = [E.T @ (t - c) for t in t_s]
    res = [x - mu[ix] for x, ix in zip(X, idx)]
    covs, pooled, n_eff = shrunk_covariances(res, idx, W, m, d, shrinkage, prior,
                                              fitted=S * PARAMS[transform](d) / d)
    presence = (counts + 0.5) / (S + 1.0)

    fmeans = fcovs = fpooled = None
    if feats is not None:
        F = [normalise_features(f, feature_normalization) for f in feats]
        nf = F[0].shape[1]
        acc = np.zeros((m, nf))
        wsum = np.zeros(m)
        for f, ix, w in zip(F, idx, W):
            np.add.at(acc, ix, f * w[:, None])
            np.add.at(wsum, ix, w)
        plain = np.zeros((m, nf))
        for f, ix in zip(F, idx):
            np.add.at(plain, ix, f)
        fmeans = np.where(wsum[:, None] > 1e-9, acc / np.maximum(wsum, 1e-300)[:, None], plain / counts[:, None])
        fres = [f - fmeans[ix] for f, ix in zip(F, idx)]
        fcovs, fpooled, _ = shrunk_covariances(fres, idx, W, m, nf, shrinkage, prior_features)

    rel = partner_relations(res, idx, W, mu, neighbours=relations[0], partners=relations[1], per_axis=relations[2],
                     n0=2.0, ridge=0.3)
    transforms = [{"matrix": A.tolist(), "translation": t.tolist(), "reflected": bool(r)}
                  for A, t, r in zip(A_s, t_s, refl_s)]
    return Atlas(names=universe, means=mu, covariances=covs, counts=counts, presence=presence, n_samples=S,
                 transform=transform, pooled_covariance=pooled, feature_names=feature_names,
                 feature_means=fmeans, feature_covariances=fcovs, pooled_feature_covariance=fpooled,
                 feature_normalization=feature_normalization, sample_transforms=transforms,
                 relations=rel, parameters={"gpa_iterations": iters, "requested_transform": requested,
                             "deform": None if deform is None else dict(deform)})
