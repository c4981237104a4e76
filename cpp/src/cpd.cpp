// Coherent Point Drift E-step and Gaussian transform kernels; see xmodal/cpd.hpp. The arithmetic
// of every pair, column and best match is in xmodal/detail/cpd_arith.hpp, shared with the CUDA
// kernel (cuda/cpd.cu); this file adds the cell grid, the vector lanes and the threads.
#if defined(__GNUC__) && !defined(__clang__)
// no-trapping-math lets GCC if-convert the selects in exp_neg and the support mask so the kernel
// loops vectorise; it changes no result (it only drops the assumption that floating-point
// exceptions may trap). fp-contract=off keeps a * b + c two roundings also under -march=native
// (FMA): both E-step passes, and the GPU, must compute bit-identical terms from the same pair.
// (The build also passes -ffp-contract=off; the pragma keeps this file right on its own.)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "xmodal/cpd.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "xmodal/common.hpp"
#include "xmodal/detail/cell_grid.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal/detail/cpd_feature_arith.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One AVX2 clone of the hot row functions, picked at load time; the default clone is SSE2.
// Without FMA contraction both clones give bit-identical results.
#define XM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XM_CLONES
#endif

#if defined(__GNUC__)
#define XM_INLINE inline __attribute__((always_inline))
#define XM_LAMBDA_INLINE __attribute__((always_inline))
#else
#define XM_INLINE inline
#define XM_LAMBDA_INLINE
#endif

namespace xmodal::cpd {
namespace {

// ------------------------------------------------------------------ one row: sums over ranges
// For a query point q and inner points (structure of arrays, sorted by grid cell) in the given
// contiguous ranges, over the support {i : d2_i <= r2} (d2_i = |q - p_i|^2, the same arithmetic
// whichever set is the query, since q - p = -(p - q) exactly):
//   k_i = exp(-(d2_i - shift_i) * inv) * w_i,  shift_i = ishift[i] (ISHIFT), the row's qshift
//   (QSHIFT) or 0 (neither: the same value as a zero shift, d2 - 0 = d2 exactly),
//   sum0 = sum_i k_i, col[c] = sum_i k_i v_c,i, (BEST) the original index id_i of the largest k_i
//   (arith::better: the smallest index among equal values, as on the GPU),
//   (MIN) the smallest d2_i of the support among points of positive weight (+inf if none).
// Exponents are <= 0: d2 >= shift for every point of positive weight (the shift is such a d2, and
// ISHIFT rows are only run for moving points of positive weight); shifted rows also clamp the
// difference at 0 (zero-weight points, whose terms are 0 anyway; and a safety net).
// Lane accumulators in a fixed order: deterministic.
// Every array of an Inner holds kPad finite elements (zeros) past its last point: the masked tail
// chunk of a row reads up to 64 bytes (16 floats) past the end of a range.
constexpr int64_t kPad = 16;

// At most this many grid cells per inner point (int64 offsets: 32 bytes per point). A sparse set
// in a large bounding box (a ball of 1M points) otherwise gets cells far wider than the support
// radius (2 cells per point: 1.5 radii wide at the end of a 1M-point rigid fit) and every query
// visits ~20x the support's points; 8 per point was slower again (more, shorter rows).
constexpr double kCellsPerPoint = 4.0;

// From this many points the per-point loops of the grid's counting sort (cell of each point, the
// gather of the sorted coordinates) run on the OpenMP threads (at 1M points they were a quarter of
// an E-step on one thread); each element is written by one thread, so the grid is the same.
constexpr int64_t kParallelSortMin = 100000;

template <class T>
struct Inner {
    const T* coord[3];
    const T* w;        // per inner point weight
    const T* shift;    // per inner point shift of d2 (ISHIFT rows), else null
    const T* col[3];   // columns to sum (NC of them)
    const int32_t* id; // original index of each inner point (BEST rows), else null
};

template <class T>
struct RowArgs {
    T inv;     // 1 / (2 sigma2)
    T r2;      // support radius squared (+inf: every pair)
    T qshift;  // shift of d2 for the whole row (when not ISHIFT)
    // Scratch of at least (candidates + 2 * lanes) entries, or null: with it (and a finite r2) the
    // row first compacts the candidates in the support into idx / d2 (row_impl, phase 1).
    int32_t* idx = nullptr;
    T* d2 = nullptr;
};

// Whether the E-step rows of precision T compact their candidates first (row_impl). Measured on
// 20,000 points in 3-D, one thread, sigma2 late to mid fit (benchmarks/results/
// cpu-2core-2026-12-02-estep-compaction.txt): float64 1.28-1.48x faster; float32 (16 lanes, whose
// exp over every candidate costs less) level to 15 % slower, so it keeps the lanes over all.
template <class T>
constexpr bool kCompactRows = std::is_same<T, double>::value;

// Per-thread scratch of the compacting rows (grown, never shrunk).
template <class T>
struct RowScratch {
    std::vector<int32_t> idx;
    std::vector<T> d2;
    void fit(int64_t candidates, RowArgs<T>& ra) {
        if (!kCompactRows<T>) return;
        const size_t n = size_t(candidates + 2 * kPad);
        if (idx.size() < n) {
            idx.resize(n, 0);
            d2.resize(n, T(0));
        }
        ra.idx = idx.data();
        ra.d2 = d2.data();
    }
};

template <class T, int D>
XM_INLINE T dist2(T q0, T q1, T q2, const Inner<T>& in, int64_t i) {
    return arith::dist2<T, D>(q0, q1, q2, in.coord[0][i], in.coord[1][i], D == 3 ? in.coord[2][i] : T(0));
}

template <class T, int D, int NC, bool BEST, bool MIN, bool ISHIFT, bool QSHIFT>
XM_INLINE void row_impl(const T* q, const int64_t* ranges, int nranges, const Inner<T>& in, const RowArgs<T>& ra,
                        double* sum0, double* colsum, int32_t* best_pos, T* best_val, T* dmin) {
    constexpr int L = 64 / sizeof(T);
    constexpr T kInf = std::numeric_limits<T>::infinity();
    T a0[L];
    T ac[NC > 0 ? NC : 1][L];
    T bv[L];
    int32_t bi[L];
    T dm[L];
    for (int j = 0; j < L; ++j) {
        a0[j] = 0;
        for (int c = 0; c < (NC > 0 ? NC : 1); ++c) ac[c][j] = 0;
        bv[j] = -1;
        bi[j] = -1;
        dm[j] = kInf;
    }
    const T q0 = q[0], q1 = q[1], q2 = D == 3 ? q[2] : T(0);
    const T inv = ra.inv, r2 = ra.r2, qsh = ra.qshift;
    // One chunk of L inner points i0 .. i0 + L - 1 in lane order; MASKED: only the first `rem` are
    // in the range (the others are read from the padding or the next cells, always in bounds, and
    // contribute exactly nothing: a zero term, no best, no minimum). Lane j always takes point
    // b + (multiple of L) + j, so the sums are the same as a scalar loop over the range's tail.
    // NL: lanes processed (L, or L / 2 for a tail of at most L / 2 points: lanes L / 2 .. L - 1
    // then see nothing, exactly as if they were masked).
    auto chunk = [&](int64_t i0, int64_t rem, auto masked, auto lanes) {
        constexpr bool MASKED = decltype(masked)::value;
        constexpr int NL = decltype(lanes)::value;
        T k[NL];
        T dd[NL];
        for (int j = 0; j < NL; ++j) {
            const T d2 = dist2<T, D>(q0, q1, q2, in, i0 + j);
            const T e = ISHIFT ? arith::shifted(d2, in.shift[i0 + j]) : (QSHIFT ? arith::shifted(d2, qsh) : d2);
            const T kk = arith::pair_term(d2, e, inv, in.w[i0 + j], r2);
            k[j] = (!MASKED || j < rem) ? kk : T(0);
            if (MIN) dd[j] = d2;
        }
        for (int j = 0; j < NL; ++j) a0[j] += k[j];
        for (int c = 0; c < NC; ++c)
            for (int j = 0; j < NL; ++j) ac[c][j] += k[j] * in.col[c][i0 + j];
        if (BEST) {
            for (int j = 0; j < NL; ++j) {
                const int32_t id = in.id[i0 + j];
                const bool g = (!MASKED || j < rem) && arith::better(k[j], id, bv[j], bi[j]);
                bv[j] = g ? k[j] : bv[j];
                bi[j] = g ? id : bi[j];
            }
        }
        if (MIN) {
            for (int j = 0; j < NL; ++j) {
                const T v = ((!MASKED || j < rem) && arith::in_support(dd[j], r2) && in.w[i0 + j] > 0) ? dd[j] : kInf;
                dm[j] = v < dm[j] ? v : dm[j];
            }
        }
    };
    using Full = std::integral_constant<int, L>;
    using Half = std::integral_constant<int, L / 2>;
    if (kCompactRows<T> && ra.idx != nullptr && r2 < kInf) {
        // Phase 1: the candidates in the support with a positive weight, compacted into ra.idx /
        // ra.d2 (branch-free: every lane is written, the count advances on the kept ones). Late in
        // a fit about 40 % of the grid's candidates are in the support; the others only cost this
        // distance, not the exp. Dropped candidates have terms of exactly 0, never win BEST (its
        // result needs a positive value) nor count for MIN, so only the order of the sums changes.
        int32_t* const sidx = ra.idx;
        T* const sd2 = ra.d2;
        int64_t n = 0;
        for (int r = 0; r < nranges; ++r) {
            const int64_t b = ranges[2 * r], e = ranges[2 * r + 1];
            for (int64_t i = b; i < e; i += L) {  // the tail reads up to L - 1 padded elements past e
                T dv[L];
                for (int j = 0; j < L; ++j) dv[j] = dist2<T, D>(q0, q1, q2, in, i + j);
                const int64_t rem = e - i;
                for (int j = 0; j < L; ++j) {
                    const bool ok = (j < rem) & arith::in_support(dv[j], r2) & (in.w[i + j] > T(0));
                    sidx[n] = (int32_t)(i + j);
                    sd2[n] = dv[j];
                    n += ok;
                }
            }
        }
        for (int j = 0; j < L; ++j) {  // read by the masked tail of phase 2: valid positions
            sidx[n + j] = 0;
            sd2[n + j] = T(0);
        }
        // Phase 2: lanes over the kept pairs, the arithmetic of `chunk` per pair
        auto kept = [&](int64_t c0, int64_t rem, auto masked, auto lanes) XM_LAMBDA_INLINE {
            constexpr bool MASKED = decltype(masked)::value;
            constexpr int NL = decltype(lanes)::value;
            int32_t pos[NL];
            T k[NL];
            for (int j = 0; j < NL; ++j) pos[j] = sidx[c0 + j];
            for (int j = 0; j < NL; ++j) {
                const T d2 = sd2[c0 + j];
                const T e = ISHIFT ? arith::shifted(d2, in.shift[pos[j]]) : (QSHIFT ? arith::shifted(d2, qsh) : d2);
                const T kk = arith::pair_term(d2, e, inv, in.w[pos[j]], r2);
                k[j] = (!MASKED || j < rem) ? kk : T(0);
            }
            for (int j = 0; j < NL; ++j) a0[j] += k[j];
            for (int c = 0; c < NC; ++c)
                for (int j = 0; j < NL; ++j) ac[c][j] += k[j] * in.col[c][pos[j]];
            if (BEST) {
                for (int j = 0; j < NL; ++j) {
                    const int32_t id = in.id[pos[j]];
                    const bool g = (!MASKED || j < rem) && arith::better(k[j], id, bv[j], bi[j]);
                    bv[j] = g ? k[j] : bv[j];
                    bi[j] = g ? id : bi[j];
                }
            }
            if (MIN) {
                for (int j = 0; j < NL; ++j) {
                    const T v = (!MASKED || j < rem) ? sd2[c0 + j] : kInf;
                    dm[j] = v < dm[j] ? v : dm[j];
                }
            }
        };
        int64_t c = 0;
        for (; c + L <= n; c += L) kept(c, (int64_t)L, std::false_type{}, Full{});
        if (n - c > L / 2)
            kept(c, n - c, std::true_type{}, Full{});
        else if (c < n)
            kept(c, n - c, std::true_type{}, Half{});
    } else {
        for (int r = 0; r < nranges; ++r) {
            const int64_t b = ranges[2 * r], e = ranges[2 * r + 1];
            int64_t i = b;
            for (; i + L <= e; i += L) chunk(i, (int64_t)L, std::false_type{}, Full{});
            // the tail: one masked chunk (inputs are padded by kPad >= L elements)
            if (e - i > L / 2)
                chunk(i, e - i, std::true_type{}, Full{});
            else if (i < e)
                chunk(i, e - i, std::true_type{}, Half{});
        }
    }
    double s = 0;
    for (int j = 0; j < L; ++j) s += (double)a0[j];
    *sum0 = s;
    for (int c = 0; c < NC; ++c) {
        double sc = 0;
        for (int j = 0; j < L; ++j) sc += (double)ac[c][j];
        colsum[c] = sc;
    }
    if (BEST) {
        T v = -1;
        int32_t p = -1;
        for (int j = 0; j < L; ++j)  // lanes that saw no point keep (-1, -1) and never win
            if (arith::better(bv[j], bi[j], v, p)) {
                v = bv[j];
                p = bi[j];
            }
        *best_pos = p;
        *best_val = v;
    }
    if (MIN) {
        T v = kInf;
        for (int j = 0; j < L; ++j) v = dm[j] < v ? dm[j] : v;
        *dmin = v;
    }
}

template <class T>
using RowFn = void (*)(const T*, const int64_t*, int, const Inner<T>&, const RowArgs<T>&, double*, double*, int32_t*,
                       T*, T*);

// The row functions: non-template, so that each has its AVX2 clone. The float and double ones of a
// kind and dimension are overloads of one name, which pick_row resolves by RowFn<T>.
#define XM_ROW(NAME, T, D, NC, BEST, MIN, ISHIFT, QSHIFT)                                                      \
    XM_CLONES void NAME(const T* q, const int64_t* ranges, int nranges, const Inner<T>& in, const RowArgs<T>& ra, \
                        double* sum0, double* colsum, int32_t* best_pos, T* best_val, T* dmin) {                 \
        row_impl<T, D, NC, BEST, MIN, ISHIFT, QSHIFT>(q, ranges, nranges, in, ra, sum0, colsum, best_pos, best_val, \
                                                      dmin);                                                     \
    }
// pass 1 (sum, optionally with the support minimum), pass 2 (sums, best; per-inner shift or not),
// Gaussian transform (sums of columns).
#define XM_ROWS(T)                                      \
    XM_ROW(p1_2, T, 2, 0, false, false, false, false)   \
    XM_ROW(p1_3, T, 3, 0, false, false, false, false)   \
    XM_ROW(p1m_2, T, 2, 0, false, true, false, false)   \
    XM_ROW(p1m_3, T, 3, 0, false, true, false, false)   \
    XM_ROW(p1s_2, T, 2, 0, false, false, false, true)   \
    XM_ROW(p1s_3, T, 3, 0, false, false, false, true)   \
    XM_ROW(p2_2, T, 2, 2, true, false, false, false)    \
    XM_ROW(p2_3, T, 3, 3, true, false, false, false)    \
    XM_ROW(p2s_2, T, 2, 2, true, false, true, false)    \
    XM_ROW(p2s_3, T, 3, 3, true, false, true, false)    \
    XM_ROW(gt_2, T, 2, 2, false, false, false, false)   \
    XM_ROW(gt_3, T, 3, 3, false, false, false, false)
XM_ROWS(float)
XM_ROWS(double)
#undef XM_ROWS
#undef XM_ROW

enum class Row { pass1, pass1_min, pass1_shift, pass2, pass2_shift, gauss };

template <class T>
RowFn<T> pick_row(int D, Row kind) {
    using F = RowFn<T>;  // picks the overload of precision T
    switch (kind) {
        case Row::pass1: return D == 2 ? F(p1_2) : F(p1_3);
        case Row::pass1_min: return D == 2 ? F(p1m_2) : F(p1m_3);
        case Row::pass1_shift: return D == 2 ? F(p1s_2) : F(p1s_3);
        case Row::pass2: return D == 2 ? F(p2_2) : F(p2_3);
        case Row::pass2_shift: return D == 2 ? F(p2s_2) : F(p2s_3);
        default: return D == 2 ? F(gt_2) : F(gt_3);
    }
}

// ------------------------------------------------------------------ uniform cell grid
// Inner points sorted by cell (row-major, last axis fastest, stable), so the cells of one row of
// the grid along the last axis are one contiguous range. The grid only narrows the candidates:
// which pairs count is decided by the exact test d2 <= r2 in the row functions, so the grid may
// return any superset of the support (it does, with a safety margin on the radius).
template <class T>
struct Grid {
    int D = 0;
    int64_t n = 0;
    int64_t nc[3] = {1, 1, 1};
    double lo[3] = {0, 0, 0};
    double h = 1;
    std::vector<int64_t> perm;   // sorted position -> original index
    std::vector<int64_t> start;  // cell -> first sorted position (size cells + 1)
    std::vector<T> coord[3];     // sorted coordinates
    std::vector<int32_t> id;     // sorted position -> original index (int32: n < 2^31)

    void build(const T* P, int64_t n_, int D_, double radius) {
        D = D_;
        n = n_;
        double hi[3] = {0, 0, 0};
        for (int d = 0; d < D; ++d) {
            lo[d] = std::numeric_limits<double>::infinity();
            hi[d] = -lo[d];
        }
        for (int64_t i = 0; i < n; ++i)
            for (int d = 0; d < D; ++d) {
                lo[d] = std::min(lo[d], (double)P[i * D + d]);
                hi[d] = std::max(hi[d], (double)P[i * D + d]);
            }
        double ext_max = 0;
        for (int d = 0; d < D; ++d) ext_max = std::max(ext_max, hi[d] - lo[d]);
        // Cells of half the radius (a query visits ~(2r + h)^d instead of ~(3r)^d of volume),
        // enlarged so that there are at most ~kCellsPerPoint n + 64 cells.
        const double cap = kCellsPerPoint * (double)n + 64.0;
        auto cells = [&](double hh) {
            double c = 1;
            for (int d = 0; d < D; ++d) c *= std::floor((hi[d] - lo[d]) / hh) + 1.0;
            return c;
        };
        h = std::isfinite(radius) ? 0.5 * radius : std::numeric_limits<double>::infinity();
        if (std::isfinite(h)) {
            if (!(h > 0)) h = ext_max > 0 ? ext_max / cap : 1.0;
            if (!(cells(h) <= cap)) {
                h = std::max(h, ext_max / std::pow(cap, 1.0 / D));
                for (int it = 0; it < 200 && !(cells(h) <= cap); ++it) h *= 1.25;
            }
            if (!(cells(h) <= cap)) h = std::numeric_limits<double>::infinity();  // one cell
        }
        int64_t total = 1;
        for (int d = 0; d < D; ++d) {
            nc[d] = std::isfinite(h) && h > 0 ? (int64_t)std::floor((hi[d] - lo[d]) / h) + 1 : 1;
            if (nc[d] < 1) nc[d] = 1;
            total *= nc[d];
        }
        for (int d = D; d < 3; ++d) nc[d] = 1;
        std::vector<int64_t> cell(n);
        // the cells (each written by one thread) and the sorted coordinates in parallel; the
        // counting sort itself stays serial (stable, so the order does not depend on threads)
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= kParallelSortMin)
        for (int64_t i = 0; i < n; ++i) cell[i] = cell_of(&P[i * D]);
        start.assign(total + 1, 0);
        for (int64_t i = 0; i < n; ++i) ++start[cell[i] + 1];
        for (int64_t c = 0; c < total; ++c) start[c + 1] += start[c];
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        perm.resize(n);
        for (int64_t i = 0; i < n; ++i) perm[fill[cell[i]]++] = i;
        id.assign(perm.begin(), perm.end());
        id.resize(n + kPad, 0);
        for (int d = 0; d < D; ++d) coord[d].assign(n + kPad, T(0));
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= kParallelSortMin)
        for (int64_t s = 0; s < n; ++s)
            for (int d = 0; d < D; ++d) coord[d][s] = P[perm[s] * D + d];
    }
    int64_t axis_cell(int d, double v) const { return detail::clamped_cell(v, lo[d], h, nc[d]); }
    int64_t cell_of(const T* p) const {
        int64_t c = 0;
        for (int d = 0; d < D; ++d) c = c * nc[d] + axis_cell(d, (double)p[d]);
        return c;
    }
    // Contiguous sorted ranges holding every inner point within `radius` of q (and possibly more).
    void ranges(const T* q, double radius, std::vector<int64_t>& out) const {
        out.clear();
        int64_t a[3], b[3];
        for (int d = 0; d < D; ++d) {
            if (nc[d] == 1 || !std::isfinite(radius)) {
                a[d] = 0;
                b[d] = nc[d] - 1;
                continue;
            }
            const double l = std::floor(((double)q[d] - radius - lo[d]) / h);
            const double u = std::floor(((double)q[d] + radius - lo[d]) / h);
            if (u < 0 || l > (double)(nc[d] - 1)) return;  // nothing within reach
            a[d] = l < 0 ? 0 : (int64_t)l;
            b[d] = u > (double)(nc[d] - 1) ? nc[d] - 1 : (int64_t)u;
        }
        // Rows along the last axis, each clipped to the ball: the row's cells in the other axes lie
        // at a distance >= dperp from q, so only |x_last - q_last| <= sqrt(radius^2 - dperp^2) can
        // be within the radius (rows with dperp > radius are skipped). dperp is shrunk by 1e-6 h,
        // far more than the rounding of the cell arithmetic, so the ranges stay a superset of the
        // ball (at cells of ~radius / 1.3, half of the box's points).
        const int L = D - 1;
        const bool clip = std::isfinite(radius) && nc[L] > 1;
        const double r2 = radius * radius, slack = 1e-6 * h;
        double g2[2][8];  // squared gap from q to the slab of each visited cell, axes 0 .. D - 2
        const bool small = b[0] - a[0] < 8 && (D == 2 || b[1] - a[1] < 8);
        for (int d = 0; d < L && small; ++d)
            for (int64_t i = a[d]; i <= b[d]; ++i) {
                const double c0 = lo[d] + (double)i * h, c1 = c0 + h, v = (double)q[d];
                const double g = nc[d] > 1 && std::isfinite(radius)
                                     ? std::max((v < c0 ? c0 - v : (v > c1 ? v - c1 : 0.0)) - slack, 0.0)
                                     : 0.0;
                g2[d][i - a[d]] = g * g;
            }
        const double qL = (double)q[L] - lo[L];
        auto emit = [&](int64_t base, double dperp2) {
            int64_t za = a[L], zb = b[L];
            if (clip && small) {
                const double rest = r2 - dperp2;
                if (rest < 0) return;
                const double rp = std::sqrt(rest);
                const double l = std::floor((qL - rp) / h);
                const double u = std::floor((qL + rp) / h);
                if (u < 0 || l > (double)(nc[L] - 1)) return;
                za = std::max(za, l < 0 ? (int64_t)0 : (int64_t)l);
                zb = std::min(zb, u > (double)(nc[L] - 1) ? nc[L] - 1 : (int64_t)u);
                if (zb < za) return;
            }
            const int64_t s = start[base + za], e = start[base + zb + 1];
            if (e > s) {
                out.push_back(s);
                out.push_back(e);
            }
        };
        if (D == 2) {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0) emit(i0 * nc[1], small ? g2[0][i0 - a[0]] : 0.0);
        } else {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0) {
                const double g0 = small ? g2[0][i0 - a[0]] : 0.0;
                if (small && clip && g0 > r2) continue;
                for (int64_t i1 = a[1]; i1 <= b[1]; ++i1)
                    emit((i0 * nc[1] + i1) * nc[2], small ? g0 + g2[1][i1 - a[1]] : 0.0);
            }
        }
    }
};

// Query points in the order of the grid's cells (stable counting sort): consecutive queries then
// visit the same inner cells, which stay in cache (in input order, e.g. points sorted by radius,
// every query fetched ~25 scattered rows of a grid far larger than the cache: 2-3x slower at 1M
// points). Each query's sums do not depend on the order, so the results are unchanged.
template <class T>
std::vector<int64_t> cell_order(const Grid<T>& g, const T* Q, int64_t n, std::vector<T>& sorted) {
    int64_t total = (int64_t)g.start.size() - 1;
    std::vector<int64_t> cell(n), first(total + 1, 0), order(n);
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= kParallelSortMin)
    for (int64_t i = 0; i < n; ++i) cell[i] = g.cell_of(&Q[i * g.D]);
    for (int64_t i = 0; i < n; ++i) ++first[cell[i] + 1];
    for (int64_t c = 0; c < total; ++c) first[c + 1] += first[c];
    for (int64_t i = 0; i < n; ++i) order[first[cell[i]]++] = i;
    // the queries' coordinates in that order (read in input order, they would miss the cache)
    const int D = g.D;
    sorted.resize(n * D);
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= kParallelSortMin)
    for (int64_t k = 0; k < n; ++k)
        for (int d = 0; d < D; ++d) sorted[k * D + d] = Q[order[k] * D + d];
    return order;
}

template <class T>
void check_finite(const T* p, int64_t n, const char* name) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite((double)p[i])) throw value_error(std::string("cpd: ") + name + " has non-finite values");
}

// Squared distances between any two of the points must be finite in T (arith::check_extent), and
// the coordinates' magnitude bounds the rounding of the grid's cell arithmetic. Returns
// max |coordinate|.
template <class T>
double check_extent(const T* A, int64_t na, const T* B, int64_t nb, int D, const char* what) {
    double lo[3], hi[3], amax = 0;
    for (int d = 0; d < D; ++d) {
        lo[d] = std::numeric_limits<double>::infinity();
        hi[d] = -lo[d];
    }
    for (const auto& [P, n] : {std::pair{A, na}, std::pair{B, nb}})
        for (int64_t i = 0; i < n; ++i)
            for (int d = 0; d < D; ++d) {
                const double v = (double)P[i * D + d];
                lo[d] = std::min(lo[d], v);
                hi[d] = std::max(hi[d], v);
                amax = std::max(amax, std::fabs(v));
            }
    arith::check_extent<T>(lo, hi, D, what);
    return amax;
}

// Below this many candidate pairs (M * N bounds them) a pass runs on the calling thread: waking
// OpenMP workers costs more than the work (on a loaded machine, a scheduler time slice each
// time). Results do not depend on the thread count either way.
constexpr double kParallelMinPairs = 65536.0;

// Search radius of the grid for the support d2 <= r2: the exact radius plus a margin for the
// rounding of d2 (relative, a few ulps of T) and of the cell arithmetic (absolute, ulps of double
// at the coordinates' magnitude). Any superset is correct; the margin only keeps it a superset.
double search_radius(double r2, double amax) {
    if (!std::isfinite(r2)) return std::numeric_limits<double>::infinity();
    return std::sqrt(r2) * (1.0 + 1e-5) + 64.0 * std::numeric_limits<double>::epsilon() * amax;
}

int64_t range_count(const std::vector<int64_t>& rg) {
    int64_t cnt = 0;
    for (size_t r = 0; r < rg.size(); r += 2) cnt += rg[r + 1] - rg[r];
    return cnt;
}

// Pass 1 output per fixed point n: the pass-2 weight g_n, the shift h_n, log s_n and flags.
template <class T>
struct Columns {
    std::vector<T> g, shift;
    std::vector<double> log_s;
    std::vector<int64_t> work;
    std::vector<char> shifted, empty;
    explicit Columns(int64_t N) : g(N), shift(N), log_s(N), work(N, 0), shifted(N, 0), empty(N, 0) {}
};

// Pass 1: over fixed points n. S_n = sum_m a_m exp(-(d2_mn - h_n)^+ inv) over the support, h_n = 0,
// or the support's smallest d2 when the largest term is below exp(-kSafe) (arith::needs_shift).
template <class T>
void pass1(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, const arith::Scalars<T>& sc,
           double c, double radius, bool parallel, T* Pt1, Columns<T>& out) {
    Grid<T> gy;
    gy.build(TY, M, D, radius);
    std::vector<T> wy(M + kPad, T(0));
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (M >= kParallelSortMin)
    for (int64_t s = 0; s < M; ++s) wy[s] = weights ? weights[gy.perm[s]] : T(1);
    const Inner<T> iny{{gy.coord[0].data(), gy.coord[1].data(), D == 3 ? gy.coord[2].data() : nullptr},
                       wy.data(), nullptr, {nullptr, nullptr, nullptr}, nullptr};
    const bool may_shift = arith::may_shift(sc.r2, sc.inv);
    const RowFn<T> row1 = pick_row<T>(D, may_shift ? Row::pass1_min : Row::pass1);
    const RowFn<T> row1s = pick_row<T>(D, Row::pass1_shift);
    std::vector<T> Xs;
    const std::vector<int64_t> order = cell_order(gy, X, N, Xs);
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
    {
        std::vector<int64_t> rg;
        rg.reserve(256);
        RowScratch<T> scratch;
#pragma omp for schedule(dynamic, 64)
        for (int64_t k = 0; k < N; ++k) {
            const int64_t n = order[k];
            gy.ranges(&Xs[k * D], radius, rg);
            double S = 0, dummy[3];
            int32_t bp;
            T bvv, dmin = std::numeric_limits<T>::infinity();
            RowArgs<T> ra{sc.inv, sc.r2, T(0)};
            int64_t cnt = range_count(rg);
            scratch.fit(cnt, ra);
            row1(&Xs[k * D], rg.data(), (int)(rg.size() / 2), iny, ra, &S, dummy, &bp, &bvv, &dmin);
            T h = 0;
            if (may_shift && arith::needs_shift(dmin, sc.inv)) {
                h = dmin;
                ra.qshift = h;
                row1s(&Xs[k * D], rg.data(), (int)(rg.size() / 2), iny, ra, &S, dummy, &bp, &bvv, nullptr);
                cnt *= 2;
                out.shifted[n] = 1;
            }
            out.work[n] = cnt;
            out.shift[n] = h;
            const arith::Column col = arith::finish_column(S, (double)h * (double)sc.inv, c);
            out.g[n] = (T)col.g;
            Pt1[n] = (T)col.pt;
            out.log_s[n] = col.log_s;
            out.empty[n] = col.empty ? 1 : 0;
        }
    }
}

// Pass 2: over moving points m, sums over the same support with the weights g_n (and the shifts
// h_n of pass 1, so every term is the pass-1 term times g_n). Returns the work (pairs visited).
template <class T>
int64_t pass2(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights,
              const arith::Scalars<T>& sc, double radius, bool parallel, const Columns<T>& col, bool any_shift,
              T* P1, T* PX, int64_t* best_idx, T* best_prob) {
    Grid<T> gx;
    gx.build(X, N, D, radius);
    std::vector<T> wx(N + kPad, T(0)), sx(N + kPad, T(0));
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (N >= kParallelSortMin)
    for (int64_t s = 0; s < N; ++s) {
        wx[s] = col.g[gx.perm[s]];
        sx[s] = col.shift[gx.perm[s]];
    }
    const Inner<T> inx{{gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr},
                       wx.data(),
                       any_shift ? sx.data() : nullptr,
                       {gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr},
                       gx.id.data()};
    std::vector<int64_t> work(M, 0);
    const RowFn<T> row2 = pick_row<T>(D, any_shift ? Row::pass2_shift : Row::pass2);
    std::vector<T> Ys;
    const std::vector<int64_t> order = cell_order(gx, TY, M, Ys);
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
    {
        std::vector<int64_t> rg;
        rg.reserve(256);
        RowScratch<T> scratch;
#pragma omp for schedule(dynamic, 64)
        for (int64_t k = 0; k < M; ++k) {
            const int64_t m = order[k];
            const double a = weights ? (double)weights[m] : 1.0;
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp = -1;
            T bvv = 0;
            if (a > 0) {  // a zero weight makes the row of P zero: nothing to sum
                gx.ranges(&Ys[k * D], radius, rg);
                RowArgs<T> ra{sc.inv, sc.r2, T(0)};
                work[m] = range_count(rg);
                scratch.fit(work[m], ra);
                row2(&Ys[k * D], rg.data(), (int)(rg.size() / 2), inx, ra, &s0, cs, &bp, &bvv, nullptr);
            }
            if (D == 2)
                arith::finish_moving<T, 2>(a, s0, cs, bp, bvv, &P1[m], &PX[m * D], best_idx ? &best_idx[m] : nullptr,
                                           best_prob ? &best_prob[m] : nullptr);
            else
                arith::finish_moving<T, 3>(a, s0, cs, bp, bvv, &P1[m], &PX[m * D], best_idx ? &best_idx[m] : nullptr,
                                           best_prob ? &best_prob[m] : nullptr);
        }
    }
    int64_t pairs = 0;
    for (int64_t m = 0; m < M; ++m) pairs += work[m];
    return pairs;
}

template <class T>
EStepStats estep_impl(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2,
                      double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob,
                      double* log_s_out) {
    const double amax = check_extent(X, N, TY, M, D, "cpd estep");
    const arith::Scalars<T> sc = arith::estep_scalars<T>(sigma2, cutoff);
    const double radius = search_radius((double)sc.r2, amax);
    const bool parallel = (double)N * (double)M >= kParallelMinPairs;
    Columns<T> col(N);
    pass1(X, N, TY, M, D, weights, sc, c, radius, parallel, Pt1, col);
    EStepStats stats;
    double logsum = 0;
    for (int64_t n = 0; n < N; ++n) {
        stats.pairs += col.work[n];
        stats.shifted_columns += col.shifted[n];
        if (log_s_out) log_s_out[n] = col.log_s[n];
        logsum += arith::log_s_term(col.log_s[n], col.empty[n] != 0);
        stats.empty_columns += col.empty[n];
    }
    stats.log_s_sum = logsum;
    stats.pairs += pass2(X, N, TY, M, D, weights, sc, radius, parallel, col, stats.shifted_columns > 0, P1, PX,
                         best_idx, best_prob);
    return stats;
}

EStepStats estep_float_via_double(const float* X, int64_t N, const float* TY, int64_t M, int D, const float* weights,
                                  double sigma2, double c, double cutoff, float* P1, float* Pt1, float* PX,
                                  int64_t* best_idx, float* best_prob, double* log_s_out) {
    std::vector<double> Xd(X, X + N * D), Yd(TY, TY + M * D), wd;
    if (weights) wd.assign(weights, weights + M);
    std::vector<double> p1(M), pt1(N), px(M * D), bp(best_prob ? M : 0);
    EStepStats st = estep_impl<double>(Xd.data(), N, Yd.data(), M, D, weights ? wd.data() : nullptr, sigma2, c,
                                       cutoff, p1.data(), pt1.data(), px.data(), best_idx,
                                       best_prob ? bp.data() : nullptr, log_s_out);
    for (int64_t i = 0; i < M; ++i) P1[i] = (float)p1[i];
    for (int64_t i = 0; i < N; ++i) Pt1[i] = (float)pt1[i];
    for (int64_t i = 0; i < M * D; ++i) PX[i] = (float)px[i];
    if (best_prob)
        for (int64_t i = 0; i < M; ++i) best_prob[i] = (float)bp[i];
    return st;
}

}  // namespace

template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights,
                 double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx,
                 T* best_prob, double* log_s_out) {
    arith::check_estep_args(N, M, D, sigma2, c, cutoff);
    check_finite(X, N * D, "fixed");
    check_finite(TY, M * D, "moved");
    if (weights) {
        check_finite(weights, M, "weights");
        for (int64_t m = 0; m < M; ++m)
            require(weights[m] >= 0, "cpd estep: weights must be >= 0");
    }
    if constexpr (sizeof(T) == sizeof(float)) {
        if (arith::float_needs_double(sigma2, cutoff))
            return estep_float_via_double(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx,
                                          best_prob, log_s_out);
    }
    return estep_impl<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out);
}

template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                     double beta, double cutoff, T* out) {
    require(D == 2 || D == 3, "cpd: d must be 2 or 3, got " + std::to_string(D));
    require(K >= 1 && Q >= 1, "cpd: point sets must not be empty");
    require(K < (int64_t(1) << 31) && Q < (int64_t(1) << 31), "cpd: at most 2^31 - 1 points per set");
    require(std::isfinite(beta) && beta > 0, "cpd gauss_transform: beta must be positive");
    require(cutoff > 0, "cpd gauss_transform: cutoff must be positive");
    check_finite(centers, K * D, "centers");
    check_finite(coef, K * D, "coefficients");
    check_finite(points, Q * D, "points");
    const double amax = check_extent(centers, K, points, Q, D, "cpd gauss_transform");
    const double inv_d = 1.0 / (2.0 * beta * beta);
    require(std::isfinite(inv_d) && inv_d <= (double)std::numeric_limits<T>::max(),
            "cpd gauss_transform: beta is too small: 1 / (2 beta^2) overflows");
    const T inv = (T)inv_d;
    const T r2 = std::isfinite(cutoff) ? (T)(2.0 * beta * beta * cutoff) : std::numeric_limits<T>::infinity();
    const double radius = search_radius((double)r2, amax);
    Grid<T> g;
    g.build(centers, K, D, radius);
    std::vector<T> ones(K + kPad, T(0));
    std::fill(ones.begin(), ones.begin() + K, T(1));
    std::vector<T> cols[3];
    for (int d = 0; d < D; ++d) {
        cols[d].assign(K + kPad, T(0));
        for (int64_t s = 0; s < K; ++s) cols[d][s] = coef[g.perm[s] * D + d];
    }
    Inner<T> in{{g.coord[0].data(), g.coord[1].data(), D == 3 ? g.coord[2].data() : nullptr},
                ones.data(),
                nullptr,
                {cols[0].data(), cols[1].data(), D == 3 ? cols[2].data() : nullptr},
                nullptr};
    const RowFn<T> row = pick_row<T>(D, Row::gauss);
    std::vector<T> Ps;
    const std::vector<int64_t> order = cell_order(g, points, Q, Ps);
#pragma omp parallel num_threads(xmodal::num_threads()) if ((double)K * (double)Q >= kParallelMinPairs)
    {
        std::vector<int64_t> rg;
        rg.reserve(256);
#pragma omp for schedule(dynamic, 64)
        for (int64_t k = 0; k < Q; ++k) {
            const int64_t q = order[k];
            g.ranges(&Ps[k * D], radius, rg);
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp;
            T bvv;
            const RowArgs<T> ra{inv, r2, T(0)};
            row(&Ps[k * D], rg.data(), (int)(rg.size() / 2), in, ra, &s0, cs, &bp, &bvv, nullptr);
            for (int d = 0; d < D; ++d) out[q * D + d] = (T)cs[d];
        }
    }
}

// ------------------------------------------------------------------ E-step with per-point features
// The kernel, the support test and the per-pair numbers (squared distances, the exponent, the
// column's log s_n, the best match) are those of xmodal/detail/cpd_feature_arith.hpp (shared with
// the CUDA twin in cuda/cpd.cu), in double for both precisions. The rows run like those of estep:
// structure-of-arrays inner points (coordinates, feature columns, weights or log s_n, in the cell
// grid's sorted order, padded by kPad), lanes of 16 pairs with a masked tail (16 rather than
// estep's 8 double lanes: the rows are bound by the latency of the exp polynomial, and more
// independent lanes hide it; 4, 8 and 32 were slower), templated on D and on F = 1, 2, 3 (other F: a
// runtime loop), and the polynomial exp (arith::exp_neg, relative error < 1e-15 against exp()).
// Pass 1 sums S_n = sum_m w_m exp(-e_mn) and the smallest exponent e_min together; a column whose
// e_min exceeds kSafe (or whose sum is below 1e-150: tiny weights) is summed again relative to
// e_min (log-sum-exp), so as in the scalar version nothing that matters underflows. Pass 2 forms
// P[m, n] / w_m = exp(-(e_mn + log s_n)); a row with an exponent above 700 (a weight below
// ~1e-300) falls back to the scalar loop with exp(), whose range it needs. Within each grid cell
// the inner points are ordered by their last coordinate, so each range is trimmed to the slab
// |z - q_z| <= radius by binary search (EStepStats::pairs counts the trimmed candidates). A row
// first compacts the candidates in the support (about half of them on real data), then runs the
// lanes over those only: lanes over every candidate were 1.2-1.4x slower than the scalar loop,
// which skips the exp outside the support (docs/cpd.md, "Feature kernel"). Compared with the former scalar loop
// (exp() per pair, sums in grid order): the same support and tie rule, sums in another order and
// exp to < 1e-15, so results agree to ~1e-14 (float64); best matches differ only among P values
// equal up to rounding.
namespace {

namespace fa = xmodal::cpd::farith;

// exp(x) for x <= 709 through the polynomial: below -700 as exp(x + 700) e^-700, so results in the
// subnormal range are kept (as exp() keeps them) instead of flushed to 0; exp(-inf) = 0.
XM_INLINE double fexp(double x) {
    const bool lo = x < -700.0;
    const double v = arith::exp_neg(lo ? x + 700.0 : x);
    return lo ? v * 9.85967654375977e-305 : v;
}

struct FInner {
    const double* x[3];  // sorted coordinates
    const double* f;     // feature column j at f + j * fstride
    int64_t fstride;
    const double* v;     // pass 1: weights; pass 2: log s_n (+inf where not finite: no term)
    const int32_t* id;   // pass 2: original index of each fixed point
};

struct FRowArgs {
    double inv, finv, r2, h;  // h: the shift of a KIND 1 row
    int F;
    int32_t* idx;  // scratch of at least (candidates + 2 * 16) entries: kept positions
    double* d2;    // and their squared distances (phase 1 of the row)
};

// Scratch of a row with `n` candidates (grown, never shrunk).
struct FScratch {
    std::vector<int32_t> idx;
    std::vector<double> d2;
    void fit(int64_t n) {
        if ((int64_t)idx.size() < n + 32) {
            idx.resize(size_t(n + 32), 0);
            d2.resize(size_t(n + 32), 0.0);
        }
    }
};

// KIND 0: pass 1, out = {sum_i w_i exp(-e_i), -, -, -, min e_i} over the support's points of
//         positive weight; KIND 1: pass 1 relative to ra.h, out[0] = sum_i w_i exp(h - e_i);
// KIND 2: pass 2, out = {sum p_i, sum p_i x_i (D), max exponent}, p_i = exp(-(e_i + log s_i)),
//         and the best match (largest p_i > 0, the smaller original index among equal values).
// FT > 0: F = FT columns; FT = 0: ra.F columns.
template <int D, int FT, int KIND>
XM_INLINE void frow_impl(const double* q, const double* fq, const int64_t* ranges, int nranges, const FInner& in,
                         const FRowArgs& ra, double* out, int32_t* best_pos, double* best_val) {
    constexpr int L = 16;
    static_assert(L <= kPad, "the masked tail chunk reads up to L - 1 elements past a range");
    constexpr double kInf = std::numeric_limits<double>::infinity();
    constexpr int NF = FT > 0 ? FT : 1;
    double a0[L], ac[3][L], bv[L], em[L];
    int32_t bi[L];
    for (int j = 0; j < L; ++j) {
        a0[j] = 0;
        ac[0][j] = ac[1][j] = ac[2][j] = 0;
        bv[j] = 0;
        bi[j] = -1;
        em[j] = KIND == 2 ? -kInf : kInf;
    }
    const double q0 = q[0], q1 = q[1], q2 = D == 3 ? q[2] : 0.0;
    double fqs[NF];
    for (int j = 0; j < NF; ++j) fqs[j] = fq[j];
    const double* fcol[NF];
    for (int c = 0; c < NF; ++c) fcol[c] = in.f + c * in.fstride;
    const int nf = FT > 0 ? FT : ra.F;
    const double inv = ra.inv, finv = ra.finv, r2 = ra.r2, h = ra.h;
    // Phase 1: the candidates in the support (d2 <= r2; passes 1: positive weight), compacted into
    // ra.idx / ra.d2 (branch-free: every lane is written, the count advances on the kept ones).
    // The grid's cells and the slab trimming leave about three candidates per pair of the
    // support; the exp (phase 2) runs on the kept ones only.
    int32_t* const sidx = ra.idx;
    double* const sd2 = ra.d2;
    int64_t k = 0;
    for (int r = 0; r < nranges; ++r) {
        const int64_t b = ranges[2 * r], e = ranges[2 * r + 1];
        for (int64_t i = b; i < e; i += L) {  // the tail reads up to L - 1 padded elements past e
            double d2v[L];
            for (int j = 0; j < L; ++j) {
                const double t0 = in.x[0][i + j] - q0;
                const double t1 = in.x[1][i + j] - q1;
                double d2 = t0 * t0 + t1 * t1;
                if (D == 3) {
                    const double t2 = in.x[2][i + j] - q2;
                    d2 = d2 + t2 * t2;
                }
                d2v[j] = d2;
            }
            const int64_t rem = e - i;
            for (int j = 0; j < L; ++j) {
                const bool ok = (j < rem) & (d2v[j] <= r2) & (KIND == 2 || in.v[i + j] > 0);
                sidx[k] = (int32_t)(i + j);
                sd2[k] = d2v[j];
                k += ok;
            }
        }
    }
    for (int j = 0; j < L; ++j) {  // the masked tail of phase 2 reads these: valid positions
        sidx[k + j] = 0;
        sd2[k + j] = 0;
    }
    // Phase 2, lanes of kept pairs. always_inline: an out-of-line lambda would be compiled once for
    // both clones of the row function, i.e. without AVX2 (it happened for F > 1)
    auto chunk = [&](int64_t c0, int64_t rem, auto masked, auto lanes) XM_LAMBDA_INLINE {
        constexpr bool MASKED = decltype(masked)::value;
        constexpr int NL = decltype(lanes)::value;
        int32_t pos[NL];
        double fdv[NL];
        for (int j = 0; j < NL; ++j) pos[j] = sidx[c0 + j];
        if (FT > 0) {
            for (int j = 0; j < NL; ++j) {
                double s = 0;
                for (int c = 0; c < NF; ++c) {
                    const double u = fqs[c] - fcol[c][pos[j]];
                    s = s + u * u;
                }
                fdv[j] = s;
            }
        } else {
            for (int j = 0; j < NL; ++j) fdv[j] = 0;
            for (int c = 0; c < nf; ++c) {
                const double fc = fq[c];
                const double* col = in.f + c * in.fstride;
                for (int j = 0; j < NL; ++j) {
                    const double u = fc - col[pos[j]];
                    fdv[j] = fdv[j] + u * u;
                }
            }
        }
        double t[NL], xv[NL];
        for (int j = 0; j < NL; ++j) {
            const double e = sd2[c0 + j] * inv + fdv[j] * finv;
            const bool ok = !MASKED || j < rem;
            if (KIND == 2) {
                const double x = -(e + in.v[pos[j]]);
                const double p = fexp(x);
                t[j] = ok ? p : 0.0;
                xv[j] = ok ? x : -kInf;
            } else {
                const double w = in.v[pos[j]];
                const double kv = w * arith::exp_neg(KIND == 1 ? h - e : -e);
                t[j] = ok ? kv : 0.0;
                xv[j] = ok ? e : kInf;
            }
        }
        for (int j = 0; j < NL; ++j) a0[j] += t[j];
        if (KIND == 2) {
            for (int d = 0; d < D; ++d)
                for (int j = 0; j < NL; ++j) ac[d][j] += t[j] * in.x[d][pos[j]];
            for (int j = 0; j < NL; ++j) {
                const int32_t id = in.id[pos[j]];
                const bool g = arith::better(t[j], id, bv[j], bi[j]);  // t = 0 never wins (bv >= 0, bi = -1)
                bv[j] = g ? t[j] : bv[j];
                bi[j] = g ? id : bi[j];
            }
            for (int j = 0; j < NL; ++j) em[j] = xv[j] > em[j] ? xv[j] : em[j];
        } else if (KIND == 0) {
            for (int j = 0; j < NL; ++j) em[j] = xv[j] < em[j] ? xv[j] : em[j];
        }
    };
    {
        using Full = std::integral_constant<int, L>;
        using Half = std::integral_constant<int, L / 2>;
        int64_t c = 0;
        for (; c + L <= k; c += L) chunk(c, (int64_t)L, std::false_type{}, Full{});
        if (k - c > L / 2)
            chunk(c, k - c, std::true_type{}, Full{});
        else if (c < k)
            chunk(c, k - c, std::true_type{}, Half{});
    }
    double s = 0;
    for (int j = 0; j < L; ++j) s += a0[j];
    out[0] = s;
    double m = KIND == 2 ? -kInf : kInf;
    for (int j = 0; j < L; ++j) m = KIND == 2 ? (em[j] > m ? em[j] : m) : (em[j] < m ? em[j] : m);
    out[4] = m;
    if (KIND == 2) {
        for (int d = 0; d < D; ++d) {
            double sc = 0;
            for (int j = 0; j < L; ++j) sc += ac[d][j];
            out[1 + d] = sc;
        }
        double v = 0;
        int32_t p = -1;
        for (int j = 0; j < L; ++j)
            if (arith::better(bv[j], bi[j], v, p)) {
                v = bv[j];
                p = bi[j];
            }
        *best_pos = p;
        *best_val = v;
    }
}

using FRowFn = void (*)(const double*, const double*, const int64_t*, int, const FInner&, const FRowArgs&, double*,
                        int32_t*, double*);

#define XM_FROW(NAME, D, FT, KIND)                                                                              \
    XM_CLONES void NAME(const double* q, const double* fq, const int64_t* ranges, int nranges, const FInner& in, \
                        const FRowArgs& ra, double* out, int32_t* bp, double* bv) {                              \
        frow_impl<D, FT, KIND>(q, fq, ranges, nranges, in, ra, out, bp, bv);                                     \
    }
#define XM_FROWS(D, FT) XM_FROW(fr##D##_##FT##_0, D, FT, 0) XM_FROW(fr##D##_##FT##_1, D, FT, 1) \
    XM_FROW(fr##D##_##FT##_2, D, FT, 2)
XM_FROWS(2, 0)
XM_FROWS(2, 1)
XM_FROWS(2, 2)
XM_FROWS(2, 3)
XM_FROWS(3, 0)
XM_FROWS(3, 1)
XM_FROWS(3, 2)
XM_FROWS(3, 3)
#undef XM_FROWS
#undef XM_FROW

FRowFn pick_frow(int D, int F, int kind) {
#define XM_ONE(NAME) return NAME
#define XM_PICK(D_, FT)                                    \
    if (D == D_ && fsel == FT) {                           \
        if (kind == 0) XM_ONE(fr##D_##_##FT##_0);          \
        if (kind == 1) XM_ONE(fr##D_##_##FT##_1);          \
        XM_ONE(fr##D_##_##FT##_2);                         \
    }
    const int fsel = F >= 1 && F <= 3 ? F : 0;
    XM_PICK(2, 0)
    XM_PICK(2, 1)
    XM_PICK(2, 2)
    XM_PICK(2, 3)
    XM_PICK(3, 0)
    XM_PICK(3, 1)
    XM_PICK(3, 2)
    XM_PICK(3, 3)
#undef XM_PICK
#undef XM_ONE
    throw value_error("cpd estep_features: no row function");
}

// The inner set in the grid's sorted order, in double: coordinates, feature columns (structure of
// arrays) and one value per point (weights, or log s_n), each padded by kPad zeros (the value
// array by `pad`).
struct FSorted {
    std::vector<double> x[3], f, v;
    std::vector<int64_t> ord;  // position -> grid position
    std::vector<int32_t> id;   // position -> original index
    int64_t stride = 0;
};

// Within each grid cell the points are put in the order of their last coordinate (then of their
// grid position), so each range of cells (a row along the last axis) is sorted by it: trim()
// narrows a range to the slab |z - q_z| <= radius by binary search, and the points out of the
// support gather at the ends of the ranges. The sums do not depend on this order (up to rounding).
template <class T>
void sort_features(const Grid<T>& g, int D, const T* F, int nf, FSorted& s) {
    const int64_t n = g.n;
    s.stride = n + kPad;
    s.ord.resize(n);
    for (int64_t i = 0; i < n; ++i) s.ord[i] = i;
    const std::vector<T>& z = g.coord[D - 1];
    for (size_t c = 0; c + 1 < g.start.size(); ++c)
        if (g.start[c + 1] - g.start[c] > 1)
            std::sort(s.ord.begin() + g.start[c], s.ord.begin() + g.start[c + 1],
                      [&](int64_t a, int64_t b) { return z[a] < z[b] || (z[a] == z[b] && a < b); });
    for (int d = 0; d < D; ++d) {
        s.x[d].assign(n + kPad, 0.0);
        for (int64_t i = 0; i < n; ++i) s.x[d][i] = (double)g.coord[d][s.ord[i]];
    }
    s.f.assign((size_t)nf * s.stride, 0.0);
    s.id.assign(n + kPad, 0);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t o = g.perm[s.ord[i]];
        s.id[i] = (int32_t)o;
        for (int j = 0; j < nf; ++j) s.f[j * s.stride + i] = (double)F[o * nf + j];
    }
}

// Narrows the grid's ranges to the points with |z - qz| <= radius (z the last coordinate, sorted
// within each range): a superset of the support d2 <= r2 < radius^2. Empty ranges are dropped.
void trim(const FSorted& s, int D, double qz, double radius, std::vector<int64_t>& rg) {
    if (!std::isfinite(radius)) return;
    const double* z = s.x[D - 1].data();
    const double lo = qz - radius, hi = qz + radius;
    size_t k = 0;
    for (size_t r = 0; r < rg.size(); r += 2) {
        const int64_t b = std::lower_bound(z + rg[r], z + rg[r + 1], lo) - z;
        const int64_t e = std::upper_bound(z + b, z + rg[r + 1], hi) - z;
        if (e > b) {
            rg[k++] = b;
            rg[k++] = e;
        }
    }
    rg.resize(k);
}

struct FeatureArgs {
    double inv, finv, r2, radius, c;
    int D, F;
    bool parallel;
};

// Pass 1 (over fixed points): log s_n and Pt1_n; returns the pairs visited.
template <class T>
int64_t feature_pass1(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, const T* FX, const T* FY,
                      const FeatureArgs& a, T* Pt1, double* log_s, char* empty) {
    Grid<T> gy;
    gy.build(TY, M, a.D, a.radius);
    FSorted sy;
    sort_features(gy, a.D, FY, a.F, sy);
    sy.v.assign(M + kPad, 0.0);
    for (int64_t s = 0; s < M; ++s) sy.v[s] = weights ? (double)weights[sy.id[s]] : 1.0;
    const FInner in{{sy.x[0].data(), sy.x[1].data(), a.D == 3 ? sy.x[2].data() : nullptr},
                    sy.f.data(), sy.stride, sy.v.data(), nullptr};
    const FRowFn row0 = pick_frow(a.D, a.F, 0), row1 = pick_frow(a.D, a.F, 1);
    std::vector<int64_t> work(N, 0);
#pragma omp parallel num_threads(xmodal::num_threads()) if (a.parallel)
    {
        std::vector<int64_t> rg;
        rg.reserve(256);
        std::vector<double> fq(a.F);
        FScratch scratch;
#pragma omp for schedule(dynamic, 64)
        for (int64_t n = 0; n < N; ++n) {
            gy.ranges(&X[n * a.D], a.radius, rg);
            double q[3] = {0, 0, 0}, out[5];
            for (int d = 0; d < a.D; ++d) q[d] = (double)X[n * a.D + d];
            trim(sy, a.D, q[a.D - 1], a.radius, rg);
            work[n] = range_count(rg);
            scratch.fit(work[n]);
            for (int j = 0; j < a.F; ++j) fq[j] = (double)FX[n * a.F + j];
            int32_t bp;
            double bv;
            FRowArgs ra{a.inv, a.finv, a.r2, 0.0, a.F, scratch.idx.data(), scratch.d2.data()};
            const int nr = (int)(rg.size() / 2);
            row0(q, fq.data(), rg.data(), nr, in, ra, out, &bp, &bv);
            fa::FeatureColumn col;  // S = 0, emin = +inf: no term
            const double emin = out[4];
            if (emin <= arith::Limits<double>::kSafe && out[0] >= 1e-150) {
                col.S = out[0];
                col.emin = 0;
            } else if (emin < std::numeric_limits<double>::infinity()) {
                ra.h = emin;
                row1(q, fq.data(), rg.data(), nr, in, ra, out, &bp, &bv);
                col.S = out[0];
                col.emin = emin;
            }
            const fa::FeatureColumnOut o = fa::finish_feature_column(col, a.c);
            log_s[n] = o.log_s;
            Pt1[n] = (T)o.pt;
            empty[n] = o.empty ? 1 : 0;
        }
    }
    int64_t pairs = 0;
    for (int64_t n = 0; n < N; ++n) pairs += work[n];
    return pairs;
}

// Pass 2 (over moving points): P1, PX and the best match from the terms of pass 1 and log s_n.
template <class T>
int64_t feature_pass2(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, const T* FX, const T* FY,
                      const FeatureArgs& a, const double* log_s, T* P1, T* PX, int64_t* best_idx, T* best_prob) {
    Grid<T> gx;
    gx.build(X, N, a.D, a.radius);
    FSorted sx;
    sort_features(gx, a.D, FX, a.F, sx);
    sx.v.assign(N + kPad, 0.0);
    for (int64_t s = 0; s < N; ++s) {
        const double l = log_s[sx.id[s]];
        sx.v[s] = std::isfinite(l) ? l : std::numeric_limits<double>::infinity();
    }
    const FInner in{{sx.x[0].data(), sx.x[1].data(), a.D == 3 ? sx.x[2].data() : nullptr},
                    sx.f.data(), sx.stride, sx.v.data(), sx.id.data()};
    const FRowFn row2 = pick_frow(a.D, a.F, 2);
    std::vector<int64_t> work(M, 0);
#pragma omp parallel num_threads(xmodal::num_threads()) if (a.parallel)
    {
        std::vector<int64_t> rg;
        rg.reserve(256);
        std::vector<double> fq(a.F);
        FScratch scratch;
#pragma omp for schedule(dynamic, 64)
        for (int64_t m = 0; m < M; ++m) {
            for (int j = 0; j < a.F; ++j) fq[j] = (double)FY[m * a.F + j];
            const double w = weights ? (double)weights[m] : 1.0;
            fa::FeatureRow row;
            if (w > 0) {
                gx.ranges(&TY[m * a.D], a.radius, rg);
                double q[3] = {0, 0, 0}, out[5] = {0, 0, 0, 0, 0};
                for (int d = 0; d < a.D; ++d) q[d] = (double)TY[m * a.D + d];
                trim(sx, a.D, q[a.D - 1], a.radius, rg);
                work[m] = range_count(rg);
                scratch.fit(work[m]);
                int32_t bp = -1;
                double bv = 0;
                const FRowArgs ra{a.inv, a.finv, a.r2, 0.0, a.F, scratch.idx.data(), scratch.d2.data()};
                row2(q, fq.data(), rg.data(), (int)(rg.size() / 2), in, ra, out, &bp, &bv);
                if (out[4] <= 700.0) {
                    row.s0 = out[0];
                    for (int d = 0; d < a.D; ++d) row.cs[d] = out[1 + d];
                    row.best_v = bv;
                    row.best_n = bp;
                } else {  // some P[m, n] / w_m beyond the polynomial's range (w_m < ~1e-300): exp()
                    for (size_t r = 0; r < rg.size(); r += 2)
                        for (int64_t s = rg[r]; s < rg[r + 1]; ++s) {
                            double d2 = 0;
                            for (int d = 0; d < a.D; ++d) d2 = fa::d2_add(d2, sx.x[d][s], q[d]);
                            if (d2 > a.r2 || !std::isfinite(sx.v[s])) continue;
                            double fd2 = 0;
                            for (int j = 0; j < a.F; ++j) fd2 = fa::d2_add(fd2, fq[j], sx.f[j * sx.stride + s]);
                            const double p = fa::FeatureRow::term(fa::exponent(d2, fd2, a.inv, a.finv), sx.v[s]);
                            for (int d = 0; d < a.D; ++d) row.add_coord(d, p, sx.x[d][s]);
                            row.add_term(p, sx.id[s]);
                        }
                }
            }
            fa::finish_feature_row(row, w, a.D, &P1[m], &PX[m * a.D], best_idx ? &best_idx[m] : nullptr,
                                   best_prob ? &best_prob[m] : nullptr);
        }
    }
    int64_t pairs = 0;
    for (int64_t m = 0; m < M; ++m) pairs += work[m];
    return pairs;
}

}  // namespace

template <class T>
EStepStats estep_features(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, const T* FX,
                          const T* FY, int F, double feature_inv, double sigma2, double c, double cutoff, T* P1,
                          T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out) {
    arith::check_estep_args(N, M, D, sigma2, c, cutoff);
    require(F >= 1, "cpd estep_features: expected at least one feature column, got " + std::to_string(F));
    require(std::isfinite(feature_inv) && feature_inv >= 0,
            "cpd estep_features: feature_inv = 1 / (2 feature_sigma^2) must be finite and >= 0");
    check_finite(X, N * D, "fixed");
    check_finite(TY, M * D, "moved");
    check_finite(FX, N * F, "fixed_features");
    check_finite(FY, M * F, "moved_features");
    if (weights) {
        check_finite(weights, M, "weights");
        for (int64_t m = 0; m < M; ++m)
            require(weights[m] >= 0, "cpd estep: weights must be >= 0");
    }
    const double amax = check_extent(X, N, TY, M, D, "cpd estep_features");
    const double inv = 1.0 / (2.0 * sigma2);
    require(std::isfinite(inv), "cpd estep_features: sigma2 = " + arith::fmt_g(sigma2) + " is too small");
    const double r2 = std::isfinite(cutoff) ? 2.0 * sigma2 * cutoff : std::numeric_limits<double>::infinity();
    const FeatureArgs a{inv, feature_inv, r2, search_radius(r2, amax), c, D, F,
                        (double)N * (double)M >= kParallelMinPairs};
    std::vector<double> log_s(N);
    std::vector<char> empty(N);
    EStepStats st;
    st.pairs = feature_pass1(X, N, TY, M, weights, FX, FY, a, Pt1, log_s.data(), empty.data());
    for (int64_t n = 0; n < N; ++n) {
        if (log_s_out) log_s_out[n] = log_s[n];
        st.log_s_sum += arith::log_s_term(log_s[n], empty[n] != 0);
        st.empty_columns += empty[n];
    }
    st.pairs += feature_pass2(X, N, TY, M, weights, FX, FY, a, log_s.data(), P1, PX, best_idx, best_prob);
    return st;
}

template EStepStats estep_features<float>(const float*, int64_t, const float*, int64_t, int, const float*,
                                          const float*, const float*, int, double, double, double, double, float*,
                                          float*, float*, int64_t*, float*, double*);
template EStepStats estep_features<double>(const double*, int64_t, const double*, int64_t, int, const double*,
                                           const double*, const double*, int, double, double, double, double,
                                           double*, double*, double*, int64_t*, double*, double*);

template EStepStats estep<float>(const float*, int64_t, const float*, int64_t, int, const float*, double,
                                 double, double, float*, float*, float*, int64_t*, float*, double*);
template EStepStats estep<double>(const double*, int64_t, const double*, int64_t, int, const double*,
                                  double, double, double, double*, double*, double*, int64_t*, double*, double*);
template void gauss_transform<float>(const float*, int64_t, const float*, const float*, int64_t, int,
                                     double, double, float*);
template void gauss_transform<double>(const double*, int64_t, const double*, const double*, int64_t,
                                      int, double, double, double*);

}  // namespace xmodal::cpd
