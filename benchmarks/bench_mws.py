"""Mutex watershed benchmarks: xmodal vs bioimage-cpp vs mwatershed, and blockwise on a big zarr.

Input: noisy affinities of a random Voronoi partition (noise sigma = 0.25, clipped to [0, 1]),
12 offsets (3 attractive, 9 repulsive: ``xmodal.segmentation._synthetic.BENCH_OFFSETS_3D``).

- ``test_single_shot``: 64 x 256 x 256, xmodal on one thread (pytest-benchmark timing) and every tool
  once more in its own subprocess for wall time and peak RSS (``VmHWM``), same input file.
  Checks: xmodal's labels equal bioimage-cpp's; ARand vs mwatershed.
- ``test_blockwise``: 256 x 1024 x 1024 zarr (12.9 GB float32, generated once into
  ``$XMODAL_BENCH_CACHE`` (default: the system temp dir) from a Voronoi partition drawn on a 4x
  coarser grid), blockwise on 2 dask threads in a subprocess: Mvox/s and peak RSS.
- ``test_blockwise_vs_single_shot``: ARand between blockwise and single-shot on 64 x 384 x 384.
- ``test_blockwise_bias_join``: ``bias`` mode on 64 x 384 x 384 (Voronoi cells drawn on a 4x coarser
  grid, ``[-0.4]*3 + [-0.6]*9``), 2 dask threads: seconds of the block pass and of the join's
  passes (fragments, edges, graph; ``BlockwiseResult.seconds``), against the classic join (votes)
  of the same volume without bias, and ARand of both to their single-shot result.

The two blockwise cases have no peer (neither peer has a blockwise mode): they record throughput,
memory and the agreement with xmodal's own single-shot result. ``test_single_shot`` is skipped when
neither peer is installed; one missing peer is recorded (``<peer>_status``) and listed at the end.

``XMODAL_BENCH_QUICK=1`` shrinks every volume for a smoke test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

QUICK = os.environ.get("XMODAL_BENCH_QUICK", "") not in ("", "0")
SINGLE_SHAPE = (32, 128, 128) if QUICK else (64, 256, 256)
BIG_SHAPE = (64, 256, 256) if QUICK else (256, 1024, 1024)
BIG_BLOCK = (32, 128, 128) if QUICK else (64, 256, 256)
FIT_SHAPE = (32, 192, 192) if QUICK else (64, 384, 384)
FIT_BLOCK = (16, 96, 96) if QUICK else (32, 192, 192)
HALO = (4, 9, 9)
VOXELS_PER_CELL = 10_000
CACHE = os.environ.get("XMODAL_BENCH_CACHE", tempfile.gettempdir())
HERE = os.path.dirname(os.path.abspath(__file__))


def _offsets():
    from xmodal.segmentation._synthetic import BENCH_OFFSETS_3D

    return [list(o) for o in BENCH_OFFSETS_3D]


def _make_affinities(shape, seed=0):
    from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

    n_cells = max(2, int(np.prod(shape)) // VOXELS_PER_CELL)
    gt = voronoi_labels(shape, n_cells, seed=seed)
    return gt, noisy_affinities(gt, _offsets(), sigma=0.25, seed=seed + 1)


# ---------------------------------------------------------------------------------------------
# subprocess workers: one tool, one run, wall time and peak RSS
# ---------------------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(args: dict) -> dict:
    tool = args["tool"]
    offs = _offsets()
    res = {"tool": tool}
    if tool in ("xmodal", "bioimage-cpp", "mwatershed"):
        affs = np.load(args["input"])
        if tool == "bioimage-cpp":
            from bioimage_cpp.segmentation import mutex_watershed as bio_mws

            affs[3:] = 1 - affs[3:]  # bioimage-cpp takes repulsion strengths
        elif tool == "mwatershed":
            import mwatershed

            affs = affs.astype(np.float64)
            affs[3:] = -(1 - affs[3:])  # mwatershed: negative = repulsive, by magnitude
        else:
            import xmodal

            xmodal.set_num_threads(args.get("threads", 1))
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        if tool == "xmodal":
            labels = xmodal.mutex_watershed(affs, offs)
        elif tool == "bioimage-cpp":
            labels = bio_mws(affs, offs, 3)
        else:
            labels = mwatershed.agglom(affs, offs)
        res["seconds"] = time.perf_counter() - t0
        if args.get("output"):
            np.save(args["output"], labels)
    elif tool == "blockwise":
        import zarr

        import xmodal

        xmodal.set_num_threads(1)
        za = zarr.open_array(args["input"], mode="r")
        zo = zarr.create_array(store=args["output"], shape=za.shape[1:], chunks=tuple(args["block"]),
                               dtype=np.uint32, overwrite=True)
        base = _peak_rss_mb()
        t0 = time.perf_counter()
        r = xmodal.blockwise_mutex_watershed(za, offs, block_shape=tuple(args["block"]), halo=HALO,
                                             out=zo, n_workers=args.get("workers", 2))
        res["seconds"] = time.perf_counter() - t0
        res["n_labels"] = r.n_labels
        res["passes"] = r.seconds
    else:
        raise ValueError(tool)
    res["peak_rss_mb"] = _peak_rss_mb()
    res["base_rss_mb"] = base
    return res


def _run_worker(args: dict, timeout=900) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.join(HERE, "..", "python"), env.get("PYTHONPATH", "")] if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "worker", json.dumps(args)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args['tool']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# benchmarks
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_input(tmp_path_factory):
    gt, affs = _make_affinities(SINGLE_SHAPE, seed=0)
    path = str(tmp_path_factory.mktemp("mws") / "affs.npy")
    np.save(path, affs)
    return gt, affs, path


def test_single_shot(benchmark, single_input, tmp_path):
    import xmodal
    from conftest import peer_available, peer_not_measured
    from xmodal.metrics import adapted_rand_error

    # the peers run in subprocesses: look them up here, skip when neither is there
    missing_peers = {tool: peer_available(mod, import_it=False)
                     for tool, mod in (("bioimage-cpp", "bioimage_cpp"), ("mwatershed", "mwatershed"))}
    missing_peers = {k: v for k, v in missing_peers.items() if v}
    if len(missing_peers) == 2:
        pytest.skip(f"peers not available ({'; '.join(missing_peers.values())}): no ratio can be measured")
    gt, affs, path = single_input
    offs = _offsets()
    old = xmodal.get_num_threads()
    xmodal.set_num_threads(1)
    try:
        labels, info = benchmark.pedantic(xmodal.mutex_watershed, args=(affs, offs),
                                          kwargs={"return_info": True}, rounds=3, iterations=1)
    finally:
        xmodal.set_num_threads(old)
    nvox = int(np.prod(SINGLE_SHAPE))
    extra = benchmark.extra_info
    extra.update(shape=list(SINGLE_SHAPE), n_offsets=len(offs), n_edges=info.n_edges,
                 bytes_per_edge=info.bytes_per_edge, native_peak_mb=info.peak_bytes / 2**20,
                 phases_s=info.seconds, arand_vs_truth=adapted_rand_error(labels, gt).error)
    runs = {}
    for tool in ("xmodal", "bioimage-cpp", "mwatershed"):
        if tool in missing_peers:
            peer_not_measured(benchmark, tool.replace("-", "_"), missing_peers[tool])
            continue
        try:
            runs[tool] = _run_worker({"tool": tool, "input": path, "output": str(tmp_path / f"{tool}.npy")})
        except Exception as exc:  # a failing peer must not hide the xmodal figures
            if tool == "xmodal":
                raise
            peer_not_measured(benchmark, tool.replace("-", "_"), repr(exc)[-300:])
    for tool, r in runs.items():
        key = tool.replace("-", "_")
        extra[f"{key}_s"] = r["seconds"]
        extra[f"{key}_mvox_s"] = nvox / r["seconds"] / 1e6
        extra[f"{key}_peak_rss_mb"] = r["peak_rss_mb"]
        extra[f"{key}_rss_increase_mb"] = r["peak_rss_mb"] - r["base_rss_mb"]
    if "xmodal" in runs:
        for peer in ("bioimage-cpp", "mwatershed"):
            if peer in runs:
                key = peer.replace("-", "_")
                extra[f"ratio_vs_{key}"] = runs[peer]["seconds"] / runs["xmodal"]["seconds"]
                extra[f"rss_ratio_vs_{key}"] = runs[peer]["peak_rss_mb"] / runs["xmodal"]["peak_rss_mb"]
                other = np.load(tmp_path / f"{peer}.npy")
                extra[f"arand_vs_{key}"] = adapted_rand_error(labels, other, ignore_gt=()).error
        if "bioimage-cpp" in runs:
            extra["equal_to_bioimage_cpp"] = bool(np.array_equal(np.load(tmp_path / "bioimage-cpp.npy"), labels))
            assert extra["equal_to_bioimage_cpp"]


def _big_zarr(shape, seed=5):
    """Noisy Voronoi affinities of ``shape`` in a zarr array (generated once, cached)."""
    import zarr

    from xmodal.segmentation._synthetic import affinities_from_labels, voronoi_labels

    offs = _offsets()
    path = os.path.join(CACHE, f"xmodal-bench-mws-{'x'.join(map(str, shape))}-s{seed}.zarr")
    done = path + ".done"
    if os.path.exists(done):
        return path
    coarse_shape = tuple(-(-s // 4) for s in shape)
    coarse = voronoi_labels(coarse_shape, max(2, int(np.prod(shape)) // VOXELS_PER_CELL), seed=seed)
    chunk = (len(offs), 8, 32, 32)  # small chunks: reading a block with its halo reads little extra
    za = zarr.create_array(store=path, shape=(len(offs),) + tuple(shape), chunks=chunk, dtype=np.float32,
                           compressors=None, overwrite=True)
    pad = 9
    grid = [range(0, s, b) for s, b in zip(shape, BIG_BLOCK)]
    rng = np.random.default_rng(seed)
    for z0 in grid[0]:
        for y0 in grid[1]:
            for x0 in grid[2]:
                lo = [max(0, v - pad) for v in (z0, y0, x0)]
                hi = [min(s, v + b + pad) for v, b, s in zip((z0, y0, x0), BIG_BLOCK, shape)]
                sl = tuple(slice(a // 4, -(-b // 4)) for a, b in zip(lo, hi))
                lab = coarse[sl]
                for d in range(3):
                    lab = np.repeat(lab, 4, axis=d)
                lab = lab[tuple(slice(a - (a // 4) * 4, a - (a // 4) * 4 + (b - a)) for a, b in zip(lo, hi))]
                affs = affinities_from_labels(lab, offs)
                inner = tuple(slice(v - a, v - a + b) for v, a, b in zip((z0, y0, x0), lo, BIG_BLOCK))
                affs = affs[(slice(None),) + inner]
                affs += rng.normal(0, 0.25, affs.shape).astype(np.float32)
                np.clip(affs, 0, 1, out=affs)
                za[(slice(None), slice(z0, z0 + affs.shape[1]), slice(y0, y0 + affs.shape[2]),
                    slice(x0, x0 + affs.shape[3]))] = affs
    open(done, "w").close()
    return path


def test_blockwise(benchmark, tmp_path):
    pytest.importorskip("zarr")
    path = _big_zarr(BIG_SHAPE)
    result = {}

    def run():
        result.update(_run_worker({"tool": "blockwise", "input": path, "output": str(tmp_path / "labels.zarr"),
                                   "block": list(BIG_BLOCK), "workers": 2}, timeout=1800))

    benchmark.pedantic(run, rounds=1, iterations=1)
    nvox = int(np.prod(BIG_SHAPE))
    benchmark.extra_info.update(shape=list(BIG_SHAPE), block_shape=list(BIG_BLOCK), halo=list(HALO),
                                workers=2, seconds=result["seconds"],
                                mvox_s=nvox / result["seconds"] / 1e6, peak_rss_mb=result["peak_rss_mb"],
                                n_labels=result["n_labels"], passes_s=result["passes"])


def test_blockwise_vs_single_shot(benchmark):
    import xmodal
    from xmodal.metrics import adapted_rand_error

    _, affs = _make_affinities(FIT_SHAPE, seed=3)
    offs = _offsets()
    single = xmodal.mutex_watershed(affs, offs)
    res = benchmark.pedantic(xmodal.blockwise_mutex_watershed, args=(affs, offs),
                             kwargs={"block_shape": FIT_BLOCK, "halo": HALO, "n_workers": 2},
                             rounds=1, iterations=1)
    arand = adapted_rand_error(res.labels, single, ignore_gt=()).error
    benchmark.extra_info.update(shape=list(FIT_SHAPE), block_shape=list(FIT_BLOCK), halo=list(HALO),
                                arand_vs_single_shot=arand, n_labels_single=int(single.max()),
                                n_labels_blockwise=res.n_labels)
    assert arand <= 0.01


def _coarse_affinities(shape, seed):
    """Noisy affinities (sigma 0.25) of Voronoi cells drawn on a 4x coarser grid, and those cells."""
    from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels

    coarse = voronoi_labels(tuple(-(-s // 4) for s in shape), max(2, int(np.prod(shape)) // VOXELS_PER_CELL),
                            seed=seed)
    for d in range(len(shape)):
        coarse = np.repeat(coarse, 4, axis=d)
    gt = np.ascontiguousarray(coarse[tuple(slice(0, s) for s in shape)])
    return gt, noisy_affinities(gt, _offsets(), sigma=0.25, seed=seed + 1)


def test_blockwise_bias_join(benchmark):
    import xmodal
    from xmodal.metrics import adapted_rand_error

    _, affs = _coarse_affinities(FIT_SHAPE, seed=3)
    offs = _offsets()
    bias = [-0.4] * 3 + [-0.6] * 9
    old = xmodal.get_num_threads()
    xmodal.set_num_threads(1)
    try:
        kw = {"block_shape": FIT_BLOCK, "halo": HALO, "n_workers": 2}
        res = benchmark.pedantic(xmodal.blockwise_mutex_watershed, args=(affs, offs), kwargs=dict(kw, bias=bias),
                                 rounds=1, iterations=1)
        classic = xmodal.blockwise_mutex_watershed(affs, offs, **kw)
        single = {"bias": xmodal.mutex_watershed(affs, offs, bias=bias), "classic": xmodal.mutex_watershed(affs, offs)}
    finally:
        xmodal.set_num_threads(old)
    extra = benchmark.extra_info
    extra.update(shape=list(FIT_SHAPE), block_shape=list(FIT_BLOCK), halo=list(HALO), bias=bias, workers=2,
                 passes_s=res.seconds, classic_passes_s=classic.seconds, load_average=list(os.getloadavg()))
    for name, r in (("bias", res), ("classic", classic)):
        extra[f"{name}_arand_vs_single_shot"] = adapted_rand_error(r.labels, single[name], ignore_gt=()).error
        extra[f"{name}_n_labels"] = r.n_labels
        extra[f"{name}_n_labels_single_shot"] = int(single[name].max())
    assert extra["bias_arand_vs_single_shot"] <= 0.01


def test_blockwise_classic_fragment_join(benchmark):
    """Classic mode with long-range attractive channels (``n_attractive=6``: the nearest neighbours
    and offsets 2-3): the default join (the fragment graph) against the votes, on the volume of
    test_blockwise_bias_join. Reports each join's seconds, ARand to single-shot and to the ground
    truth, and the segment counts."""
    import xmodal
    from xmodal.metrics import adapted_rand_error

    gt, affs = _coarse_affinities(FIT_SHAPE, seed=3)
    offs = _offsets()
    old = xmodal.get_num_threads()
    xmodal.set_num_threads(1)
    try:
        kw = {"block_shape": FIT_BLOCK, "halo": HALO, "n_workers": 2, "n_attractive": 6}
        res = benchmark.pedantic(xmodal.blockwise_mutex_watershed, args=(affs, offs), kwargs=kw,
                                 rounds=1, iterations=1)
        votes = xmodal.blockwise_mutex_watershed(affs, offs, join="votes", **kw)
        single = xmodal.mutex_watershed(affs, offs, n_attractive=6)
    finally:
        xmodal.set_num_threads(old)
    extra = benchmark.extra_info
    extra.update(shape=list(FIT_SHAPE), block_shape=list(FIT_BLOCK), halo=list(HALO), n_attractive=6, workers=2,
                 passes_s=res.seconds, votes_passes_s=votes.seconds, load_average=list(os.getloadavg()),
                 n_labels_single_shot=int(single.max()),
                 single_shot_arand_vs_ground_truth=adapted_rand_error(single, gt).error)
    for name, r in (("fragments", res), ("votes", votes)):
        extra[f"{name}_arand_vs_single_shot"] = adapted_rand_error(r.labels, single, ignore_gt=()).error
        extra[f"{name}_arand_vs_ground_truth"] = adapted_rand_error(r.labels, gt).error
        extra[f"{name}_n_labels"] = r.n_labels
    assert "stitch_graph" in res.seconds
    assert extra["fragments_arand_vs_single_shot"] <= extra["votes_arand_vs_single_shot"]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    print(json.dumps(_worker(json.loads(sys.argv[2]))))
