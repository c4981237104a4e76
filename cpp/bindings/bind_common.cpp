#include <chrono>
#include <new>

#ifdef XMODAL_HAVE_OPENMP
#include <omp.h>
#endif

#include "bindings.hpp"

namespace xmodal::bind {

void register_common(py::module_& m) {
    m.def("num_threads", &xmodal::num_threads, "Threads the native kernels use.");
    m.def("set_num_threads", &xmodal::set_num_threads, py::arg("n"),
          "Set the threads of the native kernels (n <= 0: default).");
    m.def("set_thread_cap", &xmodal::set_thread_cap, py::arg("n"),
          "Cap the kernels' threads for the calling thread only (n <= 0: no cap).");
    m.def("thread_cap", &xmodal::thread_cap, "The calling thread's cap (0: none).");
    m.def("hardware_threads", &xmodal::hardware_threads, "Cores reported by the runtime.");
    m.def("have_openmp", &xmodal::have_openmp, "Whether the kernels were built with OpenMP.");
    m.def("compiler", &xmodal::compiler, "Compiler that built the kernels.");

    // Exercises the exception translation from C++ to Python (used by the tests).
    m.def(
        "_raise",
        [](const std::string& kind, const std::string& message) {
            if (kind == "value") throw xmodal::value_error(message);
            if (kind == "type") throw xmodal::type_error(message);
            if (kind == "memory") throw std::bad_alloc();
            if (kind == "runtime") throw std::runtime_error(message);
            throw xmodal::value_error("kind: expected 'value', 'type', 'memory' or 'runtime', got '" +
                                      kind + "'");
        },
        py::arg("kind"), py::arg("message") = "");

    // A kernel that only waits, polling for Ctrl-C as the long kernels do (tests of the interrupt
    // hook): returns the seconds it ran, or raises KeyboardInterrupt.
    m.def(
        "_poll_for",
        [](double seconds) {
            py::gil_scoped_release release;
            const auto t0 = std::chrono::steady_clock::now();
            double elapsed = 0.0;
            while (elapsed < seconds) {
                xmodal::poll_interrupt();
                elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            }
            return elapsed;
        },
        py::arg("seconds"));

    // Counts the threads an OpenMP parallel region really starts (tests of set_num_threads).
    m.def("_parallel_region_threads", []() {
        int n = 1;
        py::gil_scoped_release release;
#ifdef XMODAL_HAVE_OPENMP
#pragma omp parallel num_threads(xmodal::num_threads())
        {
#pragma omp single
            n = omp_get_num_threads();
        }
#endif
        return n;
    });
}

}  // namespace xmodal::bind
