// xmodal CUDA kernels: host-callable entry points with the same contracts as the C++ kernels.
// Pointers passed in are device pointers unless stated otherwise; every function runs on the
// given stream and throws xmodal::value_error / std::runtime_error on failure.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace xmodal::cuda {

struct DeviceInfo {
    int index;
    std::string name;
    int major, minor;                // compute capability
    std::size_t total_memory;        // bytes
    int multiprocessors;
};

// Visible CUDA devices; empty when there is no driver or no GPU (never throws for that).
std::vector<DeviceInfo> devices();
// "<driver version>/<runtime version>" as integers (e.g. 13000); 0 when unavailable.
int driver_version();
int runtime_version();

// Throws std::runtime_error naming `what` when err is not cudaSuccess (err is a cudaError_t).
void check(int err, const char* what);

}  // namespace xmodal::cuda
