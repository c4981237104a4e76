// xmodal: Coherent Point Drift kernels (Myronenko & Song 2010) without the M x N matrix.
//
// Conventions: points are row-major (n, d) buffers, d = 2 or 3. "fixed" X has N points, the
// transformed moving set TY has M points. The Gaussian mixture posterior is
//
//     P[m, n] = a_m k_mn / s_n,   k_mn = exp(-|x_n - ty_m|^2 / (2 sigma2)),
//     s_n     = sum_m a_m k_mn + c,
//
// with optional prior weights a_m (1 when absent) and the outlier constant c >= 0. The E-step
// returns P1 = P 1 (M), Pt1 = P^T 1 (N), PX = P X (M x d), per moving point the fixed index of the
// largest P[m, n] and that probability, and sum_n log s_n. Two passes (one over fixed points, one
// over moving points), each output written by one thread: deterministic for any thread count.
//
// Truncation: terms with |x - y|^2 > 2 sigma2 * cutoff (each below exp(-cutoff)) are skipped with a
// uniform cell grid once that radius is small against the extent of the points; cutoff = +inf gives
// the dense sums. The exponential is a vectorisable polynomial (relative error < 2e-7 in float,
// < 1e-15 in double).
#pragma once

#include <cstdint>

namespace xmodal::cpd {

struct EStepStats {
    double log_s_sum = 0.0;   // sum_n log(max(s_n, tiny))
    int64_t pairs = 0;        // kernel evaluations of the two passes (work measure)
    int64_t empty_columns = 0;  // fixed points with s_n == 0 (no moving point within the cutoff, c = 0)
};

// E-step. weights may be null (all 1). best_idx/best_prob/s_out may be null; s_out (N) receives
// the denominators s_n. Throws value_error on bad sizes or non-positive sigma2.
template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights,
                 double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx,
                 T* best_prob, double* s_out = nullptr);

// Gaussian transform: out[q, :] = sum_k exp(-|p_q - c_k|^2 / (2 beta^2)) coef[k, :]
// (points Q x D, centers K x D, coef K x D, out Q x D), truncated at |p - c|^2 > 2 beta^2 cutoff.
template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                     double beta, double cutoff, T* out);

}  // namespace xmodal::cpd
