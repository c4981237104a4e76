// The module xmodal._core: one register_<capability> call per binding file.
#include "bindings.hpp"

namespace py = pybind11;

namespace {
// The interrupt hook of the kernels (xmodal::poll_interrupt): run Python's signal handlers. On
// Ctrl-C the SIGINT handler sets KeyboardInterrupt in this thread's state; the kernel then throws
// xmodal::interrupted, and the translator below leaves that exception to be raised. Signals are
// only handled in the main thread; elsewhere PyErr_CheckSignals returns 0.
bool python_interrupt_pending() {
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
}
}  // namespace

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
        } catch (const xmodal::interrupted&) {
            if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        }
    });
    xmodal::set_interrupt_hook(&python_interrupt_pending);

    xmodal::bind::register_common(m);
    xmodal::bind::register_knn(m);
    xmodal::bind::register_assignment(m);
    xmodal::bind::register_cpd(m);
    xmodal::bind::register_cpd_fast(m);
    xmodal::bind::register_mws(m);
    xmodal::bind::register_stitch(m);
    xmodal::bind::register_testing(m);  // the submodule _core._testing (tests only)
    xmodal::bind::register_gasp(m);
    xmodal::bind::register_malis(m);
}
