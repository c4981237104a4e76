// Devices, errors and memory of xmodal._cuda (see xmodal_cuda.hpp).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "xmodal/common.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda {

void check(int err, const char* what) {
    if (err != cudaSuccess) {
        auto e = static_cast<cudaError_t>(err);
        cudaGetLastError();  // clear a non-sticky error so that later calls start clean
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
    }
}

std::vector<DeviceInfo> devices() {
    std::vector<DeviceInfo> out;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the "no driver / no device" error
        return out;
    }
    for (int i = 0; i < n; ++i) {
        cudaDeviceProp p{};
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        out.push_back({i, p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount});
    }
    return out;
}

int driver_version() {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return v;
}

int runtime_version() {
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return v;
}

int pointer_device(const void* ptr, const char* name) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        throw std::runtime_error(std::string(name) + ": no CUDA device is usable (" +
                                 (e != cudaSuccess ? std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e)
                                                   : std::string("no GPU is visible")) +
                                 ")");
    }
    cudaPointerAttributes attr{};
    check(static_cast<int>(cudaPointerGetAttributes(&attr, ptr)), name);
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
        throw value_error(std::string(name) + ": expected device memory (a CUDA array), got a host pointer");
    return attr.device;
}

DeviceGuard::DeviceGuard(int device) {
    check(static_cast<int>(cudaGetDevice(&previous_)), "cudaGetDevice");
    if (previous_ != device) check(static_cast<int>(cudaSetDevice(device)), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
    if (previous_ >= 0 && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
}

DeviceBuffer::DeviceBuffer(std::size_t bytes, const char* what) {
    check(static_cast<int>(cudaGetDevice(&device_)), what);
    check(static_cast<int>(cudaMalloc(&ptr_, bytes > 0 ? bytes : 1)), what);
    bytes_ = bytes;
}

void DeviceBuffer::release() noexcept {
    if (!ptr_) return;
    int current = -1;
    const bool switch_device = cudaGetDevice(&current) == cudaSuccess && current != device_ && device_ >= 0;
    if (switch_device) cudaSetDevice(device_);
    cudaFree(ptr_);  // waits for the device's pending work; an error here is dropped, never thrown
    if (switch_device) cudaSetDevice(current);
    cudaGetLastError();
    ptr_ = nullptr;
    bytes_ = 0;
}

DeviceBuffer::~DeviceBuffer() { release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)), device_(o.device_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        release();
        ptr_ = std::exchange(o.ptr_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
        device_ = o.device_;
    }
    return *this;
}

}  // namespace xmodal::cuda
