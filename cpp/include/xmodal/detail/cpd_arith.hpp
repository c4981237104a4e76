// xmodal: the arithmetic of the CPD E-step, shared by the CPU kernel (cpp/src/cpd.cpp), the CUDA
// kernel (cuda/cpd.cu) and the C++ tests (xmodal._core._testing, which runs the CUDA kernel's
// per-thread code on the CPU). See xmodal/cpd.hpp for the contract; this header fixes how each
// number is computed, so both devices agree on:
//   * the squared distance of a pair (axis order, no FMA), the support test d2 <= r2,
//   * each kernel term exp(-(d2 - h)^+ / (2 sigma2)) * weight (the same polynomial exp),
//   * the log-sum-exp shift of a fixed point (its support's smallest d2 among moving points of
//     positive weight, used when the largest term is below exp(-kSafe)),
//   * the denominator, the pass-2 weight g_n = exp(-h_n / (2 sigma2)) / s_n, Pt1_n and log s_n
//     (finish_column: never NaN, never 1 / 0),
//   * the best match: the largest P[m, n], the smallest fixed index n among equal values.
// Sums are accumulated in a device-specific order (CPU: vector lanes over a cell grid; GPU: one
// thread per point, in index order), so they agree to rounding, not bit for bit.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "xmodal/detail/hd.hpp"

#include <cstdio>

#include "xmodal/common.hpp"

namespace xmodal::cpd::arith {

using namespace xmodal::detail;

// ------------------------------------------------------------------ precision constants
// exp_neg(x) is exactly 0 below kExpLow (the result would leave the normal range) and a normal
// number at or above it. A fixed point whose largest kernel term is at least exp(-kSafe) is summed
// without a shift: the terms flushed to 0 are then below exp(kExpLow + kSafe) relative to the sum
// (float: e^-39 = 1e-17 per term; double: e^-108), far below the rounding error for any M < 2^31.
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

// ------------------------------------------------------------------ exp(x), x <= 0
// Polynomial exp on the range reduction x = k ln2 + r; exactly 0 for x < kExpLow (and for -inf),
// never a clamped non-zero value. Relative error < 3e-7 in float, < 1e-15 in double. Branch-free
// (selects), so the CPU loops vectorise.
XM_HD float exp_neg(float x) {
    const bool under = x < Limits<float>::kExpLow;
    x = under ? Limits<float>::kExpLow : x;
    const float t = mul_rn(x, 1.44269504088896341f);
    const float shifter = 12582912.0f;  // 1.5 * 2^23: round to nearest integer
    float kd = add_rn(t, shifter);
    const std::int32_t ki = float_bits(kd);
    kd = sub_rn(kd, shifter);
    const float r = sub_rn(sub_rn(x, mul_rn(kd, 0.693145751953125f)), mul_rn(kd, 1.42860682030941723212e-6f));
    float p = 1.0f / 720.0f;
    p = madd_rn(p, r, 1.0f / 120.0f);
    p = madd_rn(p, r, 1.0f / 24.0f);
    p = madd_rn(p, r, 1.0f / 6.0f);
    p = madd_rn(p, r, 0.5f);
    p = madd_rn(p, r, 1.0f);
    p = madd_rn(p, r, 1.0f);
    // low bits of ki hold the integer (two's complement); shifted as unsigned (no overflow UB)
    const float scale = bits_float(static_cast<std::int32_t>(static_cast<std::uint32_t>(ki + 127) << 23));
    const float v = mul_rn(p, scale);
    return under ? 0.0f : v;
}

XM_HD double exp_neg(double x) {
    const bool under = x < Limits<double>::kExpLow;
    x = under ? Limits<double>::kExpLow : x;
    const double t = mul_rn(x, 1.4426950408889634074);
    const double shifter = 6755399441055744.0;  // 1.5 * 2^52
    double kd = add_rn(t, shifter);
    const std::int64_t ki = double_bits(kd);
    kd = sub_rn(kd, shifter);
    const double r =
        sub_rn(sub_rn(x, mul_rn(kd, 0.693147180369123816490)), mul_rn(kd, 1.90821492927058770002e-10));
    double p = 1.0 / 479001600.0;  // Taylor to degree 12 on |r| <= ln2/2
    p = madd_rn(p, r, 1.0 / 39916800.0);
    p = madd_rn(p, r, 1.0 / 3628800.0);
    p = madd_rn(p, r, 1.0 / 362880.0);
    p = madd_rn(p, r, 1.0 / 40320.0);
    p = madd_rn(p, r, 1.0 / 5040.0);
    p = madd_rn(p, r, 1.0 / 720.0);
    p = madd_rn(p, r, 1.0 / 120.0);
    p = madd_rn(p, r, 1.0 / 24.0);
    p = madd_rn(p, r, 1.0 / 6.0);
    p = madd_rn(p, r, 0.5);
    p = madd_rn(p, r, 1.0);
    p = madd_rn(p, r, 1.0);
    const double scale = bits_double(static_cast<std::int64_t>(static_cast<std::uint64_t>(ki + 1023) << 52));
    const double v = mul_rn(p, scale);
    return under ? 0.0 : v;
}

// ------------------------------------------------------------------ one pair
// Squared distance |q - p|^2 summed in axis order (the same value whichever point is the query:
// q - p = -(p - q) exactly). D = 2 ignores the third coordinates.
template <class T, int D>
XM_HD T dist2(T q0, T q1, T q2, T p0, T p1, T p2) {
    const T t0 = sub_rn(q0, p0);
    const T t1 = sub_rn(q1, p1);
    T d2 = add_rn(mul_rn(t0, t0), mul_rn(t1, t1));
    if (D == 3) {
        const T t2 = sub_rn(q2, p2);
        d2 = add_rn(d2, mul_rn(t2, t2));
    }
    return d2;
}

// A pair counts iff its squared distance is within r2 = 2 sigma2 cutoff (+inf: every pair).
template <class T>
XM_HD bool in_support(T d2, T r2) {
    return d2 <= r2;
}

// The exponent's distance part relative to a shift h: (d2 - h)^+ (d2 itself for h = 0).
template <class T>
XM_HD T shifted(T d2, T h) {
    const T v = sub_rn(d2, h);
    return v < T(0) ? T(0) : v;
}

// One kernel term: exp(-e / (2 sigma2)) * w over the support (inv = 1 / (2 sigma2)), else 0.
// e is d2 (no shift) or shifted(d2, h).
template <class T>
XM_HD T pair_term(T d2, T e, T inv, T w, T r2) {
    const T ex = mul_rn(exp_neg(mul_rn(-e, inv)), w);
    return in_support(d2, r2) ? ex : T(0);
}

// Best match of a moving point: the larger value; among equal values the smaller fixed index.
template <class T, class I>
XM_HD bool better(T v, I idx, T best_v, I best_idx) {
    return v > best_v || (v == best_v && idx < best_idx);
}

// ------------------------------------------------------------------ one fixed point (pass 1)
// Rows may need a shift only if the support can hold terms below exp(-kSafe).
template <class T>
XM_HD bool may_shift(T r2, T inv) {
    return !(mul_rn(static_cast<double>(r2), static_cast<double>(inv)) <= Limits<T>::kSafe);
}

// Whether a fixed point whose support's smallest d2 (moving points of positive weight) is dmin is
// summed relative to that d2 (its largest term is below exp(-kSafe)).
template <class T>
XM_HD bool needs_shift(T dmin, T inv) {
    return finite_d(static_cast<double>(dmin)) &&
           mul_rn(static_cast<double>(dmin), static_cast<double>(inv)) > Limits<T>::kSafe;
}

struct Column {
    double g = 0;      // pass-2 weight: P[m, n] = a_m exp(-(d2 - h_n)^+ inv) g_n
    double pt = 0;     // Pt1_n
    double log_s = 0;  // log s_n (-inf where s_n = 0, or where log s_n < -DBL_MAX)
    bool empty = false;  // s_n == 0: no support and no outlier constant
};

// From S_n = sum over the support of a_m exp(-(d2 - h_n)^+ inv) and e = h_n inv:
// s_n = exp(-e) (S + c exp(e)); g_n = 1 / (S + c exp(e)); Pt1_n = S g_n. Formed with logarithms
// where e > 0, so an overflow of e (sigma2 tiny against the distances) gives neither inf - inf nor
// 1 / 0: every output is finite or -inf (log s_n), never NaN.
XM_HD Column finish_column(double S, double e, double c) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    Column col;
    if (S > 0) {
        if (e == 0) {
            const double den = add_rn(S, c);
            col.g = 1.0 / den;
            col.pt = S / den;
            col.log_s = log_d(den);
        } else {
            const double la = log_d(S);
            const double lc = c > 0 ? add_rn(log_d(c), e) : -kInf;
            if (la >= lc) {
                const double l1 = log1p_d(exp_d(sub_rn(lc, la)));
                col.g = exp_d(-add_rn(la, l1));
                col.pt = exp_d(-l1);
                col.log_s = add_rn(sub_rn(la, e), l1);  // -inf when e overflows: s_n < exp(-DBL_MAX)
            } else {
                const double l1 = log1p_d(exp_d(sub_rn(la, lc)));
                col.g = exp_d(-add_rn(lc, l1));
                col.pt = exp_d(sub_rn(sub_rn(la, lc), l1));
                col.log_s = add_rn(log_d(c), l1);
            }
        }
    } else {  // empty support: only the outlier term (if any) explains x_n
        col.log_s = c > 0 ? log_d(c) : -kInf;
        col.empty = !(c > 0);
    }
    return col;
}

// ------------------------------------------------------------------ per point, in index order
// What one GPU thread computes for one fixed point (pass 1). The CUDA kernel feeds it the moving
// points tile by tile; xmodal._core._testing feeds it every moving point in index order, which
// is the same sequence of operations.
template <class T, int D>
struct FixedPoint {
    T q0, q1, q2;
    T inv, r2;
    double S = 0;
    T dmin = std::numeric_limits<T>::infinity();
    T h = 0;
    bool shift = false;

    XM_HD FixedPoint(const T* q, T inv_, T r2_)
        : q0(q[0]), q1(q[1]), q2(D == 3 ? q[2] : T(0)), inv(inv_), r2(r2_) {}

    // First sweep: the unshifted sum and the support's smallest d2 among points of positive weight.
    XM_HD void visit(const T* p, T w) {
        const T d2 = dist2<T, D>(q0, q1, q2, p[0], p[1], D == 3 ? p[2] : T(0));
        S = add_rn(S, static_cast<double>(pair_term(d2, d2, inv, w, r2)));
        if (in_support(d2, r2) && w > T(0) && d2 < dmin) dmin = d2;
    }
    // After the first sweep: whether a second sweep relative to h = dmin is needed (then S restarts).
    XM_HD bool start_shift(bool may) {
        shift = may && needs_shift(dmin, inv);
        if (shift) {
            h = dmin;
            S = 0;
        }
        return shift;
    }
    XM_HD void visit_shifted(const T* p, T w) {
        const T d2 = dist2<T, D>(q0, q1, q2, p[0], p[1], D == 3 ? p[2] : T(0));
        S = add_rn(S, static_cast<double>(pair_term(d2, shifted(d2, h), inv, w, r2)));
    }
    XM_HD Column finish(double c) const {
        return finish_column(S, mul_rn(static_cast<double>(h), static_cast<double>(inv)), c);
    }
};

// What one GPU thread computes for one moving point (pass 2): the pass-1 terms times g_n, summed
// in double; the best match by `better`.
template <class T, int D>
struct MovingPoint {
    T q0, q1, q2;
    T inv, r2;
    double s0 = 0, cs[3] = {0, 0, 0};
    T best_v = -1;
    std::int64_t best_n = -1;

    XM_HD MovingPoint(const T* q, T inv_, T r2_)
        : q0(q[0]), q1(q[1]), q2(D == 3 ? q[2] : T(0)), inv(inv_), r2(r2_) {}

    XM_HD void visit(const T* x, T g, T h, std::int64_t n) {
        const T d2 = dist2<T, D>(q0, q1, q2, x[0], x[1], D == 3 ? x[2] : T(0));
        const T k = pair_term(d2, shifted(d2, h), inv, g, r2);
        s0 = add_rn(s0, static_cast<double>(k));
        for (int d = 0; d < D; ++d) cs[d] = add_rn(cs[d], static_cast<double>(mul_rn(k, x[d])));
        if (better(k, n, best_v, best_n)) {
            best_v = k;
            best_n = n;
        }
    }
};

// Outputs of moving point m with prior weight a from its sums (both devices): a zero weight gives
// a zero row and no best match.
template <class T, int D>
XM_HD void finish_moving(double a, double s0, const double* cs, std::int64_t best_n, T best_v, T* P1, T* PX,
                         std::int64_t* best_idx, T* best_prob) {
    const bool live = a > 0;
    *P1 = live ? static_cast<T>(mul_rn(a, s0)) : T(0);
    for (int d = 0; d < D; ++d) PX[d] = live ? static_cast<T>(mul_rn(a, cs[d])) : T(0);
    const bool has_best = live && best_n >= 0 && best_v > T(0);
    if (best_idx) *best_idx = has_best ? best_n : -1;
    if (best_prob) *best_prob = has_best ? static_cast<T>(mul_rn(a, static_cast<double>(best_v))) : T(0);
}

// ------------------------------------------------------------------ statistics of a call
// The term of fixed point n in sum_n log s_n: log DBL_MIN where s_n == 0 (no support, c = 0).
XM_HD double log_s_term(double log_s, bool empty) {
    return empty ? -708.3964185322641 : log_s;  // log(DBL_MIN)
}
// The GPU reduces the statistics with one block of kStatsThreads threads: thread t sums
// n = t, t + kStatsThreads, ... in order, then a tree (stride kStatsThreads/2, /4, ..., 1) adds
// the partial sums; deterministic for any N (xmodal._core._testing replays it on the CPU).
constexpr int kStatsThreads = 256;

// ------------------------------------------------------------------ host-side contract checks
// (host functions: the same checks and messages for both devices)
inline std::string fmt_g(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

// Sizes and scalars of an E-step call (the same messages on both devices).
inline void check_estep_args(std::int64_t N, std::int64_t M, int D, double sigma2, double c, double cutoff) {
    require(D == 2 || D == 3, "cpd: d must be 2 or 3, got " + std::to_string(D));
    require(N >= 1 && M >= 1, "cpd: point sets must not be empty");
    require(N < (std::int64_t(1) << 31) && M < (std::int64_t(1) << 31), "cpd: at most 2^31 - 1 points per set");
    require(std::isfinite(sigma2) && sigma2 > 0, "cpd estep: sigma2 must be positive and finite");
    require(std::isfinite(c) && c >= 0, "cpd estep: outlier constant c must be >= 0");
    require(cutoff > 0, "cpd estep: cutoff must be positive");
}

// Squared distances between any two of the points must be finite in T: given the per-axis
// bounds of both sets together.
template <class T>
void check_extent(const double* lo, const double* hi, int D, const char* what) {
    double e2 = 0;
    for (int d = 0; d < D; ++d) e2 += (hi[d] - lo[d]) * (hi[d] - lo[d]);
    require(e2 <= 0.25 * static_cast<double>(std::numeric_limits<T>::max()),
            std::string(what) + ": the points span " + fmt_g(std::sqrt(e2)) + " units, so squared distances overflow " +
                (sizeof(T) == 4 ? "float32" : "float64") + "; scale the coordinates (xmodal.cpd normalises them)");
}

// float32 cannot hold 1/(2 sigma2) (or the support radius) for sigma2 below ~1e-37: such calls are
// computed in float64 on converted copies and rounded back (both devices).
inline bool float_needs_double(double sigma2, double cutoff) {
    const double inv = 1.0 / (2.0 * sigma2);
    if (!(inv <= static_cast<double>(std::numeric_limits<float>::max()))) return true;
    if (std::isfinite(cutoff) && 2.0 * sigma2 * cutoff < static_cast<double>(std::numeric_limits<float>::min()))
        return true;
    return false;
}

// Kernel evaluations of the GPU E-step (dense: every pair in each pass, a second pass-1 sweep for
// the shifted fixed points).
inline std::int64_t dense_pairs(std::int64_t N, std::int64_t M, std::int64_t shifted) {
    return 2 * N * M + shifted * M;
}

// 1 / (2 sigma2) and the support radius squared in T (after float_needs_double).
template <class T>
struct Scalars {
    T inv;
    T r2;
};
template <class T>
Scalars<T> estep_scalars(double sigma2, double cutoff) {
    const double inv_d = 1.0 / (2.0 * sigma2);
    require(std::isfinite(inv_d) && inv_d <= static_cast<double>(std::numeric_limits<T>::max()),
            "cpd estep: sigma2 = " + fmt_g(sigma2) + " is too small: 1 / (2 sigma2) overflows float64");
    const T r2 = std::isfinite(cutoff) ? static_cast<T>(2.0 * sigma2 * cutoff) : std::numeric_limits<T>::infinity();
    return {static_cast<T>(inv_d), r2};
}

}  // namespace xmodal::cpd::arith
