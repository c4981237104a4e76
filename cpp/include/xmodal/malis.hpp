// xmodal: MALIS edge weights (Turaga et al. 2009, constrained form of Funke et al. 2019) for training
// affinity networks against false merges and false splits.
//
// Graph: the voxels of a (Z, Y, X) grid (2D inputs use Z = 1) and the nearest-neighbour edges of
// the affinity channels d = 0..ndim-1, channel d at voxel p joining p and p - e_d (the offsets
// (-1, 0, 0), (0, -1, 0), (0, 0, -1) in 3D; (-1, 0), (0, -1) in 2D). An edge whose mask is 0, or
// whose neighbour lies outside the grid, is not in the graph.
//
// Ground truth: the target affinities (1 = same object). The objects are the connected components
// of the target-1 edges with at least two voxels; a voxel with no target-1 edge (a membrane or
// background voxel) belongs to no object and is in no counted pair.
//
// Two Kruskal passes over the edges in order of decreasing value (ties: lower edge index first):
//   positive pass, values min(affinity, target): every union of two clusters adds to the edge that
//     made it the number of voxel pairs of the same object it joins (the edge is their maximin edge);
//   negative pass, values max(affinity, target): every union adds the number of voxel pairs of
//     different objects it joins.
// Weights are kept on target-1 edges in the positive pass and on target-0 edges in the negative
// pass only (a union by any other edge happens only on ties at 0 or 1 and carries no gradient).
// Single-threaded and deterministic.
#pragma once

#include <array>
#include <cstdint>

namespace xmodal::malis {

using Shape = std::array<int64_t, 3>;  // (Z, Y, X)

struct Stats {
    double pairs_positive = 0;  // same-object pairs counted (= sum of the positive weights)
    double pairs_negative = 0;  // different-object pairs counted (= sum of the negative weights)
    int64_t n_objects = 0;      // ground-truth objects (components of >= 2 voxels)
    int64_t n_edges = 0;        // edges in the graph
};

// affinity, target, mask (may be null): ndim x n values each, channel-major (channel d's n voxel
// values, then channel d + 1's); ndim in 1..3 is the number of trailing axes of `shape` the
// channels cover (2 for a 2D image of shape (1, Y, X)). target is 0 or 1 (any nonzero: 1).
// weight_positive, weight_negative: ndim x n outputs, overwritten. n must be < 2^31.
Stats weights(const float* affinity, const uint8_t* target, const uint8_t* mask, const Shape& shape,
              int ndim, double* weight_positive, double* weight_negative);
Stats weights(const double* affinity, const uint8_t* target, const uint8_t* mask, const Shape& shape,
              int ndim, double* weight_positive, double* weight_negative);

}  // namespace xmodal::malis
