// Coherent Point Drift E-step and Gaussian transform kernels; see xmodal/cpd.hpp.
#if defined(__GNUC__) && !defined(__clang__)
// Lets GCC if-convert the clamp in exp_neg so the kernel loops vectorise. It changes no result
// (it only drops the assumption that floating-point exceptions may trap).
#pragma GCC optimize("no-trapping-math")
#endif
#include "xmodal/cpd.hpp"

#include <algorithm>
#include <cmath>
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

// ------------------------------------------------------------------ vectorisable exp(x), x <= 0
XM_INLINE float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
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
    return p * scale;
}

XM_INLINE double exp_neg(double x) {
    x = x < -708.0 ? -708.0 : x;
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
    return p * scale;
}

// ------------------------------------------------------------------ one row: sums over ranges
// For a query point q and inner points (structure of arrays, sorted by grid cell) in the given
// contiguous ranges: sum0 = sum_i w_i k_i, col[c] = sum_i w_i k_i v_c,i, and (BEST) the sorted
// position of the largest w_i k_i. Lane accumulators in a fixed order: deterministic.
template <class T>
struct Inner {
    const T* coord[3];
    const T* w;        // per inner point weight
    const T* col[3];   // columns to sum (NC of them)
};

template <class T, int D, int NC, bool BEST>
XM_INLINE void row_impl(const T* q, const int64_t* ranges, int nranges, const Inner<T>& in, T inv,
                        double* sum0, double* colsum, int32_t* best_pos, T* best_val) {
    constexpr int L = 64 / sizeof(T);
    T a0[L];
    T ac[NC > 0 ? NC : 1][L];
    T bv[L];
    int32_t bi[L];
    for (int j = 0; j < L; ++j) {
        a0[j] = 0;
        for (int c = 0; c < (NC > 0 ? NC : 1); ++c) ac[c][j] = 0;
        bv[j] = -1;
        bi[j] = -1;
    }
    const T q0 = q[0], q1 = q[1], q2 = D == 3 ? q[2] : T(0);
    for (int r = 0; r < nranges; ++r) {
        const int64_t b = ranges[2 * r], e = ranges[2 * r + 1];
        int64_t i = b;
        for (; i + L <= e; i += L) {
            T k[L];
            for (int j = 0; j < L; ++j) {
                T t0 = q0 - in.coord[0][i + j];
                T t1 = q1 - in.coord[1][i + j];
                T d2 = t0 * t0 + t1 * t1;
                if (D == 3) {
                    T t2 = q2 - in.coord[2][i + j];
                    d2 += t2 * t2;
                }
                k[j] = exp_neg(-d2 * inv) * in.w[i + j];
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
        }
        for (int j = 0; i + j < e; ++j) {  // tail, same lanes
            T t0 = q0 - in.coord[0][i + j];
            T t1 = q1 - in.coord[1][i + j];
            T d2 = t0 * t0 + t1 * t1;
            if (D == 3) {
                T t2 = q2 - in.coord[2][i + j];
                d2 += t2 * t2;
            }
            const T kk = exp_neg(-d2 * inv) * in.w[i + j];
            a0[j] += kk;
            for (int c = 0; c < NC; ++c) ac[c][j] += kk * in.col[c][i + j];
            if (BEST && kk > bv[j]) {
                bv[j] = kk;
                bi[j] = (int32_t)(i + j);
            }
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
}

#define XM_ROW(NAME, T, D, NC, BEST)                                                            \
    XM_CLONES void NAME(const T* q, const int64_t* ranges, int nranges, const Inner<T>& in, T inv, \
                        double* sum0, double* colsum, int32_t* best_pos, T* best_val) {           \
        row_impl<T, D, NC, BEST>(q, ranges, nranges, in, inv, sum0, colsum, best_pos, best_val); \
    }
XM_ROW(row_f20, float, 2, 0, false)
XM_ROW(row_f30, float, 3, 0, false)
XM_ROW(row_f22, float, 2, 2, false)
XM_ROW(row_f33, float, 3, 3, false)
XM_ROW(row_f22b, float, 2, 2, true)
XM_ROW(row_f33b, float, 3, 3, true)
XM_ROW(row_d20, double, 2, 0, false)
XM_ROW(row_d30, double, 3, 0, false)
XM_ROW(row_d22, double, 2, 2, false)
XM_ROW(row_d33, double, 3, 3, false)
XM_ROW(row_d22b, double, 2, 2, true)
XM_ROW(row_d33b, double, 3, 3, true)
#undef XM_ROW

template <class T>
using RowFn = void (*)(const T*, const int64_t*, int, const Inner<T>&, T, double*, double*, int32_t*, T*);

template <class T>
RowFn<T> pick_row(int D, int NC, bool best);
template <>
RowFn<float> pick_row<float>(int D, int NC, bool best) {
    if (D == 2) return NC == 0 ? row_f20 : (best ? row_f22b : row_f22);
    return NC == 0 ? row_f30 : (best ? row_f33b : row_f33);
}
template <>
RowFn<double> pick_row<double>(int D, int NC, bool best) {
    if (D == 2) return NC == 0 ? row_d20 : (best ? row_d22b : row_d22);
    return NC == 0 ? row_d30 : (best ? row_d33b : row_d33);
}

// ------------------------------------------------------------------ uniform cell grid
// Inner points sorted by cell (row-major, last axis fastest, stable), so the cells of one row of
// the grid along the last axis are one contiguous range.
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
        // Cell size: the cutoff radius, enlarged so that there are at most ~2n + 64 cells.
        double ext_max = 0;
        for (int d = 0; d < D; ++d) ext_max = std::max(ext_max, hi[d] - lo[d]);
        // Cells of half the radius: a query visits ~(2r + h)^d instead of ~(3r)^d of volume.
        h = std::isfinite(radius) ? std::max(0.5 * radius, 1e-300) : std::numeric_limits<double>::infinity();
        const double cap = 2.0 * (double)n + 64.0;
        for (int it = 0; it < 200; ++it) {
            double cells = 1;
            for (int d = 0; d < D; ++d) cells *= std::floor((hi[d] - lo[d]) / h) + 1.0;
            if (cells <= cap) break;
            h *= 1.25;
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

void check_common(int64_t N, int64_t M, int D) {
    require(D == 2 || D == 3, "cpd: d must be 2 or 3, got " + std::to_string(D));
    require(N >= 1 && M >= 1, "cpd: point sets must not be empty");
    require(N < (int64_t(1) << 31) && M < (int64_t(1) << 31), "cpd: at most 2^31 - 1 points per set");
}

}  // namespace

template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights,
                 double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx,
                 T* best_prob, double* s_out) {
    check_common(N, M, D);
    require(std::isfinite(sigma2) && sigma2 > 0, "cpd estep: sigma2 must be positive and finite");
    require(std::isfinite(c) && c >= 0, "cpd estep: outlier constant c must be >= 0");
    require(cutoff > 0, "cpd estep: cutoff must be positive");
    check_finite(X, N * D, "fixed");
    check_finite(TY, M * D, "moved");
    if (weights) check_finite(weights, M, "weights");
    const double radius = std::isfinite(cutoff) ? std::sqrt(2.0 * sigma2 * cutoff) : cutoff;
    const T inv = (T)(1.0 / (2.0 * sigma2));
    EStepStats stats;

    // Pass 1: over fixed points n, s_n = sum_m a_m k_mn + c.
    Grid<T> gy;
    gy.build(TY, M, D, radius);
    std::vector<T> wy(M);
    for (int64_t s = 0; s < M; ++s) wy[s] = weights ? weights[gy.perm[s]] : T(1);
    Inner<T> iny{{gy.coord[0].data(), gy.coord[1].data(), D == 3 ? gy.coord[2].data() : nullptr},
                 wy.data(), {nullptr, nullptr, nullptr}};
    std::vector<double> sden(N);
    std::vector<int64_t> work1(N, 0);
    const RowFn<T> row1 = pick_row<T>(D, 0, false);
#pragma omp parallel num_threads(xmodal::num_threads())
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t n = 0; n < N; ++n) {
            gy.ranges(&X[n * D], radius, rg);
            double s0 = 0, dummy[3];
            int32_t bp;
            T bvv;
            row1(&X[n * D], rg.data(), (int)(rg.size() / 2), iny, inv, &s0, dummy, &bp, &bvv);
            sden[n] = s0 + c;
            int64_t cnt = 0;
            for (size_t r = 0; r < rg.size(); r += 2) cnt += rg[r + 1] - rg[r];
            work1[n] = cnt;
        }
    }
    std::vector<T> invs(N);
    double logsum = 0;
    int64_t empty = 0, pairs = 0;
    for (int64_t n = 0; n < N; ++n) {
        const double s = sden[n];
        if (s_out) s_out[n] = s;
        pairs += work1[n];
        if (s > 0) {
            invs[n] = (T)(1.0 / s);
            Pt1[n] = (T)(1.0 - c / s);
            logsum += std::log(s);
        } else {
            invs[n] = 0;
            Pt1[n] = 0;
            logsum += std::log(std::numeric_limits<double>::min());
            ++empty;
        }
    }

    // Pass 2: over moving points m, sums over fixed points with weights 1/s_n.
    Grid<T> gx;
    gx.build(X, N, D, radius);
    std::vector<T> wx(N);
    for (int64_t s = 0; s < N; ++s) wx[s] = invs[gx.perm[s]];
    Inner<T> inx{{gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr},
                 wx.data(),
                 {gx.coord[0].data(), gx.coord[1].data(), D == 3 ? gx.coord[2].data() : nullptr}};
    std::vector<int64_t> work2(M, 0);
    const RowFn<T> row2 = pick_row<T>(D, D, true);
#pragma omp parallel num_threads(xmodal::num_threads())
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t m = 0; m < M; ++m) {
            gx.ranges(&TY[m * D], radius, rg);
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp = -1;
            T bvv = 0;
            row2(&TY[m * D], rg.data(), (int)(rg.size() / 2), inx, inv, &s0, cs, &bp, &bvv);
            const double a = weights ? (double)weights[m] : 1.0;
            P1[m] = (T)(a * s0);
            for (int d = 0; d < D; ++d) PX[m * D + d] = (T)(a * cs[d]);
            if (best_idx) best_idx[m] = (bp >= 0 && bvv > 0) ? gx.perm[bp] : -1;
            if (best_prob) best_prob[m] = (bp >= 0 && bvv > 0) ? (T)(a * (double)bvv) : T(0);
            int64_t cnt = 0;
            for (size_t r = 0; r < rg.size(); r += 2) cnt += rg[r + 1] - rg[r];
            work2[m] = cnt;
        }
    }
    for (int64_t m = 0; m < M; ++m) pairs += work2[m];
    stats.log_s_sum = logsum;
    stats.pairs = pairs;
    stats.empty_columns = empty;
    return stats;
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
    const double radius = std::isfinite(cutoff) ? std::sqrt(2.0 * beta * beta * cutoff) : cutoff;
    const T inv = (T)(1.0 / (2.0 * beta * beta));
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
                {cols[0].data(), cols[1].data(), D == 3 ? cols[2].data() : nullptr}};
    const RowFn<T> row = pick_row<T>(D, D, false);
#pragma omp parallel num_threads(xmodal::num_threads())
    {
        std::vector<int64_t> rg;
#pragma omp for schedule(dynamic, 64)
        for (int64_t q = 0; q < Q; ++q) {
            g.ranges(&points[q * D], radius, rg);
            double s0 = 0, cs[3] = {0, 0, 0};
            int32_t bp;
            T bvv;
            row(&points[q * D], rg.data(), (int)(rg.size() / 2), in, inv, &s0, cs, &bp, &bvv);
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
