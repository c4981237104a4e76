"""Atlas calibration with annotation errors in a training sample, and the atlas's HTML report."""

from __future__ import annotations

import numpy as np
import pytest

from test_atlas import _base_shape, _names, _sample
from xmodal.atlas import build_atlas, write_atlas_report


def test_calibration_is_robust_to_a_misannotated_training_sample(monkeypatch):
    # one training sample has a third of its names exchanged (as a tracking swap renames a whole
    # sub-lineage): the calibration flags it, and its right names, which look like confident
    # mistakes, do not inflate the temperature as they would with a plain log loss
    import functools

    import xmodal.atlas._build as build_module
    from xmodal.atlas._calibration import calibrate_atlas

    rng = np.random.default_rng(11)
    base, names = _base_shape(60, rng), _names(60)
    train = [_sample(base, names, rng, noise=0.3, drop=0.05) for _ in range(5)]
    clean = build_atlas([t[0] for t in train], names=[t[1] for t in train], deform=None)
    bad = [t[1].copy() for t in train]
    swap = {f"n{i:03d}": f"n{i + 10:03d}" for i in range(10)} | {f"n{i + 10:03d}": f"n{i:03d}" for i in range(10)}
    bad[2] = np.array([swap.get(n, n) for n in bad[2]])
    noisy = build_atlas([t[0] for t in train], names=bad, deform=None)
    noise = noisy.calibration["loo_label_noise_per_sample"]
    assert noise[2] >= 0.2 and max(noise[:2] + noise[3:]) <= 0.05
    assert clean.calibration["loo_label_noise_per_sample"] == [0.0] * 5
    monkeypatch.setattr(build_module, "calibrate_atlas", functools.partial(calibrate_atlas, robust=False))
    plain = build_atlas([t[0] for t in train], names=bad, deform=None)
    assert plain.calibration["loo_label_noise_per_sample"] == [0.0] * 5
    T_clean, T_robust, T_plain = (a.calibration["temperature"] for a in (clean, noisy, plain))
    assert T_clean < T_robust < 0.75 * T_plain
    # the atlas report flags that sample, and only it
    from xmodal.atlas._report import atlas_report_html

    html = atlas_report_html(noisy)
    assert html.count("check this annotation") == 1 and "<td>sample 2</td>" in html
    assert atlas_report_html(clean).count("check this annotation") == 0



def test_write_atlas_report(tmp_path):
    rng = np.random.default_rng(3)
    base, names = _base_shape(30, rng), _names(30)
    train = [_sample(base, names, rng, noise=0.2) for _ in range(3)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train], deform=None)
    out = write_atlas_report(atlas, tmp_path / "atlas.report.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "3 annotated samples, 30 names" in text
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind
    with pytest.raises(ValueError, match="path: expected an HTML file name"):
        write_atlas_report(atlas, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        write_atlas_report(atlas, tmp_path / "missing" / "r.html")
    with pytest.raises(TypeError, match="atlas: expected an xmodal.atlas.Atlas"):
        write_atlas_report({"names": []}, tmp_path / "r.html")
