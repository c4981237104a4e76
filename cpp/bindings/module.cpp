// The module xmodal._core: one register_<capability> call per binding file.
#include "bindings.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "xmodal native CPU kernels (C++17, OpenMP). Internal: use the xmodal package API.";

    // C++ exceptions of the kernels -> Python exceptions with the message intact.
    // std::invalid_argument (xmodal::value_error) -> ValueError and std::bad_alloc -> MemoryError
    // are pybind11 built-ins; type_error needs its own translator.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const xmodal::type_error& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        }
    });

    xmodal::bind::register_common(m);
    xmodal::bind::register_knn(m);
    xmodal::bind::register_assignment(m);
    xmodal::bind::register_cpd(m);
    xmodal::bind::register_cpd_fast(m);
    xmodal::bind::register_mws(m);
    xmodal::bind::register_stitch(m);
    xmodal::bind::register_testing(m);  // the submodule _core._testing (tests only)
    xmodal::bind::register_gasp(m);
}
