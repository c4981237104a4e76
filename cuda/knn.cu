// Brute-force tiled k-NN / radius graph on CUDA, the twin of cpp/src/knn.cpp (see xmodal_cuda.hpp
// and xmodal/knn.hpp): the same pairs and bit-identical distances, because every query thread runs
// xmodal/detail/knn_arith.hpp (dist2 without FMA, ranking by (d2, index), top-k insertion), which
// xmodal._core._testing runs on the CPU. Any k: lists of up to kLocalK entries live in each
// thread's local memory, longer ones in a global scratch buffer. Scans, sorts and unique use CUB
// with explicit scratch (DeviceBuffer): no allocation that could throw from a destructor.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>

#include <cstdint>
#include <string>

#include "xmodal/common.hpp"
#include "xmodal/detail/knn_arith.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda {
namespace {

namespace ka = xmodal::knn::arith;

constexpr int kThreads = 128;  // queries per block = tile of reference points per shared load
constexpr int kLocalK = 32;    // longest top-k list held in a thread's local memory

// Every thread of the block loads one reference point of the tile starting at `base` into shared
// memory (between two barriers); returns the number of points in the tile.
__device__ int load_tile(double* tile, const double* __restrict__ p, std::int64_t np, int dim, std::int64_t base) {
    __syncthreads();
    const std::int64_t load = base + threadIdx.x;
    if (load < np)
        for (int d = 0; d < dim; ++d) tile[threadIdx.x * dim + d] = p[load * dim + d];
    __syncthreads();
    return static_cast<int>(np - base < kThreads ? np - base : kThreads);
}

// Per query: the k best reference points by (d2, index) into knn (k per query) and, with r2 >= 0,
// the number within the radius. LOCAL: the list in local memory, else at scratch[t * nq + i].
template <bool LOCAL>
__global__ void select_kernel(const double* __restrict__ q, std::int64_t nq, const double* __restrict__ p,
                              std::int64_t np, int dim, int k, double r2, double* __restrict__ scratch_d,
                              std::int32_t* __restrict__ scratch_i, std::int32_t* __restrict__ knn,
                              std::int64_t* __restrict__ radius_count) {
    extern __shared__ double tile[];  // kThreads * dim
    const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool active = i < nq;
    double qi[ka::kMaxDim];
    for (int d = 0; d < dim; ++d) qi[d] = active ? q[i * dim + d] : 0.0;
    double local_d[LOCAL ? kLocalK : 1];
    std::int32_t local_i[LOCAL ? kLocalK : 1];
    double* bd = LOCAL ? local_d : scratch_d + (active ? i : 0);
    std::int32_t* bi = LOCAL ? local_i : scratch_i + (active ? i : 0);
    const std::int64_t stride = LOCAL ? 1 : nq;
    ka::Query query(qi, dim, k, r2, bd, bi, stride);
    for (std::int64_t base = 0; base < np; base += kThreads) {
        const int n_tile = load_tile(tile, p, np, dim, base);
        if (!active) continue;
        for (int t = 0; t < n_tile; ++t) query.visit(&tile[t * dim], static_cast<std::int32_t>(base + t));
    }
    if (!active) return;
    for (int t = 0; t < query.size; ++t) knn[i * k + t] = bi[t * stride];
    if (radius_count) radius_count[i] = query.count;
}

// Keys (row * nb + col) of the radius pairs of each query, in ascending column order.
__global__ void radius_fill_kernel(const double* __restrict__ q, std::int64_t nq, const double* __restrict__ p,
                                   std::int64_t np, int dim, double r2, const std::int64_t* __restrict__ offsets,
                                   std::int64_t* __restrict__ keys) {
    extern __shared__ double tile[];
    const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const bool active = i < nq;
    double qi[ka::kMaxDim];
    for (int d = 0; d < dim; ++d) qi[d] = active ? q[i * dim + d] : 0.0;
    std::int64_t out = active ? offsets[i] : 0;
    for (std::int64_t base = 0; base < np; base += kThreads) {
        const int n_tile = load_tile(tile, p, np, dim, base);
        if (!active) continue;
        for (int t = 0; t < n_tile; ++t)
            if (ka::in_radius(ka::dist2(qi, &tile[t * dim], dim), r2)) keys[out++] = i * np + base + t;
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
    data[t] = sqrt(ka::dist2(a + row * dim, b + col * dim, dim));
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
        if (keys[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    indptr[i] = lo;
}

unsigned blocks(std::int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

int cuda_int(cudaError_t e) { return static_cast<int>(e); }

// The k best of every query (k per query, int32) and, with r2 >= 0, the radius counts.
void select(const double* q, std::int64_t nq, const double* p, std::int64_t np, int dim, int k, double r2,
            std::int32_t* knn, std::int64_t* radius_count, cudaStream_t stream) {
    const std::size_t shmem = sizeof(double) * kThreads * dim;
    if (k <= kLocalK) {
        select_kernel<true><<<blocks(nq, kThreads), kThreads, shmem, stream>>>(q, nq, p, np, dim, k, r2, nullptr,
                                                                                 nullptr, knn, radius_count);
        check(cuda_int(cudaGetLastError()), "knn_graph (cuda): select kernel");
        return;
    }
    DeviceBuffer sd(sizeof(double) * nq * k, "knn_graph (cuda): top-k scratch");
    DeviceBuffer si(sizeof(std::int32_t) * nq * k, "knn_graph (cuda): top-k scratch");
    select_kernel<false><<<blocks(nq, kThreads), kThreads, shmem, stream>>>(
        q, nq, p, np, dim, k, r2, sd.as<double>(), si.as<std::int32_t>(), knn, radius_count);
    check(cuda_int(cudaGetLastError()), "knn_graph (cuda): select kernel");
    check(cuda_int(cudaStreamSynchronize(stream)), "knn_graph (cuda): select kernel");  // before the scratch goes
}

template <class T>
T read_back(const T* device_value, cudaStream_t stream, const char* what) {
    T v{};
    check(cuda_int(cudaMemcpyAsync(&v, device_value, sizeof(T), cudaMemcpyDeviceToHost, stream)), what);
    check(cuda_int(cudaStreamSynchronize(stream)), what);
    return v;
}

// Sorted unique keys[0, n) into `out`; returns their number.
std::int64_t sort_unique(DeviceBuffer& keys, std::int64_t n, DeviceBuffer& out, cudaStream_t stream) {
    DeviceBuffer sorted(sizeof(std::int64_t) * n, "knn_graph (cuda): sorted keys");
    DeviceBuffer count(sizeof(std::int64_t), "knn_graph (cuda): unique count");
    std::size_t bytes_sort = 0, bytes_unique = 0;
    const std::int64_t* k_in = keys.as<std::int64_t>();
    std::int64_t* k_sorted = sorted.as<std::int64_t>();
    check(cuda_int(cub::DeviceRadixSort::SortKeys(nullptr, bytes_sort, k_in, k_sorted, n, 0, 64, stream)),
          "knn_graph (cuda): sort");
    check(cuda_int(cub::DeviceSelect::Unique(nullptr, bytes_unique, k_sorted, out.as<std::int64_t>(),
                                             count.as<std::int64_t>(), n, stream)),
          "knn_graph (cuda): unique");
    DeviceBuffer scratch(bytes_sort > bytes_unique ? bytes_sort : bytes_unique, "knn_graph (cuda): sort scratch");
    check(cuda_int(cub::DeviceRadixSort::SortKeys(scratch.get(), bytes_sort, k_in, k_sorted, n, 0, 64, stream)),
          "knn_graph (cuda): sort");
    check(cuda_int(cub::DeviceSelect::Unique(scratch.get(), bytes_unique, k_sorted, out.as<std::int64_t>(),
                                             count.as<std::int64_t>(), n, stream)),
          "knn_graph (cuda): unique");
    return read_back(count.as<std::int64_t>(), stream, "knn_graph (cuda): unique");
}

}  // namespace

DeviceCsr knn_graph(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim, int k, double radius,
                    bool symmetric, cudaStream_t stream) {
    ka::check_args(na, nb, dim, k, radius);
    DeviceCsr out;
    out.n_rows = na;
    out.n_cols = nb;
    const double r2 = radius >= 0.0 ? radius * radius : -1.0;
    const int kb = static_cast<int>(k < nb ? k : nb);
    const int ka_ = static_cast<int>(k < na ? k : na);
    const std::size_t shmem = sizeof(double) * kThreads * dim;

    DeviceBuffer fwd(sizeof(std::int32_t) * na * kb, "knn_graph (cuda): neighbours");
    DeviceBuffer rev, rcount, roffset;
    std::int64_t n_radius = 0, n_keys = 0;
    if (na > 0 && nb > 0) {
        if (r2 >= 0.0) {
            rcount = DeviceBuffer(sizeof(std::int64_t) * na, "knn_graph (cuda): radius counts");
            roffset = DeviceBuffer(sizeof(std::int64_t) * (na + 1), "knn_graph (cuda): radius offsets");
        }
        select(a, na, b, nb, dim, kb, r2, fwd.as<std::int32_t>(), r2 >= 0.0 ? rcount.as<std::int64_t>() : nullptr,
               stream);
        if (r2 >= 0.0) {
            std::int64_t* off = roffset.as<std::int64_t>();
            check(cuda_int(cudaMemsetAsync(off, 0, sizeof(std::int64_t), stream)), "knn_graph (cuda): radius offsets");
            std::size_t bytes = 0;
            check(cuda_int(cub::DeviceScan::InclusiveSum(nullptr, bytes, rcount.as<std::int64_t>(), off + 1, na, stream)),
                  "knn_graph (cuda): radius scan");
            DeviceBuffer scratch(bytes, "knn_graph (cuda): scan scratch");
            check(cuda_int(cub::DeviceScan::InclusiveSum(scratch.get(), bytes, rcount.as<std::int64_t>(), off + 1, na,
                                                         stream)),
                  "knn_graph (cuda): radius scan");
            n_radius = read_back(off + na, stream, "knn_graph (cuda): radius scan");
        }
        if (symmetric && ka_ > 0) {
            rev = DeviceBuffer(sizeof(std::int32_t) * nb * ka_, "knn_graph (cuda): reverse neighbours");
            select(b, nb, a, na, dim, ka_, -1.0, rev.as<std::int32_t>(), nullptr, stream);
        }
        n_keys = na * kb + n_radius + (symmetric ? nb * ka_ : 0);
    }
    DeviceBuffer keys(sizeof(std::int64_t) * n_keys, "knn_graph (cuda): keys");
    DeviceBuffer unique(sizeof(std::int64_t) * n_keys, "knn_graph (cuda): unique keys");
    if (n_keys > 0) {
        std::int64_t pos = 0;
        std::int64_t* kp = keys.as<std::int64_t>();
        if (kb > 0) {
            knn_keys_kernel<<<blocks(na * kb, 256), 256, 0, stream>>>(fwd.as<std::int32_t>(), na, kb, nb, false, kp);
            pos += na * kb;
        }
        if (n_radius > 0) {
            radius_fill_kernel<<<blocks(na, kThreads), kThreads, shmem, stream>>>(a, na, b, nb, dim, r2,
                                                                                  roffset.as<std::int64_t>(), kp + pos);
            pos += n_radius;
        }
        if (symmetric && ka_ > 0)
            knn_keys_kernel<<<blocks(nb * ka_, 256), 256, 0, stream>>>(rev.as<std::int32_t>(), nb, ka_, nb, true,
                                                                       kp + pos);
        check(cuda_int(cudaGetLastError()), "knn_graph (cuda): key kernels");
        n_keys = sort_unique(keys, n_keys, unique, stream);
    }
    out.nnz = n_keys;
    out.indptr = DeviceBuffer(sizeof(std::int64_t) * (na + 1), "knn_graph (cuda): indptr");
    out.indices = DeviceBuffer(sizeof(std::int32_t) * n_keys, "knn_graph (cuda): indices");
    out.data = DeviceBuffer(sizeof(double) * n_keys, "knn_graph (cuda): data");
    if (n_keys > 0)
        finish_kernel<<<blocks(n_keys, 256), 256, 0, stream>>>(unique.as<std::int64_t>(), n_keys, a, b, nb, dim,
                                                               out.indices.as<std::int32_t>(), out.data.as<double>());
    indptr_kernel<<<blocks(na + 1, 256), 256, 0, stream>>>(unique.as<std::int64_t>(), n_keys, na, nb > 0 ? nb : 1,
                                                          out.indptr.as<std::int64_t>());
    check(cuda_int(cudaGetLastError()), "knn_graph (cuda): output kernels");
    check(cuda_int(cudaStreamSynchronize(stream)), "knn_graph (cuda)");
    return out;
}

}  // namespace xmodal::cuda
