// CPD E-step on CUDA, the twin of cpp/src/cpd.cpp (see xmodal_cuda.hpp and xmodal/cpd.hpp).
//
// Two passes, one thread per outer point, the inner set streamed through shared-memory tiles in
// index order; each thread runs the per-point code of xmodal/detail/cpd_arith.hpp (FixedPoint,
// MovingPoint, finish_column, finish_moving), which xmodal._core._testing runs on the CPU. Every
// output is written by one thread and every sum has a fixed order: deterministic.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "xmodal/common.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda::cpd {

namespace {

namespace ca = xmodal::cpd::arith;
using xmodal::cpd::EStepStats;

constexpr int kBlock = 256;                 // threads per block = points per shared-memory tile
constexpr int kStats = ca::kStatsThreads;   // threads of the one-block reductions
constexpr unsigned char kShifted = 1, kEmpty = 2;

// Pass 1, one thread per fixed point n: FixedPoint over every moving point (sweep 1), again
// relative to h_n where needed (sweep 2, for the block's threads that need it), then the column.
template <class T, int D>
__global__ void pass1_kernel(const T* __restrict__ X, int64_t N, const T* __restrict__ TY, int64_t M,
                             const T* __restrict__ w, T inv, T r2, bool may_shift, double c, T* __restrict__ g,
                             T* __restrict__ h, T* __restrict__ Pt1, double* __restrict__ log_s,
                             unsigned char* __restrict__ flags) {
    __shared__ T tile[kBlock * D];
    __shared__ T tw[kBlock];
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = n < N;
    T q[D];
    for (int d = 0; d < D; ++d) q[d] = active ? X[n * D + d] : T(0);
    ca::FixedPoint<T, D> fp(q, inv, r2);
    for (int sweep = 0; sweep < 2; ++sweep) {
        // the same value in every thread of the block: all reach every __syncthreads below
        if (sweep == 1 && !__syncthreads_or(active && fp.start_shift(may_shift))) break;
        for (int64_t base = 0; base < M; base += kBlock) {
            __syncthreads();  // the previous tile is consumed
            const int64_t m = base + threadIdx.x;
            if (m < M) {
                for (int d = 0; d < D; ++d) tile[threadIdx.x * D + d] = TY[m * D + d];
                tw[threadIdx.x] = w ? w[m] : T(1);
            }
            __syncthreads();
            if (!active || (sweep == 1 && !fp.shift)) continue;
            const int cnt = (int)((M - base) < kBlock ? (M - base) : kBlock);
            if (sweep == 0)
                for (int j = 0; j < cnt; ++j) fp.visit(&tile[j * D], tw[j]);
            else
                for (int j = 0; j < cnt; ++j) fp.visit_shifted(&tile[j * D], tw[j]);
        }
    }
    if (active) {
        const ca::Column col = fp.finish(c);
        g[n] = (T)col.g;
        h[n] = fp.h;
        Pt1[n] = (T)col.pt;
        log_s[n] = col.log_s;
        flags[n] = (unsigned char)((fp.shift ? kShifted : 0) | (col.empty ? kEmpty : 0));
    }
}

// Pass 2, one thread per moving point m: MovingPoint over every fixed point (the pass-1 terms
// times g_n), then the row. Moving points of weight 0 have a zero row (nothing to sum).
template <class T, int D>
__global__ void pass2_kernel(const T* __restrict__ X, int64_t N, const T* __restrict__ TY, int64_t M,
                             const T* __restrict__ w, const T* __restrict__ g, const T* __restrict__ h, T inv, T r2,
                             T* __restrict__ P1, T* __restrict__ PX, int64_t* __restrict__ best,
                             T* __restrict__ prob) {
    __shared__ T tile[kBlock * D];
    __shared__ T tg[kBlock];
    __shared__ T th[kBlock];
    const int64_t m = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = m < M;
    const double a = active ? (w ? (double)w[m] : 1.0) : 0.0;
    T q[D];
    for (int d = 0; d < D; ++d) q[d] = active ? TY[m * D + d] : T(0);
    ca::MovingPoint<T, D> mp(q, inv, r2);
    for (int64_t base = 0; base < N; base += kBlock) {
        __syncthreads();
        const int64_t n = base + threadIdx.x;
        if (n < N) {
            for (int d = 0; d < D; ++d) tile[threadIdx.x * D + d] = X[n * D + d];
            tg[threadIdx.x] = g[n];
            th[threadIdx.x] = h[n];
        }
        __syncthreads();
        if (!(a > 0)) continue;
        const int cnt = (int)((N - base) < kBlock ? (N - base) : kBlock);
        for (int j = 0; j < cnt; ++j) mp.visit(&tile[j * D], tg[j], th[j], base + j);
    }
    if (active)
        ca::finish_moving<T, D>(a, mp.s0, mp.cs, mp.best_n, mp.best_v, &P1[m], &PX[m * D], best ? &best[m] : nullptr,
                                prob ? &prob[m] : nullptr);
}

// One block: sum_n log s_n (log_s_term), and the counts of empty and shifted fixed points.
__global__ void stats_kernel(const double* __restrict__ log_s, const unsigned char* __restrict__ flags, int64_t N,
                             double* __restrict__ sum, long long* __restrict__ counts) {
    __shared__ double s[kStats];
    __shared__ long long ne[kStats], nh[kStats];
    const int t = threadIdx.x;
    double acc = 0;
    long long e = 0, sh = 0;
    for (int64_t n = t; n < N; n += kStats) {
        acc = ca::add_rn(acc, ca::log_s_term(log_s[n], (flags[n] & kEmpty) != 0));
        e += (flags[n] & kEmpty) ? 1 : 0;
        sh += (flags[n] & kShifted) ? 1 : 0;
    }
    s[t] = acc;
    ne[t] = e;
    nh[t] = sh;
    __syncthreads();
    for (int stride = kStats / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s[t] = ca::add_rn(s[t], s[t + stride]);
            ne[t] += ne[t + stride];
            nh[t] += nh[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        *sum = s[0];
        counts[0] = ne[0];
        counts[1] = nh[0];
    }
}

// One block over n x D values: per-column minimum and maximum (as double) and the count of
// non-finite values (the input checks of the CPU twin).
template <class T>
__global__ void scan_kernel(const T* __restrict__ P, int64_t n, int D, double* __restrict__ lo,
                            double* __restrict__ hi, long long* __restrict__ bad) {
    __shared__ double slo[kStats * 3], shi[kStats * 3];
    __shared__ long long sbad[kStats];
    const int t = threadIdx.x;
    double l[3] = {CUDART_INF, CUDART_INF, CUDART_INF};
    double u[3] = {-CUDART_INF, -CUDART_INF, -CUDART_INF};
    long long b = 0;
    for (int64_t i = t; i < n; i += kStats)
        for (int d = 0; d < D; ++d) {
            const double v = (double)P[i * D + d];
            if (!isfinite(v)) {
                ++b;
                continue;
            }
            l[d] = v < l[d] ? v : l[d];
            u[d] = v > u[d] ? v : u[d];
        }
    for (int d = 0; d < 3; ++d) {
        slo[t * 3 + d] = l[d];
        shi[t * 3 + d] = u[d];
    }
    sbad[t] = b;
    __syncthreads();
    for (int stride = kStats / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            for (int d = 0; d < 3; ++d) {
                slo[t * 3 + d] = fmin(slo[t * 3 + d], slo[(t + stride) * 3 + d]);
                shi[t * 3 + d] = fmax(shi[t * 3 + d], shi[(t + stride) * 3 + d]);
            }
            sbad[t] += sbad[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        for (int d = 0; d < D; ++d) {
            lo[d] = slo[d];
            hi[d] = shi[d];
        }
        *bad = sbad[0];
    }
}

template <class A, class B>
__global__ void convert_kernel(const A* __restrict__ in, B* __restrict__ out, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (B)in[i];
}

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kBlock - 1) / kBlock); }

struct Scan {
    double lo[3], hi[3];
    long long bad;
};

template <class T>
Scan scan(const T* P, int64_t n, int D, cudaStream_t stream) {
    DeviceBuffer buf(sizeof(double) * 6 + sizeof(long long), "cpd (cuda): scratch");
    double* lo = buf.as<double>();
    double* hi = lo + 3;
    long long* bad = reinterpret_cast<long long*>(lo + 6);
    scan_kernel<T><<<1, kStats, 0, stream>>>(P, n, D, lo, hi, bad);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): input scan launch");
    Scan s{};
    check(static_cast<int>(cudaMemcpyAsync(&s.lo, lo, sizeof(double) * 3, cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): input scan");
    check(static_cast<int>(cudaMemcpyAsync(&s.hi, hi, sizeof(double) * 3, cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): input scan");
    check(static_cast<int>(cudaMemcpyAsync(&s.bad, bad, sizeof(long long), cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): input scan");
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): input scan");
    return s;
}

// The CPU twin's input checks, with its messages: finite coordinates and weights, weights >= 0,
// squared distances finite in T.
template <class T>
void check_inputs(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, cudaStream_t stream) {
    const Scan sx = scan(X, N, D, stream);
    require(sx.bad == 0, "cpd: fixed has non-finite values");
    const Scan sy = scan(TY, M, D, stream);
    require(sy.bad == 0, "cpd: moved has non-finite values");
    if (weights) {
        const Scan sw = scan(weights, M, 1, stream);
        require(sw.bad == 0, "cpd: weights has non-finite values");
        require(sw.lo[0] >= 0, "cpd estep: weights must be >= 0");
    }
    double lo[3], hi[3];
    for (int d = 0; d < D; ++d) {
        lo[d] = std::min(sx.lo[d], sy.lo[d]);
        hi[d] = std::max(sx.hi[d], sy.hi[d]);
    }
    ca::check_extent<T>(lo, hi, D, "cpd estep");
}

template <class T, int D>
EStepStats estep_impl(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, double sigma2, double c,
                      double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                      cudaStream_t stream) {
    const ca::Scalars<T> sc = ca::estep_scalars<T>(sigma2, cutoff);
    DeviceBuffer g(sizeof(T) * N, "cpd (cuda): g"), h(sizeof(T) * N, "cpd (cuda): shifts");
    DeviceBuffer flags(N, "cpd (cuda): flags");
    DeviceBuffer log_s_scratch;
    double* log_s = log_s_out;
    if (!log_s) {
        log_s_scratch = DeviceBuffer(sizeof(double) * N, "cpd (cuda): log_s");
        log_s = log_s_scratch.as<double>();
    }
    DeviceBuffer stats(sizeof(double) + 2 * sizeof(long long), "cpd (cuda): statistics");
    pass1_kernel<T, D><<<blocks_for(N), kBlock, 0, stream>>>(X, N, TY, M, weights, sc.inv, sc.r2,
                                                             ca::may_shift(sc.r2, sc.inv), c, g.as<T>(), h.as<T>(),
                                                             Pt1, log_s, flags.as<unsigned char>());
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): pass 1 launch");
    pass2_kernel<T, D><<<blocks_for(M), kBlock, 0, stream>>>(X, N, TY, M, weights, g.as<T>(), h.as<T>(), sc.inv,
                                                             sc.r2, P1, PX, best_idx, best_prob);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): pass 2 launch");
    double* sum = stats.as<double>();
    long long* counts = reinterpret_cast<long long*>(sum + 1);
    stats_kernel<<<1, kStats, 0, stream>>>(log_s, flags.as<unsigned char>(), N, sum, counts);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): statistics launch");
    double host_sum = 0;
    long long host_counts[2] = {0, 0};
    check(static_cast<int>(cudaMemcpyAsync(&host_sum, sum, sizeof(double), cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): statistics");
    check(static_cast<int>(cudaMemcpyAsync(host_counts, counts, 2 * sizeof(long long), cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): statistics");
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): E-step");
    EStepStats st;
    st.log_s_sum = host_sum;
    st.empty_columns = host_counts[0];
    st.shifted_columns = host_counts[1];
    st.pairs = ca::dense_pairs(N, M, st.shifted_columns);
    return st;
}

template <class T>
EStepStats estep_dim(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
                     double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                     cudaStream_t stream) {
    if (D == 2)
        return estep_impl<T, 2>(X, N, TY, M, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                                stream);
    return estep_impl<T, 3>(X, N, TY, M, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                            stream);
}

template <class A, class B>
void convert(const A* in, B* out, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    convert_kernel<A, B><<<blocks_for(n), kBlock, 0, stream>>>(in, out, n);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): conversion launch");
}

// float32 calls whose 1 / (2 sigma2) does not fit a float: float64 on converted copies (as on the CPU).
EStepStats estep_float_via_double(const float* X, int64_t N, const float* TY, int64_t M, int D, const float* weights,
                                  double sigma2, double c, double cutoff, float* P1, float* Pt1, float* PX,
                                  int64_t* best_idx, float* best_prob, double* log_s_out, cudaStream_t stream) {
    DeviceBuffer x(sizeof(double) * N * D, "cpd (cuda): float64 copy"), y(sizeof(double) * M * D, "cpd (cuda): float64 copy");
    DeviceBuffer wd, p1(sizeof(double) * M, "cpd (cuda): float64 P1"), pt1(sizeof(double) * N, "cpd (cuda): float64 Pt1");
    DeviceBuffer px(sizeof(double) * M * D, "cpd (cuda): float64 PX"), bp;
    convert(X, x.as<double>(), N * D, stream);
    convert(TY, y.as<double>(), M * D, stream);
    if (weights) {
        wd = DeviceBuffer(sizeof(double) * M, "cpd (cuda): float64 weights");
        convert(weights, wd.as<double>(), M, stream);
    }
    if (best_prob) bp = DeviceBuffer(sizeof(double) * M, "cpd (cuda): float64 best_prob");
    const EStepStats st =
        estep_dim<double>(x.as<double>(), N, y.as<double>(), M, D, weights ? wd.as<double>() : nullptr, sigma2, c,
                          cutoff, p1.as<double>(), pt1.as<double>(), px.as<double>(), best_idx,
                          best_prob ? bp.as<double>() : nullptr, log_s_out, stream);
    convert(p1.as<double>(), P1, M, stream);
    convert(pt1.as<double>(), Pt1, N, stream);
    convert(px.as<double>(), PX, M * D, stream);
    if (best_prob) convert(bp.as<double>(), best_prob, M, stream);
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): E-step");
    return st;
}

}  // namespace

template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
                 double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                 cudaStream_t stream) {
    ca::check_estep_args(N, M, D, sigma2, c, cutoff);
    check_inputs(X, N, TY, M, D, weights, stream);
    if constexpr (std::is_same_v<T, float>) {
        if (ca::float_needs_double(sigma2, cutoff))
            return estep_float_via_double(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob,
                                          log_s_out, stream);
    }
    return estep_dim<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                        stream);
}

template EStepStats estep<float>(const float*, int64_t, const float*, int64_t, int, const float*, double, double,
                                 double, float*, float*, float*, int64_t*, float*, double*, cudaStream_t);
template EStepStats estep<double>(const double*, int64_t, const double*, int64_t, int, const double*, double, double,
                                  double, double*, double*, double*, int64_t*, double*, double*, cudaStream_t);

}  // namespace xmodal::cuda::cpd
