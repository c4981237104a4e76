"""Scenarios of the fault-injection tests (tests/test_resume.py) and their kill switch.

Each scenario runs one resumable xmodal operation on inputs the test wrote to disk. The test runs a
scenario in a child process with ``kill_at = k``: every *write event* (a file renamed into place —
zarr chunks and metadata, ledger markers, atomic files — a folder commit, and every write into a
zarr array) is counted, and the process sends itself SIGKILL just before the k-th one, so the
run dies at a reproducible point without running any cleanup. The same module is imported by the
test process to run the reference and the resumed runs in process (``kill_at = None`` only counts).

Not a test module (no ``test_`` prefix): pytest does not collect it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading

import numpy as np

CALLS = [0]  # network calls in this process (kept out of the models' pickled state on purpose)


class BoxNet:
    """A deterministic numpy "network": (B, 1, H, W) -> (B, 2, H, W), receptive field 3 x 3."""

    def __call__(self, x):
        CALLS[0] += 1
        x = np.asarray(x, np.float32)
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        h, w = x.shape[2:]
        mean = sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / np.float32(9)
        return np.concatenate([mean, np.tanh(x - mean)], axis=1).astype(np.float32)


class AffNet:
    """A deterministic numpy affinity "network" for ``segment``: merge probabilities for ``offsets``."""

    offsets = [[-1, 0], [0, -1], [-3, 0], [0, -3]]
    n_attractive = 2

    def __call__(self, x):
        CALLS[0] += 1
        x = np.asarray(x, np.float32)[:, 0]
        b, h, w = x.shape
        out = np.ones((b, len(self.offsets), h, w), np.float32)
        for c, (dy, dx) in enumerate(self.offsets):
            dy, dx = -dy, -dx  # offsets are negative: the neighbour is at p + offset
            diff = np.abs(x[:, dy:, dx:] - x[:, :h - dy, :w - dx])
            out[:, c, dy:, dx:] = np.exp(-2.0 * diff)
        return out


# ----------------------------------------------------------------------------------- kill switch

@contextlib.contextmanager
def write_events(kill_at=None):
    """Count write events; with ``kill_at`` send SIGKILL to this process just before that event."""
    import zarr

    from xmodal.io import _resume

    count = [0]
    lock = threading.Lock()

    def tick():
        with lock:
            count[0] += 1
            if kill_at is not None and count[0] >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def counted(fn):
        def wrapper(*args, **kwargs):
            tick()
            return fn(*args, **kwargs)
        return wrapper

    saved = [(os, "replace", os.replace), (os, "rename", os.rename), (_resume, "_exchange", _resume._exchange),
             (zarr.Array, "__setitem__", zarr.Array.__setitem__)]
    for owner, name, fn in saved:
        setattr(owner, name, counted(fn))
    try:
        yield count
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


# ----------------------------------------------------------------------------------- scenarios

def predict(p):
    """predict_tiled of an .npy image into a zarr path (crop mode, one tile per batch)."""
    from xmodal.inference import predict_tiled

    image = np.load(p["image"], mmap_mode="r")
    predict_tiled(BoxNet(), image, tile_shape=(16, 16), halo=(2, 2), batch_size=1, out=p["out"], progress=False)
    return {}


def blockwise(p):
    """blockwise_mutex_watershed of a zarr array into a zarr array, resumable from a work directory."""
    from xmodal import io as xio
    from xmodal.segmentation import blockwise_mutex_watershed

    affs = xio.open_array(p["affinities"])
    out = xio.create_array(p["out"], affs.shape[1:], np.uint32, chunks=(16, 16), overwrite=True,
                           writer="test blockwise")
    res = blockwise_mutex_watershed(affs, p["offsets"], block_shape=(16, 16), halo=(9, 9), out=out,
                                    workdir=p["workdir"], n_workers=2)
    return {"n_blocks_resumed": res.n_blocks_resumed}


def segment(p):
    """The segment pipeline into an output folder (tiled prediction, then blockwise mutex watershed)."""
    from xmodal.pipelines import segment as run

    raw = np.load(p["raw"])
    res = run(raw, model=AffNet(), out=p["out"], tile_shape=(16, 16), halo=(4, 4), block_shape=(32, 32))
    return {"n_segments": res.n_segments}


def register(p):
    """register_cells into an output folder."""
    from xmodal.pipelines import register_cells

    data = np.load(p["points"])
    res = register_cells(data["fixed"], data["moving"], transform=p.get("transform", "rigid"), prealign=False,
                         out=p["out"])
    return {"n_matched": res.n_matched}


def cli_mws(p):
    """``xmodal mws AFF.npy --block-shape 16,16 --out OUT.zarr``."""
    from xmodal.cli import main as cli

    rc = cli(["mws", p["affinities"], "--offsets", json.dumps(p["offsets"]), "--block-shape", "16,16",
              "--out", p["out"], "-q"])
    return {"rc": rc}


SCENARIOS = {"predict": predict, "blockwise": blockwise, "segment": segment, "register": register,
             "cli_mws": cli_mws}


def run(name, params, kill_at=None):
    """Run a scenario; returns (its summary, write events counted, network calls)."""
    CALLS[0] = 0
    with write_events(kill_at) as count:
        summary = SCENARIOS[name](params)
    return summary, count[0], CALLS[0]


def main():
    name, params, kill_at = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    summary, events, calls = run(name, params, kill_at)
    print(json.dumps({"summary": summary, "events": events, "calls": calls}))


if __name__ == "__main__":
    main()
