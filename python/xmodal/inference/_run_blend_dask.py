"""Blended tiled prediction on a dask cluster: ``predict_tiled(blend="linear" | "gaussian", client=...)``.

The output's blocks (the :class:`BlockSweep` of a local run: whole chunks of a zarr ``out``) are
partitioned into *groups*, boxes of whole blocks. One task per group runs every batch of the local
run (same windows per batch, same sweep order) holding a window that overlaps the group, blends the
predictions into the group's blocks only (:class:`BlendStream`; blocks of other groups are skipped)
and writes each of its blocks once complete, then the block's ledger marker, as a local run does.
Every block is written by exactly one task, whole: tasks never share a chunk and need no
communication. A block receives the windows overlapping it, in the local sweep order, predicted in
the local batches, so the result is bitwise that of a local run.

The cost: a window (or a batch) overlapping several groups is predicted by each of them.
:func:`choose_groups` picks the cuts (per axis, block indices) that minimise the estimated makespan
on the cluster's threads (in window predictions, groups placed longest first on the least loaded
thread), then the total of predicted windows, then the number of groups. Units: blocks and tiles
are counted by index, work in window predictions, voxels only in the blocks' regions.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import heapq
import itertools
import logging
import math
import time
import uuid

import numpy as np

from ._grid import BlockSweep, blend_order
from ._model import model_token
from ._plan import Plan
from ._run import BlendStream, _batches, _blocks_done, _pipeline, _progress_bar, worker_runner

log = logging.getLogger("xmodal.inference")


# ----------------------------------------------------------------------------------- groups

@dataclasses.dataclass(frozen=True)
class Groups:
    """A partition of the output's blocks into boxes and the batches each box's task runs.

    ``cuts``: per axis, the block indices where groups start, then the number of blocks.
    ``boxes``: per group index (a tuple), the block index range ``(lo, hi)`` per axis.
    ``batches``: per group index, the indices (ascending: sweep order) of the batches it runs.
    ``windows``: window predictions over all tasks (a window in two groups counts twice).
    ``makespan``: the estimated window predictions on the busiest of the cluster's threads.
    """

    cuts: tuple
    boxes: dict
    batches: dict
    windows: int
    makespan: int

    def group_of(self, k) -> tuple:
        """The index of the group holding block ``k``."""
        return tuple(bisect.bisect_right(c, i) - 1 for c, i in zip(self.cuts, k))


def _greedy_cuts(grid: BlockSweep, a: int, most: int):
    """Cuts along axis ``a``: each group as long as at most ``most`` tile indices' windows overlap it
    (at least the most any single block has). Cutting as late as the bound allows puts a cut just before
    the next window's start, where fewest windows straddle it."""
    nb, cuts, lo = grid.nblocks[a], [0], 0
    while lo < nb:
        hi = lo
        while hi < nb and len(grid.axis_tiles(a, lo, hi + 1)) <= most:
            hi += 1
        cuts.append(max(hi, lo + 1))
        lo = hi
    return tuple(cuts)


def _axis_partitions(grid: BlockSweep, a: int, cap: int) -> list:
    """Cuts along axis ``a`` for 1 to ``cap`` groups, each with the smallest largest group (counted in
    tile indices whose windows overlap it) that many groups allow; no repeats."""
    nb = grid.nblocks[a]
    floor = max(len(grid.axis_tiles(a, k, k + 1)) for k in range(nb))  # no group overlaps fewer
    found: dict = {}
    for c in range(1, min(cap, nb) + 1):
        lo, hi = floor, len(grid.axis_tiles(a, 0, nb))  # the smallest bound whose cuts make <= c groups
        while lo < hi:
            mid = (lo + hi) // 2
            cuts = _greedy_cuts(grid, a, mid)
            lo, hi = (lo, mid) if len(cuts) - 1 <= c else (mid + 1, hi)
        found.setdefault(_greedy_cuts(grid, a, lo), None)
        if lo == floor:  # more groups cannot make the largest smaller
            break
    return list(found)


def _makespan(works, threads: int) -> int:
    """The busiest thread's load when ``works`` are placed longest first on the least loaded thread."""
    if len(works) <= threads:
        return max(works)
    loads = [0] * threads
    for w in sorted(works, reverse=True):
        heapq.heapreplace(loads, loads[0] + w)
    return max(loads)


def _axis_groups(grid: BlockSweep, a: int, cuts) -> list:
    """Along axis ``a``, per group: the range of tile indices whose windows overlap it."""
    return [grid.axis_tiles(a, lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _assign(grid: BlockSweep, cuts, batches) -> dict:
    """Per group index, the indices of the batches holding a window that overlaps the group."""
    spans = []  # per axis: tile index -> [first, last + 1) of the groups its window overlaps
    for a, c in enumerate(cuts):
        span: dict = {}
        for j, tiles in enumerate(_axis_groups(grid, a, c)):
            for i in tiles:
                span[i] = (span.get(i, (j, j))[0], j + 1)
        spans.append(span)
    runs = collections.defaultdict(list)
    for b, batch in enumerate(batches):
        touched = set()
        for t in batch:
            touched.update(itertools.product(*(range(*spans[a][i]) for a, i in enumerate(t.index))))
        for j in touched:
            runs[j].append(b)
    return dict(runs)


def choose_groups(grid: BlockSweep, batches, threads: int, *, exact: int = 8) -> Groups:
    """The grouping of the output's blocks for ``threads`` dask threads (see the module doc).

    Candidates: per axis, for each number of groups the cuts with the fewest windows overlapping the
    largest group (:func:`_axis_partitions`), combined across axes into at most ``2 * threads``
    groups. Each is ranked by its cost for single-window batches (a window overlaps a box iff it
    does on every axis: the per-axis counts multiply); the best ``exact`` are counted with the real
    ``batches`` (a batch runs whole in every group one of its windows overlaps), the best taken.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
    cap = 2 * threads
    per_axis = [_axis_partitions(grid, a, cap) for a in range(len(grid.nblocks))]
    ranked = []
    for cuts in itertools.product(*per_axis):
        if math.prod(len(c) - 1 for c in cuts) > cap:
            continue
        counts = [[len(r) for r in _axis_groups(grid, a, c)] for a, c in enumerate(cuts)]
        works = [math.prod(w) for w in itertools.product(*counts)]
        ranked.append((_makespan(works, threads), sum(works), len(works), cuts))
    ranked.sort()
    if all(len(b) == 1 for b in batches):  # the ranking is exact
        exact = 1
    best = None
    for *_, cuts in ranked[:exact]:
        runs = _assign(grid, cuts, batches)
        works = [sum(len(batches[b]) for b in r) for r in runs.values()]
        key = (_makespan(works, threads), sum(works), len(works))
        if best is None or key < best[0]:
            best = (key, cuts, runs)
    (makespan, windows, _), cuts, runs = best
    boxes = {j: tuple((c[i], c[i + 1]) for i, c in zip(j, cuts)) for j in runs}
    return Groups(cuts=cuts, boxes=boxes, batches=runs, windows=windows, makespan=makespan)


def dask_blocks(plan: Plan) -> tuple:
    """The blocks of a run on dask: a zarr ``out``'s (they name its resume markers); for a numpy
    output half tiles (when the halo is at most half the tile), so that groups can be cut
    inside a tile, where only that tile's windows straddle the cut (at a tile's edge, the windows on
    both sides do). The blocks do not change the sums (each voxel's terms come in sweep order)."""
    if plan.out_kind == "zarr":
        return plan.blocks
    return tuple(max(1, -(-t // 2)) if 2 * h <= t else t for t, h in zip(plan.blocks, plan.halo))


# ----------------------------------------------------------------------------------- worker side

class _Others:
    """The blocks a group's task leaves alone: those outside its ``box`` and those already ``done``."""

    def __init__(self, box, done):
        self.box, self.done = box, done

    def mine(self, k) -> bool:
        return all(lo <= i < hi for i, (lo, hi) in zip(k, self.box))

    def __contains__(self, k) -> bool:
        return k in self.done or not self.mine(k)


class _GroupStream(BlendStream):
    """A group's :class:`BlendStream`: without an ``out`` on the worker (numpy output) the finished
    blocks are kept, ``(block index, values)``, and returned to the caller."""

    def __init__(self, plan, grid, done):
        super().__init__(plan, grid, done)
        self.kept: list = []

    def _store(self, k, values, digest) -> None:
        if self.plan.out is None:
            self.kept.append((k, values))
        else:
            super()._store(k, values, digest)


STOP_POLL_S = 0.5  # seconds between two checks of the stop flag by a task (a scheduler round trip each)


class _Halt:
    """A task's check of the run's stop flag: the ``distributed.Event`` named ``name`` (None: never
    stops), polled at most every :data:`STOP_POLL_S` seconds; raises once it is set."""

    def __init__(self, name):
        self.event, self.every, self.last = None, STOP_POLL_S, -math.inf
        if name is not None:
            from .._optional import optional_import

            distributed = optional_import("distributed")
            # the worker's client, resolved here on the task's thread: the checks run on the reader thread
            self.event = distributed.Event(name, client=distributed.get_client())

    def check(self) -> None:
        now = time.monotonic()
        if self.event is None or now - self.last < self.every:
            return
        self.last = now
        if self.event.is_set():
            raise RuntimeError("predict_tiled: task stopped, another task of the run failed")


def _group_task(wplan: Plan, model, image, device, token, grid: BlockSweep, box, batches, stop=None) -> dict:
    """Run on a dask worker: blend every window of ``batches`` into the blocks of ``box`` (block index
    range per axis) and write them (zarr ``out``) or return them (numpy output). ``stop``: the name
    of the run's stop flag (a ``distributed.Event``), checked before the task's first window and
    between windows (:class:`_Halt`): a run that failed elsewhere ends its tasks promptly.

    Returns ``blocks`` (numpy output: ``[(block index, (C_out, *block) float32)]``), ``digests``
    (tile index -> input digest of every window read), ``predicted`` (tile indices of the windows
    predicted), ``written`` / ``reused`` (blocks), ``peak`` (bytes of open accumulators) and
    ``model_s`` (seconds in the model).
    """
    halt = _Halt(stop)
    halt.check()
    plan = dataclasses.replace(wplan, runner=worker_runner(model, device, token), image=image, stats={})
    tiles = [t for b in batches for t in b]
    others = _Others(box, set())
    if plan.ledger is not None:  # blocks of this group a previous run wrote from the same inputs
        others.done = _blocks_done(plan, grid, tiles, others.mine)
    needed = {t.index for t in tiles if any(k not in others for k in grid.blocks_of(t))}
    stream = _GroupStream(plan, grid, others)

    def skip(t, digest):  # on the reader thread, before each batch is predicted
        halt.check()
        return t.index not in needed

    _pipeline(plan, tiles, skip, stream.add, batches=batches)
    stream.close()
    predicted = [t.index for b in batches if any(t.index in needed for t in b) for t in b]
    return {"blocks": stream.kept, "digests": plan.stats.get("digests", {}), "predicted": predicted,
            "written": stream.written, "reused": len(others.done), "peak": stream.peak,
            "model_s": plan.stats.get("model_s", 0.0)}


# ----------------------------------------------------------------------------------- client side

def _submit(plan: Plan, client, device, grid: BlockSweep, batches, groups: Groups, stop=None) -> dict:
    """One task per group; returns {future: group index}. ``stop``: the run's stop flag's name."""
    token = model_token(plan.runner.model)
    model_f = client.scatter(plan.runner.model, broadcast=True, hash=False)  # once per worker
    image = plan.image
    if isinstance(image, np.ndarray):
        image = client.scatter(image, broadcast=False, hash=False)
    # what every task needs of the plan: no model (scattered), image (scattered or small), tiles
    # (each task gets its batches) or numpy output (blocks come back)
    wplan = dataclasses.replace(plan, runner=None, image=None, tiles=[], stats={}, progress=False,
                                prior_status=None, out=plan.out if plan.out_kind == "zarr" else None)
    return {client.submit(_group_task, wplan, model_f, image, device, token, grid, groups.boxes[j],
                          [batches[b] for b in groups.batches[j]], stop, pure=False): j
            for j in sorted(groups.batches)}


def run_dask_blended(plan: Plan, client, device):
    """Blend on the workers of ``client`` (a ``distributed.Client`` or a scheduler address), one
    task per group of output blocks (see the module doc); returns ``plan.out``."""
    from .._optional import optional_import

    distributed = optional_import("distributed", purpose="predict_tiled(client=...)")
    if isinstance(client, str):  # a scheduler address: connect for this run only
        with distributed.Client(client) as own:
            return run_dask_blended(plan, own, device)
    tiles, axes = blend_order(plan.shape, plan.tiles)
    grid = BlockSweep(plan.shape, dask_blocks(plan), tiles, axes)
    batches = list(_batches(tiles, plan.batch_size))
    threads = max(1, sum(client.nthreads().values()))
    groups = choose_groups(grid, batches, threads)
    log.info("predict_tiled: %d group(s) of output blocks on %d dask thread(s): %d window predictions for "
             "%d tiles", len(groups.boxes), threads, groups.windows, len(tiles))
    owned = collections.Counter(groups.group_of(tuple(s // b for s, b in zip(t.start, grid.blocks)))
                                for t in tiles)  # progress: every tile counted once, by its first voxel's group
    stop = distributed.Event(f"xmodal-predict-tiled-{uuid.uuid4().hex}")
    futures = _submit(plan, client, device, grid, batches, groups, stop.name)
    bar = _progress_bar(len(tiles), plan.progress)
    results = []
    try:
        for fut in distributed.as_completed(list(futures)):
            res = fut.result()
            for k, values in res.pop("blocks"):
                plan.out[(slice(None),) + grid.region(k)] = values
            results.append(res)
            bar.update(owned[futures[fut]])
    except BaseException:
        _stop_all(distributed, stop, list(futures))
        raise
    finally:
        bar.close()
    _record(plan, tiles, axes, groups, threads, results)
    return plan.out


def _stop_all(distributed, stop, futures, timeout: float = 600.0) -> None:
    """After a failure: set the stop flag and wait (at most ``timeout`` seconds) until every task has
    ended, so that none writes once the run has raised (the others stop at their next window; the
    blocks they finished keep their markers, resumable) and a rerun never races with them. A
    failure here is logged, not raised: the run's own error is the one to report."""
    try:
        stop.set()
        distributed.wait(futures, timeout=timeout)
        stop.clear()
    except Exception as exc:  # e.g. the scheduler is gone, or a task is stuck in the model
        log.warning("predict_tiled: could not confirm that every dask task stopped (%s); tasks still "
                    "running may write finished blocks of the output", exc)


def _record(plan: Plan, tiles, axes, groups: Groups, threads: int, results) -> None:
    """The run's statistics in ``plan.stats`` (as a local blended run's, plus the grouping's)."""
    digests: dict = {}
    predicted: set = set()
    for res in results:
        digests.update(res["digests"])
        predicted.update(res["predicted"])
    plan.stats.update(
        tiles=len(tiles), skipped=len(tiles) - len(predicted), digests=digests,
        windows_predicted=sum(len(r["predicted"]) for r in results), blend_axes=axes,
        blocks_written=sum(r["written"] for r in results), blocks_reused=sum(r["reused"] for r in results),
        blend_peak_bytes=max((r["peak"] for r in results), default=0), model_s=sum(r["model_s"] for r in results),
        blend_groups=len(groups.boxes), blend_group_cuts=groups.cuts, blend_threads=threads,
        blend_windows_planned=groups.windows, blend_makespan=groups.makespan)
