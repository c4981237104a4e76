"""xmodal embedded in a host application: library calls leave the host's process-wide state alone.

- CPU CPD limits BLAS to one thread while it runs; overlapping calls from several threads share
  that limit and the last one out restores the host's BLAS thread count.
- Reports draw without pyplot and never switch the host's matplotlib backend.
- Loading a packaged model does not advance torch's global random stream.
- Provenance records no memory addresses (callables in the options).
- A callback raising in register_cells (a cancel) also stops the pre-alignment.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xmodal


def _child(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (this one's environment plus ``env``); return the JSON
    object its last stdout line holds."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


_OVERLAPPING_CPD = """
    import json, threading
    import numpy as np, scipy.linalg, threadpoolctl, xmodal

    def blas():
        return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    before = blas()  # numpy's and scipy's BLAS, on the environment's thread count
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    Y = X + 0.05 * rng.normal(size=X.shape)
    a_in, a_go, during = threading.Event(), threading.Event(), []

    def hold_a(**_):
        a_in.set()
        assert a_go.wait(60)

    a = threading.Thread(target=lambda: xmodal.cpd(Y, X, transform="rigid", max_iter=3, callback=hold_a))
    a.start()
    assert a_in.wait(60)

    def in_b(**_):
        # B (this thread) entered while A was open; A now ends while B is still running
        if not a_go.is_set():
            a_go.set()
            a.join(60)
            during.append(blas())

    xmodal.cpd(Y, X, transform="rigid", max_iter=3, callback=in_b)
    print(json.dumps({"before": before, "during": during[0], "after": blas()}))
"""


def test_overlapping_cpu_cpd_restore_the_blas_thread_count():
    # fit A (a worker thread) enters first, fit B (the main thread) enters while A is open, A ends,
    # then B: the BLAS thread count stays limited to 1 until B ends and is then the host's again.
    # In a fresh process: OpenBLAS ignores worker threads' thread counts once the main thread set one.
    pytest.importorskip("threadpoolctl")
    r = _child(_OVERLAPPING_CPD, OPENBLAS_NUM_THREADS="3", OMP_NUM_THREADS="3")
    if not r["before"]:
        pytest.skip("threadpoolctl finds no BLAS library")
    if set(r["before"].values()) == {1}:
        pytest.skip("the BLAS libraries run on one thread already")
    assert set(r["during"].values()) == {1}
    assert r["after"] == r["before"]


_REPORTS = """
    import json, sys
    import matplotlib
    matplotlib.use("svg")  # the host's backend
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_atlas import _base_shape, _names, _sample
    from xmodal.pipelines import register_cells
    from xmodal.atlas import build_atlas, write_atlas_report

    rng = np.random.default_rng(0)
    fixed = rng.uniform(0, 50, size=(80, 3))
    moving = fixed @ np.array([[0.99, -0.1, 0.0], [0.1, 0.99, 0.0], [0.0, 0.0, 1.0]]).T + 2.0
    res = register_cells(fixed, moving, transform="affine", prealign=False, out={out!r})
    after_register = matplotlib.get_backend()
    base, names = _base_shape(30, rng), _names(30)
    train = [_sample(base, names, rng, noise=0.2) for _ in range(3)]
    atlas = build_atlas([t[0] for t in train], names=[t[1] for t in train], deform=None)
    write_atlas_report(atlas, {report!r})
    print(json.dumps({{"register": after_register, "atlas": matplotlib.get_backend(),
                      "pyplot": "matplotlib.pyplot" in sys.modules}}))
"""


def test_reports_leave_the_host_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    out, report = tmp_path / "reg", tmp_path / "atlas.report.html"
    r = _child(_REPORTS.format(tests=os.path.dirname(__file__), out=str(out), report=str(report)))
    assert r == {"register": "svg", "atlas": "svg", "pyplot": False}
    for name in ("match_overlay.png", "residuals.png", "confidence_ellipses.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
        assert f'src="{name}"' in (out / "report.html").read_text()
    assert "src='data:image/png;base64,iVBOR" in report.read_text()  # the reliability curve


@pytest.mark.parametrize("load", [lambda: xmodal.models.load_model("isbi2012"),
                                  lambda: xmodal.models.load_em_affinity_unet(),
                                  lambda: xmodal.models.load_model("em")],
                         ids=["load_model-isbi2012", "load_em_affinity_unet", "load_model-em"])
def test_loading_a_model_leaves_the_torch_random_stream_alone(load):
    torch = pytest.importorskip("torch")
    importlib.import_module("xmodal.models")  # the submodule the `load` lambdas use

    with torch.random.fork_rng(devices=[]):  # this test's seeding stays here
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        model = load()
        assert torch.equal(torch.rand(3), expected)
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and not any(t.is_meta for t in tensors)


def _cells(n=120, seed=0):
    rng = np.random.default_rng(seed)
    fixed = rng.uniform(0, 50, size=(n, 3)) * [1.0, 0.7, 0.5]
    c, s = np.cos(0.3), np.sin(0.3)
    moving = fixed @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T + 2.0
    return fixed, moving + rng.normal(scale=0.2, size=moving.shape)


def test_provenance_records_callables_without_memory_addresses(tmp_path):
    import re

    from xmodal.pipelines import register_cells

    fixed, moving = _cells()

    def callback(**_):
        pass

    res = register_cells(fixed, moving, transform="affine", prealign=False, errors=False,
                         cpd_options={"callback": callback, "w": 0.1}, deformable_options={"callback": callback},
                         out=tmp_path / "reg")
    assert res.parameters["cpd_options"] == {"callback": "<callable>", "w": 0.1}
    assert res.parameters["deformable_options"] == {"callback": "<callable>"}
    text = (tmp_path / "reg" / "provenance.json").read_text()
    assert not re.search(r"0x[0-9a-fA-F]{4,}", text), text
    record = json.loads(text)["parameters"]
    assert record["cpd_options"] == {"callback": "<callable>", "w": 0.1}


def test_a_cancel_from_the_cpd_callback_stops_the_pre_alignment():
    import traceback

    from xmodal.pipelines import register_cells

    class Cancelled(Exception):
        pass

    fixed, moving = _cells()
    calls = []

    def callback(iteration=0, **_):
        calls.append(iteration)
        if len(calls) == 3:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled) as info:
        register_cells(fixed, moving, transform="rigid", prealign="all", errors=False,
                       cpd_options={"callback": callback})
    # raised by the third iteration of the pre-alignment's first trial fit, nothing ran after it
    assert len(calls) == 3
    assert "prealign" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]


def test_the_cpd_stages_with_features_call_the_callback():
    """A cancel check given in cpd_options reaches the CPD stages with features too."""
    from xmodal.pipelines import register_cells

    fixed, moving = _cells()
    rng = np.random.default_rng(2)
    ff = rng.random((len(fixed), 2))
    counts = {}
    for feature_cpd in (False, True):
        calls = []
        register_cells(fixed, moving, transform="rigid", prealign=False, errors=False, fixed_features=ff,
                       moving_features=ff[: len(moving)], feature_weight=1.0, feature_cpd=feature_cpd,
                       cpd_options={"callback": lambda **kw: calls.append(kw.get("iteration"))})
        counts[feature_cpd] = len(calls)
    assert counts[True] > counts[False] > 0
