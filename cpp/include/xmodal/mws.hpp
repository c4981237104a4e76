// xmodal: mutex watershed (Wolf et al., "The Mutex Watershed and its Objective", TPAMI 2020).
//
// All edges are sorted by descending weight (ties: ascending edge id) and processed once, Kruskal
// style, over a union-find:
//   attractive edge -> merge the two clusters unless a mutex separates them (or two different seeds);
//   repulsive edge  -> record a mutex between the two clusters (unless they are already one).
//
// Grid graphs: affinities (C, Z, Y, X) (2D inputs use Z = 1), channel c joins voxel p and
// p + offsets[c] (the affogato / bioimage-cpp convention). Every channel is a merge probability
// m (`invert` takes boundary probabilities b instead: m = 1 - b). Two weightings:
//   classic (bias == nullptr): attractive channels (c < n_attractive) weigh m, repulsive ones 1 - m;
//   signed  (bias != nullptr): s = m + bias[c] (in the precision of the affinities); s > 0 attracts
//     with weight s, s < 0 repels with weight -s, s == 0 has no effect (the mwatershed convention,
//     with per-channel biases as in the blockwise pipelines built on it).
// Edge id of (c, p) orders like c * n_voxels + p, the order in which bioimage-cpp breaks ties, so
// tie-free and tied inputs both give its partition.
//
// Strides: without `channel_strides`, `strides` subsamples the repulsive channels only (the
// original method, bioimage-cpp); with `channel_strides` (n_channels x 3), channel c keeps only the
// edges of every kind whose source voxel p has p[d] % channel_strides[c][d] == 0 (as mwatershed's
// per-offset strides; mwatershed anchors its grid at max(0, -offset[d]) instead of 0).
// `randomize_strides` keeps each subsampled edge with probability 1 / prod(strides of its channel).
//
// Data layout and memory (fast path: float32 weights, C * 2^ceil(log2 n) <= 2^32, or <= 2^31 in
// signed mode, whose id keeps the edge's sign in its top bit):
//   one edge = one uint64 (high 32 bits: order-preserving key of the weight, low 32 bits: id),
//   8 bytes/edge plus 8 bytes/edge of radix-sort scratch that is freed before clustering;
//   per voxel: union-find parent (4 B), mutex-list slot (4 B), labels (4 B).
//   Mutexes: a hash set of root pairs (O(1) test) plus per-root partner lists merged
//   smaller-into-larger (only for roots that have mutexes).
// Other inputs (float64 weights or more edges) use 16-byte items (64-bit key, 64-bit id).
//
// The radix sort is an LSD sort on the key only (stable), parallel over OpenMP threads with
// per-thread histograms: the result is identical for any thread count.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace xmodal::mws {

struct GridSpec {
    std::array<int64_t, 3> shape{1, 1, 1};  // spatial shape (Z, Y, X); 2D inputs use Z = 1
    int64_t n_channels = 0;
    const int64_t* offsets = nullptr;       // n_channels x 3, (z, y, x)
    int64_t n_attractive = 0;
    std::array<int64_t, 3> strides{1, 1, 1};  // subsampling of repulsive edges
    const int64_t* channel_strides = nullptr; // n_channels x 3: per-channel subsampling of all edges
                                              // (replaces `strides` when given); may be null
    bool randomize_strides = false;           // keep each subsampled edge with prob 1/prod(strides)
    uint64_t seed = 0;                        // seed of the random strides
    bool invert = false;                      // affinities are boundary probabilities
    const double* bias = nullptr;             // n_channels: signed weights m + bias[c]; may be null
    const uint8_t* mask = nullptr;            // n voxels, nonzero = foreground; may be null
    const uint64_t* seeds = nullptr;          // n voxels, 0 = unseeded; may be null
};

struct Stats {
    uint64_t n_labels = 0;      // labels in the output (background 0 excluded)
    uint64_t n_edges = 0;       // edges sorted and processed
    uint64_t n_merges = 0;      // attractive edges that merged two clusters
    uint64_t n_mutexes = 0;     // distinct mutex constraints recorded between clusters
    uint64_t bytes_per_edge = 0;  // bytes of one stored edge (sort scratch excluded)
    uint64_t peak_bytes = 0;    // peak bytes of the big native buffers (edges, scratch, state)
    double seconds_edges = 0, seconds_sort = 0, seconds_cluster = 0;
};

// Mutex watershed on a grid graph. `affinities` is C-contiguous (C, Z, Y, X). `labels` receives
// n = Z*Y*X labels, consecutive from 1 in raster order of first occurrence, 0 for masked voxels.
// Throws value_error on inconsistent input (n >= 2^32 voxels included) and on a non-finite weight
// of an edge that is used (after masking and strides).
Stats grid_mutex_watershed(const float* affinities, const GridSpec& spec, uint32_t* labels);
Stats grid_mutex_watershed(const double* affinities, const GridSpec& spec, uint32_t* labels);

// Mutex watershed on a graph with n_nodes nodes: attractive edges (uv: n_edges x 2, weights) and
// mutex edges (mutex_uv: n_mutex x 2, mutex_weights); higher weight = processed earlier. Ties are
// broken by edge id: attractive edge i has id i, mutex edge j has id n_edges + j.
// `seeds` (n_nodes, 0 = unseeded) may be null. `labels` receives n_nodes labels, consecutive from 1
// in node order of first occurrence.
Stats graph_mutex_watershed(uint64_t n_nodes, const uint64_t* uv, const double* weights,
                            uint64_t n_edges, const uint64_t* mutex_uv,
                            const double* mutex_weights, uint64_t n_mutex, const uint64_t* seeds,
                            uint32_t* labels);

}  // namespace xmodal::mws
