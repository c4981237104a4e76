// CPD kernels on CUDA: the E-step in two passes (one thread per outer point, shared-memory tiles
// over the inner set, fixed summation order: deterministic) and the Gaussian transform. Same
// contracts as cpp/include/xmodal/cpd.hpp with dense sums (no truncation); every fixed point's
// denominator is summed relative to its largest term (log-sum-exp), so sum P1 = sum Pt1 <= N at
// any sigma2. Pointers are device
// pointers; row-major (n, d) buffers, d = 2 or 3; T = float or double; accumulation in double.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "xmodal/common.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda::cpd {

namespace {

constexpr int kBlock = 256;  // threads per block = points per shared-memory tile

// Pass 1, one thread per fixed point n: h_n = min_m d2_mn (first sweep), S_n = sum_m a_m
// exp(-(d2_mn - h_n) inv) (second sweep, relative to the largest term: nothing that matters
// underflows at any sigma2), then log s_n = log(S_n + c exp(h_n inv)) - h_n inv, the pass-2 weight
// g_n = 1 / (S_n + c exp(h_n inv)) and Pt1_n = S_n g_n (log-sum-exp; s_n == 0 -> g = Pt1 = 0).
template <class T, int D>
__global__ void pass1_kernel(const T* __restrict__ X, int64_t N, const T* __restrict__ TY, int64_t M,
                             const T* __restrict__ w, double inv, double c, double* __restrict__ log_s,
                             double* __restrict__ g, double* __restrict__ shift, double* __restrict__ Pt1) {
    __shared__ T tile[kBlock * D];
    __shared__ T tw[kBlock];
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    T q[D];
    for (int d = 0; d < D; ++d) q[d] = n < N ? X[n * D + d] : T(0);
    double h = CUDART_INF;
    for (int sweep = 0; sweep < 2; ++sweep) {
        double acc = 0.0;
        for (int64_t base = 0; base < M; base += kBlock) {
            const int64_t m = base + threadIdx.x;
            if (m < M) {
                for (int d = 0; d < D; ++d) tile[threadIdx.x * D + d] = TY[m * D + d];
                tw[threadIdx.x] = w ? w[m] : T(1);
            }
            __syncthreads();
            const int cnt = (int)((M - base) < kBlock ? (M - base) : kBlock);
            for (int j = 0; j < cnt; ++j) {
                double d2 = 0.0;
                for (int d = 0; d < D; ++d) {
                    const double t = (double)q[d] - (double)tile[j * D + d];
                    d2 += t * t;
                }
                // the shift is the nearest moving point of positive weight; zero-weight points
                // (whose d2 may lie below it) add nothing
                if (sweep == 0)
                    h = (tw[j] > T(0) && d2 < h) ? d2 : h;
                else if (tw[j] > T(0))  // fmin: d2 >= h unless contraction rounds differently
                    acc += (double)tw[j] * exp(fmin(-(d2 - h) * inv, 0.0));
            }
            __syncthreads();
        }
        if (sweep == 1 && n < N) {
            const double e = h * inv;
            double gn = 0.0, pt = 0.0, ls;
            if (acc > 0) {
                const double la = log(acc);
                const double lc = c > 0 ? log(c) + e : -CUDART_INF;
                if (la >= lc) {  // as on the CPU: no inf - inf when e = h inv overflows
                    const double l1 = log1p(exp(lc - la));
                    gn = exp(-(la + l1));
                    pt = exp(-l1);
                    ls = (la - e) + l1;
                } else {
                    const double l1 = log1p(exp(la - lc));
                    gn = exp(-(lc + l1));
                    pt = exp(la - lc - l1);
                    ls = log(c) + l1;
                }
            } else {
                ls = c > 0 ? log(c) : -CUDART_INF;
            }
            log_s[n] = ls;
            g[n] = gn;
            shift[n] = h;
            Pt1[n] = pt;
        }
    }
}

// Pass 2, one thread per moving point m: the pass-1 terms times g_n.
template <class T, int D>
__global__ void pass2_kernel(const T* __restrict__ X, int64_t N, const T* __restrict__ TY, int64_t M,
                             const T* __restrict__ w, const double* __restrict__ g,
                             const double* __restrict__ shift, double inv, double* __restrict__ P1,
                             double* __restrict__ PX, int64_t* __restrict__ best, double* __restrict__ prob) {
    __shared__ T tile[kBlock * D];
    __shared__ double tg[kBlock];
    __shared__ double th[kBlock];
    const int64_t m = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    T q[D];
    for (int d = 0; d < D; ++d) q[d] = m < M ? TY[m * D + d] : T(0);
    double a0 = 0.0, ac[D];
    for (int d = 0; d < D; ++d) ac[d] = 0.0;
    double bv = -1.0;
    int64_t bi = -1;
    for (int64_t base = 0; base < N; base += kBlock) {
        const int64_t n = base + threadIdx.x;
        if (n < N) {
            for (int d = 0; d < D; ++d) tile[threadIdx.x * D + d] = X[n * D + d];
            tg[threadIdx.x] = g[n];
            th[threadIdx.x] = shift[n];
        }
        __syncthreads();
        const int cnt = (int)((N - base) < kBlock ? (N - base) : kBlock);
        for (int j = 0; j < cnt; ++j) {
            double d2 = 0.0;
            for (int d = 0; d < D; ++d) {
                const double t = (double)tile[j * D + d] - (double)q[d];
                d2 += t * t;
            }
            const double k = tg[j] > 0 ? exp(fmin(-(d2 - th[j]) * inv, 0.0)) * tg[j] : 0.0;
            a0 += k;
            for (int d = 0; d < D; ++d) ac[d] += k * (double)tile[j * D + d];
            if (k > bv) {  // strict: the smallest index wins ties
                bv = k;
                bi = base + j;
            }
        }
        __syncthreads();
    }
    if (m < M) {
        const double a = w ? (double)w[m] : 1.0;
        if (!(a > 0)) {  // a zero weight: the row of P is zero (its terms may exceed g_n: not used)
            a0 = 0.0;
            for (int d = 0; d < D; ++d) ac[d] = 0.0;
        }
        P1[m] = a * a0;
        for (int d = 0; d < D; ++d) PX[m * D + d] = a * ac[d];
        best[m] = bv > 0 && a > 0 ? bi : -1;
        prob[m] = bv > 0 && a > 0 ? a * bv : 0.0;
    }
}

template <class T, int D>
__global__ void gauss_kernel(const T* __restrict__ C, int64_t K, const T* __restrict__ coef,
                             const T* __restrict__ P, int64_t Q, double inv, T* __restrict__ out) {
    __shared__ T tile[kBlock * D];
    __shared__ T tcoef[kBlock * D];
    const int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    T p[D];
    for (int d = 0; d < D; ++d) p[d] = q < Q ? P[q * D + d] : T(0);
    double acc[D];
    for (int d = 0; d < D; ++d) acc[d] = 0.0;
    for (int64_t base = 0; base < K; base += kBlock) {
        const int64_t k = base + threadIdx.x;
        if (k < K) {
            for (int d = 0; d < D; ++d) {
                tile[threadIdx.x * D + d] = C[k * D + d];
                tcoef[threadIdx.x * D + d] = coef[k * D + d];
            }
        }
        __syncthreads();
        const int cnt = (int)((K - base) < kBlock ? (K - base) : kBlock);
        for (int j = 0; j < cnt; ++j) {
            double d2 = 0.0;
            for (int d = 0; d < D; ++d) {
                const double t = (double)p[d] - (double)tile[j * D + d];
                d2 += t * t;
            }
            const double g = exp(-d2 * inv);
            for (int d = 0; d < D; ++d) acc[d] += g * (double)tcoef[j * D + d];
        }
        __syncthreads();
    }
    if (q < Q)
        for (int d = 0; d < D; ++d) out[q * D + d] = (T)acc[d];
}

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kBlock - 1) / kBlock); }

void check_sizes(int64_t N, int64_t M, int D) {
    require(D == 2 || D == 3, "cpd (cuda): d must be 2 or 3, got " + std::to_string(D));
    require(N >= 1 && M >= 1, "cpd (cuda): point sets must not be empty");
    require(N < (int64_t(1) << 40) && M < (int64_t(1) << 40), "cpd (cuda): too many points");
}

}  // namespace

// E-step. Outputs are double device buffers: log_s (N, log s_n; -inf where s_n = 0 or
// log s_n < -DBL_MAX), g (N, pass-2
// weights, scratch), shift (N, h_n, scratch), Pt1 (N), P1 (M), PX (M x D), prob (M); best (M)
// int64. weights may be null.
template <class T>
void estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
           double* log_s, double* g, double* shift, double* Pt1, double* P1, double* PX, int64_t* best,
           double* prob, cudaStream_t stream) {
    check_sizes(N, M, D);
    require(sigma2 > 0, "cpd (cuda): sigma2 must be positive");
    const double inv = 1.0 / (2.0 * sigma2);
    require(std::isfinite(inv), "cpd (cuda): sigma2 is too small: 1 / (2 sigma2) overflows float64");
    if (D == 2)
        pass1_kernel<T, 2><<<blocks_for(N), kBlock, 0, stream>>>(X, N, TY, M, weights, inv, c, log_s, g, shift, Pt1);
    else
        pass1_kernel<T, 3><<<blocks_for(N), kBlock, 0, stream>>>(X, N, TY, M, weights, inv, c, log_s, g, shift, Pt1);
    check(cudaGetLastError(), "cpd pass 1 launch");
    if (D == 2)
        pass2_kernel<T, 2><<<blocks_for(M), kBlock, 0, stream>>>(X, N, TY, M, weights, g, shift, inv, P1, PX, best, prob);
    else
        pass2_kernel<T, 3><<<blocks_for(M), kBlock, 0, stream>>>(X, N, TY, M, weights, g, shift, inv, P1, PX, best, prob);
    check(cudaGetLastError(), "cpd pass 2 launch");
}

template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D, double beta,
                     T* out, cudaStream_t stream) {
    check_sizes(K, Q, D);
    require(beta > 0, "cpd (cuda): beta must be positive");
    const double inv = 1.0 / (2.0 * beta * beta);
    if (D == 2)
        gauss_kernel<T, 2><<<blocks_for(Q), kBlock, 0, stream>>>(centers, K, coef, points, Q, inv, out);
    else
        gauss_kernel<T, 3><<<blocks_for(Q), kBlock, 0, stream>>>(centers, K, coef, points, Q, inv, out);
    check(cudaGetLastError(), "cpd gauss transform launch");
}

template void estep<float>(const float*, int64_t, const float*, int64_t, int, const float*, double, double, double*,
                           double*, double*, double*, double*, double*, int64_t*, double*, cudaStream_t);
template void estep<double>(const double*, int64_t, const double*, int64_t, int, const double*, double, double,
                            double*, double*, double*, double*, double*, double*, int64_t*, double*, cudaStream_t);
template void gauss_transform<float>(const float*, int64_t, const float*, const float*, int64_t, int, double, float*,
                                     cudaStream_t);
template void gauss_transform<double>(const double*, int64_t, const double*, const double*, int64_t, int, double,
                                      double*, cudaStream_t);

}  // namespace xmodal::cuda::cpd
