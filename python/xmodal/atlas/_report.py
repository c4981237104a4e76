"""An atlas's quality report: one self-contained HTML file (what ``xmodal atlas build`` writes beside
the atlas).

It says how well the atlas names samples like its own training samples (the leave-one-sample-out
figures of its calibration), draws the reliability curve of its confidence, and lists per training
sample its leave-one-out accuracy and the label-noise rate the calibration fitted to it: a sample
whose names disagree with the others where the atlas is sure (a tracking swap, a mislabelled
sub-lineage) stands out there.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from pathlib import Path

from ._model import Atlas

#: A training sample whose fitted label-noise rate reaches this is flagged in the report.
NOISE_FLAG = 0.1


#: What the report says in place of its plot where matplotlib is missing.
NO_MATPLOTLIB = "matplotlib is not installed, so the report has no reliability plot (pip install 'xmodal[plot]')"


def _reliability_png(table: list[dict]) -> bytes | None:
    """Bar chart of the share right per confidence bin against the diagonal (None without
    matplotlib or without a table)."""
    if not table:
        return None
    try:
        # neither pyplot nor matplotlib.use: the host's backend and pyplot state stay as they are
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logging.getLogger("xmodal.atlas").warning("atlas report: %s", NO_MATPLOTLIB)
        return None
    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for b in table:
        width = 0.9 * (b["high"] - b["low"])
        centre = 0.5 * (b["low"] + b["high"])
        ax.bar(centre, b["accuracy"], width=width, color="tab:blue", alpha=0.8)
        ax.text(centre, b["accuracy"] + 0.02, str(b["n"]), ha="center", fontsize=7)
        ax.plot([centre], [b["confidence"]], "o", color="tab:orange", ms=3)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence of the given name (bars: bins; dots: mean confidence)")
    ax.set_ylabel("share of names right")
    ax.set_title("leave-one-sample-out reliability")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


#: What the report shows for a figure that is not defined (no cells to count), explained below it.
UNDEFINED = "n/a"


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return UNDEFINED
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _sample_rows(atlas: Atlas) -> list[str]:
    cal = atlas.calibration
    acc = cal.get("loo_accuracy_per_sample") or []
    noise = cal.get("loo_label_noise_per_sample") or [None] * len(acc)
    inputs = atlas.parameters.get("inputs") or [f"sample {i}" for i in range(atlas.n_samples)]
    rows = []
    for i, (a, e) in enumerate(zip(acc, noise)):
        flag = e is not None and e >= NOISE_FLAG
        note = "names disagree with the other samples where the atlas is sure: check this annotation" if flag else ""
        style = ' style="background:#fde2e1"' if flag else ""
        name = inputs[i] if i < len(inputs) else f"sample {i}"
        rows.append(f"<tr{style}><td>{i}</td><td>{html.escape(str(name))}</td><td>{_fmt(a)}</td>"
                    f"<td>{_fmt(e, 2)}</td><td>{note}</td></tr>")
    return rows


def atlas_report_html(atlas: Atlas) -> str:
    """The report of :func:`write_atlas_report` as an HTML string."""
    if not isinstance(atlas, Atlas):
        raise TypeError(f"atlas: expected an xmodal.atlas.Atlas, got {type(atlas).__name__}")
    cal = atlas.calibration or {}
    features = ", ".join(atlas.feature_names) if atlas.feature_names else "none (positions only)"
    deform = "yes" if atlas.parameters.get("deform") else "no"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>xmodal atlas report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:0.2em 0.6em;text-align:left;overflow-wrap:anywhere}</style></head><body>",
        "<h1>Atlas</h1>",
        f"<p>{atlas.n_samples} annotated samples, {atlas.n_names} names, {atlas.ndim}D; group-wise "
        f"transform {html.escape(atlas.transform)}; smooth field per sample: {deform}; features: "
        f"{html.escape(features)}.</p>",
    ]
    if cal.get("loo_mean_accuracy") is None:  # 0.0 is a (bad) calibration, not none
        parts.append("<p>Not calibrated (built with <code>calibrate=False</code>): no leave-one-out figures; "
                     "the confidence of <code>identify</code> is the plain posterior marginal.</p>")
    else:
        parts += [
            "<h2>How well it names samples like its own (leave one sample out)</h2>",
            "<table><tr><th>mean accuracy</th><th>worst sample</th><th>ECE</th><th>right at confidence &ge; 0.9</th>"
            "<th>share of cells at &ge; 0.9</th><th>temperature</th></tr>",
            f"<tr><td>{_fmt(cal.get('loo_mean_accuracy'))}</td><td>{_fmt(cal.get('loo_worst_accuracy'))}</td>"
            f"<td>{_fmt(cal.get('loo_ece'))}</td><td>{_fmt(cal.get('loo_accuracy_at_0.9'))}</td>"
            f"<td>{_fmt(cal.get('loo_share_at_0.9'))}</td><td>{_fmt(cal.get('temperature'))}</td></tr></table>",
            "<p>Each sample in turn was left out, an atlas of the others built, and the left-out sample named "
            "from its raw coordinates; its given names are the reference. A new sample of another strain, "
            "stage or microscope can be named worse.</p>",
        ]
        table = cal.get("loo_reliability") or []
        png = _reliability_png(table)
        if png is not None:
            parts.append(f"<img alt='reliability curve' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        elif table:
            parts.append(f"<p>No plot: {html.escape(NO_MATPLOTLIB)}.</p>")
        parts += ["<h2>Training samples</h2>",
                  "<table><tr><th>#</th><th>sample</th><th>leave-one-out accuracy</th><th>label-noise rate</th>"
                  "<th></th></tr>", *_sample_rows(atlas), "</table>",
                  f"<p>Label-noise rate: the share of a sample's reference names the calibration found to disagree "
                  f"with the atlas where it is sure (flagged from {NOISE_FLAG}). {UNDEFINED}: not defined (no cells "
                  "to count, e.g. no cell at confidence &ge; 0.9).</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_atlas_report(atlas: Atlas, path: str | os.PathLike) -> Path:
    """Write the atlas's quality report (one self-contained HTML file, written atomically).

    Parameters
    ----------
    atlas : Atlas
    path : str or path-like
        The HTML file to write (its folder must exist).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from ..io import atomic_write_text

    text = atlas_report_html(atlas)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected an HTML file name, got the folder {path}")
    if not path.parent.is_dir():
        raise ValueError(f"path: the folder {path.parent} does not exist")
    atomic_write_text(path, text)
    return path
