"""Audit of xmodal.models.load_model and the checkpoint loaders: what a user's file, a damaged file
or a typo gives (a clear error naming the argument, never a silently wrong network)."""

from __future__ import annotations

import importlib.resources
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from xmodal.models import (  # noqa: E402
    SHIPPED_MODELS,
    isbi2012_weights_path,
    load_em_affinity_unet,
    load_isbi2012_affinity_unet,
    load_model,
)

LOADERS = [load_model, load_isbi2012_affinity_unet, load_em_affinity_unet]


@pytest.fixture(scope="module")
def isbi_bytes() -> bytes:
    with importlib.resources.as_file(isbi2012_weights_path()) as p:
        return p.read_bytes()


def _flip_a_weight_byte(data: bytes, path) -> None:
    """Write ``data`` to ``path`` with one byte of one tensor inverted (the archive stays readable)."""
    path.write_bytes(data)
    with zipfile.ZipFile(path) as z:
        info = [i for i in z.infolist() if "/data/" in i.filename][3]
    buf = bytearray(data)
    buf[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0xFF
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_a_corrupted_weights_file_is_refused_not_loaded(loader, isbi_bytes, tmp_path):
    bad = tmp_path / "flipped.pt"
    _flip_a_weight_byte(isbi_bytes, bad)
    with pytest.raises(ValueError, match=r"flipped\.pt.*(damaged|corrupted)"):
        loader(bad)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("content", ["truncated", "empty", "garbage"])
def test_unreadable_weights_files_give_a_clear_error(loader, content, isbi_bytes, tmp_path):
    bad = tmp_path / f"{content}.pt"
    bad.write_bytes({"truncated": isbi_bytes[: len(isbi_bytes) // 2], "empty": b"",
                     "garbage": b"hello world" * 100}[content])
    with pytest.raises(ValueError, match=rf"{content}\.pt.*(truncated or corrupted|not a)"):
        loader(bad)


def test_load_model_reads_an_xmodal_checkpoint_path(isbi_bytes, tmp_path):
    """A checkpoint of the training scripts (state dict + metadata, what load_*(path) reads) also
    loads by path through load_model, as `xmodal predict --model` and `segment(model=...)` use it."""
    path = tmp_path / "mine.pt"
    path.write_bytes(isbi_bytes)
    model = load_model(path)
    ref = load_isbi2012_affinity_unet()
    np.testing.assert_array_equal(model.offsets, ref.offsets)
    assert model.n_attractive == ref.n_attractive and not model.training
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    with importlib.resources.as_file(importlib.resources.files("xmodal.models") / "em_affinity_unet.pt") as p:
        em = load_model(p)
    assert em.segmentation_defaults and em.offsets.shape == (14, 2)


def test_load_model_refuses_other_torch_files_by_name(tmp_path):
    sd = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Conv2d(1, 2, 3).state_dict(), sd)
    with pytest.raises(ValueError, match=r"model: .*state_dict\.pt.*not an xmodal checkpoint"):
        load_model(sd)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Conv2d(1, 2, 3), pickled)
    with pytest.raises(ValueError, match=r"module\.pt.*TorchScript"):
        load_model(pickled)


def test_load_model_names_a_missing_file_or_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"model: expected one of \['em', 'isbi2012'\].*no such file"):
        load_model(tmp_path / "typo.pt")
    with pytest.raises(ValueError, match=r"model: .*a folder"):
        load_model(tmp_path)
    assert sorted(SHIPPED_MODELS) == ["em", "isbi2012"]


def test_loading_leaves_global_torch_state_alone():
    dtype, threads, grad = torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.no_grad():
            model = load_model("em")
            assert not torch.is_grad_enabled()
        assert torch.get_default_dtype() == torch.float64
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert all(p.device.type == "cpu" for p in model.parameters())
    finally:
        torch.set_default_dtype(dtype)
    assert (torch.get_num_threads(), torch.is_grad_enabled()) == (threads, grad)
