#include "xmodal/common.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#ifdef XMODAL_HAVE_OPENMP
#include <omp.h>
#endif

namespace xmodal {
namespace {

int default_threads() {
    if (const char* env = std::getenv("XMODAL_NUM_THREADS")) {
        char* end = nullptr;
        long v = std::strtol(env, &end, 10);
        while (end && (*end == ' ' || *end == '\t' || *end == '\n')) ++end;
        // the whole value must be a number ("3abc" is refused, as in Python); else all cores
        if (end != env && end && *end == '\0' && v > 0 && v < 1 << 16) return static_cast<int>(v);
    }
    return hardware_threads();
}

std::atomic<int>& thread_setting() {
    static std::atomic<int> n{default_threads()};
    return n;
}

}  // namespace

int hardware_threads() {
#ifdef XMODAL_HAVE_OPENMP
    int n = omp_get_num_procs();
#else
    int n = static_cast<int>(std::thread::hardware_concurrency());
#endif
    return n > 0 ? n : 1;
}

namespace {
thread_local int tl_cap = 0;  // this thread's cap on num_threads() (0: none)
}  // namespace

int num_threads() {
    const int n = thread_setting().load(std::memory_order_relaxed);
    return tl_cap > 0 && tl_cap < n ? tl_cap : n;
}

void set_thread_cap(int n) { tl_cap = n > 0 ? n : 0; }

int thread_cap() { return tl_cap; }

void set_num_threads(int n) {
    thread_setting().store(n > 0 ? n : default_threads(), std::memory_order_relaxed);
}

bool have_openmp() {
#ifdef XMODAL_HAVE_OPENMP
    return true;
#else
    return false;
#endif
}

const char* compiler() { return XMODAL_COMPILER_ID; }

namespace {
std::atomic<interrupt_hook> g_interrupt_hook{nullptr};
thread_local std::chrono::steady_clock::time_point tl_last_poll{};
}  // namespace

void set_interrupt_hook(interrupt_hook hook) noexcept { g_interrupt_hook.store(hook); }

void poll_interrupt() {
#ifdef XMODAL_HAVE_OPENMP
    if (omp_in_parallel()) return;  // only the thread that called the kernel may unwind it
#endif
    const interrupt_hook hook = g_interrupt_hook.load(std::memory_order_relaxed);
    if (hook == nullptr) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - tl_last_poll < std::chrono::milliseconds(20)) return;
    tl_last_poll = now;
    if (hook()) throw interrupted();
}

}  // namespace xmodal
