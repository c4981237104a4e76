// xmodal CUDA kernels: every host-callable entry point of xmodal._cuda, declared once.
//
// The twin pattern (as Open3D's and Faiss's CPU/GPU pairs): each CUDA entry point has the same
// arguments and outputs as its CPU twin in cpp/include/xmodal/, plus a stream, and computes every
// number with the same __host__ __device__ functions (cpp/include/xmodal/detail/*_arith.hpp),
// which xmodal._core._testing also runs on the CPU. Pointers are device pointers on the current
// device (the bindings select the device that holds the inputs, DeviceGuard); every function
// enqueues its work on `stream`, waits for it before returning (it returns host values and
// buffers ready to read) and reports errors by exceptions, never by aborting:
//   xmodal::value_error   bad arguments (the CPU twin's checks and messages)
//   std::runtime_error    CUDA errors (no device or driver, launch failures, out of memory)
// Memory is held by DeviceBuffer (RAII; its destructor never throws), so an error on any path
// frees what was allocated and arrives in Python as an exception.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "xmodal/cpd.hpp"

namespace xmodal::cuda {

// ------------------------------------------------------------------ devices
struct DeviceInfo {
    int index;
    std::string name;
    int major, minor;                // compute capability
    std::size_t total_memory;        // bytes
    int multiprocessors;
};

// Visible CUDA devices; empty when there is no driver or no GPU (never throws for that).
std::vector<DeviceInfo> devices();
// Driver / runtime versions as integers (e.g. 13000); 0 when unavailable.
int driver_version();
int runtime_version();

// Throws std::runtime_error naming `what` when err is not cudaSuccess (err is a cudaError_t).
void check(int err, const char* what);

// The device holding device memory `ptr`: std::runtime_error when no CUDA device or driver can be
// used ("no CUDA device"), xmodal::value_error naming `name` when ptr is not device memory.
int pointer_device(const void* ptr, const char* name);

// Makes `device` current for its lifetime and restores the previous one (errors ignored).
class DeviceGuard {
public:
    explicit DeviceGuard(int device);
    ~DeviceGuard();
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    int previous_ = -1;
};

// Device memory on the current device (cudaMalloc); freed by the destructor, which never throws.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(std::size_t bytes, const char* what);  // std::runtime_error naming `what` on failure
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    void* get() const { return ptr_; }
    std::size_t bytes() const { return bytes_; }
    int device() const { return device_; }

private:
    void release() noexcept;
    void* ptr_ = nullptr;
    std::size_t bytes_ = 0;
    int device_ = -1;
};

// ------------------------------------------------------------------ k-NN graph
// Twin of xmodal::knn_graph (cpp/include/xmodal/knn.hpp): the same arguments, the same graph (the
// same pairs, bit-identical distances), any k. Each direction (a -> b, and b -> a when symmetric)
// searches either a uniform grid over the reference points (xmodal/detail/knn_grid.hpp: one thread
// per query visiting rings of cells until a conservative bound stops it) or by brute force (one
// thread per query, the reference points streamed through shared memory). `algorithm`: automatic
// (the grid where kg::grid_pays: enough pairs, cells not overloaded), brute or grid (the grid
// whenever one can be built: finite box, at most 2^26 cells; tests). The graph is the same on
// every path; `info`, when given, says which ran.
struct DeviceCsr {
    std::int64_t n_rows = 0, n_cols = 0, nnz = 0;
    DeviceBuffer indptr;   // int64, n_rows + 1
    DeviceBuffer indices;  // int32, nnz, sorted per row
    DeviceBuffer data;     // double, nnz
};

enum class KnnAlgorithm : int { automatic = 0, brute = 1, grid = 2 };

enum class KnnPath : int { none = 0, brute = 1, grid = 2 };  // how a search ran (none: not needed)

struct KnnInfo {
    KnnPath forward = KnnPath::none;  // the a -> b search (k-NN and radius pairs)
    KnnPath reverse = KnnPath::none;  // the b -> a search (symmetric k-NN)
};

DeviceCsr knn_graph(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim, int k,
                    double radius, bool symmetric, cudaStream_t stream,
                    KnnAlgorithm algorithm = KnnAlgorithm::automatic, KnnInfo* info = nullptr);

// ------------------------------------------------------------------ CPD E-step
namespace cpd {

// Twin of xmodal::cpd::estep (cpp/include/xmodal/cpd.hpp): the same arguments, outputs (device
// buffers of T; best_idx, best_prob, log_s_out may be null) and statistics, the same support
// (cutoff), shifts, terms, denominators and tie rule. One thread per point, sums accumulated in
// double. Grid path (allow_grid and a support radius small against the extent,
// xmodal/detail/cpd_grid.hpp): each thread visits the points of the 3^D grid cells around its own
// (cell order); dense path: every pair, in index order. EStepStats::pairs counts the pairs visited
// (dense: 2 N M plus M per shifted fixed point).
template <class T>
xmodal::cpd::EStepStats estep(const T* X, std::int64_t N, const T* TY, std::int64_t M, int D, const T* weights,
                              double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX, std::int64_t* best_idx,
                              T* best_prob, double* log_s_out, cudaStream_t stream, bool allow_grid = true);

// Twin of xmodal::cpd::estep_features (cpp/include/xmodal/cpd.hpp): the kernel of estep times
// exp(-|f_n - g_m|^2 feature_inv), feature rows FX (N x F) and FY (M x F) of type T; the same
// outputs and statistics as the CPU twin (exponents in double, online log-sum-exp per fixed point;
// no shifted columns). Grid path as estep's (allow_grid), else every pair in index order.
template <class T>
xmodal::cpd::EStepStats estep_features(const T* X, std::int64_t N, const T* TY, std::int64_t M, int D,
                                       const T* weights, const T* FX, const T* FY, int F, double feature_inv,
                                       double sigma2, double c, double cutoff, T* P1, T* Pt1, T* PX,
                                       std::int64_t* best_idx, T* best_prob, double* log_s_out, cudaStream_t stream,
                                       bool allow_grid = true);

// The grid path's bins (tests and diagnostics): per set the original indices in cell order and
// int32 [start, end) per cell; cells == 0 when the call would take the dense path.
struct GridBins {
    std::int64_t cells = 0;
    double edge = 0;
    int shape[3] = {1, 1, 1};
    DeviceBuffer fixed_idx, fixed_start, fixed_end, moved_idx, moved_start, moved_end;
};
template <class T>
GridBins grid_bins(const T* X, std::int64_t N, const T* TY, std::int64_t M, int D, double sigma2, double cutoff,
                   cudaStream_t stream);

}  // namespace cpd

}  // namespace xmodal::cuda
