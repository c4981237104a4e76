// Coherent Point Drift E-step and Gaussian transform kernels; see xmodal/cpd.hpp.
#if defined(__GNUC__) && !defined(__clang__)
// no-trapping-math lets GCC if-convert the selects in exp_neg and the support mask so the kernel
// loops vectorise; it changes no result (it only drops the assumption that floating-point
// exceptions may trap). fp-contract=off keeps a * b + c two roundings also under -march=native
// (FMA): both E-step passes must compute bit-identical squared distances from the same pair.
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "xmodal/cpd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "xmodal/common.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One AVX2 clone of the hot row functions, picked at load time; the default clone is SSE2.
// Without FMA contraction both clones give bit-identical results.
#define XM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XM_CLONES
#endif

#if defined(__GNUC__)
#define XM_INLINE inline __attribute__((always_inline))
#else
#define XM_INLINE inline
#endif

namespace xmodal::cpd {
namespace {

// ------------------------------------------------------------------ precision constants
// exp_neg(x) is exactly 0 below kExpLow (the result would leave the normal range) and a normal
// number at or above it. A row whose largest kernel term is at least exp(-kSafe) is summed without
// a shift: the terms flushed to 0 are then below exp(kExpLow + kSafe) relative to the sum
// (float: e^-39 = 1e-17 per term; double: e^-108), far below the rounding error for any M < 2^31.
// Rows whose largest term is smaller are summed again relative to it (log-sum-exp).
template <class T>
struct Limits;
template <>
struct Limits<float> {
    static constexpr float kExpLow = -87.0f;
    static constexpr double kSafe = 48.0;
};
template <>
struct Limits<double> {
    static constexpr double kExpLow = -708.0;
    static constexpr double kSafe = 600.0;
};

// ------------------------------------------------------------------ vectorisable exp(x), x <= 0
// Polynomial exp on the range reduction x = k ln2 + r; exactly 0 for x < kExpLow (and for -inf),
// never a clamped non-zero value. Relative error < 2e-7 in float, < 1e-15 in double.
XM_INLINE float exp_neg(float x) {
    const bool under = x < Limits<float>::kExpLow;
    x = under ? Limits<float>::kExpLow : x;
    const float t = x * 1.44269504088896341f;
    const float shifter = 12582912.0f;  // 1.5 * 2^23: round to nearest integer
    float kd = t + shifter;
    int32_t ki;
    std::memcpy(&ki, &kd, sizeof ki);
    kd -= shifter;
    const float r = (x - kd * 0.693145751953125f) - kd * 1.42860682030941723212e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (ki + 127) << 23;  // low bits of ki hold the integer, two's complement
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    const float v = p * scale;
    return under ? 0.0f : v;
}

XM_INLINE double exp_neg(double x) {
    const bool under = x < Limits<double>::kExpLow;
    x = under ? Limits<double>::kExpLow : x;
    const double t = x * 1.4426950408889634074;
    const double shifter = 6755399441055744.0;  // 1.5 * 2^52
    double kd = t + shifter;
    int64_t ki;
    std::memcpy(&ki, &kd, sizeof ki);
    kd -= shifter;
    const double r = (x - kd * 0.693147180369123816490) - kd * 1.90821492927058770002e-10;
    double p = 1.0 / 479001600.0;  // Taylor to degree 12 on |r| <= ln2/2
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    const int64_t bits = (int64_t)((uint64_t)(ki + 1023) << 52);
    double scale;
    std::memcpy(&scale, &bits, sizeof scale);
    const double v = p * scale;
    return under ? 0.0 : v;
}

// ------------------------------------------------------------------ one row: sums over ranges
// For a query point q and inner points (structure of arrays, sorted by grid cell) in the given
// contiguous ranges, over the support {i : d2_i <= r2} (d2_i = |q - p_i|^2, the same arithmetic
// whichever set is the query, since q - p = -(p - q) exactly):
//   k_i = exp(-(d2_i - shift_i) * inv) * w_i,  shift_i = ishift[i] (ISHIFT), the row's qshift
//   (QSHIFT) or 0 (neither: the same value as a zero shift, d2 - 0 = d2 exactly),
//   sum0 = sum_i k_i, col[c] = sum_i k_i v_c,i, (BEST) the sorted position of the largest k_i,
//   (MIN) the smallest d2_i of the support among points of positive weight (+inf if none).
// Exponents are <= 0: d2 >= shift for every point of positive weight (the shift is such a d2, and
// ISHIFT rows are only run for moving points of positive weight); shifted rows also clamp the
// difference at 0 (zero-weight points, whose terms are 0 anyway; and a safety net).
// Lane accumulators in a fixed order: deterministic.
template <class T>
struct Inner {
    const T* coord[3];
    const T* w;        // per inner point weight
    const T* shift;    // per inner point shift of d2 (ISHIFT rows), else null
    const T* col[3];   // columns to sum (NC of them)
};

template <class T>
struct RowArgs {
    T inv;     // 1 / (2 sigma2)
    T r2;      // support radius squared (+inf: every pair)
    T qshift;  // shift of d2 for the whole row (when not ISHIFT)
};

template <class T, int D>
XM_INLINE T dist2(T q0, T q1, T q2, const Inner<T>& in, int64_t i) {
    T t0 = q0 - in.coord[0][i];
    T t1 = q1 - in.coord[1][i];
    T d2 = t0 * t0 + t1 * t1;
    if (D == 3) {
        T t2 = q2 - in.coord[2][i];
        d2 += t2 * t2;
    }
    return d2;
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
    for (int r = 0; r < nranges; ++r) {
        const int64_t b = ranges[2 * r], e = ranges[2 * r + 1];
        int64_t i = b;
        for (; i + L <= e; i += L) {
            T k[L];
            T dd[L];
            for (int j = 0; j < L; ++j) {
                const T d2 = dist2<T, D>(q0, q1, q2, in, i + j);
                const T dd2 = ISHIFT ? std::max(d2 - in.shift[i + j], T(0)) : (QSHIFT ? std::max(d2 - qsh, T(0)) : d2);
                const T ex = exp_neg(-dd2 * inv) * in.w[i + j];
                k[j] = d2 <= r2 ? ex : T(0);
                if (MIN) dd[j] = d2;
            }
            for (int j = 0; j < L; ++j) a0[j] += k[j];
            for (int c = 0; c < NC; ++c)
                for (int j = 0; j < L; ++j) ac[c][j] += k[j] * in.col[c][i + j];
            if (BEST) {
                for (int j = 0; j < L; ++j) {
                    const bool g = k[j] > bv[j];
                    bv[j] = g ? k[j] : bv[j];
                    bi[j] = g ? (int32_t)(i + j) : bi[j];
                }
            }
            if (MIN) {
                for (int j = 0; j < L; ++j) {
                    const T v = (dd[j] <= r2 && in.w[i + j] > 0) ? dd[j] : kInf;
                    dm[j] = v < dm[j] ? v : dm[j];
                }
            }
        }
        for (int j = 0; i + j < e; ++j) {  // tail, same lanes
            const T d2 = dist2<T, D>(q0, q1, q2, in, i + j);
            const T dd2 = ISHIFT ? std::max(d2 - in.shift[i + j], T(0)) : (QSHIFT ? std::max(d2 - qsh, T(0)) : d2);
            const T ex = exp_neg(-dd2 * inv) * in.w[i + j];
            const bool inside = d2 <= r2;
            const T kk = inside ? ex : T(0);
            a0[j] += kk;
            for (int c = 0; c < NC; ++c) ac[c][j] += kk * in.col[c][i + j];
            if (BEST && kk > bv[j]) {
                bv[j] = kk;
                bi[j] = (int32_t)(i + j);
            }
            if (MIN && inside && in.w[i + j] > 0 && d2 < dm[j]) dm[j] = d2;
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
        for (int j = 0; j < L; ++j)
            if (bv[j] > v || (bv[j] == v && bi[j] >= 0 && (p < 0 || bi[j] < p))) {
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

#define XM_ROW(NAME, T, D, NC, BEST, MIN, ISHIFT, QSHIFT)                                                      \
    XM_CLONES void NAME(const T* q, const int64_t* ranges, int nranges, const Inner<T>& in, const RowArgs<T>& ra, \
                        double* sum0, double* colsum, int32_t* best_pos, T* best_val, T* dmin) {                 \
        row_impl<T, D, NC, BEST, MIN, ISHIFT, QSHIFT>(q, ranges, nranges, in, ra, sum0, colsum, best_pos, best_val, \
                                                      dmin);                                                     \
    }
// pass 1 (sum, optionally with the support minimum), pass 2 (sums, best; per-inner shift or not),
// Gaussian transform (sums of columns).
XM_ROW(p1_f2, float, 2, 0, false, false, false, false)
XM_ROW(p1_f3, float, 3, 0, false, false, false, false)
XM_ROW(p1m_f2, float, 2, 0, false, true, false, false)
XM_ROW(p1m_f3, float, 3, 0, false, true, false, false)
XM_ROW(p1s_f2, float, 2, 0, false, false, false, true)
XM_ROW(p1s_f3, float, 3, 0, false, false, false, true)
XM_ROW(p2_f2, float, 2, 2, true, false, false, false)
XM_ROW(p2_f3, float, 3, 3, true, false, false, false)
XM_ROW(p2s_f2, float, 2, 2, true, false, true, false)
XM_ROW(p2s_f3, float, 3, 3, true, false, true, false)
XM_ROW(gt_f2, float, 2, 2, false, false, false, false)
XM_ROW(gt_f3, float, 3, 3, false, false, false, false)
XM_ROW(p1_d2, double, 2, 0, false, false, false, false)
XM_ROW(p1_d3, double, 3, 0, false, false, false, false)
XM_ROW(p1m_d2, double, 2, 0, false, true, false, false)
XM_ROW(p1m_d3, double, 3, 0, false, true, false, false)
XM_ROW(p1s_d2, double, 2, 0, false, false, false, true)
XM_ROW(p1s_d3, double, 3, 0, false, false, false, true)
XM_ROW(p2_d2, double, 2, 2, true, false, false, false)
XM_ROW(p2_d3, double, 3, 3, true, false, false, false)
XM_ROW(p2s_d2, double, 2, 2, true, false, true, false)
XM_ROW(p2s_d3, double, 3, 3, true, false, true, false)
XM_ROW(gt_d2, double, 2, 2, false, false, false, false)
XM_ROW(gt_d3, double, 3, 3, false, false, false, false)
#undef XM_ROW

enum class Row { pass1, pass1_min, pass1_shift, pass2, pass2_shift, gauss };

template <class T>
RowFn<T> pick_row(int D, Row kind);
template <>
RowFn<float> pick_row<float>(int D, Row kind) {
    switch (kind) {
        case Row::pass1: return D == 2 ? p1_f2 : p1_f3;
        case Row::pass1_min: return D == 2 ? p1m_f2 : p1m_f3;
        case Row::pass1_shift: return D == 2 ? p1s_f2 : p1s_f3;
        case Row::pass2: return D == 2 ? p2_f2 : p2_f3;
        case Row::pass2_shift: return D == 2 ? p2s_f2 : p2s_f3;
        default: return D == 2 ? gt_f2 : gt_f3;
    }
}
template <>
RowFn<double> pick_row<double>(int D, Row kind) {
    switch (kind) {
        case Row::pass1: return D == 2 ? p1_d2 : p1_d3;
        case Row::pass1_min: return D == 2 ? p1m_d2 : p1m_d3;
        case Row::pass1_shift: return D == 2 ? p1s_d2 : p1s_d3;
        case Row::pass2: return D == 2 ? p2_d2 : p2_d3;
        case Row::pass2_shift: return D == 2 ? p2s_d2 : p2s_d3;
        default: return D == 2 ? gt_d2 : gt_d3;
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
        // enlarged so that there are at most ~2n + 64 cells.
        const double cap = 2.0 * (double)n + 64.0;
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
        for (int64_t i = 0; i < n; ++i) cell[i] = cell_of(&P[i * D]);
        start.assign(total + 1, 0);
        for (int64_t i = 0; i < n; ++i) ++start[cell[i] + 1];
        for (int64_t c = 0; c < total; ++c) start[c + 1] += start[c];
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        perm.resize(n);
        for (int64_t i = 0; i < n; ++i) perm[fill[cell[i]]++] = i;
        for (int d = 0; d < D; ++d) {
            coord[d].resize(n);
            for (int64_t s = 0; s < n; ++s) coord[d][s] = P[perm[s] * D + d];
        }
    }
    int64_t axis_cell(int d, double v) const {
        if (nc[d] == 1) return 0;
        double c = std::floor((v - lo[d]) / h);
        if (c < 0) c = 0;
        if (c > (double)(nc[d] - 1)) c = (double)(nc[d] - 1);
        return (int64_t)c;
    }
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
        if (D == 2) {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0) {
                const int64_t base = i0 * nc[1];
                const int64_t s = start[base + a[1]], e = start[base + b[1] + 1];
                if (e > s) { out.push_back(s); out.push_back(e); }
            }
        } else {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0)
                for (int64_t i1 = a[1]; i1 <= b[1]; ++i1) {
                    const int64_t base = (i0 * nc[1] + i1) * nc[2];
                    const int64_t s = start[base + a[2]], e = start[base + b[2] + 1];
                    if (e > s) { out.push_back(s); out.push_back(e); }
                }
        }
    }
};

template <class T>
void check_finite(const T* p, int64_t n, const char* name) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite((double)p[i])) throw value_error(std::string("cpd: ") + name + " has non-finite values");
}

std::string fmt_g(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

void check_common(int64_t N, int64_t M, int D) {
    require(D == 2 || D == 3, "cpd: d must be 2 or 3, got " + std::to_string(D));
    require(N >= 1 && M >= 1, "cpd: point sets must not be empty");
    require(N < (int64_t(1) << 31) && M < (int64_t(1) << 31), "cpd: at most 2^31 - 1 points per set");
}

// Squared distances between any two of the points must be finite in T, and the coordinates'
// magnitude bounds the rounding of the grid's cell arithmetic. Returns max |coordinate|.
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
    double e2 = 0;
    for (int d = 0; d < D; ++d) e2 += (hi[d] - lo[d]) * (hi[d] - lo[d]);
    require(e2 <= 0.25 * (double)std::numeric_limits<T>::max(),
            std::string(what) + ": the points span " + fmt_g(std::sqrt(e2)) +
                " units, so squared distances overflow " + (sizeof(T) == 4 ? "float32" : "float64") +
                "; scale the coordinates (xmodal.cpd normalises them)");
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

template <class T>
EStepStats estep_impl(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2,
                      double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob,
                      double* log_s_out) {
    const double amax = check_extent(X, N, TY, M, D, "cpd estep");
    const double inv_d = 1.0 / (2.0 * sigma2);
    require(std::isfinite(inv_d) && inv_d <= (double)std::numeric_limits<T>::max(),
            "cpd estep: sigma2 = " + fmt_g(sigma2) + " is too small: 1 / (2 sigma2) overflows float64");
    const T inv = (T)inv_d;
    const T r2 = std::isfinite(cutoff) ? (T)(2.0 * sigma2 * cutoff) : std::numeric_limits<T>::infinity();
    const double radius = search_radius((double)r2, amax);
    // Rows may need a shift only if the support can hold terms below exp(-kSafe).
    const bool may_shift = !((double)r2 * (double)inv <= Limits<T>::kSafe);
    const bool parallel = (double)N * (double)M >= kParallelMinPairs;
    EStepStats stats;

    // Pass 1: over fixed points n. S_n = sum_m a_m exp(-(d2_mn - h_n) / (2 sigma2)) over the
    // support, h_n = 0, or the support's smallest d2 when the largest term is below exp(-kSafe).
    Grid<T> gy;
    gy.build(TY, M, D, radius);
    std::vector<T> wy(M);
    for (int64_t s = 0; s < M; ++s) wy[s] = weights ? weights[gy.perm[s]] : T(1);
    Inner<T> iny{{gy.coord[0].data(), gy.coord[1].data(), D == 3 ? gy.coord[2].data() : nullptr},
                 wy.data(), nullptr, {nullptr, nullptr, nullptr}};
    std::vector<T> gx_w(N), shift(N);
    std::vector<double> logs(N);
    std::vector<int64_t> work1(N, 0);
    std::vector<char> shifted(N, 0), is_empty(N, 0);
    const RowFn<T> row1 = pick_row<T>(D, may_shift ? Row::pass1_min : Row::pass1);
    const RowFn<T> row1s = pick_row<T>(D, Row::pass1_shift);
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t n = 0; n < N; ++n) {
            gy.ranges(&X[n * D], radius, rg);
            double S = 0, dummy[3];
            int32_t bp;
            T bvv, dmin = std::numeric_limits<T>::infinity();
            RowArgs<T> ra{inv, r2, T(0)};
            row1(&X[n * D], rg.data(), (int)(rg.size() / 2), iny, ra, &S, dummy, &bp, &bvv, &dmin);
            int64_t cnt = 0;
            for (size_t r = 0; r < rg.size(); r += 2) cnt += rg[r + 1] - rg[r];
            T h = 0;
            if (may_shift && std::isfinite((double)dmin) && (double)dmin * (double)inv > Limits<T>::kSafe) {
                h = dmin;
                ra.qshift = h;
                row1s(&X[n * D], rg.data(), (int)(rg.size() / 2), iny, ra, &S, dummy, &bp, &bvv, nullptr);
                cnt *= 2;
                shifted[n] = 1;
            }
            work1[n] = cnt;
            shift[n] = h;
            // s_n = exp(-h inv) (S + c exp(h inv)); with g_n = 1 / (S + c exp(h inv)) the posterior
            // of a support pair is a_m exp(-(d2 - h) inv) g_n, and Pt1_n = S g_n.
            const double e = (double)h * (double)inv;
            double g, pt, ls;
            if (S > 0) {
                if (e == 0) {
                    const double den = S + c;
                    g = 1.0 / den;
                    pt = S / den;
                    ls = std::log(den);
                } else {
                    // log(S + c e^e) = lden; log s_n = lden - e, formed so that an overflow of
                    // e = h inv (sigma2 tiny against the distances) cannot give inf - inf
                    const double la = std::log(S);
                    const double lc = c > 0 ? std::log(c) + e : -std::numeric_limits<double>::infinity();
                    if (la >= lc) {
                        const double l1 = std::log1p(std::exp(lc - la));
                        g = std::exp(-(la + l1));
                        pt = std::exp(-l1);
                        ls = (la - e) + l1;  // -inf when e overflows: s_n is below exp(-DBL_MAX)
                    } else {
                        const double l1 = std::log1p(std::exp(la - lc));
                        g = std::exp(-(lc + l1));
                        pt = std::exp(la - lc - l1);
                        ls = std::log(c) + l1;
                    }
                }
            } else {  // empty support: only the outlier term (if any) explains x_n
                g = 0;
                pt = 0;
                ls = c > 0 ? std::log(c) : -std::numeric_limits<double>::infinity();
                is_empty[n] = c > 0 ? 0 : 1;
            }
            gx_w[n] = (T)g;
            Pt1[n] = (T)pt;
            logs[n] = ls;
        }
    }
    double logsum = 0;
    int64_t empty = 0, pairs = 0, nshift = 0;
    for (int64_t n = 0; n < N; ++n) {
        pairs += work1[n];
        nshift += shifted[n];
        if (log_s_out) log_s_out[n] = logs[n];
        if (is_empty[n]) {
            logsum += std::log(std::numeric_limits<double>::min());
            ++empty;
        } else {
            logsum += logs[n];
        }
    }

    // Pass 2: over moving points m, sums over the same support with the weights g_n (and the
    // shifts h_n of pass 1, so every term is the pass-1 term times g_n).
    Grid<T> gx;
    gx.build(X, N, D, radius);
    std::vector<T> wx(N), sx(N);
    for (int64_t s = 0; s < N; ++s) {
        wx[s] = gx_w[gx.perm[s]];
        sx[s] = shift[gx.perm[s]];
    }
    Inner<T> inx{{gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr},
                 wx.data(),
                 nshift > 0 ? sx.data() : nullptr,
                 {gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr}};
    std::vector<int64_t> work2(M, 0);
    const RowFn<T> row2 = pick_row<T>(D, nshift > 0 ? Row::pass2_shift : Row::pass2);
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t m = 0; m < M; ++m) {
            if (weights && !(weights[m] > 0)) {  // a zero weight: the row of P is zero
                P1[m] = 0;
                for (int d = 0; d < D; ++d) PX[m * D + d] = 0;
                if (best_idx) best_idx[m] = -1;
                if (best_prob) best_prob[m] = 0;
                continue;
            }
            gx.ranges(&TY[m * D], radius, rg);
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp = -1;
            T bvv = 0;
            const RowArgs<T> ra{inv, r2, T(0)};
            row2(&TY[m * D], rg.data(), (int)(rg.size() / 2), inx, ra, &s0, cs, &bp, &bvv, nullptr);
            const double a = weights ? (double)weights[m] : 1.0;
            P1[m] = (T)(a * s0);
            for (int d = 0; d < D; ++d) PX[m * D + d] = (T)(a * cs[d]);
            const bool has_best = bp >= 0 && bvv > 0 && a > 0;  // a zero weight makes the row of P zero
            if (best_idx) best_idx[m] = has_best ? gx.perm[bp] : -1;
            if (best_prob) best_prob[m] = has_best ? (T)(a * (double)bvv) : T(0);
            int64_t cnt = 0;
            for (size_t r = 0; r < rg.size(); r += 2) cnt += rg[r + 1] - rg[r];
            work2[m] = cnt;
        }
    }
    for (int64_t m = 0; m < M; ++m) pairs += work2[m];
    stats.log_s_sum = logsum;
    stats.pairs = pairs;
    stats.empty_columns = empty;
    stats.shifted_columns = nshift;
    return stats;
}

// float32 cannot hold 1/(2 sigma2) (or the support radius) for sigma2 below ~1e-37: such calls are
// computed in float64 on converted copies (O(M + N) extra memory) and rounded back.
bool float_needs_double(double sigma2, double cutoff) {
    const double inv = 1.0 / (2.0 * sigma2);
    if (!(inv <= (double)std::numeric_limits<float>::max())) return true;
    if (std::isfinite(cutoff) && 2.0 * sigma2 * cutoff < (double)std::numeric_limits<float>::min()) return true;
    return false;
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
    check_common(N, M, D);
    require(std::isfinite(sigma2) && sigma2 > 0, "cpd estep: sigma2 must be positive and finite");
    require(std::isfinite(c) && c >= 0, "cpd estep: outlier constant c must be >= 0");
    require(cutoff > 0, "cpd estep: cutoff must be positive");
    check_finite(X, N * D, "fixed");
    check_finite(TY, M * D, "moved");
    if (weights) {
        check_finite(weights, M, "weights");
        for (int64_t m = 0; m < M; ++m)
            require(weights[m] >= 0, "cpd estep: weights must be >= 0");
    }
    if constexpr (sizeof(T) == sizeof(float)) {
        if (float_needs_double(sigma2, cutoff))
            return estep_float_via_double(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx,
                                          best_prob, log_s_out);
    }
    return estep_impl<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out);
}

template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                     double beta, double cutoff, T* out) {
    check_common(K, Q, D);
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
    std::vector<T> ones(K, T(1));
    std::vector<T> cols[3];
    for (int d = 0; d < D; ++d) {
        cols[d].resize(K);
        for (int64_t s = 0; s < K; ++s) cols[d][s] = coef[g.perm[s] * D + d];
    }
    Inner<T> in{{g.coord[0].data(), g.coord[1].data(), D == 3 ? g.coord[2].data() : nullptr},
                ones.data(),
                nullptr,
                {cols[0].data(), cols[1].data(), D == 3 ? cols[2].data() : nullptr}};
    const RowFn<T> row = pick_row<T>(D, Row::gauss);
#pragma omp parallel num_threads(xmodal::num_threads()) if ((double)K * (double)Q >= kParallelMinPairs)
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t q = 0; q < Q; ++q) {
            g.ranges(&points[q * D], radius, rg);
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp;
            T bvv;
            const RowArgs<T> ra{inv, r2, T(0)};
            row(&points[q * D], rg.data(), (int)(rg.size() / 2), in, ra, &s0, cs, &bp, &bvv, nullptr);
            for (int d = 0; d < D; ++d) out[q * D + d] = (T)cs[d];
        }
    }
}

template EStepStats estep<float>(const float*, int64_t, const float*, int64_t, int, const float*, double,
                                 double, double, float*, float*, float*, int64_t*, float*, double*);
template EStepStats estep<double>(const double*, int64_t, const double*, int64_t, int, const double*,
                                  double, double, double, double*, double*, double*, int64_t*, double*, double*);
template void gauss_transform<float>(const float*, int64_t, const float*, const float*, int64_t, int,
                                     double, double, float*);
template void gauss_transform<double>(const double*, int64_t, const double*, const double*, int64_t,
                                      int, double, double, double*);

}  // namespace xmodal::cpd
