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
// sum taken in axis order, in double precision.
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

// GPU version (defined in cuda/knn.cu, built into xmodal._cuda only). Brute force, tiled over
// shared memory; k <= kKnnMaxK. Inputs are device pointers on `device`; the outputs are new
// device buffers (cudaMalloc) that the caller releases with free_device.
namespace xmodal::cuda {

constexpr int kKnnMaxK = 64;
constexpr int kKnnMaxDim = 8;

struct DeviceCsr {
    std::int64_t n_rows = 0, n_cols = 0, nnz = 0;
    std::int64_t* indptr = nullptr;   // n_rows + 1
    std::int32_t* indices = nullptr;  // nnz, sorted per row
    double* data = nullptr;           // nnz
};

DeviceCsr knn_graph_device(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim, int k,
                           double radius, bool symmetric, int device);
void free_device(void* ptr);

}  // namespace xmodal::cuda
