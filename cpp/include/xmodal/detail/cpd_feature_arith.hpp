// xmodal: the arithmetic of the CPD E-step with per-point features, shared by the CPU kernel
// (cpp/src/cpd.cpp, estep_features) and the CUDA kernel (cuda/cpd.cu, estep_features).
//
// The kernel of a pair is k_mn = exp(-e_mn) with the exponent, in double,
//     e_mn = |x_n - T(y_m)|^2 inv + |f_n - g_m|^2 finv      (inv = 1 / 2 sigma2, finv = 1 / 2 feature_sigma^2)
// on the spatial support d2 <= r2 (the same test in both passes; the feature term only lowers a
// term, so the support stays a superset of what matters). Each fixed point's column is kept in
// range (GPU: summed relative to its largest term, an online log-sum-exp; CPU: the plain sum with
// the exact E-step's polynomial exp, summed again relative to its largest term when that is below
// exp(-600); nothing that matters underflows at any sigma2), then the outlier constant c enters through log s_n = log(sum_m w_m k_mn + c). Pass 2
// forms P[m, n] = w_m exp(-e_mn - log s_n), its sums and the best match (largest value, smaller
// fixed index among equal values). Each device visits the pairs in its own order (CPU: the cell
// grid's sorted order; GPU: the cells around the point, or index order), so the sums agree to
// rounding, not bit for bit; the per-pair numbers are the same functions below.
#pragma once

#include <cstdint>
#include <limits>

#include "xmodal/detail/hd.hpp"

namespace xmodal::cpd::farith {

using namespace xmodal::detail;

// One axis of a squared distance: s + (a - b)^2 in double (axes are added in order).
XM_HD double d2_add(double s, double a, double b) {
    const double v = sub_rn(a, b);
    return add_rn(s, mul_rn(v, v));
}

// Squared distance of a point pair (D coordinates of type T, in double, axis order).
template <class T>
XM_HD double point_d2(const T* a, const T* b, int D) {
    double s = 0;
    for (int d = 0; d < D; ++d) s = d2_add(s, static_cast<double>(a[d]), static_cast<double>(b[d]));
    return s;
}

// Squared distance of two feature rows (double).
XM_HD double feature_d2(const double* a, const double* b, int F) {
    double s = 0;
    for (int j = 0; j < F; ++j) {
        const double v = sub_rn(a[j], b[j]);
        s = add_rn(s, mul_rn(v, v));
    }
    return s;
}

// The exponent e of a pair from its spatial and feature squared distances.
XM_HD double exponent(double d2, double fd2, double inv, double finv) {
    return add_rn(mul_rn(d2, inv), mul_rn(fd2, finv));
}

// Pass 1, one fixed point: S = sum_m w_m exp(emin - e_m) over its support, emin the smallest
// exponent seen so far (the sum is rescaled when a smaller one arrives).
struct FeatureColumn {
    double emin = std::numeric_limits<double>::infinity();
    double S = 0;

    XM_HD void add(double e, double w) {
        if (e < emin) {
            S = finite_d(emin) ? mul_rn(S, exp_d(sub_rn(e, emin))) : 0.0;
            emin = e;
        }
        S = add_rn(S, mul_rn(w, exp_d(sub_rn(emin, e))));
    }
};

struct FeatureColumnOut {
    double log_s = 0;  // log(sum_m w_m k_mn + c); -inf where that is 0
    double pt = 0;     // Pt1_n = sum_m w_m k_mn / s_n
    bool empty = false;  // s_n == 0: no support and no outlier constant
};

// log s_n = logaddexp(log S - emin, log c) and Pt1_n = exp(log S - emin - log s_n).
XM_HD FeatureColumnOut finish_feature_column(const FeatureColumn& col, double c) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    FeatureColumnOut out;
    const double lc = c > 0 ? log_d(c) : -kInf;
    if (col.S > 0) {
        const double ls = sub_rn(log_d(col.S), col.emin);
        const double hi = ls > lc ? ls : lc;
        const double gap = ls > lc ? sub_rn(ls, lc) : sub_rn(lc, ls);
        out.log_s = add_rn(hi, log1p_d(exp_d(-gap)));
        out.pt = exp_d(sub_rn(ls, out.log_s));
    } else {
        out.log_s = lc;
        out.pt = 0;
    }
    out.empty = !(col.S > 0 || c > 0);
    return out;
}

// Pass 2, one moving point: sums of P[m, n] / w_m = exp(-e - log s_n) and of its products with
// x_n, and the best match (largest value; the smaller fixed index among equal values).
struct FeatureRow {
    double s0 = 0, cs[3] = {0, 0, 0}, best_v = 0;
    std::int64_t best_n = -1;

    // The pair's P[m, n] / w_m from its exponent and log s_n.
    XM_HD static double term(double e, double log_s) { return exp_d(sub_rn(-e, log_s)); }
    // Adds a term p of fixed point n to the sum and the best match (coordinates: add_coord).
    XM_HD void add_term(double p, std::int64_t n) {
        s0 = add_rn(s0, p);
        if (p > best_v || (p == best_v && p > 0 && n < best_n)) {
            best_v = p;
            best_n = n;
        }
    }
    XM_HD void add_coord(int d, double p, double x) { cs[d] = add_rn(cs[d], mul_rn(p, x)); }
    // All of it for a fixed point with D coordinates x (D <= 3).
    template <class T>
    XM_HD void add(double e, double log_s, const T* x, int D, std::int64_t n) {
        const double p = term(e, log_s);
        for (int d = 0; d < D; ++d) add_coord(d, p, static_cast<double>(x[d]));
        add_term(p, n);
    }
};

// Outputs of moving point m with prior weight w (a zero weight: a zero row, no best match).
template <class T>
XM_HD void finish_feature_row(const FeatureRow& r, double w, int D, T* P1, T* PX, std::int64_t* best_idx,
                              T* best_prob) {
    const bool live = w > 0;
    *P1 = live ? static_cast<T>(mul_rn(w, r.s0)) : T(0);
    for (int d = 0; d < D; ++d) PX[d] = live ? static_cast<T>(mul_rn(w, r.cs[d])) : T(0);
    const bool has_best = live && r.best_n >= 0;
    if (best_idx) *best_idx = has_best ? r.best_n : -1;
    if (best_prob) *best_prob = has_best ? static_cast<T>(mul_rn(w, r.best_v)) : T(0);
}

}  // namespace xmodal::cpd::farith
