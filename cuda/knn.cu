// Brute-force tiled k-NN / radius graph on the GPU, with the contract of cpp/include/xmodal/knn.hpp:
// the same pairs (ranked by (squared distance, index), lower index first on ties) and the same
// distances (squared differences summed in axis order with round-to-nearest operations, no FMA
// contraction, so the values are bit-identical to the CPU kernel).
#include <cuda_runtime.h>
#include <thrust/device_ptr.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/scan.h>
#include <thrust/sort.h>
#include <thrust/unique.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "xmodal/common.hpp"
#include "xmodal/knn.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda {
namespace {

constexpr int kThreads = 128;  // queries per block = tile of reference points per shared load

__device__ __forceinline__ double dist2(const double* x, const double* y, int dim) {
    double s = 0.0;
    for (int d = 0; d < dim; ++d) {
        const double diff = __dsub_rn(x[d], y[d]);
        s = __dadd_rn(s, __dmul_rn(diff, diff));
    }
    return s;
}

// Per query: the k best reference points by (d2, index) (k <= kKnnMaxK) and the number within r2.
__global__ void select_kernel(const double* __restrict__ q, std::int64_t nq, const double* __restrict__ p,
                              std::int64_t np, int dim, int k, double r2, std::int32_t* __restrict__ knn,
                              std::int64_t* __restrict__ radius_count) {
    extern __shared__ double tile[];  // kThreads * dim
    const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool active = i < nq;
    double qi[kKnnMaxDim];
    for (int d = 0; d < dim; ++d) qi[d] = active ? q[i * dim + d] : 0.0;
    double bd[kKnnMaxK];
    std::int32_t bi[kKnnMaxK];
    int size = 0;
    std::int64_t count = 0;
    for (std::int64_t base = 0; base < np; base += kThreads) {
        const std::int64_t load = base + threadIdx.x;
        __syncthreads();
        if (load < np)
            for (int d = 0; d < dim; ++d) tile[threadIdx.x * dim + d] = p[load * dim + d];
        __syncthreads();
        if (!active) continue;
        const int n_tile = static_cast<int>(np - base < kThreads ? np - base : kThreads);
        for (int t = 0; t < n_tile; ++t) {
            // d2 of (q - p): the CPU forward query computes (a - b), the reverse (b - a); the square
            // of a difference and of its negation are identical.
            const double d2 = dist2(qi, &tile[t * dim], dim);
            const std::int32_t id = static_cast<std::int32_t>(base + t);
            if (r2 >= 0.0 && d2 <= r2) ++count;
            if (k > 0) {
                if (size == k && !(d2 < bd[size - 1] || (d2 == bd[size - 1] && id < bi[size - 1]))) continue;
                int pos = size < k ? size++ : k - 1;
                while (pos > 0 && (d2 < bd[pos - 1] || (d2 == bd[pos - 1] && id < bi[pos - 1]))) {
                    bd[pos] = bd[pos - 1];
                    bi[pos] = bi[pos - 1];
                    --pos;
                }
                bd[pos] = d2;
                bi[pos] = id;
            }
        }
    }
    if (!active) return;
    for (int t = 0; t < size; ++t) knn[i * k + t] = bi[t];
    if (radius_count) radius_count[i] = count;
}

// Keys (row * nb + col) of the radius pairs of each query, in ascending column order.
__global__ void radius_fill_kernel(const double* __restrict__ q, std::int64_t nq, const double* __restrict__ p,
                                   std::int64_t np, int dim, double r2, const std::int64_t* __restrict__ offsets,
                                   std::int64_t* __restrict__ keys) {
    extern __shared__ double tile[];
    const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool active = i < nq;
    double qi[kKnnMaxDim];
    for (int d = 0; d < dim; ++d) qi[d] = active ? q[i * dim + d] : 0.0;
    std::int64_t out = active ? offsets[i] : 0;
    for (std::int64_t base = 0; base < np; base += kThreads) {
        const std::int64_t load = base + threadIdx.x;
        __syncthreads();
        if (load < np)
            for (int d = 0; d < dim; ++d) tile[threadIdx.x * dim + d] = p[load * dim + d];
        __syncthreads();
        if (!active) continue;
        const int n_tile = static_cast<int>(np - base < kThreads ? np - base : kThreads);
        for (int t = 0; t < n_tile; ++t)
            if (dist2(qi, &tile[t * dim], dim) <= r2) keys[out++] = i * np + base + t;
    }
}

// Keys of k-NN pairs: forward (query i = row, neighbour = column) or reverse (query j = column).
__global__ void knn_keys_kernel(const std::int32_t* __restrict__ knn, std::int64_t nq, int k, std::int64_t nb,
                                bool reverse, std::int64_t* __restrict__ keys) {
    const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= nq * k) return;
    const std::int64_t query = t / k;
    const std::int64_t other = knn[t];
    keys[t] = reverse ? other * nb + query : query * nb + other;
}

__global__ void finish_kernel(const std::int64_t* __restrict__ keys, std::int64_t nnz, const double* __restrict__ a,
                              const double* __restrict__ b, std::int64_t nb, int dim,
                              std::int32_t* __restrict__ indices, double* __restrict__ data) {
    const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= nnz) return;
    const std::int64_t row = keys[t] / nb, col = keys[t] % nb;
    indices[t] = static_cast<std::int32_t>(col);
    data[t] = sqrt(dist2(a + row * dim, b + col * dim, dim));
}

// indptr[i] = first position with key >= i * nb (binary search in the sorted unique keys).
__global__ void indptr_kernel(const std::int64_t* __restrict__ keys, std::int64_t nnz, std::int64_t na,
                              std::int64_t nb, std::int64_t* __restrict__ indptr) {
    const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i > na) return;
    const std::int64_t target = i * nb;
    std::int64_t lo = 0, hi = nnz;
    while (lo < hi) {
        const std::int64_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < target) lo = mid + 1;
        else hi = mid;
    }
    indptr[i] = lo;
}

unsigned blocks(std::int64_t n, int threads) {
    return static_cast<unsigned>((n + threads - 1) / threads);
}

void* device_alloc(std::size_t bytes, const char* what) {
    void* p = nullptr;
    check(static_cast<int>(cudaMalloc(&p, bytes > 0 ? bytes : 1)), what);
    return p;
}

}  // namespace

void free_device(void* ptr) {
    if (ptr) cudaFree(ptr);
}

DeviceCsr knn_graph_device(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim, int k,
                           double radius, bool symmetric, int device) {
    require(dim >= 1 && dim <= kKnnMaxDim, "knn_graph (cuda): dim must be in 1..8");
    require(k >= 0 && k <= kKnnMaxK,
            "k: the CUDA k-NN graph supports k <= " + std::to_string(kKnnMaxK) + ", got " + std::to_string(k));
    require(k > 0 || radius >= 0.0, "k, radius: give k > 0 and/or radius >= 0");
    require(na < (std::int64_t(1) << 31) && nb < (std::int64_t(1) << 31), "knn_graph (cuda): at most 2^31 - 1 points");
    check(static_cast<int>(cudaSetDevice(device)), "cudaSetDevice");
    check(static_cast<int>(cudaDeviceSynchronize()), "knn_graph (cuda): waiting for the inputs");
    DeviceCsr out;
    out.n_rows = na;
    out.n_cols = nb;
    const double r2 = radius >= 0.0 ? radius * radius : -1.0;
    const int kb = static_cast<int>(k < nb ? k : nb);
    const int ka = static_cast<int>(k < na ? k : na);
    const std::size_t shmem = sizeof(double) * kThreads * dim;

    std::int64_t n_keys = 0;
    thrust::device_vector<std::int32_t> fwd(static_cast<std::size_t>(na) * kb), rev;
    thrust::device_vector<std::int64_t> rcount, roffset;
    std::int64_t n_radius = 0;
    if (na > 0 && nb > 0) {
        if (r2 >= 0.0) {
            rcount.resize(static_cast<std::size_t>(na));
            roffset.resize(static_cast<std::size_t>(na) + 1);
        }
        select_kernel<<<blocks(na, kThreads), kThreads, shmem>>>(
            a, na, b, nb, dim, kb, r2, thrust::raw_pointer_cast(fwd.data()),
            r2 >= 0.0 ? thrust::raw_pointer_cast(rcount.data()) : nullptr);
        check(static_cast<int>(cudaGetLastError()), "knn_graph (cuda): select kernel");
        if (r2 >= 0.0) {
            roffset[0] = 0;
            thrust::inclusive_scan(thrust::device, rcount.begin(), rcount.end(), roffset.begin() + 1);
            n_radius = roffset[na];
        }
        if (symmetric && ka > 0) {
            rev.resize(static_cast<std::size_t>(nb) * ka);
            select_kernel<<<blocks(nb, kThreads), kThreads, shmem>>>(b, nb, a, na, dim, ka, -1.0,
                                                                     thrust::raw_pointer_cast(rev.data()), nullptr);
            check(static_cast<int>(cudaGetLastError()), "knn_graph (cuda): reverse select kernel");
        }
        n_keys = na * kb + n_radius + (symmetric ? nb * ka : 0);
    }
    thrust::device_vector<std::int64_t> keys(static_cast<std::size_t>(n_keys));
    std::int64_t pos = 0;
    if (na > 0 && nb > 0) {
        if (kb > 0) {
            knn_keys_kernel<<<blocks(na * kb, 256), 256>>>(thrust::raw_pointer_cast(fwd.data()), na, kb, nb, false,
                                                          thrust::raw_pointer_cast(keys.data()));
            pos += na * kb;
        }
        if (n_radius > 0) {
            radius_fill_kernel<<<blocks(na, kThreads), kThreads, shmem>>>(
                a, na, b, nb, dim, r2, thrust::raw_pointer_cast(roffset.data()),
                thrust::raw_pointer_cast(keys.data()) + pos);
            pos += n_radius;
        }
        if (symmetric && ka > 0) {
            knn_keys_kernel<<<blocks(nb * ka, 256), 256>>>(thrust::raw_pointer_cast(rev.data()), nb, ka, nb, true,
                                                          thrust::raw_pointer_cast(keys.data()) + pos);
            pos += nb * ka;
        }
        check(static_cast<int>(cudaGetLastError()), "knn_graph (cuda): key kernels");
        thrust::sort(thrust::device, keys.begin(), keys.end());
        n_keys = thrust::unique(thrust::device, keys.begin(), keys.end()) - keys.begin();
    }
    out.nnz = n_keys;
    try {
        out.indptr = static_cast<std::int64_t*>(device_alloc(sizeof(std::int64_t) * (na + 1), "cudaMalloc indptr"));
        out.indices = static_cast<std::int32_t*>(device_alloc(sizeof(std::int32_t) * n_keys, "cudaMalloc indices"));
        out.data = static_cast<double*>(device_alloc(sizeof(double) * n_keys, "cudaMalloc data"));
        if (n_keys > 0)
            finish_kernel<<<blocks(n_keys, 256), 256>>>(thrust::raw_pointer_cast(keys.data()), n_keys, a, b, nb, dim,
                                                        out.indices, out.data);
        indptr_kernel<<<blocks(na + 1, 256), 256>>>(thrust::raw_pointer_cast(keys.data()), n_keys, na,
                                                   nb > 0 ? nb : 1, out.indptr);
        check(static_cast<int>(cudaGetLastError()), "knn_graph (cuda): output kernels");
        check(static_cast<int>(cudaDeviceSynchronize()), "knn_graph (cuda)");
    } catch (...) {
        free_device(out.indptr);
        free_device(out.indices);
        free_device(out.data);
        throw;
    }
    return out;
}

}  // namespace xmodal::cuda
