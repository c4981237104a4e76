"""The two VNC ground-truth definitions of ``scripts/evaluate_vnc_ground_truth.py``: a synapse
label drawn over the membrane joins two cells into one instance with ``synapses="merge"`` and not
with ``"ignore"``, and ``bridge_stats`` counts such instances. A synthetic stack in the layout of
the Gerhard et al. (2013) data set (raw/NN.tif, labels/labelsNNNNNNNN.png), no real data read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return mod


def _labels(bridge: bool):
    """32 x 32: two cells (255) left and right of a vertical membrane (0) at x = 15-16, a glia
    region (159) in the top-right corner behind a membrane (64), a mitochondrion (191) inside the
    left cell; with ``bridge`` a synapse (223) drawn over the membrane at rows 10-13."""
    lab = np.full((32, 32), 255, np.uint8)
    lab[:, 15:17] = 0
    lab[:6, 24:] = 159
    lab[6, 24:] = 64
    lab[:6, 23] = 64
    lab[20:24, 4:8] = 191
    if bridge:
        lab[10:14, 13:19] = 223
    return lab


@pytest.fixture
def vnc_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "vnc"
    (root / "stack1" / "raw").mkdir(parents=True)
    (root / "stack1" / "labels").mkdir()
    for i in range(20):
        Image.fromarray(np.full((32, 32), 100 + i, np.uint8)).save(root / "stack1" / "raw" / f"{i:02d}.tif")
        Image.fromarray(_labels(bridge=i % 2 == 0)).save(root / "stack1" / "labels" / f"labels{i:08d}.png")
    return root


def test_synapse_bridge_joins_cells_only_in_the_issue_definition(vnc_folder):
    ev = _load("evaluate_em_model")
    raw, merged = ev.read_vnc(vnc_folder)                      # default: the issue's definition
    _, cells = ev.read_vnc(vnc_folder, synapses="ignore")
    assert raw.shape == (20, 32, 32) and raw[3, 0, 0] == 103
    for z in range(20):
        bridged = z % 2 == 0
        # left cell + mitochondrion, right cell, glia: 3 instances; the bridge joins the two cells
        assert merged[z].max() == (2 if bridged else 3)
        assert cells[z].max() == 3
        assert merged[z, 5, 5] == merged[z, 20, 6]             # mitochondrion inside its cell
        assert (merged[z, 5, 5] == merged[z, 5, 20]) == bridged
        assert cells[z, 5, 5] != cells[z, 5, 20]
        syn = _labels(bridged) == 223
        assert syn.any() == bridged
        assert (cells[z][syn] == 0).all() and (merged[z][syn] > 0).all()
        assert ((merged[z] > 0) & ~syn).sum() == (cells[z] > 0).sum()


def test_read_vnc_refuses_an_unknown_synapse_rule(vnc_folder):
    ev = _load("evaluate_em_model")
    with pytest.raises(ValueError, match="synapses: expected 'merge' or 'ignore', got 'drop'"):
        ev.read_vnc(vnc_folder, synapses="drop")


def test_bridge_stats_counts_bridged_instances(vnc_folder):
    ev = _load("evaluate_em_model")
    vg = _load("evaluate_vnc_ground_truth")
    _, merged = ev.read_vnc(vnc_folder)
    _, cells = ev.read_vnc(vnc_folder, synapses="ignore")
    st = vg.bridge_stats(merged, cells, min_part=50)
    assert st["n_bridged"] == [1 if z % 2 == 0 else 0 for z in range(20)]
    assert st["n_instances"] == [2 if z % 2 == 0 else 3 for z in range(20)]
    # share of same-instance pairs in the bridged instance: its size squared over the sum of squares
    m = merged[0]
    size = np.bincount(m.ravel())[1:].astype(float)
    big = size.max()
    assert st["pair_share_bridged"][0] == pytest.approx(big ** 2 / (size ** 2).sum())
    assert st["pair_share_bridged"][1] == 0.0
    # parts smaller than min_part do not make a bridge
    assert vg.bridge_stats(merged, cells, min_part=10_000)["n_bridged"] == [0] * 20


def test_oracle_cells_is_perfect_on_cells_and_splits_every_bridge(vnc_folder):
    ev = _load("evaluate_em_model")
    vg = _load("evaluate_vnc_ground_truth")
    _, merged = ev.read_vnc(vnc_folder)
    _, cells = ev.read_vnc(vnc_folder, synapses="ignore")
    oracle = vg.oracle_cells(merged, cells)
    for z in range(20):
        assert ((oracle[z] > 0) == (merged[z] > 0)).all()          # the issue's foreground, labelled
        assert ev.scores(oracle[z], cells[z])["arand"] == 0.0      # equal to the cells definition
        syn = _labels(z % 2 == 0) == 223
        assert set(np.unique(oracle[z][syn])) <= set(np.unique(cells[z][cells[z] > 0]))
        err = ev.scores(oracle[z], merged[z])["arand"]
        assert (err > 0.2) if z % 2 == 0 else (err == 0.0)        # a bridge costs the perfect cells
