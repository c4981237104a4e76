"""Distance-transform watershed superpixels, the seeded watershed, and the superpixel route."""

import numpy as np
import pytest
from scipy import ndimage

from xmodal.segmentation import (
    boundaries_from_affinities,
    distance_transform_watershed,
    seeded_watershed,
    superpixel_agglomeration,
)
from xmodal.metrics import adapted_rand_error
from xmodal.segmentation._synthetic import noisy_affinities, voronoi_labels


def boundary_map(gt, seed=0, noise=0.1):
    """Soft boundary probability of a label image: 1 on label changes, blurred, plus noise."""
    edge = np.zeros(gt.shape, bool)
    for ax in range(gt.ndim):
        d = np.diff(gt, axis=ax) != 0
        lo = [slice(None)] * gt.ndim
        hi = [slice(None)] * gt.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    b = ndimage.gaussian_filter(edge.astype(np.float64), 1.0) * 2.5
    b += np.random.default_rng(seed).normal(0, noise, gt.shape)
    return np.clip(b, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def cells2d():
    gt = voronoi_labels((96, 128), 14, seed=1)
    return gt, boundary_map(gt, seed=2)


def test_seeded_watershed_floods_everything_reachable():
    rng = np.random.default_rng(0)
    h = rng.random((30, 40))
    seeds = np.zeros(h.shape, np.int64)
    seeds[3, 4], seeds[20, 30], seeds[25, 5] = 5, 9, 2
    mask = np.ones(h.shape, bool)
    mask[:, 15] = False  # a wall: the left part has seeds 5 and 2, the right part seed 9
    lab = seeded_watershed(h, seeds, mask=mask)
    assert lab.dtype == np.uint32
    assert (lab[~mask] == 0).all() and (lab[mask] > 0).all()
    assert set(np.unique(lab[:, :15])) == {2, 5} and set(np.unique(lab[:, 16:])) == {9}
    # each label is one connected region containing its seed
    for v in (2, 5, 9):
        comp, n = ndimage.label(lab == v)
        assert n == 1 and lab[tuple(np.argwhere(seeds == v)[0])] == v


def test_seeded_watershed_equals_skimage_without_ties():
    skimage_seg = pytest.importorskip("skimage.segmentation")
    rng = np.random.default_rng(1)
    for shape in [(40, 50), (8, 20, 30)]:
        h = rng.random(shape)
        seeds = np.zeros(shape, np.int32)
        seeds.flat[rng.choice(h.size, 12, replace=False)] = np.arange(1, 13)
        mask = rng.random(shape) > 0.2
        ref = skimage_seg.watershed(h, seeds, connectivity=1, mask=mask)
        assert np.array_equal(seeded_watershed(h, seeds, mask=mask), ref)


def test_dt_watershed_covers_foreground_deterministic_and_consecutive(cells2d):
    gt, b = cells2d
    sp = distance_transform_watershed(b)
    assert sp.shape == b.shape and sp.dtype == np.uint32
    assert (sp > 0).all()  # no mask: every pixel belongs to a superpixel
    first = sp.ravel()[np.sort(np.unique(sp, return_index=True)[1])]
    assert first.tolist() == list(range(1, int(sp.max()) + 1))
    assert np.array_equal(sp, distance_transform_watershed(b.copy()))
    sizes = np.bincount(sp.ravel())[1:]
    assert sizes.min() >= 100
    # an over-segmentation of the cells: few superpixels straddle two cells
    purity = np.mean([np.bincount(gt[sp == s]).max() / (sp == s).sum() for s in range(1, sp.max() + 1)])
    assert purity > 0.9
    assert 14 <= sp.max() <= 140


def test_dt_watershed_options(cells2d):
    gt, b = cells2d
    fine = distance_transform_watershed(b, sigma_seeds=0.0, min_size=0)
    coarse = distance_transform_watershed(b, sigma_seeds=3.0)
    assert fine.max() > coarse.max()
    mask = np.zeros(b.shape, bool)
    mask[10:80, 20:100] = True
    sp = distance_transform_watershed(b, mask=mask)
    assert (sp[~mask] == 0).all() and (sp[mask] > 0).all()
    big = distance_transform_watershed(b, min_size=400)
    assert np.bincount(big.ravel())[1:].min() >= 400
    alpha = distance_transform_watershed(b, alpha=0.5, spacing=(1.0, 2.0))
    assert (alpha > 0).all()


def test_dt_watershed_3d_and_stacked():
    gt = voronoi_labels((6, 48, 48), 8, seed=3)
    b = boundary_map(gt, seed=4)
    sp3 = distance_transform_watershed(b, min_size=50)
    assert (sp3 > 0).all()
    st = distance_transform_watershed(b, stacked=True, min_size=20)
    assert (st > 0).all()
    ids = [set(np.unique(st[z])) for z in range(b.shape[0])]
    for i in range(len(ids)):  # ids are unique across slices
        for j in range(i + 1, len(ids)):
            assert not ids[i] & ids[j]
    with pytest.raises(ValueError, match="stacked"):
        distance_transform_watershed(b[0], stacked=True)


def test_superpixel_bad_inputs(cells2d):
    _, b = cells2d
    with pytest.raises(ValueError, match="boundaries"):
        distance_transform_watershed(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="finite"):
        distance_transform_watershed(np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="alpha"):
        distance_transform_watershed(b, alpha=2.0)
    with pytest.raises(ValueError, match="min_size"):
        distance_transform_watershed(b, min_size=-1)
    with pytest.raises(ValueError, match="mask"):
        distance_transform_watershed(b, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="seeds"):
        seeded_watershed(b, np.zeros((3, 3), int))
    with pytest.raises(TypeError, match="seeds"):
        seeded_watershed(b, np.zeros(b.shape))
    with pytest.raises(TypeError, match="height"):
        seeded_watershed(np.zeros((4, 4), object), np.zeros((4, 4), int))


@pytest.mark.parametrize("method", ["gasp", "mws", "multicut"])
def test_superpixel_route_recovers_cells_2d(cells2d, method):
    if method == "multicut":
        pytest.importorskip("bioimage_cpp")
    gt, b = cells2d
    seg, info = superpixel_agglomeration(b, method=method, return_info=True)
    assert seg.shape == gt.shape and seg.dtype == np.uint32 and (seg > 0).all()
    assert info.n_segments == seg.max() < info.n_superpixels
    assert adapted_rand_error(seg, gt, ignore_gt=()).error < 0.05
    assert (adapted_rand_error(seg, gt, ignore_gt=()).error
            < adapted_rand_error(info.superpixels, gt, ignore_gt=()).error)


def test_superpixel_route_affinities_3d_and_mask():
    offs = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0], [0, 0, -4]]
    gt = voronoi_labels((8, 40, 40), 6, seed=5)
    affs = noisy_affinities(gt, offs, sigma=0.1, seed=6)
    mask = np.ones(gt.shape, bool)
    mask[:, :5] = False
    seg, info = superpixel_agglomeration(affinities=affs, offsets=offs, n_attractive=3, mask=mask, long_range=True,
                                         return_info=True)
    fine = dict(sigma_seeds=0.0, superpixel_min_size=0)
    _, lr = superpixel_agglomeration(affinities=affs, offsets=offs, n_attractive=3, long_range=True,
                                     return_info=True, **fine)
    _, local = superpixel_agglomeration(affinities=affs, offsets=offs, n_attractive=3, return_info=True, **fine)
    assert lr.n_edges > local.n_edges  # pairs joined only by the 4-voxel links
    assert (seg[~mask] == 0).all() and (seg[mask] > 0).all()
    assert adapted_rand_error(seg[mask], gt[mask], ignore_gt=()).error < 0.05
    # a stronger bias only splits more
    many = superpixel_agglomeration(affinities=affs, offsets=offs, n_attractive=3, beta=0.9)
    few = superpixel_agglomeration(affinities=affs, offsets=offs, n_attractive=3, beta=0.1)
    assert many.max() >= few.max()
    b = boundaries_from_affinities(affs, offs, n_attractive=3)
    assert b.shape == gt.shape and 0 <= b.min() and b.max() <= 1


def test_superpixel_route_size_filter_and_given_superpixels(cells2d):
    gt, b = cells2d
    sp = distance_transform_watershed(b, sigma_seeds=0.0, min_size=0)
    seg = superpixel_agglomeration(b, superpixels=sp, beta=0.8, min_size=300)
    assert np.bincount(seg.ravel())[1:].min() >= 300
    # every segment is a union of the given superpixels
    for s in np.unique(sp):
        assert len(np.unique(seg[sp == s])) == 1


def test_superpixel_route_bad_inputs(cells2d):
    _, b = cells2d
    with pytest.raises(ValueError, match="method"):
        superpixel_agglomeration(b, method="ward")
    with pytest.raises(ValueError, match="boundaries, affinities"):
        superpixel_agglomeration()
    with pytest.raises(ValueError, match="boundaries, affinities"):
        superpixel_agglomeration(b, affinities=b[None], offsets=[[0, -1]])
    with pytest.raises(ValueError, match="offsets"):
        superpixel_agglomeration(affinities=b[None])
    with pytest.raises(ValueError, match="beta"):
        superpixel_agglomeration(b, beta=1.5)
    with pytest.raises(ValueError, match="beta"):
        superpixel_agglomeration(b, method="multicut", beta=1.0)
    with pytest.raises(ValueError, match="feature"):
        superpixel_agglomeration(b, feature="q150")
    with pytest.raises(ValueError, match="feature"):
        superpixel_agglomeration(b, feature="mode")
    with pytest.raises(ValueError, match="superpixels"):
        superpixel_agglomeration(b, superpixels=np.ones((3, 3), int))
    with pytest.raises(ValueError, match="channels"):
        superpixel_agglomeration(b, channels="some")


def test_blockwise_route_single_block_equals_in_memory_and_is_worker_independent():
    zarr = pytest.importorskip("zarr")
    from xmodal.segmentation import blockwise_superpixel_agglomeration

    gt = voronoi_labels((12, 64, 64), 16, seed=1)
    b = boundary_map(gt, seed=2)
    single = superpixel_agglomeration(b)
    one = blockwise_superpixel_agglomeration(b, block_shape=b.shape, halo=0)
    assert np.array_equal(one.labels, single)  # one block: same superpixels, graph and result
    # a block far larger than the volume is one block too (its work array's chunks are capped at the
    # volume: zarr allocates whole chunks, so uncapped ones ran out of memory)
    huge = blockwise_superpixel_agglomeration(b, block_shape=(2**40, 2**40, 2**40), halo=0)
    assert huge.n_blocks == 1 and np.array_equal(huge.labels, single)
    za = zarr.create_array(store=zarr.storage.MemoryStore(), shape=b.shape, chunks=(6, 32, 32), dtype=np.float32)
    za[:] = b
    out = zarr.create_array(store=zarr.storage.MemoryStore(), shape=b.shape, chunks=(6, 32, 32), dtype=np.uint32)
    r2 = blockwise_superpixel_agglomeration(za, block_shape=(6, 32, 32), halo=(3, 8, 8), out=out, n_workers=2)
    r1 = blockwise_superpixel_agglomeration(b, block_shape=(6, 32, 32), halo=(3, 8, 8), n_workers=1)
    assert r2.n_blocks == 8 and r2.labels is out
    assert np.array_equal(out[:], r1.labels)
    assert r1.n_stitched > 0  # superpixels cut by block faces are joined again
    assert adapted_rand_error(r1.labels, single, ignore_gt=()).error < 0.01
    assert (adapted_rand_error(r1.labels, gt, ignore_gt=()).error
            < adapted_rand_error(single, gt, ignore_gt=()).error + 0.005)
    r = blockwise_superpixel_agglomeration(b, block_shape=(6, 32, 32), halo=(3, 8, 8), method="mws", min_size=200)
    assert np.bincount(r.labels.ravel())[1:].min() >= 200
    with pytest.raises(ValueError, match="feature"):
        blockwise_superpixel_agglomeration(b, block_shape=8, halo=2, feature="q10")
    with pytest.raises(ValueError, match="block_shape"):
        blockwise_superpixel_agglomeration(b, block_shape=(8, 8), halo=2)
    with pytest.raises(ValueError, match="out"):
        blockwise_superpixel_agglomeration(b, block_shape=8, halo=2, out=np.zeros((2, 2, 2)))


class _FailingBoundaries:
    """The boundary map, with reading around z index ``fail_at`` raising (a crash in mid-run)."""

    def __init__(self, b, fail_at):
        self.b, self.fail_at, self.shape, self.dtype, self.ndim = b, fail_at, b.shape, b.dtype, b.ndim

    def __getitem__(self, sl):
        if sl[0].start <= self.fail_at < sl[0].stop:
            raise RuntimeError("simulated crash")
        return self.b[sl]


def test_blockwise_route_resumes_and_runs_on_dask(tmp_path):
    pytest.importorskip("zarr")
    from xmodal.segmentation import blockwise_superpixel_agglomeration

    gt = voronoi_labels((24, 64, 64), 16, seed=3)
    b = boundary_map(gt, seed=4)
    kw = dict(block_shape=(8, 32, 32), halo=(3, 8, 8))
    ref = blockwise_superpixel_agglomeration(b, **kw)
    assert ref.n_blocks == 12 and ref.n_blocks_resumed == 0
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="simulated crash"):  # blocks of z 16-23 (and their halos) fail
        blockwise_superpixel_agglomeration(_FailingBoundaries(b, 20), workdir=work, n_workers=1, **kw)
    done = {p.name for p in (work / "done").iterdir() if p.name != "signature"}
    assert 0 < len(done) < 12
    res = blockwise_superpixel_agglomeration(b, workdir=work, **kw)
    assert res.n_blocks_resumed == len(done)
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert not work.exists()  # a completed run leaves nothing behind
    # another agglomeration on the same superpixels reuses them; other superpixels do not
    with pytest.raises(RuntimeError):
        blockwise_superpixel_agglomeration(_FailingBoundaries(b, 20), workdir=work, n_workers=1, **kw)
    res = blockwise_superpixel_agglomeration(b, workdir=work, beta=0.4, **kw)
    assert res.n_blocks_resumed == len(done)
    np.testing.assert_array_equal(res.labels, blockwise_superpixel_agglomeration(b, beta=0.4, **kw).labels)
    with pytest.raises(RuntimeError):
        blockwise_superpixel_agglomeration(_FailingBoundaries(b, 20), workdir=work, n_workers=1, **kw)
    assert blockwise_superpixel_agglomeration(b, workdir=work, threshold=0.4, **kw).n_blocks_resumed == 0
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = blockwise_superpixel_agglomeration(b, client=client, **kw)
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_superpixel_route_equals_its_pieces(cells2d):
    from xmodal.segmentation import boundary_to_signed_weights, edge_features, gasp, region_adjacency_graph

    _, b = cells2d
    sp = distance_transform_watershed(b)
    rag = region_adjacency_graph(sp)
    f = edge_features(rag, sp, b, quantiles=(0.5,))
    nodes = gasp(rag.n_nodes, rag.edges, boundary_to_signed_weights(f.get("median"), beta=0.6),
                 edge_sizes=f.count)
    expected = nodes[sp]
    seg = superpixel_agglomeration(b, feature="median", beta=0.6)
    pairs = np.unique(np.stack([seg.ravel(), expected.ravel()], 1), axis=0)
    assert len(pairs) == len(np.unique(seg)) == len(np.unique(expected))
