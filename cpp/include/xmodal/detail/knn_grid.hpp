// xmodal: the uniform-grid (cell list) search of the CUDA k-NN / radius graph (cuda/knn.cu),
// shared with xmodal._core._testing, which runs it on the CPU (tests/test_cuda_arith.py).
//
// The reference points are binned into a grid of cubic cells of side h over their bounding box;
// cell (j_0, .., j_{D-1}) has id sum_d j_d * stride_d (the last axis fastest), and the points are
// sorted by cell id, so cell c holds sorted positions [cell_start[c], cell_start[c + 1]). The
// border cells extend to infinity outwards (a point is clamped into the grid), so no rounding in
// the binning and no point outside the box can escape the bounds below.
//
// One query visits the cells in rings of growing Chebyshev radius R around its own cell (which
// may lie outside the grid), each cell with its points in one piece. A visitor says how far it
// still looks: its budget B (a squared distance; B = +inf while its k-best list is not full).
// A cell is skipped when B < lb2, a conservative lower bound of the squared distance computed by
// knn_arith.hpp's dist2 from the query to any point the cell may hold; the search stops after
// ring R when B < the same kind of bound for every cell outside ring R. Skipped points therefore
// rank strictly after the final k-th neighbour and lie strictly outside the radius: ties at equal
// d2 are always visited and the (d2, index) rule gives exactly the brute-force result, which does
// not depend on the order in which points are visited.
//
// The bounds are conservative under rounding: each per-axis gap is shrunk by a relative 2^-40 and
// by an absolute 2^-45 * (|lo| + |q| + 2 extent + 2 h) (far above the binning's and the face
// positions' rounding, a few ulps of those magnitudes), the sum of squares by a relative 2^-40 and
// by 16 subnormal units (underflow), and an overflowing sum is replaced by DBL_MAX. A NaN anywhere
// gives a bound of 0, i.e. "visit". What these bounds only cost is a slightly later stop.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "xmodal/detail/hd.hpp"
#include "xmodal/detail/knn_arith.hpp"

namespace xmodal::knn::grid {

using std::int32_t;
using std::int64_t;
constexpr int kMaxDim = xmodal::knn::arith::kMaxDim;

constexpr int64_t kMaxCells = int64_t(1) << 26;     // grid cells at most (4 bytes each)
constexpr double kQueryCoordLimit = 1099511627776.0;  // 2^40: query cell coordinates are clamped to +-this

struct Grid {
    bool valid = false;  // false: use brute force (empty set, non-finite extent, degenerate cell size)
    int dim = 0;
    double h = 0, inv_h = 0;  // cell side and its reciprocal
    double lo[kMaxDim] = {}, ext[kMaxDim] = {};
    int64_t n[kMaxDim] = {};       // cells per axis (>= 1)
    int64_t stride[kMaxDim] = {};  // id step per axis (last axis 1)
    int64_t cells = 0;             // product of n
};

XM_HD double gabs(double x) { return x < 0 ? -x : x; }

// Cell coordinate along axis d of the value x, unclamped (+-2^40 at most; NaN gives 0).
XM_HD int64_t raw_coord(const Grid& g, int d, double x) {
    double f = (x - g.lo[d]) * g.inv_h;
    if (!(f >= -kQueryCoordLimit)) f = f != f ? 0.0 : -kQueryCoordLimit;
    if (f > kQueryCoordLimit) f = kQueryCoordLimit;
    const int64_t t = static_cast<int64_t>(f);  // truncation; floor below
    return (static_cast<double>(t) > f) ? t - 1 : t;
}

// The cell coordinate of a reference point (clamped into the grid: border cells are unbounded).
XM_HD int64_t cell_coord(const Grid& g, int d, double x) {
    const int64_t j = raw_coord(g, d, x);
    return j < 0 ? 0 : (j >= g.n[d] ? g.n[d] - 1 : j);
}

XM_HD int64_t cell_id(const Grid& g, const double* x) {
    int64_t id = 0;
    for (int d = 0; d < g.dim; ++d) id += cell_coord(g, d, x[d]) * g.stride[d];
    return id;
}

// A conservative lower bound for dist2 of points more than `gap` (computed) away along one axis.
XM_HD double safe_gap(double gap, double tol) {
    const double s = gap * (1.0 - 0x1p-40) - tol;
    return s > 0 ? s : 0.0;  // NaN -> 0
}

// A squared distance bound from the sum of squared safe gaps.
XM_HD double safe_d2(double sum_sq) {
    const double s = (sum_sq < DBL_MAX ? sum_sq : DBL_MAX) * (1.0 - 0x1p-40) - 16.0 * 0x1p-1074;
    return s > 0 ? s : 0.0;  // NaN -> 0
}

// Absolute rounding allowance of axis d for a query coordinate qd.
XM_HD double axis_tol(const Grid& g, int d, double qd) {
    return 0x1p-45 * (gabs(g.lo[d]) + gabs(qd) + 2.0 * g.ext[d] + 2.0 * g.h);
}

// Safe gap along axis d between qd and cell j (0 <= j < n[d]; border cells unbounded outwards).
XM_HD double cell_gap(const Grid& g, int d, int64_t j, double qd, double tol) {
    if (j > 0) {
        const double face = g.lo[d] + static_cast<double>(j) * g.h;
        if (qd < face) return safe_gap(face - qd, tol);
    }
    if (j < g.n[d] - 1) {
        const double face = g.lo[d] + static_cast<double>(j + 1) * g.h;
        if (qd > face) return safe_gap(qd - face, tol);
    }
    return 0.0;
}

// What a search counts (the CPU twin reports it; the kernels ignore it).
struct SearchStats {
    int64_t cells = 0;   // non-empty cells whose points were visited
    int64_t points = 0;  // points visited
};

// The ring search of one query. V: double budget() const; void visit(int64_t begin, int64_t end)
// (sorted positions of one cell's points). DIM > 0: g.dim at compile time (unrolled loops).
template <int DIM, class V>
XM_HD void search(const Grid& g, const int32_t* cell_start, const double* q, V& v, SearchStats* stats = nullptr) {
    const int D = DIM > 0 ? DIM : g.dim;
    const int L = D - 1;  // the contiguous axis
    int64_t c[kMaxDim];
    double tol[kMaxDim];
    int64_t r0 = 0, rmax = 0;
    for (int d = 0; d < D; ++d) {
        c[d] = raw_coord(g, d, q[d]);
        tol[d] = axis_tol(g, d, q[d]);
        const int64_t below = -c[d], above = c[d] - (g.n[d] - 1);  // rings before the grid is reached
        const int64_t in = below > above ? below : above;
        if (in > r0) r0 = in;
        const int64_t far = c[d] > g.n[d] - 1 - c[d] ? c[d] : g.n[d] - 1 - c[d];  // last ring holding cells
        if (far > rmax) rmax = far;
    }
    for (int64_t R = r0; R <= rmax; ++R) {
        if (R > 0) {
            // every cell not yet visited has an axis d with j_d > c_d + R - 1 or j_d < c_d - R + 1
            double lb = DBL_MAX;
            bool any = false;
            for (int d = 0; d < D; ++d) {
                const int64_t up = c[d] + R;  // first cell index of the upper side
                if (up <= g.n[d] - 1) {
                    any = true;
                    double s = 0.0;
                    if (up > 0) {
                        const double face = g.lo[d] + static_cast<double>(up) * g.h;
                        s = q[d] < face ? safe_gap(face - q[d], tol[d]) : 0.0;
                    }
                    if (s < lb) lb = s;
                }
                const int64_t dn = c[d] - R;  // last cell index of the lower side
                if (dn >= 0) {
                    any = true;
                    double s = 0.0;
                    if (dn < g.n[d] - 1) {
                        const double face = g.lo[d] + static_cast<double>(dn + 1) * g.h;
                        s = q[d] > face ? safe_gap(q[d] - face, tol[d]) : 0.0;
                    }
                    if (s < lb) lb = s;
                }
            }
            if (!any) break;
            if (v.budget() < safe_d2(lb * lb)) break;
        }
        // the cells at Chebyshev distance exactly R, clipped to the grid
        int64_t lo[kMaxDim], hi[kMaxDim], j[kMaxDim];
        bool empty = false;
        for (int d = 0; d < D; ++d) {
            lo[d] = c[d] - R > 0 ? c[d] - R : 0;
            hi[d] = c[d] + R < g.n[d] - 1 ? c[d] + R : g.n[d] - 1;
            if (lo[d] > hi[d]) empty = true;
            j[d] = lo[d];
        }
        if (empty) continue;
        for (;;) {
            int64_t m = 0, base = 0;
            double other = 0.0;
            for (int d = 0; d < L; ++d) {
                const int64_t off = j[d] > c[d] ? j[d] - c[d] : c[d] - j[d];
                if (off > m) m = off;
                base += j[d] * g.stride[d];
                const double s = cell_gap(g, d, j[d], q[d], tol[d]);
                other += s * s;
            }
            // along the last axis: the whole clipped range on the ring's faces, else its two ends
            const int64_t step = (m == R || R == 0) ? 1 : 2 * R;
            for (int64_t jl = (m == R || R == 0) ? lo[L] : c[L] - R; jl <= hi[L]; jl += step) {
                if (jl < lo[L]) continue;
                const double s = cell_gap(g, L, jl, q[L], tol[L]);
                if (v.budget() < safe_d2(other + s * s)) continue;
                const int64_t id = base + jl;
                const int64_t b = cell_start[id], e = cell_start[id + 1];
                if (b < e) {
                    v.visit(b, e);
                    if (stats) {
                        ++stats->cells;
                        stats->points += e - b;
                    }
                }
            }
            // next row (odometer over the axes before the last)
            int d = L - 1;
            for (; d >= 0; --d) {
                if (++j[d] <= hi[d]) break;
                j[d] = lo[d];
            }
            if (d < 0) break;
        }
    }
}

// The k-NN visitor: knn::arith::Query::visit's steps (dist2, radius count, top-k insertion) over
// the sorted points pts (dim per point) with their original indices ids; `list` holds the k best.
template <int DIM>
struct KnnVisitor {
    const double* q;
    int dim, k;
    double r2;
    const double* pts;
    const int32_t* ids;
    xmodal::knn::arith::Strided list;
    int size = 0;
    int64_t count = 0;

    XM_HD KnnVisitor(const double* q_, int dim_, int k_, double r2_, const double* pts_, const int32_t* ids_,
                     double* bd, int32_t* bi, int64_t stride)
        : q(q_), dim(dim_), k(k_), r2(r2_), pts(pts_), ids(ids_), list{bd, bi, stride} {}

    // How far the search still looks: DBL_MAX while the list is not full (no cell bound reaches it).
    XM_HD double budget() const {
        if (k == 0) return r2;
        if (size < k) return DBL_MAX;
        const double kth = list.dist(k - 1);
        return kth > r2 ? kth : r2;
    }
    XM_HD void visit(int64_t begin, int64_t end) {
        namespace ka = xmodal::knn::arith;
        for (int64_t t = begin; t < end; ++t) {
            const double d2 = ka::dist2<DIM>(q, pts + t * (DIM > 0 ? DIM : dim), dim);
            if (ka::in_radius(d2, r2)) ++count;
            if (k > 0) size = ka::topk_insert(list, size, k, d2, ids[t]);
        }
    }
};

// The radius visitor: writes the keys row_base + id of the points with d2 <= r2 into
// keys[out, end) (a pair beyond `end` is counted in `out`, never written).
template <int DIM>
struct RadiusVisitor {
    const double* q;
    int dim;
    double r2;
    const double* pts;
    const int32_t* ids;
    int64_t row_base;
    int64_t* keys;
    int64_t out, end;

    XM_HD double budget() const { return r2; }
    XM_HD void visit(int64_t begin, int64_t stop) {
        namespace ka = xmodal::knn::arith;
        for (int64_t t = begin; t < stop; ++t)
            if (ka::in_radius(ka::dist2<DIM>(q, pts + t * (DIM > 0 ? DIM : dim), dim), r2)) {
                if (out < end) keys[out] = row_base + ids[t];
                ++out;
            }
    }
};

// --------------------------------------------------------------------------- host side
// Cells of a grid of side h over extents ext (a double: may exceed any integer type).
inline double cell_count(const double* ext, int dim, double h) {
    double cells = 1.0;
    for (int d = 0; d < dim; ++d) {
        const double nd = std::ceil(ext[d] / h);
        cells *= nd > 1.0 ? nd : 1.0;
    }
    return cells;
}

// Points per cell the automatic cell size aims at, for k neighbours (k = 0: radius only).
inline int64_t target_per_cell(int k) { return k <= 0 ? 4 : (k < 2 ? 2 : (k > 32 ? 32 : k)); }

// The grid over the box [lo, hi] of np reference points (dim axes) for k neighbours and/or radius
// r2 = radius^2 (< 0: none). cell_size > 0 forces the cell side (tests); otherwise the cells are
// the smallest cubes with at most np / target_per_cell(k) of them over the box (and a side of at
// least radius / 2). Invalid (brute force) when np == 0, the box is not finite, the cell side is
// not a normal number or more than kMaxCells cells would be needed.
inline Grid make_grid(const double* lo, const double* hi, int dim, int64_t np, int k, double r2,
                      double cell_size = 0.0) {
    Grid g;
    g.dim = dim;
    if (np <= 0 || dim < 1 || dim > kMaxDim) return g;
    double max_ext = 0.0;
    for (int d = 0; d < dim; ++d) {
        g.lo[d] = lo[d];
        g.ext[d] = hi[d] - lo[d];
        if (!std::isfinite(lo[d]) || !std::isfinite(hi[d]) || !std::isfinite(g.ext[d]) || g.ext[d] < 0) return g;
        if (g.ext[d] > max_ext) max_ext = g.ext[d];
    }
    double h = cell_size;
    if (!(h > 0)) {
        const double target = static_cast<double>(np / target_per_cell(k) > 1 ? np / target_per_cell(k) : 1);
        const double cap = target < static_cast<double>(kMaxCells) ? target : static_cast<double>(kMaxCells);
        if (max_ext == 0.0) {
            h = 1.0;
        } else {
            double a = max_ext / cap, b = max_ext;  // cell_count(a) >= cap, cell_count(b) == 1
            for (int it = 0; it < 80; ++it) {
                const double mid = std::sqrt(a) * std::sqrt(b);
                if (!(mid > a && mid < b)) break;
                if (cell_count(g.ext, dim, mid) <= cap)
                    b = mid;
                else
                    a = mid;
            }
            h = b;
        }
        if (r2 > 0 && std::isfinite(r2) && std::sqrt(r2) * 0.5 > h) h = std::sqrt(r2) * 0.5;
    }
    if (!(h >= DBL_MIN * 0x1p60) || !std::isfinite(h) || !std::isfinite(1.0 / h)) return g;
    if (!(cell_count(g.ext, dim, h) <= static_cast<double>(kMaxCells))) return g;
    g.h = h;
    g.inv_h = 1.0 / h;
    g.cells = 1;
    for (int d = 0; d < dim; ++d) {
        const double nd = std::ceil(g.ext[d] / h);
        g.n[d] = nd > 1.0 ? static_cast<int64_t>(nd) : 1;
        g.cells *= g.n[d];
        if (!std::isfinite(g.lo[d] + static_cast<double>(g.n[d] + 1) * h)) return g;
    }
    for (int d = dim - 1; d >= 0; --d) g.stride[d] = d == dim - 1 ? 1 : g.stride[d + 1] * g.n[d + 1];
    g.valid = true;
    return g;
}

// Cells at most for np points after refinement (hollow or clustered sets leave many cells empty).
inline double refine_cell_limit(int64_t np) {
    const double lim = 4.0 * static_cast<double>(np) + 64.0;
    return lim < static_cast<double>(kMaxCells) ? lim : static_cast<double>(kMaxCells);
}

// A smaller cell side for grid g whose measured load (sum_sq / np: the mean number of points in a
// point's own cell) exceeds twice the target, as for point sets that fill little of their box
// (clustered, hollow, tiled); 0 when the grid should stay. The side shrinks by (target / load)^(1/D')
// over the D' axes spanning at least one cell, stays >= radius / 2 and gives at most
// refine_cell_limit(np) cells. The kernels refine at most twice.
inline double refined_cell_size(const Grid& g, double sum_sq, int64_t np, int k, double r2) {
    if (!g.valid || np <= 0) return 0.0;
    const double target = static_cast<double>(target_per_cell(k));
    const double load = sum_sq / static_cast<double>(np);
    if (!(load > 2.0 * target)) return 0.0;
    int axes = 0;
    for (int d = 0; d < g.dim; ++d)
        if (g.ext[d] >= g.h) ++axes;
    if (axes == 0) return 0.0;  // one cell holds every point and the box is smaller than a cell
    double h = g.h * std::pow(target / load, 1.0 / axes);
    if (r2 > 0 && std::isfinite(r2) && std::sqrt(r2) * 0.5 > h) h = std::sqrt(r2) * 0.5;
    const double limit = refine_cell_limit(np);
    if (!(cell_count(g.ext, g.dim, h) <= limit)) {  // the smallest side in [h, g.h] within the limit
        double a = h, b = g.h;
        for (int it = 0; it < 80; ++it) {
            const double mid = std::sqrt(a) * std::sqrt(b);
            if (!(mid > a && mid < b)) break;
            if (cell_count(g.ext, g.dim, mid) <= limit)
                b = mid;
            else
                a = mid;
        }
        h = b;
    }
    return h < 0.9 * g.h ? h : 0.0;
}

// Whether the grid search is expected to beat brute force: nq queries against np reference points,
// sum_sq = sum over cells of (points in the cell)^2, so sum_sq / np is the mean number of points
// in a point's own cell. The grid visits about 3^D' such cells per query (D' the axes with more
// than one cell) at some 8 times brute force's cost per point.
inline bool grid_pays(const Grid& g, int64_t nq, int64_t np, double sum_sq) {
    if (!g.valid || nq <= 0 || np <= 0) return false;
    if (static_cast<double>(nq) * static_cast<double>(np) < 16777216.0) return false;  // 2^24 pairs: brute is instant
    double cells_per_query = 1.0;
    for (int d = 0; d < g.dim; ++d)
        if (g.n[d] > 1) cells_per_query *= 3.0;
    const double load = sum_sq / static_cast<double>(np);
    return 8.0 * cells_per_query * load < static_cast<double>(np);
}

}  // namespace xmodal::knn::grid
