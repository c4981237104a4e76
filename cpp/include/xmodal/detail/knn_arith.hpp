// xmodal: the arithmetic of the k-NN / radius graph, shared by the CPU kernel (cpp/src/knn.cpp,
// k-d trees), the CUDA kernel (cuda/knn.cu, brute force) and the C++ tests
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

XM_HD double dist2(const double* x, const double* y, int dim) {
    double s = 0.0;
    for (int d = 0; d < dim; ++d) {
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

// Insert (d2, id) into the list bd/bi (element t at t * stride), sorted by `before`, holding
// `size` of at most k entries; returns the new size. A candidate that does not rank before the
// last entry of a full list is dropped.
XM_HD int topk_insert(double* bd, std::int32_t* bi, std::int64_t stride, int size, int k, double d2,
                      std::int32_t id) {
    if (size == k && !before(d2, id, bd[(k - 1) * stride], bi[(k - 1) * stride])) return size;
    int pos = size < k ? size++ : k - 1;
    while (pos > 0 && before(d2, id, bd[(pos - 1) * stride], bi[(pos - 1) * stride])) {
        bd[pos * stride] = bd[(pos - 1) * stride];
        bi[pos * stride] = bi[(pos - 1) * stride];
        --pos;
    }
    bd[pos * stride] = d2;
    bi[pos * stride] = id;
    return size;
}

// What one GPU thread computes for one query (brute force, reference points in index order):
// its k best by (d2, index) in bd/bi, and how many references lie within the radius.
struct Query {
    const double* q;
    int dim;
    int k;
    double r2;
    double* bd;
    std::int32_t* bi;
    std::int64_t stride;
    int size = 0;
    std::int64_t count = 0;

    XM_HD Query(const double* q_, int dim_, int k_, double r2_, double* bd_, std::int32_t* bi_, std::int64_t stride_)
        : q(q_), dim(dim_), k(k_), r2(r2_), bd(bd_), bi(bi_), stride(stride_) {}

    XM_HD void visit(const double* p, std::int32_t id) {
        const double d2 = dist2(q, p, dim);
        if (in_radius(d2, r2)) ++count;
        if (k > 0) size = topk_insert(bd, bi, stride, size, k, d2, id);
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
