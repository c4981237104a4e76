// xmodal: Coherent Point Drift kernels (Myronenko & Song 2010) without the M x N matrix.
//
// The arithmetic of every term, denominator and best match is xmodal/detail/cpd_arith.hpp, shared
// with the CUDA twin (cuda/xmodal_cuda.hpp: xmodal::cuda::cpd::estep, the same arguments and
// outputs plus a stream).
//
// Conventions: points are row-major (n, d) buffers, d = 2 or 3. "fixed" X has N points, the
// transformed moving set TY has M points. The Gaussian mixture posterior is
//
//     P[m, n] = a_m k_mn / s_n,   k_mn = exp(-|x_n - ty_m|^2 / (2 sigma2)),
//     s_n     = sum_m a_m k_mn + c,
//
// with optional prior weights a_m >= 0 (1 when absent) and the outlier constant c >= 0. The E-step
// returns P1 = P 1 (M), Pt1 = P^T 1 (N), PX = P X (M x d), per moving point the fixed index of the
// largest P[m, n] (the smallest such index on ties) and that probability, and sum_n log s_n. Two passes (one over fixed points, one
// over moving points), each output written by one thread: deterministic for any thread count.
//
// Support and exactness. A pair (m, n) counts iff d2_mn = |x_n - ty_m|^2 <= r2 = 2 sigma2 cutoff
// (every pair when cutoff = +inf), tested on the same d2 value in both passes (the uniform cell grid
// only narrows the candidates). Pass 1 sums, per fixed point, the terms relative to a shift h_n:
// h_n = 0 when the largest term is at least exp(-48) (float) / exp(-600) (double), else the
// smallest d2 among its support's points of positive weight (log-sum-exp), so no term that
// matters underflows whatever sigma2 is; pass 2 uses the very same terms times
// g_n = exp(-h_n / (2 sigma2)) / s_n (moving points of weight 0 have a zero row). Hence for every n,
// sum_m P[m, n] = Pt1_n <= 1 up to rounding, and sum P1 = sum Pt1 <= N, at any sigma2. The
// exponential is a vectorisable polynomial (relative error < 3e-7 in float, < 1e-15 in double) that
// is exactly 0 below exp(-87) (float) / exp(-708) (double), never a clamped non-zero value.
// g_n is finite (so is every output) unless the support of a fixed point holds only points of
// weight below 2e-48 (float64) / 2e-18 (float32): xmodal.cpd scales the weights to mean 1 and
// refuses any below 1e-15 of the mean.
// float32 calls whose 1 / (2 sigma2) does not fit a float (sigma2 < ~1e-37) run in float64 on
// converted copies; float64 calls with 1 / (2 sigma2) > DBL_MAX throw value_error. Coordinates
// whose squared spread overflows T throw value_error.
#pragma once

#include <cstdint>

namespace xmodal::cpd {

struct EStepStats {
    double log_s_sum = 0.0;   // sum_n log s_n (log DBL_MIN for s_n == 0; -inf if a log s_n < -DBL_MAX)
    int64_t pairs = 0;        // kernel evaluations of the two passes (work measure)
    int64_t empty_columns = 0;  // fixed points with s_n == 0 (no moving point within the cutoff, c = 0)
    int64_t shifted_columns = 0;  // fixed points summed relative to their largest term (h_n > 0)
    int64_t grid_cells = 0;   // CUDA: cells of the grid path (0: dense path; always 0 on the CPU)
    double cell_edge = 0.0;   // CUDA: the grid's cell edge (input units)
};

// E-step. weights may be null (all 1). best_idx/best_prob/log_s_out may be null; log_s_out (N)
// receives log s_n (finite even where s_n itself underflows; -inf where s_n = 0, or where
// log s_n < -DBL_MAX, i.e. h_n / (2 sigma2) overflows). Throws
// value_error on bad sizes, non-finite input, non-positive sigma2 or negative weights.
template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights,
                 double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx,
                 T* best_prob, double* log_s_out = nullptr);

// E-step with per-point features ("colour" CPD): k_mn = exp(-|x_n - ty_m|^2 / (2 sigma2)
// - |f_n - g_m|^2 feature_inv), with FX (N x F) the fixed points' and FY (M x F) the moving points'
// features (row-major) and feature_inv = 1 / (2 feature_sigma^2) >= 0 (0: estep's posterior, up to
// rounding). Same outputs, support (spatial: d2 <= 2 sigma2 cutoff) and guarantees as estep; each
// column is kept in range (summed relative to its largest term where that is below exp(-600);
// shifted_columns stays 0). Exponents in double for both precisions; vector lanes like estep's
// rows, but meant for thousands of cells rather than millions of points. pairs counts the
// candidates of the cell grid after trimming each range to the support's slab along the last axis.
template <class T>
EStepStats estep_features(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, const T* FX,
                          const T* FY, int F, double feature_inv, double sigma2, double c, double cutoff, T* P1,
                          T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out = nullptr);

// Gaussian transform: out[q, :] = sum_k exp(-|p_q - c_k|^2 / (2 beta^2)) coef[k, :]
// (points Q x D, centers K x D, coef K x D, out Q x D), truncated at |p - c|^2 > 2 beta^2 cutoff.
template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                     double beta, double cutoff, T* out);

}  // namespace xmodal::cpd
