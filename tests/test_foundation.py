"""The package, its native modules, its configuration report and its command line."""

import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import xmodal


def test_version_is_a_release_string():
    parts = xmodal.__version__.split(".")
    assert len(parts) >= 3 and all(p.isdigit() for p in parts[:2])


def test_native_module_is_loaded_compiled_code():
    from xmodal import _core

    assert _core.__file__.endswith((".so", ".pyd"))
    assert _core.hardware_threads() >= 1
    assert isinstance(_core.compiler(), str) and _core.compiler()


def test_backends_report():
    info = xmodal.backends()
    assert info["version"] == xmodal.__version__
    assert info["num_threads"] >= 1
    assert info["hardware_threads"] >= 1
    assert isinstance(info["openmp"], bool)
    cuda = info["cuda"]
    assert set(cuda) >= {"built", "version", "devices", "driver"}
    if not cuda["built"]:
        assert cuda["devices"] == []
    for d in cuda["devices"]:
        assert d["total_memory"] > 0 and len(d["compute_capability"]) == 2
    json.dumps(info)  # the report is plain data


def test_show_config_prints_the_report(capsys):
    xmodal.show_config()
    out = capsys.readouterr().out
    assert out.startswith(f"xmodal {xmodal.__version__}")
    assert "threads" in out and "cuda" in out


@pytest.mark.parametrize(
    "kind, exc",
    [("value", ValueError), ("type", TypeError), ("memory", MemoryError), ("runtime", RuntimeError)],
)
def test_cpp_exceptions_arrive_as_python_exceptions(kind, exc):
    from xmodal import _core

    with pytest.raises(exc) as info:
        _core._raise(kind, "points: expected (n, 3), got (4, 5)")
    if kind != "memory":
        assert "points: expected (n, 3), got (4, 5)" in str(info.value)


def test_set_num_threads_controls_parallel_regions():
    from xmodal import _core

    default = xmodal.get_num_threads()
    try:
        xmodal.set_num_threads(1)
        assert xmodal.get_num_threads() == 1
        assert _core._parallel_region_threads() == 1
        if _core.have_openmp() and _core.hardware_threads() >= 2:
            xmodal.set_num_threads(2)
            assert _core._parallel_region_threads() == 2
        with xmodal.num_threads(1):
            assert xmodal.get_num_threads() == 1
    finally:
        xmodal.set_num_threads(None)
    assert xmodal.get_num_threads() == default


def test_capped_threads_is_thread_local():
    """Workers that call the kernels from several threads cap their own threads only."""
    from xmodal import _core
    from xmodal._config import capped_threads, thread_share

    if not (_core.have_openmp() and _core.hardware_threads() >= 2):
        pytest.skip("needs OpenMP and 2 cores")
    with xmodal.num_threads(2):
        assert thread_share(2) == 1 and thread_share(1) == 2 and thread_share(8) == 1
        seen = {}

        def worker():
            with capped_threads(1):
                seen["capped"] = (xmodal.get_num_threads(), _core._parallel_region_threads())
                with capped_threads(None):  # no cap given: the enclosing one stays
                    seen["inner"] = _core._parallel_region_threads()
            seen["after"] = _core._parallel_region_threads()

        with capped_threads(2):
            t = threading.Thread(target=worker)
            t.start()
            t.join()
            assert _core._parallel_region_threads() == 2  # this thread: its own cap, not the worker's
        assert seen == {"capped": (1, 1), "inner": 1, "after": 2}
        assert _core.thread_cap() == 0


@pytest.mark.parametrize("bad", [0, -3, 1.5, "2", True])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises((ValueError, TypeError), match="n: expected a positive integer"):
        xmodal.set_num_threads(bad)


def test_environment_variable_sets_default_threads():
    code = "import xmodal; print(xmodal.get_num_threads())"
    env = {**__import__("os").environ, "XMODAL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def _longest_stall_during(call):
    """Run ``call`` on this thread while another Python thread counts; return (seconds of the
    call, the longest stretch of the call during which the counting thread made no progress).

    The counter needs the GIL for every step, so a binding that holds the GIL stalls it for the
    whole native call; one that releases the GIL lets it keep counting (on the spare core: the
    kernels run on one thread here).
    """
    stamps = []
    stop = threading.Event()
    started = threading.Event()

    def count():
        last = 0.0
        started.set()
        while not stop.is_set():
            now = time.perf_counter()
            if now - last > 1e-3:
                stamps.append(now)
                last = now

    t = threading.Thread(target=count)
    t.start()
    started.wait()
    time.sleep(0.02)
    try:
        with xmodal.num_threads(1):
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
    finally:
        stop.set()
        t.join()
    points = [t0] + [s for s in stamps if t0 < s < t1] + [t1]
    return t1 - t0, max(np.diff(points))


def _gil_cases():
    from xmodal import _core

    def knn(n):
        rng = np.random.default_rng(0)
        a, b = rng.random((n, 3)), rng.random((n, 3))
        return lambda: _core.knn_graph(a, b, 8, -1.0, True)

    def estep(n):
        rng = np.random.default_rng(1)
        X, Y = rng.random((n, 3)), rng.random((n, 3))
        return lambda: _core.cpd_estep(X, Y, None, 0.1, 0.0, math.inf, True)

    def mws(n):
        rng = np.random.default_rng(2)
        a = rng.random((3, n // 64 + 1, 64, 64)).astype(np.float32)
        offs = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1]], np.int64)
        return lambda: _core.mws_grid(a, offs, 2, [1, 1, 1], False, 0, False, None, None)

    def assignment(n):
        rng = np.random.default_rng(3)
        cols = np.sort(np.c_[np.arange(n), rng.integers(0, n, (n, 12))], axis=1)  # with the diagonal: feasible
        keep = np.c_[np.ones((n, 1), bool), cols[:, 1:] != cols[:, :-1]]
        ip = np.r_[0, np.cumsum(keep.sum(1))].astype(np.int64)
        ix = cols[keep].astype(np.int32)
        c = rng.random(ix.size)
        return lambda: _core.sparse_assignment(n, n, ip, ix, c)

    return {"knn_graph": (knn, 15_000), "cpd_estep": (estep, 3_000), "mws_grid": (mws, 1_000),
            "sparse_assignment": (assignment, 4_000)}


@pytest.mark.parametrize("name", ["knn_graph", "cpd_estep", "mws_grid", "sparse_assignment"])
def test_native_calls_release_the_gil(name):
    """A Python thread keeps making progress while a long native call runs on another thread: the
    binding released the GIL. Fails (the counter stalls for the whole call) when it does not."""
    make, n = _gil_cases()[name]
    for _ in range(8):  # grow the input until the call is long enough to judge (>= 0.25 s)
        seconds, stall = _longest_stall_during(make(n))
        if seconds >= 0.25:
            break
        n *= 2
    assert seconds >= 0.25, f"{name}: the call took only {seconds:.3f} s; cannot judge"
    assert stall < 0.5 * seconds, (f"{name}: the counting thread stalled {stall:.3f} s of a {seconds:.3f} s "
                                   "native call: the binding holds the GIL")


def test_lazy_attributes_and_unknown_names():
    assert "knn_graph" in dir(xmodal)
    with pytest.raises(AttributeError, match="no attribute 'not_a_function'"):
        xmodal.not_a_function


def test_optional_import_names_the_extra():
    from xmodal._optional import optional_import

    with pytest.raises(ImportError, match=r"pip install 'xmodal\[dask\]'"):
        optional_import("dask.this_submodule_does_not_exist", purpose="blockwise work")


def test_validation_messages_name_argument_expected_and_given():
    from xmodal._validation import as_points, as_spacing

    with pytest.raises(ValueError, match=r"moving: expected 2 or 3 columns \(coordinates\), got 5"):
        as_points(np.zeros((4, 5)), "moving")
    with pytest.raises(ValueError, match=r"fixed: coordinates must be finite; row 1"):
        as_points([[0, 0], [np.nan, 1]], "fixed")
    with pytest.raises(ValueError, match="spacing: expected positive"):
        as_spacing([1, -1, 1], 3)


def test_device_auto_is_cpu_for_numpy():
    from xmodal._device import is_cuda_array, resolve_device

    assert resolve_device("auto", np.zeros(3)) == "cpu"
    assert not is_cuda_array(np.zeros(3))
    with pytest.raises(ValueError, match="device: expected one of"):
        resolve_device("gpu")


def test_cli_version_and_info():
    out = subprocess.run([sys.executable, "-m", "xmodal", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"xmodal {xmodal.__version__}"
    out = subprocess.run([sys.executable, "-m", "xmodal", "info", "--json"], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout)["version"] == xmodal.__version__


def test_cli_entry_point_is_installed():
    import shutil

    exe = shutil.which("xmodal")
    if exe is None:
        pytest.skip("xmodal is not installed as a script (running from a source tree)")
    out = subprocess.run([exe, "info"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("xmodal ")


def test_builtin_celegans_embryos():
    from xmodal.datasets import celegans_embryos

    embryos = celegans_embryos()
    assert len(embryos) == 8
    for e in embryos.values():
        assert e.points.shape == (len(e.cells), 3) and len(e.cells) >= 350
        assert len(set(e.cells)) == len(e.cells)
        assert np.isfinite(e.points).all()
        assert e.size.shape == e.expression.shape == (len(e.cells),)
        assert np.isfinite(e.size).all() and np.isfinite(e.expression).all() and (e.size > 0).all()
    a, b = list(embryos.values())[:2]
    assert len(set(a.cells) & set(b.cells)) >= 300
    # the reporter intensity is a property of the cell's lineage: same name, similar rank in both
    common = sorted(set(a.cells) & set(b.cells))
    ra = a.expression[np.argsort(a.cells)][np.searchsorted(np.sort(a.cells), common)]
    rb = b.expression[np.argsort(b.cells)][np.searchsorted(np.sort(b.cells), common)]
    rank = lambda v: np.argsort(np.argsort(v))
    assert np.corrcoef(rank(ra), rank(rb))[0, 1] > 0.3


@pytest.mark.parametrize("value", ["abc", "0", "-1", "3abc", "1.5", ""])
def test_bad_thread_environment_warns_and_uses_all_cores(value):
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import xmodal; print(xmodal.get_num_threads(), xmodal.backends()['hardware_threads'])")
    env = {**__import__("os").environ, "XMODAL_NUM_THREADS": value}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # importing never fails because of the variable
    n, hw = out.stdout.split()
    assert n == hw  # all cores
    assert "RuntimeWarning" in out.stderr and "XMODAL_NUM_THREADS" in out.stderr and repr(value) in out.stderr


def test_good_thread_environment_is_silent():
    code = "import xmodal; print(xmodal.get_num_threads())"
    env = {**__import__("os").environ, "XMODAL_NUM_THREADS": " 1 "}
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


def test_set_num_threads_types():
    import numpy as np

    default = xmodal.get_num_threads()
    try:
        xmodal.set_num_threads(np.int64(1))  # numpy integers are integers
        assert xmodal.get_num_threads() == 1
    finally:
        xmodal.set_num_threads(None)
    assert xmodal.get_num_threads() == default
    for bad, exc in ((1.5, TypeError), ("2", TypeError), (True, TypeError), (0, ValueError), (-1, ValueError),
                     (1 << 20, ValueError)):
        with pytest.raises(exc, match="n: expected a positive integer"):
            xmodal.set_num_threads(bad)


def test_as_bool_and_int64_helpers():
    import numpy as np

    from xmodal._validation import as_bool, int64_array

    assert as_bool(True, "x") is True and as_bool(np.bool_(False), "x") is False
    for bad in ("no", "False", 0, 1, None, np.array([True])):
        with pytest.raises(TypeError, match="flag: expected True or False"):
            as_bool(bad, "flag")
    assert int64_array([1, -2], "o", "ints").dtype == np.int64
    with pytest.raises(ValueError, match="64-bit"):
        int64_array(np.array([2**64 - 1], np.uint64), "o", "ints")
    with pytest.raises(ValueError, match="64-bit"):
        int64_array([1e19], "o", "ints")
    with pytest.raises(TypeError, match="non-integer"):
        int64_array([1.5], "o", "ints")
    with pytest.raises(TypeError):
        int64_array([True], "o", "ints")


def _public_boolean_calls():
    """(label, call taking the bad value) for the boolean parameters of the public API."""
    import numpy as np

    pts = np.random.default_rng(0).random((12, 3))
    aff = np.random.default_rng(0).random((3, 6, 7)).astype(np.float32)
    offs = [(-1, 0), (0, -1), (-2, 0)]
    from xmodal.metrics import label_centroids
    from xmodal.models.isbi2012 import boundary_baseline_segmentation
    from xmodal.pipelines import register_cells
    from xmodal.pipelines.beads import register_beads
    from xmodal.pipelines.elastix import elastix_warp
    from xmodal.pipelines.prealign import prealign, proper_signed_permutations
    from xmodal.registration.uncertainty import leave_one_out_residuals
    from xmodal.segmentation import blockwise_mutex_watershed, remove_small_segments

    return [
        ("invert", lambda v: xmodal.mutex_watershed(aff, offs, invert=v)),
        ("randomize_strides", lambda v: xmodal.mutex_watershed(aff, offs, strides=2, randomize_strides=v)),
        ("return_info", lambda v: xmodal.mutex_watershed(aff, offs, return_info=v)),
        ("return_info", lambda v: xmodal.mutex_watershed_graph(2, [[0, 1]], [1.0], np.zeros((0, 2), int), [],
                                                               return_info=v)),
        ("invert", lambda v: remove_small_segments(np.ones((6, 7), int), 2, affinities=aff, offsets=offs, invert=v)),
        ("invert", lambda v: blockwise_mutex_watershed(aff, offs, block_shape=(3, 7), halo=2, invert=v)),
        ("normalize", lambda v: xmodal.cpd(pts, pts, normalize=v)),
        ("maximize", lambda v: xmodal.linear_assignment(np.eye(3), maximize=v)),
        ("symmetric", lambda v: xmodal.knn_graph(pts, pts, k=2, symmetric=v)),
        ("symmetric", lambda v: xmodal.match_points(pts, pts, k=2, symmetric=v)),
        ("return_sizes", lambda v: label_centroids(np.ones((4, 4), int), return_sizes=v)),
        ("grow", lambda v: boundary_baseline_segmentation(aff[:2], grow=v)),
        ("reflections", lambda v: register_beads(pts, pts, radius=1.0, reflections=v)),
        ("labels", lambda v: elastix_warp(aff[0], None, labels=v)),
        ("scale", lambda v: prealign(pts, pts, scale=v)),
        ("score_affine", lambda v: prealign(pts, pts, score_affine=v)),
        ("permute", lambda v: proper_signed_permutations(3, permute=v)),
        ("scale", lambda v: register_cells(pts, pts, scale=v)),
        ("errors", lambda v: register_cells(pts, pts, errors=v)),
        ("scale", lambda v: leave_one_out_residuals(pts, pts, scale=v)),
    ]


@pytest.mark.parametrize("index", range(20))
def test_public_booleans_refuse_truthy_strings(index):
    calls = _public_boolean_calls()
    assert len(calls) == 20
    name, call = calls[index]
    for bad in ("no", "False", 1):
        with pytest.raises(TypeError, match=f"{name}: expected True or False"):
            call(bad)
