"""``xmodal atlas build`` and ``xmodal identify`` on small synthetic tables: the names come back,
and mistakes are one line with exit status 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from _cli_helpers import assert_user_error, run






def _write(path, pts, names=None, extra=None):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["z", "y", "x"] + (["cell"] if names is not None else []) + list(extra or {}))
        for i, p in enumerate(pts):
            row = [f"{v:.4f}" for v in p] + ([names[i]] if names is not None else [])
            row += [f"{extra[k][i]:.4f}" for k in (extra or {})]
            w.writerow(row)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("atlas_cli")
    m = 40
    base = rng.normal(size=(m, 3)) * [12.0, 7.0, 4.0]
    names = np.array([f"c{i:02d}" for i in range(m)])
    paths = []
    for s in range(4):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        pts = (base + rng.normal(scale=0.15, size=base.shape)) @ q.T + rng.normal(scale=5, size=3)
        order = rng.permutation(m)
        p = d / f"sample{s}.csv"
        _write(p, pts[order], names[order], {"volume": rng.normal(size=m)})
        paths.append(p)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    new = (base + rng.normal(scale=0.15, size=base.shape)) @ q.T
    order = rng.permutation(m)
    _write(d / "new.csv", new[order])
    return d, paths, names[order]


def test_build_then_identify(tables, capsys):
    d, paths, truth = tables
    code, out, err = run(capsys, "atlas", "build", *paths[:3], "--names-column", "cell", "--no-calibration",
                         "--out", d / "atlas.json")
    assert code == 0, err
    assert "3 samples" in out and "40 names" in out
    atlas = json.loads((d / "atlas.json").read_text())
    assert atlas["n_samples"] == 3
    report = (d / "atlas.report.html").read_text()
    assert "Not calibrated" in report and "40 names" in report
    assert not [p for p in d.iterdir() if p.name.endswith(".xmodal-partial")]  # the staged report is moved
    code, out, err = run(capsys, "identify", d / "new.csv", "--atlas", d / "atlas.json", "--top-k", "3",
                         "--out", d / "names.csv")
    assert code == 0, err
    with open(d / "names.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == list(truth)
    assert set(rows[0]) >= {"id", "name", "confidence", "name_3", "probability_3"}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)


def test_register_reports_the_chosen_model(tables, capsys):
    d, paths, _ = tables
    code, out, err = run(capsys, "register", paths[0], paths[1], "--transform", "auto", "--out", d / "reg", "-q")
    assert code == 0, err
    model = json.loads((d / "reg" / "provenance.json").read_text())["parameters"]["model"]
    assert f"({model})" in out


def test_atlas_and_identify_errors(tables, capsys):
    d, paths, _ = tables
    assert_user_error(*run(capsys, "atlas", "build", paths[0], "--names-column", "cell", "--out",
                           d / "one.json")[::2], "at least 2")
    assert_user_error(*run(capsys, "atlas", "build", *paths[:2], "--names-column", "label", "--out",
                           d / "bad.json")[::2], "names_column", "'label'")
    assert_user_error(*run(capsys, "atlas", "build", *paths[:2], "--names-column", "cell", "--features-columns",
                           "colour", "--out", d / "bad.json")[::2], "colour")
    assert_user_error(*run(capsys, "identify", d / "new.csv", "--atlas", d / "missing.json", "--out",
                           d / "n.csv")[::2], "--atlas", "missing.json")
    (d / "notatlas.json").write_text("{}")
    assert_user_error(*run(capsys, "identify", d / "new.csv", "--atlas", d / "notatlas.json", "--out",
                           d / "n.csv")[::2], "atlas")
    assert not (d / "bad.json").exists() and not (d / "n.csv").exists()


def test_calibrated_atlas_report(tables, capsys):
    d, paths, _ = tables
    code, out, err = run(capsys, "atlas", "build", *paths[:4], "--names-column", "cell", "--out", d / "cal.json")
    assert code == 0, err
    assert "cal.report.html" in out
    report = (d / "cal.report.html").read_text()
    assert "leave one sample out" in report and report.count("<tr") >= 2 + 4  # figures, one row per sample
    assert "data:image/png;base64," in report  # the reliability curve, embedded
    for p in paths[:4]:
        assert str(p) in report
