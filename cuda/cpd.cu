// CPD E-step on CUDA, the twin of cpp/src/cpd.cpp (see xmodal_cuda.hpp and xmodal/cpd.hpp).
//
// Two passes, one thread per outer point; each thread runs the per-point code of
// xmodal/detail/cpd_arith.hpp (FixedPoint, MovingPoint, finish_column, finish_moving), which
// xmodal._core._testing runs on the CPU. Two paths:
//   * dense: the inner set streamed through shared-memory tiles in index order (every pair);
//   * grid (the default whenever the support radius sqrt(2 sigma2 cutoff) is finite and small
//     against the extent, xmodal/detail/cpd_grid.hpp): both sets sorted by cell of a uniform grid
//     of edge >= the radius, each thread visits the 3^D cells around its point: the same terms
//     (the others are 0), summed in cell order; O((N + M) x points per neighbourhood).
// Every output is written by one thread and every sum has a fixed order: deterministic.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "xmodal/common.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal/detail/cpd_feature_arith.hpp"
#include "xmodal/detail/cpd_grid.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda::cpd {

namespace {

namespace ca = xmodal::cpd::arith;
namespace cg = xmodal::cpd::grid;
namespace fa = xmodal::cpd::farith;
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
struct Bounds {
    double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
};

template <class T>
Bounds check_inputs(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, cudaStream_t stream) {
    const Scan sx = scan(X, N, D, stream);
    require(sx.bad == 0, "cpd: fixed has non-finite values");
    const Scan sy = scan(TY, M, D, stream);
    require(sy.bad == 0, "cpd: moved has non-finite values");
    if (weights) {
        const Scan sw = scan(weights, M, 1, stream);
        require(sw.bad == 0, "cpd: weights has non-finite values");
        require(sw.lo[0] >= 0, "cpd estep: weights must be >= 0");
    }
    Bounds b;
    for (int d = 0; d < D; ++d) {
        b.lo[d] = std::min(sx.lo[d], sy.lo[d]);
        b.hi[d] = std::max(sx.hi[d], sy.hi[d]);
    }
    ca::check_extent<T>(b.lo, b.hi, D, "cpd estep");
    return b;
}

// ------------------------------------------------------------------ grid path
// Cell key and identity permutation of every point.
template <class T, int D>
__global__ void cell_keys_kernel(const T* __restrict__ P, int64_t n, cg::Grid g, std::uint32_t* __restrict__ keys,
                                 std::int32_t* __restrict__ idx) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    keys[i] = (std::uint32_t)cg::cell_of(g, &P[i * D]);
    idx[i] = (std::int32_t)i;
}

// Per cell, the range [start, end) of its points in the sorted order (cells without points keep
// start == end == 0 from the memset).
__global__ void cell_bounds_kernel(const std::uint32_t* __restrict__ keys, int64_t n, std::int32_t* __restrict__ start,
                                   std::int32_t* __restrict__ end) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const std::uint32_t k = keys[i];
    if (i == 0 || keys[i - 1] != k) start[k] = (std::int32_t)i;
    if (i == n - 1 || keys[i + 1] != k) end[k] = (std::int32_t)(i + 1);
}

// Coordinates (and weights: 1 without) in the sorted order.
template <class T, int D>
__global__ void gather_kernel(const T* __restrict__ P, const T* __restrict__ w, const std::int32_t* __restrict__ idx,
                              int64_t n, T* __restrict__ Ps, T* __restrict__ ws) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t j = idx[i];
    for (int d = 0; d < D; ++d) Ps[i * D + d] = P[j * D + d];
    if (ws) ws[i] = w ? w[j] : T(1);
}

// One point set sorted by cell: coordinates, weights (moving set), original indices, cell ranges.
struct Binned {
    DeviceBuffer pts, wts, idx, start, end;
};

unsigned key_bits(int64_t cells) {
    unsigned b = 1;
    while (b < 32 && (int64_t(1) << b) < cells) ++b;
    return b;
}

template <class T, int D>
Binned bin(const T* P, const T* w, int64_t n, bool with_weights, const cg::Grid& g, cudaStream_t stream) {
    Binned out;
    DeviceBuffer keys(sizeof(std::uint32_t) * n, "cpd (cuda): cell keys");
    DeviceBuffer keys_sorted(sizeof(std::uint32_t) * n, "cpd (cuda): cell keys");
    DeviceBuffer idx_in(sizeof(std::int32_t) * n, "cpd (cuda): cell order");
    out.idx = DeviceBuffer(sizeof(std::int32_t) * n, "cpd (cuda): cell order");
    cell_keys_kernel<T, D><<<blocks_for(n), kBlock, 0, stream>>>(P, n, g, keys.as<std::uint32_t>(),
                                                                 idx_in.as<std::int32_t>());
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): cell keys launch");
    const unsigned bits = key_bits(g.cells);
    std::size_t bytes = 0;
    check(static_cast<int>(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys.as<std::uint32_t>(),
                                                           keys_sorted.as<std::uint32_t>(), idx_in.as<std::int32_t>(),
                                                           out.idx.as<std::int32_t>(), n, 0, bits, stream)),
          "cpd (cuda): cell sort");
    DeviceBuffer scratch(bytes > 0 ? bytes : 1, "cpd (cuda): cell sort scratch");
    check(static_cast<int>(cub::DeviceRadixSort::SortPairs(scratch.get(), bytes, keys.as<std::uint32_t>(),
                                                           keys_sorted.as<std::uint32_t>(), idx_in.as<std::int32_t>(),
                                                           out.idx.as<std::int32_t>(), n, 0, bits, stream)),
          "cpd (cuda): cell sort");
    out.start = DeviceBuffer(sizeof(std::int32_t) * g.cells, "cpd (cuda): cell starts");
    out.end = DeviceBuffer(sizeof(std::int32_t) * g.cells, "cpd (cuda): cell ends");
    check(static_cast<int>(cudaMemsetAsync(out.start.get(), 0, sizeof(std::int32_t) * g.cells, stream)),
          "cpd (cuda): cell starts");
    check(static_cast<int>(cudaMemsetAsync(out.end.get(), 0, sizeof(std::int32_t) * g.cells, stream)),
          "cpd (cuda): cell ends");
    cell_bounds_kernel<<<blocks_for(n), kBlock, 0, stream>>>(keys_sorted.as<std::uint32_t>(), n,
                                                             out.start.as<std::int32_t>(), out.end.as<std::int32_t>());
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): cell bounds launch");
    out.pts = DeviceBuffer(sizeof(T) * n * D, "cpd (cuda): sorted points");
    if (with_weights) out.wts = DeviceBuffer(sizeof(T) * n, "cpd (cuda): sorted weights");
    gather_kernel<T, D><<<blocks_for(n), kBlock, 0, stream>>>(P, w, out.idx.as<std::int32_t>(), n, out.pts.as<T>(),
                                                              with_weights ? out.wts.as<T>() : nullptr);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): gather launch");
    // the temporaries are freed when this returns: the stream must be done with them
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): cell sort");
    return out;
}

// Pass 1 on the grid, one thread per fixed point in cell order: FixedPoint over the moving points
// of the 3^D cells around it (sweep 1, then sweep 2 relative to h_n where needed). Writes the
// column at the point's own index, and g, h in the sorted order for pass 2.
template <class T, int D>
__global__ void pass1_grid_kernel(const T* __restrict__ Xs, const std::int32_t* __restrict__ xidx, int64_t N,
                                  const T* __restrict__ Ys, const T* __restrict__ ws, const std::int32_t* __restrict__ ys,
                                  const std::int32_t* __restrict__ ye, cg::Grid grid, T inv, T r2, bool may_shift,
                                  double c, T* __restrict__ gs, T* __restrict__ hs, T* __restrict__ Pt1,
                                  double* __restrict__ log_s, unsigned char* __restrict__ flags,
                                  unsigned long long* __restrict__ pairs) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    const T* q = &Xs[i * D];
    ca::FixedPoint<T, D> fp(q, inv, r2);
    int cc[3] = {0, 0, 0};
    cg::coords(grid, q, cc);
    long long visited = cg::for_each_near(grid, cc, ys, ye, [&](std::int32_t j) { fp.visit(&Ys[j * D], ws[j]); });
    if (fp.start_shift(may_shift))
        visited += cg::for_each_near(grid, cc, ys, ye, [&](std::int32_t j) { fp.visit_shifted(&Ys[j * D], ws[j]); });
    const ca::Column col = fp.finish(c);
    const int64_t n = xidx[i];
    gs[i] = (T)col.g;
    hs[i] = fp.h;
    Pt1[n] = (T)col.pt;
    log_s[n] = col.log_s;
    flags[n] = (unsigned char)((fp.shift ? kShifted : 0) | (col.empty ? kEmpty : 0));
    atomicAdd(pairs, (unsigned long long)visited);
}

// Pass 2 on the grid, one thread per moving point in cell order: MovingPoint over the fixed points
// of the 3^D cells around it (their original indices for the tie rule), then the row.
template <class T, int D>
__global__ void pass2_grid_kernel(const T* __restrict__ Ys, const T* __restrict__ ws, const std::int32_t* __restrict__ yidx,
                                  int64_t M, const T* __restrict__ Xs, const std::int32_t* __restrict__ xidx,
                                  const T* __restrict__ gs, const T* __restrict__ hs, const std::int32_t* __restrict__ xs,
                                  const std::int32_t* __restrict__ xe, cg::Grid grid, T inv, T r2, T* __restrict__ P1,
                                  T* __restrict__ PX, int64_t* __restrict__ best, T* __restrict__ prob,
                                  unsigned long long* __restrict__ pairs) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M) return;
    const T* q = &Ys[i * D];
    const double a = (double)ws[i];
    ca::MovingPoint<T, D> mp(q, inv, r2);
    long long visited = 0;
    if (a > 0) {
        int cc[3] = {0, 0, 0};
        cg::coords(grid, q, cc);
        visited = cg::for_each_near(grid, cc, xs, xe, [&](std::int32_t j) {
            mp.visit(&Xs[j * D], gs[j], hs[j], (std::int64_t)xidx[j]);
        });
    }
    const int64_t m = yidx[i];
    ca::finish_moving<T, D>(a, mp.s0, mp.cs, mp.best_n, mp.best_v, &P1[m], &PX[m * D], best ? &best[m] : nullptr,
                            prob ? &prob[m] : nullptr);
    atomicAdd(pairs, (unsigned long long)visited);
}

// Both passes on the grid; returns the kernel evaluations (both passes and the shifted sweeps).
template <class T, int D>
std::int64_t grid_passes(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, const cg::Grid& grid,
                         const ca::Scalars<T>& sc, double c, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob,
                         double* log_s, unsigned char* flags, cudaStream_t stream) {
    const Binned bx = bin<T, D>(X, nullptr, N, false, grid, stream);
    const Binned by = bin<T, D>(TY, weights, M, true, grid, stream);
    DeviceBuffer gs(sizeof(T) * N, "cpd (cuda): g"), hs(sizeof(T) * N, "cpd (cuda): shifts");
    DeviceBuffer counter(sizeof(unsigned long long), "cpd (cuda): pair count");
    unsigned long long* pairs = counter.as<unsigned long long>();
    check(static_cast<int>(cudaMemsetAsync(pairs, 0, sizeof(unsigned long long), stream)), "cpd (cuda): pair count");
    pass1_grid_kernel<T, D><<<blocks_for(N), kBlock, 0, stream>>>(
        bx.pts.as<T>(), bx.idx.as<std::int32_t>(), N, by.pts.as<T>(), by.wts.as<T>(), by.start.as<std::int32_t>(),
        by.end.as<std::int32_t>(), grid, sc.inv, sc.r2, ca::may_shift(sc.r2, sc.inv), c, gs.as<T>(), hs.as<T>(), Pt1,
        log_s, flags, pairs);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): grid pass 1 launch");
    pass2_grid_kernel<T, D><<<blocks_for(M), kBlock, 0, stream>>>(
        by.pts.as<T>(), by.wts.as<T>(), by.idx.as<std::int32_t>(), M, bx.pts.as<T>(), bx.idx.as<std::int32_t>(),
        gs.as<T>(), hs.as<T>(), bx.start.as<std::int32_t>(), bx.end.as<std::int32_t>(), grid, sc.inv, sc.r2, P1, PX,
        best_idx, best_prob, pairs);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): grid pass 2 launch");
    unsigned long long host_pairs = 0;
    check(static_cast<int>(cudaMemcpyAsync(&host_pairs, pairs, sizeof host_pairs, cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): pair count");
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): grid E-step");
    return (std::int64_t)host_pairs;
}

// The statistics of a call from log s_n and the flags (one block, stats_kernel), with the grid's
// cells and edge; pairs are the caller's.
EStepStats call_stats(const double* log_s, const unsigned char* flags, int64_t N, const cg::Grid& grid,
                      cudaStream_t stream) {
    DeviceBuffer stats(sizeof(double) + 2 * sizeof(long long), "cpd (cuda): statistics");
    double* sum = stats.as<double>();
    long long* counts = reinterpret_cast<long long*>(sum + 1);
    stats_kernel<<<1, kStats, 0, stream>>>(log_s, flags, N, sum, counts);
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
    st.grid_cells = grid.cells;
    st.cell_edge = grid.cells > 0 ? 1.0 / grid.inv : 0.0;
    return st;
}

template <class T, int D>
EStepStats estep_impl(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, double sigma2, double c,
                      double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                      const cg::Grid& grid, cudaStream_t stream) {
    const ca::Scalars<T> sc = ca::estep_scalars<T>(sigma2, cutoff);
    DeviceBuffer flags(N, "cpd (cuda): flags");
    DeviceBuffer log_s_scratch;
    double* log_s = log_s_out;
    if (!log_s) {
        log_s_scratch = DeviceBuffer(sizeof(double) * N, "cpd (cuda): log_s");
        log_s = log_s_scratch.as<double>();
    }
    std::int64_t grid_pairs = -1;
    if (grid.cells > 0) {
        grid_pairs = grid_passes<T, D>(X, N, TY, M, weights, grid, sc, c, P1, Pt1, PX, best_idx, best_prob, log_s,
                                       flags.as<unsigned char>(), stream);
    } else {
        DeviceBuffer g(sizeof(T) * N, "cpd (cuda): g"), h(sizeof(T) * N, "cpd (cuda): shifts");
        pass1_kernel<T, D><<<blocks_for(N), kBlock, 0, stream>>>(X, N, TY, M, weights, sc.inv, sc.r2,
                                                                 ca::may_shift(sc.r2, sc.inv), c, g.as<T>(), h.as<T>(),
                                                                 Pt1, log_s, flags.as<unsigned char>());
        check(static_cast<int>(cudaGetLastError()), "cpd (cuda): pass 1 launch");
        pass2_kernel<T, D><<<blocks_for(M), kBlock, 0, stream>>>(X, N, TY, M, weights, g.as<T>(), h.as<T>(), sc.inv,
                                                                 sc.r2, P1, PX, best_idx, best_prob);
        check(static_cast<int>(cudaGetLastError()), "cpd (cuda): pass 2 launch");
        check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): E-step");  // before g, h are freed
    }
    EStepStats st = call_stats(log_s, flags.as<unsigned char>(), N, grid, stream);
    st.pairs = grid_pairs >= 0 ? grid_pairs : ca::dense_pairs(N, M, st.shifted_columns);
    return st;
}

template <class T>
EStepStats estep_dim(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
                     double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                     const cg::Grid& grid, cudaStream_t stream) {
    if (D == 2)
        return estep_impl<T, 2>(X, N, TY, M, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                                grid, stream);
    return estep_impl<T, 3>(X, N, TY, M, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                            grid, stream);
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
                                  int64_t* best_idx, float* best_prob, double* log_s_out, const cg::Grid& grid,
                                  cudaStream_t stream) {
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
                          best_prob ? bp.as<double>() : nullptr, log_s_out, grid, stream);
    convert(p1.as<double>(), P1, M, stream);
    convert(pt1.as<double>(), Pt1, N, stream);
    convert(px.as<double>(), PX, M * D, stream);
    if (best_prob) convert(bp.as<double>(), best_prob, M, stream);
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): E-step");
    return st;
}


// ------------------------------------------------------------------ E-step with per-point features
// Twin of estep_features in cpp/src/cpd.cpp: every per-pair number is a function of
// xmodal/detail/cpd_feature_arith.hpp (exponents in double, online log-sum-exp per fixed point,
// the same support test d2 <= r2 in both passes, the same tie rule). One thread per point; on the
// grid path each thread visits the points of the 3^D cells around its own (cell order), else every
// point of the other set in index order. Features travel as double rows in the order of their points.

// One point set as the feature kernels read it: coordinates, weights (null: 1), feature rows and
// original indices (null: the identity), all in one order (sorted by cell, or index order).
template <class T>
struct FeatureSet {
    const T* pts;
    const T* wts;
    const double* feats;
    const std::int32_t* idx;
    int64_t n;
};

template <class T, class Fn>
__device__ long long for_each_candidate(const cg::Grid& grid, const T* q, const std::int32_t* start,
                                        const std::int32_t* end, int64_t n_other, Fn&& fn) {
    if (grid.cells > 0) {
        int cc[3] = {0, 0, 0};
        cg::coords(grid, q, cc);
        return cg::for_each_near(grid, cc, start, end, fn);
    }
    for (int64_t j = 0; j < n_other; ++j) fn((std::int32_t)j);
    return n_other;
}

// Feature rows in double, row i from row idx[i] of F (null idx: the identity).
template <class T>
__global__ void gather_features_kernel(const T* __restrict__ F, const std::int32_t* __restrict__ idx, int64_t n,
                                       int nf, double* __restrict__ out) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t j = idx ? idx[i] : i;
    for (int k = 0; k < nf; ++k) out[i * nf + k] = (double)F[j * nf + k];
}

// log s_n in the fixed set's order of pass 2.
__global__ void gather_log_s_kernel(const double* __restrict__ log_s, const std::int32_t* __restrict__ idx, int64_t n,
                                    double* __restrict__ out) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = log_s[idx ? idx[i] : i];
}

// Pass 1, one thread per fixed point: the column sum relative to its smallest exponent, then
// log s_n, Pt1_n and the empty flag at the point's original index.
template <class T>
__global__ void feature_pass1_kernel(FeatureSet<T> xs, FeatureSet<T> ys, int D, int F, cg::Grid grid,
                                     const std::int32_t* __restrict__ ys_start, const std::int32_t* __restrict__ ys_end,
                                     double inv, double finv, double r2, double c, T* __restrict__ Pt1,
                                     double* __restrict__ log_s, unsigned char* __restrict__ flags,
                                     unsigned long long* __restrict__ pairs) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= xs.n) return;
    const T* q = &xs.pts[i * D];
    const double* fq = &xs.feats[i * F];
    fa::FeatureColumn col;
    const long long visited = for_each_candidate(grid, q, ys_start, ys_end, ys.n, [&](std::int32_t j) {
        const double w = ys.wts ? (double)ys.wts[j] : 1.0;
        const double d2 = fa::point_d2(q, &ys.pts[j * D], D);
        if (!(w > 0) || d2 > r2) return;
        col.add(fa::exponent(d2, fa::feature_d2(fq, &ys.feats[j * F], F), inv, finv), w);
    });
    const fa::FeatureColumnOut out = fa::finish_feature_column(col, c);
    const int64_t n = xs.idx ? xs.idx[i] : i;
    Pt1[n] = (T)out.pt;
    log_s[n] = out.log_s;
    flags[n] = (unsigned char)(out.empty ? kEmpty : 0);
    atomicAdd(pairs, (unsigned long long)visited);
}

// Pass 2, one thread per moving point: P1, PX and the best match from log s_n (ls: in xs order).
template <class T>
__global__ void feature_pass2_kernel(FeatureSet<T> ys, FeatureSet<T> xs, const double* __restrict__ ls, int D, int F,
                                     cg::Grid grid, const std::int32_t* __restrict__ xs_start,
                                     const std::int32_t* __restrict__ xs_end, double inv, double finv, double r2,
                                     T* __restrict__ P1, T* __restrict__ PX, int64_t* __restrict__ best,
                                     T* __restrict__ prob, unsigned long long* __restrict__ pairs) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= ys.n) return;
    const T* q = &ys.pts[i * D];
    const double* fq = &ys.feats[i * F];
    const double w = ys.wts ? (double)ys.wts[i] : 1.0;
    fa::FeatureRow row;
    long long visited = 0;
    if (w > 0)
        visited = for_each_candidate(grid, q, xs_start, xs_end, xs.n, [&](std::int32_t j) {
            const double d2 = fa::point_d2(q, &xs.pts[j * D], D);
            if (d2 > r2 || !fa::finite_d(ls[j])) return;
            row.add(fa::exponent(d2, fa::feature_d2(fq, &xs.feats[j * F], F), inv, finv), ls[j], &xs.pts[j * D], D,
                    (std::int64_t)(xs.idx ? xs.idx[j] : j));
        });
    const int64_t m = ys.idx ? ys.idx[i] : i;
    fa::finish_feature_row(row, w, D, &P1[m], &PX[m * D], best ? &best[m] : nullptr, prob ? &prob[m] : nullptr);
    atomicAdd(pairs, (unsigned long long)visited);
}

// Both passes with features (sets binned on the grid when grid.cells > 0); returns the pairs visited.
template <class T, int D>
std::int64_t feature_passes(const T* X, int64_t N, const T* TY, int64_t M, const T* weights, const T* FX,
                            const T* FY, int F, const cg::Grid& grid, double inv, double finv, double r2, double c,
                            T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s,
                            unsigned char* flags, cudaStream_t stream) {
    Binned bx, by;
    FeatureSet<T> xs{X, nullptr, nullptr, nullptr, N}, ys{TY, weights, nullptr, nullptr, M};
    const std::int32_t *xst = nullptr, *xen = nullptr, *yst = nullptr, *yen = nullptr;
    if (grid.cells > 0) {
        bx = bin<T, D>(X, nullptr, N, false, grid, stream);
        by = bin<T, D>(TY, weights, M, true, grid, stream);
        xs = {bx.pts.as<T>(), nullptr, nullptr, bx.idx.as<std::int32_t>(), N};
        ys = {by.pts.as<T>(), by.wts.as<T>(), nullptr, by.idx.as<std::int32_t>(), M};
        xst = bx.start.as<std::int32_t>();
        xen = bx.end.as<std::int32_t>();
        yst = by.start.as<std::int32_t>();
        yen = by.end.as<std::int32_t>();
    }
    DeviceBuffer fx(sizeof(double) * N * F, "cpd (cuda): fixed features"), fy(sizeof(double) * M * F,
                                                                              "cpd (cuda): moving features");
    DeviceBuffer ls(sizeof(double) * N, "cpd (cuda): log_s in pass-2 order");
    DeviceBuffer counter(sizeof(unsigned long long), "cpd (cuda): pair count");
    gather_features_kernel<T><<<blocks_for(N), kBlock, 0, stream>>>(FX, xs.idx, N, F, fx.as<double>());
    gather_features_kernel<T><<<blocks_for(M), kBlock, 0, stream>>>(FY, ys.idx, M, F, fy.as<double>());
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): feature gather launch");
    xs.feats = fx.as<double>();
    ys.feats = fy.as<double>();
    unsigned long long* pairs = counter.as<unsigned long long>();
    check(static_cast<int>(cudaMemsetAsync(pairs, 0, sizeof(unsigned long long), stream)), "cpd (cuda): pair count");
    feature_pass1_kernel<T><<<blocks_for(N), kBlock, 0, stream>>>(xs, ys, D, F, grid, yst, yen, inv, finv, r2, c, Pt1,
                                                                  log_s, flags, pairs);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): feature pass 1 launch");
    gather_log_s_kernel<<<blocks_for(N), kBlock, 0, stream>>>(log_s, xs.idx, N, ls.as<double>());
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): log_s gather launch");
    feature_pass2_kernel<T><<<blocks_for(M), kBlock, 0, stream>>>(ys, xs, ls.as<double>(), D, F, grid, xst, xen, inv,
                                                                  finv, r2, P1, PX, best_idx, best_prob, pairs);
    check(static_cast<int>(cudaGetLastError()), "cpd (cuda): feature pass 2 launch");
    unsigned long long host_pairs = 0;
    check(static_cast<int>(cudaMemcpyAsync(&host_pairs, pairs, sizeof host_pairs, cudaMemcpyDeviceToHost, stream)),
          "cpd (cuda): pair count");
    check(static_cast<int>(cudaStreamSynchronize(stream)), "cpd (cuda): feature E-step");  // before buffers are freed
    return (std::int64_t)host_pairs;
}

}  // namespace

template <class T>
EStepStats estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
                 double cutoff, T* P1, T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out,
                 cudaStream_t stream, bool allow_grid) {
    ca::check_estep_args(N, M, D, sigma2, c, cutoff);
    const Bounds b = check_inputs(X, N, TY, M, D, weights, stream);
    const cg::Grid grid =
        allow_grid ? cg::make_grid(b.lo, b.hi, D, 2.0 * sigma2 * cutoff, N + M, cg::min_cells(D)) : cg::Grid{};
    if constexpr (std::is_same_v<T, float>) {
        if (ca::float_needs_double(sigma2, cutoff))
            return estep_float_via_double(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob,
                                          log_s_out, grid, stream);
    }
    return estep_dim<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out,
                        grid, stream);
}

template <class T>
EStepStats estep_features(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, const T* FX,
                          const T* FY, int F, double feature_inv, double sigma2, double c, double cutoff, T* P1,
                          T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out, cudaStream_t stream,
                          bool allow_grid) {
    ca::check_estep_args(N, M, D, sigma2, c, cutoff);
    require(F >= 1, "cpd estep_features: expected at least one feature column, got " + std::to_string(F));
    require(std::isfinite(feature_inv) && feature_inv >= 0,
            "cpd estep_features: feature_inv = 1 / (2 feature_sigma^2) must be finite and >= 0");
    const Bounds b = check_inputs(X, N, TY, M, D, weights, stream);
    require(scan(FX, N * F, 1, stream).bad == 0, "cpd: fixed_features has non-finite values");
    require(scan(FY, M * F, 1, stream).bad == 0, "cpd: moved_features has non-finite values");
    const double inv = 1.0 / (2.0 * sigma2);
    require(std::isfinite(inv), "cpd estep_features: sigma2 = " + ca::fmt_g(sigma2) + " is too small");
    const double r2 = std::isfinite(cutoff) ? 2.0 * sigma2 * cutoff : std::numeric_limits<double>::infinity();
    const cg::Grid grid = allow_grid ? cg::make_grid(b.lo, b.hi, D, r2, N + M, cg::min_cells(D)) : cg::Grid{};
    DeviceBuffer flags(N, "cpd (cuda): flags");
    DeviceBuffer log_s_scratch;
    double* log_s = log_s_out;
    if (!log_s) {
        log_s_scratch = DeviceBuffer(sizeof(double) * N, "cpd (cuda): log_s");
        log_s = log_s_scratch.as<double>();
    }
    const std::int64_t pairs =
        D == 2 ? feature_passes<T, 2>(X, N, TY, M, weights, FX, FY, F, grid, inv, feature_inv, r2, c, P1, Pt1, PX,
                                      best_idx, best_prob, log_s, flags.as<unsigned char>(), stream)
               : feature_passes<T, 3>(X, N, TY, M, weights, FX, FY, F, grid, inv, feature_inv, r2, c, P1, Pt1, PX,
                                      best_idx, best_prob, log_s, flags.as<unsigned char>(), stream);
    EStepStats st = call_stats(log_s, flags.as<unsigned char>(), N, grid, stream);  // no shifted columns here
    st.pairs = pairs;
    return st;
}

template EStepStats estep_features<float>(const float*, int64_t, const float*, int64_t, int, const float*,
                                          const float*, const float*, int, double, double, double, double, float*,
                                          float*, float*, int64_t*, float*, double*, cudaStream_t, bool);
template EStepStats estep_features<double>(const double*, int64_t, const double*, int64_t, int, const double*,
                                           const double*, const double*, int, double, double, double, double,
                                           double*, double*, double*, int64_t*, double*, double*, cudaStream_t, bool);


// The grid path's bins of both sets (tests and diagnostics): per set the sorted original indices
// and the per-cell [start, end) ranges, with the grid of the call (cells 0: the dense path).
template <class T>
GridBins grid_bins(const T* X, int64_t N, const T* TY, int64_t M, int D, double sigma2, double cutoff,
                   cudaStream_t stream) {
    ca::check_estep_args(N, M, D, sigma2, 0.0, cutoff);
    const Bounds b = check_inputs(X, N, TY, M, D, static_cast<const T*>(nullptr), stream);
    const cg::Grid grid = cg::make_grid(b.lo, b.hi, D, 2.0 * sigma2 * cutoff, N + M, cg::min_cells(D));
    GridBins out;
    out.cells = grid.cells;
    out.edge = grid.cells > 0 ? 1.0 / grid.inv : 0.0;
    for (int d = 0; d < 3; ++d) out.shape[d] = grid.nc[d];
    if (grid.cells == 0) return out;
    Binned bx = D == 2 ? bin<T, 2>(X, nullptr, N, false, grid, stream) : bin<T, 3>(X, nullptr, N, false, grid, stream);
    Binned by = D == 2 ? bin<T, 2>(TY, nullptr, M, false, grid, stream) : bin<T, 3>(TY, nullptr, M, false, grid, stream);
    out.fixed_idx = std::move(bx.idx);
    out.fixed_start = std::move(bx.start);
    out.fixed_end = std::move(bx.end);
    out.moved_idx = std::move(by.idx);
    out.moved_start = std::move(by.start);
    out.moved_end = std::move(by.end);
    return out;
}

template GridBins grid_bins<float>(const float*, int64_t, const float*, int64_t, int, double, double, cudaStream_t);
template GridBins grid_bins<double>(const double*, int64_t, const double*, int64_t, int, double, double,
                                    cudaStream_t);

template EStepStats estep<float>(const float*, int64_t, const float*, int64_t, int, const float*, double, double,
                                 double, float*, float*, float*, int64_t*, float*, double*, cudaStream_t, bool);
template EStepStats estep<double>(const double*, int64_t, const double*, int64_t, int, const double*, double, double,
                                  double, double*, double*, double*, int64_t*, double*, double*, cudaStream_t, bool);

}  // namespace xmodal::cuda::cpd
