// Helpers shared by the pybind11 binding files of xmodal._core.
//
// Each capability has one binding file (bind_<name>.cpp) defining register_<name>(module).
// Bindings only check arguments, release the GIL and call into cpp/; no algorithms here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "xmodal/common.hpp"

namespace xmodal::bind {

namespace py = pybind11;

// C-contiguous array of T, converted (copied) only if needed.
template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Raise ValueError unless `a` has `ndim` dimensions.
inline void check_ndim(const py::array& a, int ndim, const char* name) {
    if (a.ndim() != ndim)
        throw value_error(std::string(name) + ": expected a " + std::to_string(ndim) +
                          "-D array, got " + std::to_string(a.ndim()) + "-D");
}

// A 1-D numpy array that takes ownership of the vector's buffer (no copy).
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          heap->data(), owner);
}

void register_common(py::module_& m);
void register_knn(py::module_& m);
void register_assignment(py::module_& m);
void register_cpd(py::module_& m);
void register_cpd_fast(py::module_& m);
void register_mws(py::module_& m);
void register_stitch(py::module_& m);

}  // namespace xmodal::bind
