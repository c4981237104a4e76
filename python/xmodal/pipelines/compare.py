"""Every segmentation method and the baseline on the same network output, scored side by side.

:func:`compare_segmentation_methods` predicts the affinities of an image or stack once, then runs
each agglomeration of :func:`xmodal.segment` (pixel mutex watershed, superpixels + GASP, multicut)
with the model's stored settings, plus the thresholded-boundary baseline, and scores every result
against the ground truth per slice (ARand, VOI split / merge, segment counts). This is what
``xmodal evaluate --image`` runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .._validation import as_progress, describe

__all__ = ["compare_segmentation_methods", "format_comparison", "METHODS"]

#: The methods compared by default, in report order.
METHODS = ("mws", "gasp", "multicut", "baseline")

_SCORES = ("arand", "voi_split", "voi_merge", "n_segments")


def compare_segmentation_methods(raw, ground_truth, *, model="em", methods=METHODS, baseline_threshold=None,
                                 normalize="auto", ignore_gt=(0,), device: str = "auto",
                                 progress: bool = False) -> dict:
    """Segment ``raw`` with every method from ONE affinity prediction and score each per slice.

    Parameters
    ----------
    raw : array or path
        A 2D image or a 3D stack ``(z, y, x)``, as for :func:`xmodal.segment`.
    ground_truth : array or path
        Instance labels of the same shape; labels in ``ignore_gt`` (default 0: membrane /
        unlabelled) are left out of the scores, the CREMI / ISBI convention.
    model : "em", "isbi2012", a path or a model
        The affinity model (:func:`xmodal.segment`'s ``model``). Its stored
        ``segmentation_defaults`` (chosen on ISBI 2012 slices 20-24) set every method's options.
    methods : sequence of str
        Any of "mws", "gasp", "multicut" (agglomerations of :func:`xmodal.segment`) and
        "baseline" (connected components of the thresholded boundary map, grown back by a
        watershed: :func:`xmodal.models.isbi2012.boundary_baseline_segmentation`).
    baseline_threshold : float in (0, 1), optional
        Boundary threshold of the baseline; default the model's stored ``baseline_threshold``,
        else 0.5.
    normalize, device, progress
        As for :func:`xmodal.segment`.

    Returns
    -------
    dict
        ``{"slices": n, "default_method": the model's default, "methods": {name: {"per_slice":
        {score: [...]}, "mean": {...}, "worst": {...}, "seconds": s}}, "predict_seconds": s}``;
        scores per slice of a stack (one "slice" for a 2D image or a 3D model): ``arand``
        (adapted Rand error), ``voi_split``, ``voi_merge`` (bits), ``n_segments``. "worst" is the
        largest value over slices. Slices whose ground truth holds only ``ignore_gt`` labels are not
        scored: ``"scored_slices"`` lists the indices of those that are (``per_slice`` follows them).
    """
    from .segment import _normalizer, _predict, _validate

    progress = as_progress(progress, "progress")
    methods = _check_methods(methods)
    if baseline_threshold is not None:  # checked before the prediction, not after it
        _check_threshold(baseline_threshold)
    job0 = _validate(raw, model=model, offsets=None, n_attractive=None, normalize=normalize, min_size=None,
                     spacing=None, progress=progress, bias=None, strides=None)
    gt = _ground_truth(ground_truth, job0.spatial)
    t0 = time.perf_counter()
    aff = np.asarray(_predict(job0, _normalizer(job0.image, normalize, job0.model), None, tile_shape=None,
                              halo="auto", device=device, client=None))
    out = {"slices": gt.shape[0] if job0.stack else 1, "predict_seconds": time.perf_counter() - t0,
           "default_method": _stored(job0.model).get("method", "mws"), "methods": {}}
    for name in methods:
        t = time.perf_counter()
        if name == "baseline":
            labels = _baseline(aff, job0, baseline_threshold)
        else:
            labels = _agglomerated(aff, job0, name)
        scores = _scores(labels, gt, stack=job0.stack, ignore_gt=tuple(ignore_gt))
        scores["seconds"] = time.perf_counter() - t
        out["methods"][name] = scores
    return out


def _check_methods(methods) -> tuple:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise ValueError(f"methods: expected a non-empty selection of {list(METHODS)}, got {describe(methods)}")
    return methods


def _ground_truth(ground_truth, spatial) -> np.ndarray:
    from ._inputs import read_image

    gt = np.asarray(read_image(ground_truth) if isinstance(ground_truth, (str, Path)) else ground_truth)
    if gt.shape != tuple(spatial):
        raise ValueError(f"ground_truth: expected the shape of the image {tuple(spatial)}, got {gt.shape}")
    if not np.issubdtype(gt.dtype, np.integer):
        raise TypeError(f"ground_truth: expected integer instance labels, got {describe(gt)}")
    return gt


def _stored(model) -> dict:
    """The model's stored settings (the attribute :func:`xmodal.segment` reads)."""
    return dict(getattr(model, "segmentation_defaults", None) or {})


def _agglomerated(aff, job0, method: str) -> np.ndarray:
    """``method``'s labels from the shared affinities, with the model's stored options (as segment)."""
    from ._agglomerate import GRAPH_METHODS, agglomerate, filter_small
    from .segment import _validate

    job = _validate(job0.image, model=job0.model, offsets=None, n_attractive=None, normalize=None, min_size=None,
                    spacing=None, progress=False, bias=None, strides=None, method=method)
    labels, n, aff_mem = agglomerate(aff, job.offsets, job.mws_kw, method=job.method, target=None, block_shape=None,
                                     client=None, workdir=None)
    labels, _ = filter_small(labels, n, aff_mem, job.offsets, n_attractive=job.n_attractive,
                             min_size=0 if job.method in GRAPH_METHODS else job.min_size)
    return np.asarray(labels)


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) < 1.0):
        raise ValueError(f"baseline_threshold: expected a number in (0, 1), got {describe(threshold)}")


def _baseline(aff, job0, threshold) -> np.ndarray:
    from ..models.isbi2012 import boundary_baseline_segmentation

    if threshold is None:
        threshold = float(_stored(job0.model).get("baseline_threshold", 0.5))
    _check_threshold(threshold)
    if aff.ndim == 3:  # one 2D image: (C, y, x)
        return boundary_baseline_segmentation(aff, n_attractive=job0.n_attractive, threshold=float(threshold))
    if job0.stack:  # a 2D model on a stack: (C, z, y, x), the baseline slice by slice
        return np.stack([boundary_baseline_segmentation(aff[:, z], n_attractive=job0.n_attractive,
                                                        threshold=float(threshold)) for z in range(aff.shape[1])])
    raise ValueError("methods: the boundary baseline needs a 2D model (2D affinities); this model is 3D")


def _scores(labels, gt, *, stack: bool, ignore_gt) -> dict:
    from ..metrics import adapted_rand_error, contingency_table, variation_of_information

    pairs = [(labels[z], gt[z]) for z in range(gt.shape[0])] if stack else [(labels, gt)]
    # a slice with nothing annotated (every label in ignore_gt) has no score and is left out
    scored = [i for i, (_, g) in enumerate(pairs) if not np.isin(g, np.asarray(ignore_gt)).all()]
    if not scored:
        raise ValueError(f"ground_truth: no slice holds a label outside ignore_gt={tuple(ignore_gt)}")
    per = {k: [] for k in _SCORES}
    for seg, g in (pairs[i] for i in scored):
        table = contingency_table(seg, g)
        voi = variation_of_information(table=table, ignore_gt=ignore_gt)
        per["arand"].append(float(adapted_rand_error(table=table, ignore_gt=ignore_gt).error))
        per["voi_split"].append(float(voi.split))
        per["voi_merge"].append(float(voi.merge))
        per["n_segments"].append(int(len(np.unique(seg[seg != 0]))))
    return {"per_slice": per, "scored_slices": scored, "mean": {k: float(np.mean(v)) for k, v in per.items()},
            "worst": {k: float(np.max(v)) for k, v in per.items()}}


def format_comparison(result: dict) -> str:
    """A plain-text table of :func:`compare_segmentation_methods`' means and worst slices."""
    lines = [f"{'method':<10} {'ARand':>8} {'worst':>8} {'VOI split':>10} {'VOI merge':>10} {'segments':>9} "
             f"{'seconds':>8}"]
    for name, s in result["methods"].items():
        label = name + (" *" if name == result["default_method"] else "")
        m, w = s["mean"], s["worst"]
        lines.append(f"{label:<10} {m['arand']:>8.4f} {w['arand']:>8.4f} {m['voi_split']:>10.3f} "
                     f"{m['voi_merge']:>10.3f} {m['n_segments']:>9.1f} {s['seconds']:>8.2f}")
    lines.append(f"(* the model's default; {result['slices']} slice(s); affinities predicted once in "
                 f"{result['predict_seconds']:.1f} s)")
    return "\n".join(lines)
