// Helpers shared by the pybind11 binding files of xmodal._core.
//
// Each capability has one binding file (bind_<name>.cpp) defining register_<name>(module).
// Bindings only convert arguments, release the GIL and call into cpp/; no algorithms here, and no
// re-validation of what the kernel validates (the kernel checks its input once, in full).
// Conventions shared by every binding of xmodal._core and xmodal._cuda:
//   * dtypes: a kernel with one dtype takes arrays converted to it (carray, a copy only if
//     needed); a kernel instantiated for float32 and float64 runs in the precision of its first
//     array argument (with_float_type) and converts the others to it; other dtypes: TypeError.
//   * results: a dict of named numpy arrays and numbers, named as the fields of the C++ output
//     (xmodal._cuda: the same names, device arrays instead of numpy arrays); kernels that write
//     into their arguments return None.
//   * the GIL is released around every kernel call (tests/test_foundation.py checks it).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
// In every translation unit of the module: std::optional / std::vector arguments then have one
// type_caster everywhere (a unit without it would instantiate the generic one: an ODR violation).
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xmodal/common.hpp"

namespace xmodal::bind {

namespace py = pybind11;

// C-contiguous array of T, converted (copied) only if needed.
template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// `a` converted to a C-contiguous array of T (a copy only if needed); TypeError if it cannot be.
template <class T>
carray<T> as_carray(const py::handle& a, const char* name) {
    auto out = carray<T>::ensure(a);
    if (!out)
        throw type_error(std::string(name) + ": expected an array convertible to " +
                         std::string(py::str(py::dtype::of<T>())));
    return out;
}

// Raise ValueError unless `a` has `ndim` dimensions.
inline void check_ndim(const py::array& a, int ndim, const char* name) {
    if (a.ndim() != ndim)
        throw value_error(std::string(name) + ": expected a " + std::to_string(ndim) +
                          "-D array, got " + std::to_string(a.ndim()) + "-D");
}

// Whether values of dtype `d` are T's (kind and size; any byte order: carray converts).
template <class T>
bool holds(const py::dtype& d) {
    return d.kind() == py::dtype::of<T>().kind() && d.itemsize() == py::ssize_t(sizeof(T));
}

// Run f(T{}) with T = float or double after the dtype of `a`; TypeError naming `name` otherwise.
template <class F>
decltype(auto) with_float_type(const py::array& a, const char* name, F&& f) {
    if (holds<float>(a.dtype())) return f(float{});
    if (holds<double>(a.dtype())) return f(double{});
    throw type_error(std::string(name) + ": expected float32 or float64 values, got dtype " +
                     std::string(py::str(a.dtype())));
}

// Raise ValueError unless `a` is an (n, d) point array with d = 2 or 3.
inline void check_points(const py::array& a, const char* name) {
    check_ndim(a, 2, name);
    if (a.shape(1) != 2 && a.shape(1) != 3)
        throw value_error(std::string(name) + ": expected 2 or 3 columns, got " + std::to_string(a.shape(1)));
}

// The inputs of a CPD E-step binding in T: fixed (N, d) and moved (M, d) points of the same d,
// optional weights (M,) (wp null when absent); `who` names the kernel in the errors.
template <class T>
struct EStepInputs {
    carray<T> X, TY, w;
    int64_t N = 0, M = 0;
    int D = 0;
    const T* wp = nullptr;

    EStepInputs(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                const char* who)
        : X(as_carray<T>(fixed, "fixed")), TY(as_carray<T>(moved, "moved")) {
        check_points(X, "fixed");
        check_points(TY, "moved");
        if (X.shape(1) != TY.shape(1)) throw value_error(std::string(who) + ": fixed and moved differ in dimension");
        N = X.shape(0);
        M = TY.shape(0);
        D = (int)X.shape(1);
        if (weights) {
            w = as_carray<T>(*weights, "weights");
            check_ndim(w, 1, "weights");
            if (w.shape(0) != M) throw value_error("weights: expected one weight per moving point");
            wp = w.data();
        }
    }
};

// A 1-D numpy array that takes ownership of the vector's buffer (no copy).
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          heap->data(), owner);
}

// The E-step's result dict (the names of the fields of cpd::EStepStats and of its output arrays),
// shared by the CPU binding and the GPU-emulation binding of the tests.
py::dict estep_result(py::array P1, py::array Pt1, py::array PX, py::array best_idx, py::array best_prob,
                      py::array log_s, double log_s_sum, std::int64_t pairs, std::int64_t empty_columns,
                      std::int64_t shifted_columns);

void register_common(py::module_& m);
void register_knn(py::module_& m);
void register_assignment(py::module_& m);
void register_malis(py::module_& m);
void register_cpd(py::module_& m);
void register_cpd_fast(py::module_& m);
void register_mws(py::module_& m);
void register_stitch(py::module_& m);
void register_testing(py::module_& m);
void register_testing_cpd_grid(py::module_& t);  // bind_testing_cpd_grid.cpp
void register_gasp(py::module_& m);

}  // namespace xmodal::bind
