// xmodal: the arithmetic of the k-NN / radius graph, shared by the CPU kernel (cpp/src/knn.cpp,
// k-d trees), the CUDA kernels (cuda/knn.cu: grid search, detail/knn_grid.hpp, or brute force) and the C++ tests
// (xmodal._core._testing runs the CUDA kernel's per-query code on the CPU). Both devices:
//   * compute d2 = sum_d (a_d - b_d)^2 in axis order in double, each operation rounded once
//     (no FMA), so the same pair has the same d2 and the same distance sqrt(d2);
//   * rank candidates by (d2, index): at equal d2 the lower index comes first;
//   * keep the k best in a sorted list by insertion from the back (any k);
//   * count a pair within the radius iff d2 <= radius^2.
#pragma once

#include <cstdint>

#include "xmodal/detail/hd.hpp"

#include <string>

#include "xmodal/common.hpp"

namespace xmodal::knn::arith {

using namespace xmodal::detail;

constexpr int kMaxDim = 8;

// DIM > 0: a compile-time dimension (the same operations, unrolled); DIM = 0: `dim` at run time.
template <int DIM = 0>
XM_HD double dist2(const double* x, const double* y, int dim = DIM) {
    double s = 0.0;
    const int n = DIM > 0 ? DIM : dim;
    for (int d = 0; d < n; ++d) {
        const double diff = sub_rn(x[d], y[d]);
        s = add_rn(s, mul_rn(diff, diff));
    }
    return s;
}

// Candidate (da, ia) ranks before (db, ib).
XM_HD bool before(double da, std::int32_t ia, double db, std::int32_t ib) {
    return da < db || (da == db && ia < ib);
}

// A pair is within the radius (r2 = radius^2; r2 < 0: no radius part).
XM_HD bool in_radius(double d2, double r2) {
    return r2 >= 0.0 && d2 <= r2;
}

// A top-k list in the GPU's layout: distances and indices in separate arrays, entry t at
// t * stride (coalesced when stride = the number of queries; 1 in a thread's local memory).
struct Strided {
    double* d;
    std::int32_t* i;
    std::int64_t stride;
    XM_HD double dist(int t) const { return d[t * stride]; }
    XM_HD std::int32_t index(int t) const { return i[t * stride]; }
    XM_HD void set(int t, double dd, std::int32_t ii) {
        d[t * stride] = dd;
        i[t * stride] = ii;
    }
    XM_HD void move(int to, int from) { set(to, dist(from), index(from)); }
};

// Insert (d2, id) into `list` (sorted by `before`, holding `size` of at most k entries) by
// insertion from the back; returns the new size. A candidate that does not rank before the last
// entry of a full list is dropped. (The CPU k-d tree keeps its list as (d2, id) pairs with the same
// steps and the same `before`; tests/test_cuda_arith.py compares the two graphs bit for bit.)
template <class List>
XM_HD int topk_insert(List& list, int size, int k, double d2, std::int32_t id) {
    if (size == k && !before(d2, id, list.dist(k - 1), list.index(k - 1))) return size;
    int pos = size < k ? size++ : k - 1;
    while (pos > 0 && before(d2, id, list.dist(pos - 1), list.index(pos - 1))) {
        list.move(pos, pos - 1);
        --pos;
    }
    list.set(pos, d2, id);
    return size;
}

// What one GPU thread computes for one query (brute force, reference points in index order; the
// grid search runs the same steps in knn_grid.hpp's KnnVisitor over the points it visits):
// its k best by (d2, index) in bd/bi, and how many references lie within the radius.
struct Query {
    const double* q;
    int dim;
    int k;
    double r2;
    Strided list;
    int size = 0;
    std::int64_t count = 0;

    XM_HD Query(const double* q_, int dim_, int k_, double r2_, double* bd, std::int32_t* bi, std::int64_t stride)
        : q(q_), dim(dim_), k(k_), r2(r2_), list{bd, bi, stride} {}

    XM_HD void visit(const double* p, std::int32_t id) {
        const double d2 = dist2(q, p, dim);
        if (in_radius(d2, r2)) ++count;
        if (k > 0) size = topk_insert(list, size, k, d2, id);
    }
};

// The arguments of a knn_graph call (the same checks and messages on both devices).
inline void check_args(std::int64_t na, std::int64_t nb, int dim, int k, double radius) {
    require(dim >= 1 && dim <= kMaxDim, "knn_graph: dim must be in 1..8, got " + std::to_string(dim));
    require(na >= 0 && nb >= 0, "knn_graph: point counts must be non-negative");
    require(na < (std::int64_t(1) << 31) && nb < (std::int64_t(1) << 31), "knn_graph: at most 2^31 - 1 points per set");
    require(k >= 0, "knn_graph: k must be >= 0, got " + std::to_string(k));
    require(!(radius != radius), "knn_graph: radius is NaN");
    require(k > 0 || radius >= 0.0, "knn_graph: give k > 0 and/or radius >= 0");
}

}  // namespace xmodal::knn::arith
