// xmodal: sparse k-nearest-neighbour / radius graphs between two point sets.
//
// knn_graph(a, b) returns, in CSR form with rows = points of `a` and columns = points of `b`,
// the Euclidean distance of every pair (i, j) such that
//   * |a_i - b_j| <= radius                      (when radius >= 0), or
//   * b_j is among the k nearest points of b to a_i  (when k > 0), or
//   * a_i is among the k nearest points of a to b_j  (when k > 0 and symmetric).
// Column indices are sorted within each row and unique. Zero distances are kept (explicit).
//
// Tie rule at the k-th neighbour: candidates are ordered by (squared distance, index), so among
// points at the same distance the lower index wins. Distances are sqrt(sum_d (a_d - b_d)^2) with the
// sum taken in axis order, in double precision, each operation rounded once (no FMA). The pair
// arithmetic is xmodal/detail/knn_arith.hpp, shared with the CUDA twin (cuda/xmodal_cuda.hpp:
// xmodal::cuda::knn_graph, same arguments and outputs plus a stream), so both devices give the
// same graph, bit for bit.
//
// The result does not depend on the thread count: each query is independent and the output is
// assembled in a fixed order.
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal {

struct CsrGraph {
    std::int64_t n_rows = 0;
    std::int64_t n_cols = 0;
    std::vector<std::int64_t> indptr;   // n_rows + 1
    std::vector<std::int32_t> indices;  // nnz, sorted per row
    std::vector<double> data;           // nnz, Euclidean distances
};

// a: (na, dim) C-contiguous doubles, b: (nb, dim). dim in 1..8.
// k: number of nearest neighbours (0 = none); radius: < 0 = none.
// At least one of k > 0 or radius >= 0 is required.
CsrGraph knn_graph(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim,
                   int k, double radius, bool symmetric);

}  // namespace xmodal
