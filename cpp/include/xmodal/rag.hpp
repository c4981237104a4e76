// xmodal: region adjacency graph (RAG) of a label image and per-edge statistics of a boundary map
// or of affinities along the faces between regions.
//
// Label images are C-contiguous (Z, Y, X) (2D inputs use Z = 1); node ids are the label values
// (n_nodes = max label + 1, < 2^32 - 1). Optionally one label (usually 0, background) is ignored:
// no edge touches it.
//
// Edges: pairs (u, v), u < v, of labels that meet on a face (two voxels at distance 1 along an
// axis: 4-neighbourhood in 2D, 6 in 3D), plus, if long-range offsets are given, pairs of labels
// joined by a voxel p and p + offset. Sorted lexicographically (so the edge ids depend only on the
// labels). `n_faces` counts the faces of each edge (0 for an edge found only by a long-range
// offset).
//
// Statistics (one row per edge: mean, min, max, the requested quantiles, sample count):
//   boundary map b: each face (p, q) contributes the two samples b[p] and b[q] (the nifty / elf
//     convention, so the mean equals elf's compute_boundary_mean_and_length);
//   affinities (C, Z, Y, X) with offsets (C, 3): each link (p, p + offsets[c]) between two labels
//     joined by an edge contributes the sample a[c, p].
// Quantiles are exact, with numpy's default ("linear") interpolation over the sorted samples.
// The mean is summed in float64 in raster order of the samples. Edges without samples get NaN
// statistics and count 0.
//
// Parallel over rows of the image (OpenMP, xmodal::num_threads()); the samples of every edge are
// gathered in raster order before reducing, so results do not depend on the thread count.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace xmodal::rag {

using Shape = std::array<int64_t, 3>;  // (Z, Y, X)

struct Ignore {
    bool active = false;
    uint64_t label = 0;
};

struct Graph {
    uint64_t n_nodes = 0;
    std::vector<uint64_t> uv;       // 2 * n_edges: (u, v), u < v, sorted
    std::vector<uint64_t> n_faces;  // per edge
    std::vector<uint64_t> row;      // n_nodes + 1: edges with smaller endpoint u are [row[u], row[u+1])

    uint64_t n_edges() const { return n_faces.size(); }
    // Edge id of (u, v) with u < v, or -1.
    int64_t find(uint64_t u, uint64_t v) const;
};

// Build the RAG. `offsets` (n_offsets x 3, may be null) adds long-range edges.
Graph build(const uint32_t* labels, const Shape& shape, const Ignore& ignore,
            const int64_t* offsets, int64_t n_offsets);
Graph build(const uint64_t* labels, const Shape& shape, const Ignore& ignore,
            const int64_t* offsets, int64_t n_offsets);

// Statistics of a boundary map (same shape as labels). out: n_edges x (4 + n_quantiles).
template <class L, class T>
void boundary_features(const L* labels, const Shape& shape, const Ignore& ignore, const Graph& g,
                       const T* boundary, const double* quantiles, int64_t n_quantiles,
                       double* out);

// Statistics of affinities (C, Z, Y, X) with offsets (C x 3) over the links between labels joined
// by an edge of g. out: n_edges x (4 + n_quantiles).
template <class L, class T>
void affinity_features(const L* labels, const Shape& shape, const Ignore& ignore, const Graph& g,
                       const T* affinities, const int64_t* offsets, int64_t n_channels,
                       const double* quantiles, int64_t n_quantiles, double* out);

}  // namespace xmodal::rag
