// xmodal: shared conventions of the C++ kernels.
//
// Kernels are pure functions over raw buffers (pointer + shape + strides); they know nothing of
// Python. They report bad input by throwing the exceptions below, which the bindings translate into
// Python exceptions with the message intact:
//   xmodal::value_error  (std::invalid_argument) -> ValueError
//   xmodal::type_error                            -> TypeError
//   std::bad_alloc                                -> MemoryError
//   xmodal::interrupted                           -> KeyboardInterrupt (Ctrl-C, see poll_interrupt)
//   anything else derived from std::exception     -> RuntimeError
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace xmodal {

struct value_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct type_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Number of threads the kernels use. Initialised from XMODAL_NUM_THREADS, else all cores.
int num_threads();
// Set it; n <= 0 restores the default (XMODAL_NUM_THREADS or all cores).
void set_num_threads(int n);
// A cap on num_threads() for the calling thread only (n <= 0: none), for kernels called from
// several threads at once (each keeps to its share of the cores instead of starting a full team).
void set_thread_cap(int n);
int thread_cap();
// All cores the OpenMP runtime (or the hardware) reports.
int hardware_threads();
// Whether the kernels were built with OpenMP.
bool have_openmp();
// The compiler that built the kernels ("GNU 12.2.0").
const char* compiler();

// Ctrl-C inside a long kernel. Kernels call poll_interrupt() at safe points (outside OpenMP
// parallel regions; RAII owns every buffer, so unwinding from there leaks nothing). It asks the
// host's hook (the Python bindings install one that runs Python's signal handlers) at most every
// 20 ms per thread, and throws `interrupted` when the hook reports a pending interrupt. Without a
// hook (kernels used from C++) it does nothing.
struct interrupted : std::exception {
    const char* what() const noexcept override { return "interrupted"; }
};
using interrupt_hook = bool (*)();
void set_interrupt_hook(interrupt_hook hook) noexcept;
void poll_interrupt();

// Throw value_error(msg) unless cond.
inline void require(bool cond, const std::string& msg) {
    if (!cond) throw value_error(msg);
}

}  // namespace xmodal
