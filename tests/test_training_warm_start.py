"""Warm start of the EM affinity training script (``--init``): the checkpoint's weights are the
starting point, two runs from the same checkpoint and seed are bit-identical, and the metadata
records the chain of runs. Quick: tiny synthetic crops, no real data."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from xmodal.models._augment import EMAugmentation
from xmodal.models.em import EM_OFFSETS

torch = pytest.importorskip("torch", reason="torch not installed (xmodal[torch])")

from test_training import _script  # noqa: E402  (tests/ is on sys.path under pytest)



def _data():
    from xmodal.segmentation._synthetic import voronoi_labels

    raws, labs = [], []
    for seed in (3, 4):
        lab = voronoi_labels((48, 48), 12, seed=seed)
        edge = np.zeros(lab.shape, bool)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        lab = np.where(edge, 0, lab).astype(np.int32)
        raw = np.where(lab > 0, 180.0, 50.0) + np.random.default_rng(seed).normal(0, 15, lab.shape)
        raws.append(np.clip(raw, 0, 255).astype(np.uint8))
        labs.append(lab)
    return np.stack(raws), np.stack(labs)


KW = dict(offsets=EM_OFFSETS[:6], n_attractive=2, features=(4, 8), batch=2, crop=16, warmup=1, threads=1,
          aug=EMAugmentation(), log_every=0)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    mod = _script()
    raws, labs = _data()
    model, meta = mod.train(raws, labs, seed=1, steps=2, **KW)
    meta["training"]["command"] = "first"
    meta["training"]["chain"] = [{"command": "first", "seed": 1, "steps": 2}]
    out = tmp_path_factory.mktemp("init") / "first.pt"
    mod.save_checkpoint(model, meta, out)
    return mod, raws, labs, model, out


def test_warm_start_is_bit_identical_and_recorded(first_run):
    mod, raws, labs, first, ckpt = first_run
    state, info = mod.load_init(ckpt, offsets=EM_OFFSETS[:6])
    assert info["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["file"] == "first.pt" and info["features"] == [4, 8]
    assert info["chain"] == [{"command": "first", "seed": 1, "steps": 2}]
    assert info["training"]["steps"] == 2 and "chain" not in info["training"]
    runs = [mod.train(raws, labs, seed=7, steps=3, init_state=state, init_info=info, **KW) for _ in range(2)]
    (m1, meta1), (m2, _) = runs
    s1, s2 = m1.state_dict(), m2.state_dict()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    # the warm start changes the result: a cold start with the same seed ends elsewhere
    cold, _ = mod.train(raws, labs, seed=7, steps=3, **KW)
    sc = cold.state_dict()
    assert any(not torch.equal(s1[k], sc[k]) for k in s1 if s1[k].is_floating_point())
    assert meta1["training"]["init"]["sha256"] == info["sha256"]
    assert meta1["training"]["steps"] == 3


def test_warm_start_starts_from_the_checkpoint(first_run):
    """With a learning rate of 0 the weights stay those of the checkpoint (only BatchNorm's running
    statistics move in training mode), so the checkpoint was really loaded."""
    mod, raws, labs, first, ckpt = first_run
    state, info = mod.load_init(ckpt)
    kw = KW | {"lr": 0.0}
    m, _ = mod.train(raws, labs, seed=2, steps=2, init_state=state, init_info=info, **kw)
    got = m.state_dict()
    for k, v in first.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(got[k], v), k
    torch.manual_seed(2)
    fresh = type(m)(1, 6, features=(4, 8)).state_dict()
    assert any(not torch.equal(got[k], fresh[k]) for k in got if "weight" in k)


def test_warm_start_rejects_mismatches(first_run, tmp_path):
    mod, raws, labs, _, ckpt = first_run
    state, info = mod.load_init(ckpt)
    with pytest.raises(ValueError, match="init_state"):
        mod.train(raws, labs, seed=0, steps=1, init_state=state, **(KW | {"features": (4, 8, 16)}))
    with pytest.raises(ValueError, match="init_state"):
        mod.train(raws, labs, seed=0, steps=1, init_state=state, **(KW | {"offsets": EM_OFFSETS[:8]}))
    with pytest.raises(ValueError, match="offsets"):
        mod.load_init(ckpt, offsets=EM_OFFSETS)
    with pytest.raises(ValueError, match="init"):
        mod.load_init(tmp_path / "missing.pt")
