// Helpers shared by the pybind11 binding files of xmodal._cuda.
//
// Each capability has one binding file (bind_<name>.cpp) defining register_<name>(module). The
// bindings follow the conventions of cpp/bindings/bindings.hpp: arrays in (here: objects with
// __cuda_array_interface__, e.g. cupy arrays or CUDA torch tensors, C-contiguous), dispatch on
// their dtype, the device of the inputs made current (DeviceGuard), the GIL released around the
// kernel, a dict of named results out (DeviceArray: device memory owned by the result, exposed
// through __cuda_array_interface__, so cupy / torch wrap it without a copy).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "xmodal/common.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda_bind {

namespace py = pybind11;

// A device array argument, read from its __cuda_array_interface__.
struct DeviceArg {
    std::uintptr_t ptr = 0;
    std::vector<std::int64_t> shape;
    std::string typestr;  // "<f8", "<f4", ...
    std::int64_t size() const {
        std::int64_t n = 1;
        for (auto s : shape) n *= s;
        return n;
    }
};

// TypeError unless `obj` exposes __cuda_array_interface__; ValueError unless it is C-contiguous,
// unmasked and of `ndim` dimensions (ndim < 0: any).
DeviceArg device_arg(const py::handle& obj, const char* name, int ndim);

// Run f(T{}) with T = float or double after the dtype of `a`; TypeError naming `name` otherwise.
template <class F>
decltype(auto) with_float_type(const DeviceArg& a, const char* name, F&& f) {
    if (a.typestr == "<f4") return f(float{});
    if (a.typestr == "<f8") return f(double{});
    throw type_error(std::string(name) + ": expected float32 or float64 values, got typestr '" + a.typestr + "'");
}

// TypeError unless `a` has the typestr of T.
template <class T>
void require_dtype(const DeviceArg& a, const char* name) {
    const char* want = sizeof(T) == 4 ? "<f4" : "<f8";
    if (a.typestr != want)
        throw type_error(std::string(name) + ": expected typestr '" + want + "' (" +
                         (sizeof(T) == 4 ? "float32" : "float64") + "), got '" + a.typestr + "'");
}

// The device holding every non-empty argument (ValueError when they differ); runtime_error when
// no CUDA device is usable.
int common_device(const std::vector<std::pair<const DeviceArg*, const char*>>& args);

// Device memory owned by a Python object, with a shape and a typestr (__cuda_array_interface__).
struct DeviceArray {
    std::shared_ptr<xmodal::cuda::DeviceBuffer> buffer;
    std::vector<std::int64_t> shape;
    std::string typestr;
};

template <class T>
const char* typestr_of() {
    if constexpr (std::is_same_v<T, float>) return "<f4";
    else if constexpr (std::is_same_v<T, double>) return "<f8";
    else if constexpr (std::is_same_v<T, std::int64_t>) return "<i8";
    else {
        static_assert(std::is_same_v<T, std::int32_t>, "unsupported device array type");
        return "<i4";
    }
}

// A result array of T taking ownership of `b`.
template <class T>
DeviceArray device_array(xmodal::cuda::DeviceBuffer&& b, std::vector<std::int64_t> shape) {
    return {std::make_shared<xmodal::cuda::DeviceBuffer>(std::move(b)), std::move(shape), typestr_of<T>()};
}

void register_device_array(py::module_& m);
void register_knn(py::module_& m);
void register_cpd(py::module_& m);

}  // namespace xmodal::cuda_bind
