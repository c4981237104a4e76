"""Property-based tests of the mutex watershed against bioimage-cpp, mwatershed and a plain reference.

Random 2D/3D shapes (including 1-voxel axes), random offsets (long, zero, out-of-volume), exact ties,
masks, seeds, single and per-offset strides, the signed-weight ``bias`` mode, float32 and float64.

References:
- bioimage-cpp's grid mutex watershed (classic mode, masks, repulsive strides; ties included: both
  break ties by the edge id ``c * n_voxels + p``);
- bioimage-cpp's graph mutex watershed on the explicit edge list (per-offset strides, bias; tie-free
  weights only, since the graph orders tied edges differently);
- a plain-Python mutex watershed written here (everything, ties included, small sizes);
- mwatershed (bias + per-offset strides with non-negative offsets, tie-free).

Example counts: 60 per property in CI (fixed seed, the "ci" profile of ``tests/conftest.py``; the
five properties take ~20 s on 2 cores), 1000 with ``XMODAL_HYPOTHESIS_PROFILE=nightly`` (random
seeds; ~8 minutes).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from xmodal.segmentation import mutex_watershed  # noqa: E402

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
N_EXAMPLES = 1000 if os.environ.get("XMODAL_HYPOTHESIS_PROFILE") == "nightly" else 60
PROPERTY = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=SUPPRESS)


# ------------------------------------------------------------------------------------------------
# helpers written for these tests (independent of the kernel)
# ------------------------------------------------------------------------------------------------

def same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def grid_edges(affs, offsets, *, n_attractive=None, bias=None, strides=None, per_offset=None, mask=None,
               invert=False):
    """Every edge of the grid graph: (edge id, u, v, weight, attractive), in edge-id order.

    Classic mode (bias None): channel c < n_attractive attracts with weight m, others repel with
    1 - m. Signed mode: s = m + bias[c]; s > 0 attracts with weight s, else repels with -s.
    ``strides`` (ndim,) subsample the repulsive channels, ``per_offset`` (C, ndim) every channel;
    kept source voxels p have p % stride == 0.
    """
    C, shape = affs.shape[0], affs.shape[1:]
    n = int(np.prod(shape))
    ndim = len(shape)
    coords = np.indices(shape).reshape(ndim, -1)
    flat = np.arange(n)
    out = []
    for c in range(C):
        off = np.asarray(offsets[c])
        if not off.any():
            continue
        q = coords + off[:, None]
        ok = np.all((q >= 0) & (q < np.asarray(shape)[:, None]), axis=0)
        if per_offset is not None:
            s = np.asarray(per_offset[c])
        elif strides is not None and (bias is not None or c >= n_attractive):
            s = np.asarray(strides)
        else:
            s = np.ones(ndim, int)
        ok &= np.all(coords % s[:, None] == 0, axis=0)
        p = flat[ok]
        qf = np.ravel_multi_index(tuple(q[:, ok]), shape) if p.size else p
        if mask is not None:
            mk = mask.ravel()
            keep = mk[p] & mk[qf]
            p, qf = p[keep], qf[keep]
        a = affs[c].ravel()[p].astype(affs.dtype)
        m = (affs.dtype.type(1) - a) if invert else a
        if bias is None:
            att = c < n_attractive
            # the kernel computes 1 - (1 - b) as b for repulsive channels with invert
            if invert:
                w = m if att else a
            else:
                w = m if att else affs.dtype.type(1) - m
            att = np.full(p.size, att)
        else:
            sw = m + affs.dtype.type(bias[c])
            att = sw > 0
            w = np.abs(sw)
        out.append((c * n + p, p, qf, w.astype(np.float64), att))
    if not out:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0), np.zeros(0, bool)
    return tuple(np.concatenate(x) for x in zip(*out))


def reference_labels(n, eid, u, v, w, att, *, seeds=None):
    """Plain mutex watershed: edges by descending weight, ties by ascending id; union-find."""
    order = np.lexsort((eid, -w))
    parent = list(range(n))
    mutex = [set() for _ in range(n)]
    seed_of = [0] * n

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    if seeds is not None:
        first = {}
        for i, s in enumerate(np.asarray(seeds).ravel().tolist()):
            if s:
                if s in first:
                    parent[i] = first[s]
                else:
                    first[s] = i
                    seed_of[i] = s
    for k in order.tolist():
        ru, rv = find(int(u[k])), find(int(v[k]))
        if ru == rv or mutex[ru] & mutex[rv]:
            continue
        if att[k]:
            if seed_of[ru] and seed_of[rv] and seed_of[ru] != seed_of[rv]:
                continue
            parent[rv] = ru
            mutex[ru] |= mutex[rv]
            seed_of[ru] = seed_of[ru] or seed_of[rv]
        else:
            mutex[ru].add(k)
            mutex[rv].add(k)
    return np.array([find(i) for i in range(n)])


def bioimage_graph_labels(n, u, v, w, att):
    """bioimage-cpp's graph mutex watershed on the explicit edges (tie-free weights only)."""
    g = pytest.importorskip("bioimage_cpp.graph")
    from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering

    lo, hi = np.minimum(u, v).astype(np.uint64), np.maximum(u, v).astype(np.uint64)
    a_uv = np.stack([lo[att], hi[att]], 1)
    a_w = w[att]
    # parallel attractive edges: only the strongest can act (the others find one cluster or a mutex)
    if len(a_uv):
        order = np.lexsort((-a_w, a_uv[:, 1], a_uv[:, 0]))
        a_uv, a_w = a_uv[order], a_w[order]
        first = np.ones(len(a_uv), bool)
        first[1:] = np.any(a_uv[1:] != a_uv[:-1], axis=1)
        a_uv, a_w = np.ascontiguousarray(a_uv[first]), a_w[first]
    graph = g.UndirectedGraph(n, np.ascontiguousarray(a_uv, dtype=np.uint64).reshape(-1, 2), True)
    m_uv = np.ascontiguousarray(np.stack([lo[~att], hi[~att]], 1), dtype=np.uint64).reshape(-1, 2)
    return mutex_watershed_clustering(graph, np.ascontiguousarray(a_w, np.float64), m_uv,
                                      np.ascontiguousarray(w[~att], np.float64))


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------

@st.composite
def problems(draw, *, max_voxels=400, ties=True, allow_zero_offsets=True, nonneg_offsets=False, min_axis=1):
    ndim = draw(st.sampled_from([2, 3]))
    hi = 12 if ndim == 3 else 24
    shape = tuple(draw(st.lists(st.integers(min_axis, hi), min_size=ndim, max_size=ndim)))
    assume(int(np.prod(shape)) <= max_voxels)
    sign = 1 if nonneg_offsets else -1
    offsets = [tuple(sign if d == k else 0 for d in range(ndim)) for k in range(ndim)]
    lo_o = 0 if nonneg_offsets else -5
    extra = draw(st.lists(st.lists(st.integers(lo_o, 5), min_size=ndim, max_size=ndim), max_size=5))
    for e in extra:
        if allow_zero_offsets or any(e):
            offsets.append(tuple(e))
    C = len(offsets)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([0, 0, 1, 2, 4])) if ties else 0
    if levels:
        affs = (rng.integers(0, levels + 1, (C,) + shape) / levels).astype(dtype)
    else:
        affs = rng.random((C,) + shape).astype(dtype)
    return dict(ndim=ndim, shape=shape, offsets=offsets, affs=affs, rng=rng, levels=levels)


def _strides(draw, ndim, max_stride=3):
    return tuple(draw(st.lists(st.integers(1, max_stride), min_size=ndim, max_size=ndim)))


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------

@PROPERTY
@given(problems(max_voxels=600), st.data())
def test_grid_equals_bioimage_cpp(prob, data):
    """Classic mode, masks, repulsive strides, ties, degenerate axes: bioimage-cpp's partition."""
    bio = pytest.importorskip("bioimage_cpp.segmentation")
    affs, offsets, ndim, shape = prob["affs"], prob["offsets"], prob["ndim"], prob["shape"]
    C = len(offsets)
    na = data.draw(st.integers(0, C), label="n_attractive")
    mask = prob["rng"].random(shape) > 0.25 if data.draw(st.booleans(), label="mask") else None
    strides = _strides(data.draw, ndim) if data.draw(st.booleans(), label="strides") else None
    b = np.array(affs, copy=True)
    b[na:] = 1 - b[na:]
    kw = {} if strides is None else {"strides": strides}
    expected = bio.mutex_watershed(b, offsets, na, mask=mask, **kw)
    got = mutex_watershed(affs, offsets, n_attractive=na, mask=mask, **kw)
    assert got.shape == shape and got.dtype == np.uint32
    if mask is None:
        np.testing.assert_array_equal(got, expected)  # same partition and same numbering
    else:
        assert (got[~mask] == 0).all() and (got[mask] > 0).all()
        assert same_partition(got[mask], expected[mask])


@PROPERTY
@given(problems(max_voxels=500, ties=False, allow_zero_offsets=False), st.data())
def test_per_offset_strides_and_bias_equal_bioimage_graph(prob, data):
    """Per-offset strides and bias (tie-free): bioimage-cpp's graph MWS on the same edges."""
    affs, offsets, ndim, shape = prob["affs"].astype(np.float64), prob["offsets"], prob["ndim"], prob["shape"]
    C = len(offsets)
    use_bias = data.draw(st.booleans(), label="bias")
    bias = None
    na = None
    if use_bias:
        bias = np.array(data.draw(st.lists(st.floats(-1.0, 0.0), min_size=C, max_size=C), label="bias values"))
    else:
        na = data.draw(st.integers(0, C), label="n_attractive")
    per_offset = np.array([_strides(data.draw, ndim) for _ in range(C)]) if data.draw(st.booleans()) else None
    mask = prob["rng"].random(shape) > 0.25 if data.draw(st.booleans(), label="mask") else None
    invert = data.draw(st.booleans(), label="invert")
    eid, u, v, w, att = grid_edges(affs, offsets, n_attractive=na, bias=bias, per_offset=per_offset, mask=mask,
                                   invert=invert)
    assume(len(np.unique(w)) == len(w))  # the graph orders tied edges differently from the grid
    n = int(np.prod(shape))
    expected = bioimage_graph_labels(n, u, v, w, att).reshape(shape)
    kw = {"bias": bias} if use_bias else {"n_attractive": na}
    got = mutex_watershed(affs, offsets, strides=per_offset, mask=mask, invert=invert, **kw)
    if mask is None:
        assert same_partition(got, expected)
    else:
        assert (got[~mask] == 0).all()
        assert same_partition(got[mask], expected[mask])


@PROPERTY
@given(problems(max_voxels=150), st.data())
def test_matches_plain_reference_with_ties(prob, data):
    """Everything at once (ties, bias, both stride kinds, masks, seeds) against the plain reference."""
    affs, offsets, ndim, shape = prob["affs"], prob["offsets"], prob["ndim"], prob["shape"]
    C = len(offsets)
    rng = prob["rng"]
    use_bias = data.draw(st.booleans(), label="bias")
    if use_bias:
        # quarter steps keep the sums exact in float32 too, so ties stay ties
        bias = np.array(data.draw(st.lists(st.sampled_from([-1.0, -0.75, -0.5, -0.25, 0.0]), min_size=C,
                                           max_size=C), label="bias values"))
        na = None
    else:
        bias = None
        na = data.draw(st.integers(0, C), label="n_attractive")
    kind = data.draw(st.sampled_from(["none", "single", "per_offset"]), label="strides")
    if use_bias and kind == "single":
        kind = "per_offset"
    strides = _strides(data.draw, ndim) if kind == "single" else None
    per_offset = np.array([_strides(data.draw, ndim) for _ in range(C)]) if kind == "per_offset" else None
    mask = rng.random(shape) > 0.2 if data.draw(st.booleans(), label="mask") else None
    seeds = None
    if data.draw(st.booleans(), label="seeds"):
        seeds = np.where(rng.random(shape) < 0.1, rng.integers(1, 4, shape), 0)
        if mask is not None:
            seeds = np.where(mask, seeds, 0)
    invert = data.draw(st.booleans(), label="invert")
    eid, u, v, w, att = grid_edges(affs, offsets, n_attractive=na, bias=bias, strides=strides,
                                   per_offset=per_offset, mask=mask, invert=invert)
    n = int(np.prod(shape))
    ref = reference_labels(n, eid, u, v, w, att, seeds=seeds).reshape(shape)
    kw = {"bias": bias} if use_bias else {"n_attractive": na}
    got = mutex_watershed(affs, offsets, strides=strides if kind == "single" else per_offset, mask=mask,
                          seeds=seeds, invert=invert, **kw)
    if mask is None:
        assert same_partition(got, ref)
        assert sorted(np.unique(got)) == list(range(1, got.max() + 1))
    else:
        assert (got[~mask] == 0).all() and (got[mask] > 0).all()
        assert same_partition(got[mask], ref[mask])
    if seeds is not None:  # seeds: same value -> same label, different values -> different labels
        s = seeds.ravel()
        g = got.ravel()
        for x in np.unique(s[s > 0]):
            assert len(np.unique(g[s == x])) == 1
        firsts = [g[s == x][0] for x in np.unique(s[s > 0])]
        assert len(set(firsts)) == len(firsts)


@PROPERTY
@given(problems(max_voxels=400, ties=False, allow_zero_offsets=False, nonneg_offsets=True), st.data())
def test_bias_and_per_offset_strides_equal_mwatershed(prob, data):
    """mwatershed.agglom(a + bias, offsets, strides=...) with non-negative offsets, tie-free."""
    mw = pytest.importorskip("mwatershed")
    affs, offsets, ndim, shape = prob["affs"].astype(np.float64), prob["offsets"], prob["ndim"], prob["shape"]
    C = len(offsets)
    # mwatershed panics on offsets longer than the volume; such offsets add no edges here
    assume(all(o < s for off in offsets for o, s in zip(off, shape)))
    bias = np.array(data.draw(st.lists(st.floats(-0.95, -0.05), min_size=C, max_size=C), label="bias values"))
    per_offset = np.array([_strides(data.draw, ndim) for _ in range(C)]) if data.draw(st.booleans()) else None
    signed = affs + bias.reshape((-1,) + (1,) * ndim)
    assume(len(np.unique(np.abs(signed))) == signed.size and (signed != 0).all())
    kw = {} if per_offset is None else {"strides": per_offset.tolist()}
    ref = np.asarray(mw.agglom(signed, [list(o) for o in offsets], **kw)).astype(np.int64)
    # mwatershed labels voxels without any attractive edge 0; here they are singletons
    zero = ref == 0
    ref[zero] = ref.max() + 1 + np.arange(int(zero.sum()))
    got = mutex_watershed(affs, offsets, bias=bias, strides=per_offset)
    assert same_partition(got, ref)


@PROPERTY
@given(problems(max_voxels=300), st.data())
def test_bias_zero_minus_one_is_the_classic_method(prob, data):
    """bias = (0, ..., 0, -1, ..., -1) gives the classic result exactly (|m - 1| == 1 - m in IEEE)."""
    affs, offsets = prob["affs"], prob["offsets"]
    C = len(offsets)
    na = data.draw(st.integers(0, C), label="n_attractive")
    # no attractive edge of weight exactly 0 (the classic method still processes those, last)
    a = np.where(affs == 0, affs.dtype.type(0.125), affs).astype(affs.dtype)
    bias = np.where(np.arange(C) < na, 0.0, -1.0)
    np.testing.assert_array_equal(mutex_watershed(a, offsets, bias=bias),
                                  mutex_watershed(a, offsets, n_attractive=na))
