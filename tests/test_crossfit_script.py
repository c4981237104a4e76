"""``scripts/evaluate_em_crossfit.py``: the block networks are refused when their metadata says they
trained on their own block or on a held-out slice; slice ranges parse; the choice smooths over the
``beta`` neighbours of a setting and keeps to the families asked for. No network or real data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        path = ROOT / "scripts" / "evaluate_em_crossfit.py"
        spec = importlib.util.spec_from_file_location("evaluate_em_crossfit", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return mod


def _folds(tmp_path, train):
    tmp_path.mkdir()
    for k, slices in enumerate(train):
        d = tmp_path / f"fold{k}"
        d.mkdir()
        (d / "em_affinity_unet.json").write_text(json.dumps({"training": {"train_slices": slices}}))
    return tmp_path


def test_slice_ranges():
    cf = _load()
    assert cf._slices("0-4,10-24") == [0, 1, 2, 3, 4] + list(range(10, 25))
    assert cf._slices("7") == [7]


def test_block_networks_checked(tmp_path):
    cf = _load()
    ok = ["5-24", "0-4,10-24", "0-9,15-24", "0-14,20-24"]
    specs = cf.block_models(_folds(tmp_path / "a", ok))
    assert specs[-1] == "em" and specs[0].endswith("fold0/em_affinity_unet.pt")
    leaky = ["5-24", "0-24", "0-9,15-24", "0-14,20-24"]  # fold1 trained on its own block 5-9
    with pytest.raises(SystemExit, match="overlaps block"):
        cf.block_models(_folds(tmp_path / "b", leaky))
    heldout = ["5-24,25", "0-4,10-24", "0-9,15-24", "0-14,20-24"]
    with pytest.raises(SystemExit, match="overlaps block"):
        cf.block_models(_folds(tmp_path / "c", heldout))


def test_choice_is_beta_smoothed():
    cf = _load()
    doms = cf.rb.DOMAINS

    def rec(v):
        return {d: [v, v] for d in doms}

    # beta 0.4 alone is lowest, but its neighbours are poor; beta 0.25 sits in a flat, low valley
    vals = {0.2: 0.022, 0.25: 0.020, 0.3: 0.020, 0.35: 0.040, 0.4: 0.010, 0.45: 0.060}
    table = {("c", False, "gasp", "mean", b): rec(v) for b, v in vals.items()}
    table[("c", False, "multicut", "mean", 0.3)] = rec(0.001)
    best, sm, means = cf.choose(table, (("gasp", "mean"),))
    assert best[4] == 0.25 and sm == pytest.approx((0.022 + 0.020 + 0.020) / 3)
    assert means[("c", False, "gasp", "mean", 0.4)] == pytest.approx(0.010)
    mc, _, _ = cf.choose(table, (("multicut", "mean"),))
    assert mc[2] == "multicut"
