"""Outputs of the cell registration pipeline: tables, transform, error estimates, QC report."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text, provenance_record, write_csv, write_json


def _error_summary(errors: dict | None) -> dict | None:
    if errors is None:
        return None
    out = {}
    for kind in ("rigid", "affine"):
        e = errors[kind]
        fit, region, loo = e["fit"], e["region"], e["loo"]
        out[kind] = {
            "rms_residual": float(fit.rms),
            "n_pairs": int(len(fit.residuals)),
            "loo_rms": float(loo.rms),
            "loo_distance_median": float(np.median(loo.distances)),
            "loo_distance_p95": float(np.percentile(loo.distances, 95)),
            "prediction_region": {"level": float(region.level), "method": region.method,
                                  "semi_axes_median": np.median(region.semi_axes, axis=0).tolist(),
                                  "semi_axes_max": np.max(region.semi_axes, axis=0).tolist()},
        }
    if "tre" in errors["rigid"]:
        tre = errors["rigid"]["tre"]
        out["rigid"]["fitzpatrick_tre"] = {"fle": float(tre.fle), "median": float(np.median(tre.tre)),
                                           "max": float(np.max(tre.tre))}
    return out


def _figure(figsize: tuple[float, float]):
    """A new matplotlib figure with one axes, drawn by Agg: ``(figure, axes)``; ``figsize`` in inches.

    Neither pyplot nor ``matplotlib.use``: the host application's backend and pyplot's figure list
    stay as they are, and worker threads can draw reports.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


#: What the report says in place of its figures where matplotlib is missing.
NO_MATPLOTLIB = "matplotlib is not installed, so the report has no figures (pip install 'xmodal[plot]')"

#: What the report calls the unit of distances and coordinates when the inputs declare none.
UNKNOWN_UNITS = "input units"


def report_units(result) -> str:
    """The unit of every distance and coordinate in ``result``'s report: the length unit that the
    cells declare (``result.parameters["units"]``, e.g. ``"micrometer"``), else ``"input units"``."""
    units = (result.parameters or {}).get("units")
    return str(units) if units else UNKNOWN_UNITS


def captions(units: str = UNKNOWN_UNITS) -> dict[str, str]:
    """Captions of the report's figures, by file name, distances in ``units``."""
    return {
        "match_overlay.png": f"Fixed and registered moving cells, matched pairs joined (x-y projection, {units}).",
        "residuals.png": f"Distances of the matched pairs after registration ({units}).",
        "confidence_ellipses.png": f"95 % prediction regions of the affine fit of the matched pairs "
                                   f"(x-y projection, {units}).",
        "reliability.png": "Share of pairs right (same name) per confidence bin, against the confidence.",
        "confidence_histogram.png": "Confidence of the matched pairs.",
    }


def _have_matplotlib() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None  # figures come from _figure
    except (ImportError, ValueError):
        return False


def _plots(result, folder: Path) -> list[str]:
    """PNG plots, the names of the files written (needs matplotlib; returns [] without it)."""
    if not _have_matplotlib():
        logging.getLogger("xmodal.pipelines").warning("report: %s", NO_MATPLOTLIB)
        return []
    import io

    names = []
    units = report_units(result)
    fix, moved = result.fixed_points, result.moved
    ax_a, ax_b = (fix.shape[1] - 1, fix.shape[1] - 2)  # x against y

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(folder / name, buf.getvalue())
        names.append(name)

    fig, ax = _figure(figsize=(6, 5))
    ax.scatter(fix[:, ax_a], fix[:, ax_b], s=6, c="tab:blue", label="fixed")
    ax.scatter(moved[:, ax_a], moved[:, ax_b], s=6, c="tab:orange", label="moving (registered)")
    fi, mi = result.fixed_index, result.moving_index
    segs = np.stack([fix[fi][:, [ax_a, ax_b]], moved[mi][:, [ax_a, ax_b]]], axis=1)
    from matplotlib.collections import LineCollection

    ax.add_collection(LineCollection(segs, colors="k", linewidths=0.4, alpha=0.6))
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({units})")
    ax.set_ylabel(f"y ({units})")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{result.n_matched} matched pairs")
    save(fig, "match_overlay.png")

    if result.n_matched:  # no empty histogram
        fig, ax = _figure(figsize=(5, 3.5))
        ax.hist(result.distances, bins=40, color="tab:green")
        ax.set_xlabel(f"distance of matched pairs after registration ({units})")
        ax.set_ylabel("pairs")
        save(fig, "residuals.png")

    if result.errors is not None and "affine" in result.errors:
        region = result.errors["affine"]["region"]
        shapes = np.asarray(region.shape_matrices)
        centres = np.asarray(region.centers)
        fig, ax = _figure(figsize=(6, 5))
        ax.scatter(fix[:, ax_a], fix[:, ax_b], s=4, c="0.7")
        from matplotlib.patches import Ellipse

        step = max(1, len(centres) // 60)
        for c, s in zip(centres[::step], shapes[::step]):
            sub = s[np.ix_([ax_a, ax_b], [ax_a, ax_b])]
            vals, vecs = np.linalg.eigh(sub)
            vals = np.clip(vals, 0, None)
            angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
            ax.add_patch(Ellipse((c[ax_a], c[ax_b]), 2 * np.sqrt(vals[1]), 2 * np.sqrt(vals[0]), angle=angle,
                                 fill=False, color="tab:red", lw=0.8))
        ax.set_aspect("equal")
        ax.set_xlabel(f"x ({units})")
        ax.set_ylabel(f"y ({units})")
        ax.set_title(f"{region.level:.0%} prediction regions (affine fit), x-y projection")
        save(fig, "confidence_ellipses.png")
    if result.confidence is not None and result.n_matched:
        fig = _confidence_figure(result.confidence, match_outcomes(result))
        save(fig, "reliability.png" if match_outcomes(result) is not None else "confidence_histogram.png")
    return names


def match_outcomes(result) -> np.ndarray | None:
    """Whether each matched pair is right, when the data tell: the cells carry names (non-numeric
    ids, e.g. ``id_column`` holding lineage or neuron names) in both sets and share at least one, and
    a pair is right when its two cells have the same name. None otherwise (numbers such as label
    values are not comparable across the two sets)."""
    f, m = np.asarray(result.fixed_ids), np.asarray(result.moving_ids)
    if f.dtype.kind not in "USO" or m.dtype.kind not in "USO" or not len(f):
        return None

    def named(a):
        return all(isinstance(v, str) and v.strip() and not _is_number(v) for v in a.tolist())

    if not (named(f) and named(m)) or not set(f.tolist()) & set(m.tolist()):
        return None
    return f == m


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _confidence_figure(confidence, outcomes):
    """Reliability curve (accuracy per confidence bin, counts above the bars, the diagonal of perfect
    calibration) when the outcomes are known, else the histogram of the confidences."""
    from ._confidence import reliability

    fig, ax = _figure(figsize=(5, 4))
    if outcomes is None:
        ax.hist(confidence, bins=np.linspace(0, 1, 21), color="tab:purple")
        ax.set_xlabel("match confidence")
        ax.set_ylabel("pairs")
        ax.set_title(f"confidence of {len(confidence)} pairs; {np.mean(confidence >= 0.9):.0%} at >= 0.9")
        return fig
    r = reliability(confidence, outcomes)
    b = r["bins"]
    edges, count = np.asarray(b["edges"]), np.asarray(b["count"])
    acc = np.nan_to_num(np.asarray(b["accuracy"], float))
    centres = 0.5 * (edges[:-1] + edges[1:])
    ax.bar(centres, acc, width=np.diff(edges) * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for x, a, c in zip(centres, acc, count):
        if c:
            ax.text(x, a + 0.02, str(int(c)), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("match confidence")
    ax.set_ylabel("share of pairs right (names agree)")
    ax.set_title(f"reliability: ECE {r['ece']:.3f}, n = {r['n']}")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def write_registration_outputs(result, folder: Path) -> dict:
    """Write every output of :func:`register_cells` into ``folder``; returns name -> path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"out: expected a folder, got an existing file {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {}
    outputs["transform"] = write_json(folder / "transform.json", result.transform.to_dict())
    outputs["matches"] = write_csv(
        folder / "matches.csv",
        ["fixed_index", "moving_index", "fixed_id", "moving_id", "distance"]
        + (["confidence"] if result.confidence is not None else []),
        [result.fixed_index, result.moving_index, result.fixed_ids, result.moving_ids, result.distances]
        + ([result.confidence] if result.confidence is not None else []),
    )
    d = result.fixed_points.shape[1]
    axes = ["z", "y", "x"][-d:]
    n_fix = len(result.fixed_points)
    partner = np.full(n_fix, -1, dtype=np.int64)
    partner[result.fixed_index] = result.moving_index
    pdist = np.full(n_fix, np.nan)
    pdist[result.fixed_index] = result.distances
    header = ["fixed_index"] + [f"fixed_{a}" for a in axes] + ["moving_index", "distance"]
    cols = [np.arange(n_fix)] + [result.fixed_points[:, j] for j in range(d)] + [partner, pdist]
    if result.fixed_cell_ids is not None:  # every cell's id, so unmatched cells can be joined back too
        header.insert(1, "fixed_id")
        cols.insert(1, result.fixed_cell_ids)
    if result.spot_counts is not None:
        for name, c in result.spot_counts.items():
            header.append(f"spots_{name}")
            cols.append(c)
    outputs["cells"] = write_csv(folder / "cells.csv", header, cols)
    outputs["moving"] = write_csv(folder / "moving.csv", *_moving_table(result, axes))
    if result.warped:
        outputs.update(_write_warped(result, folder))
        for f in sorted((folder / "elastix").glob("TransformParameters.*.txt")):
            outputs[f"elastix_{f.stem}"] = f
    summary = _error_summary(result.errors)
    if summary is not None:
        outputs["errors"] = write_json(folder / "errors.json", summary)
    plots = _plots(result, folder)
    for p in plots:
        outputs[p[:-4]] = folder / p
    listed = [Path(v).relative_to(folder).as_posix() for k, v in outputs.items() if not str(v).endswith(".png")]
    outputs["report"] = atomic_write_text(folder / "report.html",
                                          _html(result, summary, plots, listed + ["provenance.json"]))
    outputs["provenance"] = write_json(folder / "provenance.json",
                                       provenance_record("register_cells", result.parameters,
                                                  {"fixed": result.parameters.get("fixed"),
                                                   "moving": result.parameters.get("moving")})
                                       | {"timings": result.timings})
    return {k: str(v) for k, v in outputs.items()}


def _moving_table(result, axes) -> tuple[list, list]:
    """moving.csv: every moving cell in its own frame (``moving_*``) and registered (``moved_*``),
    its partner (-1 when unmatched), the pair's distance and confidence, and with error estimates
    the 95 % prediction region of the affine fit: centre ``region_center_*`` and shape matrix
    ``region_<a><b>`` (upper triangle; the region is ``(y - c)ᵀ S⁻¹ (y - c) <= 1``)."""
    d, n = len(axes), len(result.moving_points)
    partner = np.full(n, -1, dtype=np.int64)
    partner[result.moving_index] = result.fixed_index
    dist, conf = np.full(n, np.nan), np.full(n, np.nan)
    dist[result.moving_index] = result.distances
    if result.confidence is not None:
        conf[result.moving_index] = result.confidence
    header = ["moving_index"] + [f"moving_{a}" for a in axes] + [f"moved_{a}" for a in axes]
    header += ["fixed_index", "distance", "confidence"]
    cols = [np.arange(n)] + [result.moving_points[:, j] for j in range(d)] + [result.moved[:, j] for j in range(d)]
    cols += [partner, dist, conf]
    if result.moving_cell_ids is not None:
        header.insert(1, "moving_id")
        cols.insert(1, result.moving_cell_ids)
    if result.errors is not None and "affine" in result.errors:
        region = result.errors["affine"]["region"]
        centres, shapes = np.asarray(region.centers), np.asarray(region.shape_matrices)
        header += [f"region_center_{a}" for a in axes]
        cols += [centres[:, j] for j in range(d)]
        for i in range(d):
            for j in range(i, d):
                header.append(f"region_{axes[i]}{axes[j]}")
                cols.append(shapes[:, i, j])
    return header, cols


def _write_warped(result, folder: Path) -> dict:
    """Warped images as OME-Zarr images under ``folder/warped/<name>.ome.zarr`` (fixed grid)."""
    from ..io import create_ome_zarr_image, mark_complete, provenance_attributes

    out = {}
    fsp = result.parameters.get("fixed_spacing")
    for name, img in result.warped.items():
        img = np.asarray(img)
        axes = ("z", "y", "x")[-img.ndim:]
        path = folder / "warped" / f"{name}.ome.zarr"
        arr = create_ome_zarr_image(path, img.shape, img.dtype, axes=axes, spacing=fsp, name=name, overwrite=True,
                                    provenance=provenance_attributes("register_cells.warp", {"image": name}),
                                    writer="xmodal.register_cells")
        arr[...] = img
        mark_complete(arr, "xmodal.register_cells")
        out[f"warped_{name}"] = path
    return out


def _times(timings: dict) -> tuple[str, str]:
    """("12.40", "prealign 9.10, cpd 3.00, ..."): the run's total and its steps, in seconds.

    Without a "total" (the report is written before the run ends), the total is the sum of the
    steps timed so far.
    """
    steps = {k: float(v) for k, v in timings.items() if k != "total"}
    if not steps and "total" not in timings:
        return "n/a", "n/a"
    total = float(timings.get("total", sum(steps.values())))
    return f"{total:.2f}", ", ".join(f"{k} {v:.2f}" for k, v in steps.items()) or "n/a"


def _confidence_rows(result) -> list[tuple[str, str]]:
    """Report rows on the match confidence (and its calibration when the outcomes are known)."""
    conf = result.confidence
    if conf is None or not len(conf):
        return []
    sure = conf >= 0.9
    rows = [("pairs with confidence >= 0.9", f"{int(sure.sum())} ({sure.mean():.1%})")]
    ok = match_outcomes(result)
    if ok is not None:
        from ._confidence import reliability

        r = reliability(conf, ok)
        at = "n/a" if r["accuracy_at_0.9"] is None else f"{r['accuracy_at_0.9']:.3f}"
        rows.append(("pairs right (same name); at confidence >= 0.9; calibration error (ECE)",
                     f"{r['accuracy']:.3f}; {at}; {r['ece']:.3f}"))
    return rows


def _model_rows(result) -> list[tuple[str, str]]:
    """Report rows on the transform model: the one given, or the one ``transform="auto"`` chose with
    every candidate's held-out score (``result.model_selection``)."""
    sel = result.model_selection
    if not sel:
        return [("transform model", str(result.parameters.get("transform", "n/a")))]
    lower = sel.get("criterion_name") != "likelihood"
    ranked = sorted(sel.get("scores", {}).items(), key=lambda kv: kv[1] if lower else -kv[1])
    scores = "; ".join(f"{name}{' (chosen)' if name == sel['chosen'] else ''}: {v:.4g}" for name, v in ranked)
    return [("transform model (auto)", f"{sel['chosen']}, chosen by the {sel.get('criterion', 'held-out score')}"),
            ("held-out score per candidate", scores or "n/a")]


def _error_rows(result, summary) -> list[tuple[str, str]]:
    """Report rows on the error estimates of the matched pairs, or why there are none."""
    if not summary:
        need = 2 * (result.fixed_points.shape[1] + 1)
        why = (f"not computed: {result.n_matched} matched pairs, at least {need} needed" if result.n_matched < need
               else "not asked for (errors=False)")
        return [("error estimates", why)]
    units = report_units(result)
    return [(f"{kind} fit: residual RMS; leave-one-out distance (median / 95th pct) ({units})",
             f"{s['rms_residual']:.4g}; {s['loo_distance_median']:.4g} / {s['loo_distance_p95']:.4g}")
            for kind, s in summary.items()]


def _source(value) -> str:
    return "arrays" if value is None else str(value)


def _html(result, summary, plots, listed) -> str:
    """The report's text: a table of figures, the figures (PNG files beside it, linked by their
    names) or a note why there are none, and the other outputs ``listed`` (paths in the folder)."""
    total, steps = _times(result.timings)
    params = result.parameters
    units, caption = report_units(result), captions(report_units(result))
    rows = [
        ("inputs", f"fixed: {_source(params.get('fixed'))}; moving: {_source(params.get('moving'))}"),
        ("fixed cells", len(result.fixed_points)),
        ("moving cells", len(result.moving_points)),
        ("matched pairs", result.n_matched),
        (f"median pair distance ({units})", f"{np.median(result.distances):.4g}" if result.n_matched else "n/a"),
        *_model_rows(result),
        ("CPD iterations", ", ".join(f"{k}: {v}" for k, v in result.cpd_iterations.items()) or "n/a"),
        ("time (s)", total),
        ("time per step (s)", steps),
    ]
    rows += _confidence_rows(result) + _error_rows(result, summary)
    esc = html.escape
    table = "\n".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    imgs = "\n".join(f'<figure><img src="{esc(name)}" alt="{esc(caption.get(name, name))}">'
                     f"<figcaption>{esc(caption.get(name, name))} ({esc(name)})</figcaption></figure>"
                     for name in plots)
    if not _have_matplotlib():
        imgs = f"<p>No figures: {esc(NO_MATPLOTLIB)}.</p>"
    files = ", ".join(esc(f) + (" (moving &rarr; fixed, reusable on new points)" if f == "transform.json" else "")
                      for f in listed)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>xmodal cell registration</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}th{{text-align:left;padding-right:1em}}
td,th{{overflow-wrap:anywhere}}figure{{display:inline-block;margin:1em}}img{{max-width:28em}}</style></head>
<body><h1>xmodal cell registration</h1>
<table>{table}</table>
{imgs}
<p>{_units_sentence(units)}</p>
<p>Outputs beside this report: {files}.</p>
</body></html>
"""


def _units_sentence(units: str) -> str:
    if units == UNKNOWN_UNITS:
        return "Distances and coordinates are in the units of the inputs (physical units after the spacing)."
    return (f"Distances and coordinates are in {html.escape(units)}, the length unit that the cells declare "
            "(the moving cells converted into the fixed cells' unit).")
