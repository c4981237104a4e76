"""The HTML reports as a reader sees them (audit): user data escaped, the numbers equal the
result's, units named, degenerate inputs explained, a note instead of figures without matplotlib."""

from __future__ import annotations

import copy
import csv
import re
import sys

import numpy as np
import pytest

from xmodal.pipelines import register_cells

HOSTILE = "<script>alert(1)</script>&\"'é"


def _cells(n=40, seed=0):
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(0, 100, (n, 3))
    return fixed, fixed + rng.normal(0, 1.0, fixed.shape)


def _rows(text: str) -> dict:
    return dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", text))


def _no_matplotlib(monkeypatch):
    """Make matplotlib unimportable (as where it is not installed)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def _write(path, ids, pts):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "z", "y", "x"])
        for i, p in zip(ids, pts):
            w.writerow([i, *p])


def test_registration_report_escapes_the_input_names_and_ids(tmp_path):
    fixed, moving = _cells()
    ids = np.array([f"{HOSTILE}{i}" for i in range(len(fixed))])
    src = tmp_path / f"f{HOSTILE[:8]}&b.csv"
    _write(src, ids, fixed)
    _write(tmp_path / "m.csv", ids, moving)
    register_cells(src, tmp_path / "m.csv", id_column="id", transform="rigid", prealign=False, errors=False,
                   out=tmp_path / "reg")
    text = (tmp_path / "reg" / "report.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text  # the input is named, escaped
    assert "&amp;b.csv" in text and "m.csv" in text
    assert "http://" not in text and "https://" not in text  # nothing from the network


def test_registration_report_numbers_equal_the_result_and_name_their_units(tmp_path):
    fixed, moving = _cells()
    res = register_cells(fixed, moving, transform="rigid", prealign=False, errors=True, out=tmp_path / "reg")
    rows = _rows((tmp_path / "reg" / "report.html").read_text())
    assert rows["matched pairs"] == str(res.n_matched)
    dist = next(v for k, v in rows.items() if k.startswith("median pair distance"))
    assert float(dist) == pytest.approx(np.median(res.distances), rel=1e-3)
    assert any(k.startswith("median pair distance") and "units" in k for k in rows)
    sure = rows["pairs with confidence &gt;= 0.9"]
    assert sure.startswith(f"{int(np.sum(res.confidence >= 0.9))} (")
    rigid = next(v for k, v in rows.items() if k.startswith("rigid fit"))
    assert float(rigid.split(";")[0]) == pytest.approx(res.errors["rigid"]["fit"].rms, rel=1e-3)
    assert all("units" in k for k in rows if "fit: residual" in k)


def test_registration_report_lists_only_the_outputs_written(tmp_path):
    fixed, moving = _cells()
    register_cells(fixed, moving, transform="rigid", prealign=False, errors=False, out=tmp_path / "plain")
    assert not (tmp_path / "plain" / "errors.json").exists()
    assert "errors.json" not in (tmp_path / "plain" / "report.html").read_text()
    register_cells(fixed, moving, transform="rigid", prealign=False, errors=True, out=tmp_path / "err")
    assert "errors.json" in (tmp_path / "err" / "report.html").read_text()


def test_registration_report_without_pairs_explains_itself(tmp_path):
    fixed, moving = _cells()
    res = register_cells(fixed, moving, transform="rigid", prealign=False, errors=True, unmatched_cost=1e-9,
                         out=tmp_path / "reg")
    assert res.n_matched == 0 and res.errors is None
    text = (tmp_path / "reg" / "report.html").read_text()
    rows = _rows(text)
    assert rows["matched pairs"] == "0"
    assert not re.search(r"\bnan\b", text, re.I)
    errors = next(v for k, v in rows.items() if k.startswith("error estimates"))
    assert "0 matched pairs" in errors and "8" in errors  # 2 (d + 1) pairs needed in 3D
    assert "errors.json" not in text
    assert not (tmp_path / "reg" / "residuals.png").exists()  # no empty histogram


def test_registration_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    _no_matplotlib(monkeypatch)
    fixed, moving = _cells()
    register_cells(fixed, moving, transform="rigid", prealign=False, errors=True, out=tmp_path / "reg")
    assert not list((tmp_path / "reg").glob("*.png"))
    text = (tmp_path / "reg" / "report.html").read_text()
    assert "<img" not in text and "matplotlib is not installed" in text and "xmodal[plot]" in text


# ------------------------------------------------------------------------------------------- atlas


@pytest.fixture(scope="module")
def atlas():
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_atlas import _base_shape, _names, _sample
    from xmodal.atlas import build_atlas

    rng = np.random.default_rng(3)
    base, names = _base_shape(20, rng), _names(20)
    train = [_sample(base, names, rng, noise=0.2) for _ in range(3)]
    return build_atlas([t[0] for t in train], names=[t[1] for t in train], deform=None)


def _cells_text(text: str) -> str:
    """The report without its embedded images (base64 text can hold any letters)."""
    return re.sub(r"src='data:[^']*'", "", text)


def test_atlas_report_escapes_inputs_and_wraps_long_names(atlas):
    from xmodal.atlas._report import atlas_report_html

    a = copy.deepcopy(atlas)
    a.parameters["inputs"] = [HOSTILE + ".csv", "a&b.csv", "x" * 400]
    text = atlas_report_html(a)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;é.csv" in text
    assert "a&amp;b.csv" in text
    assert "overflow-wrap:anywhere" in text  # a 400-character name does not widen the page


def test_atlas_report_of_a_calibration_at_zero_accuracy_shows_it(atlas):
    from xmodal.atlas._report import atlas_report_html

    a = copy.deepcopy(atlas)
    a.calibration.update(loo_mean_accuracy=0.0, loo_worst_accuracy=0.0, loo_accuracy_per_sample=[0.0] * 3)
    text = atlas_report_html(a)
    assert "Not calibrated" not in text
    assert "<tr><td>0.000</td><td>0.000</td>" in text


def test_atlas_report_explains_undefined_figures(atlas):
    from xmodal.atlas._report import atlas_report_html

    a = copy.deepcopy(atlas)
    a.calibration.update(loo_ece=float("nan"), loo_accuracy_per_sample=[float("nan"), 1.0, 1.0])
    text = _cells_text(atlas_report_html(a))
    assert not re.search(r"\bnan\b", text, re.I)
    assert "n/a" in text and "not defined" in text


def test_atlas_report_without_matplotlib_says_so(atlas, monkeypatch):
    from xmodal.atlas._report import atlas_report_html

    assert "data:image/png;base64," in atlas_report_html(atlas)
    _no_matplotlib(monkeypatch)
    text = atlas_report_html(atlas)
    assert "<img" not in text and "matplotlib is not installed" in text and "xmodal[plot]" in text


def test_atlas_build_leaves_no_staged_report_when_the_atlas_cannot_be_saved(tmp_path, capsys, monkeypatch):
    from _cli_helpers import run
    from test_atlas_cli import _write as write_table
    from xmodal.atlas import Atlas

    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 3)) * [12.0, 7.0, 4.0]
    names = np.array([f"c{i:02d}" for i in range(20)])
    paths = []
    for s in range(2):
        paths.append(tmp_path / f"s{s}.csv")
        write_table(paths[-1], base + rng.normal(scale=0.1, size=base.shape), names)

    def fail(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Atlas, "save", fail)
    code, _, err = run(capsys, "atlas", "build", *paths, "--names-column", "cell", "--no-calibration",
                       "--out", tmp_path / "a.json")
    assert code != 0 and "disk full" in err
    assert not [p.name for p in tmp_path.iterdir() if "report" in p.name or p.name.startswith("a.")]
