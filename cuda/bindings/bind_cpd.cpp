// Bindings of the CUDA CPD kernels (cuda/cpd.cu). Device buffers arrive as integer addresses
// (python/xmodal/registration/_cuda_cpd.py takes them from cupy arrays); the caller allocates the
// outputs with the documented sizes and dtypes.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_bindings.hpp"

namespace xmodal::cuda::cpd {
template <class T>
void estep(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2, double c,
           double* log_s, double* g, double* shift, double* Pt1, double* P1, double* PX, int64_t* best,
           double* prob, cudaStream_t stream);
template <class T>
void gauss_transform(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D, double beta,
                     T* out, cudaStream_t stream);
}  // namespace xmodal::cuda::cpd

namespace xmodal::cuda_bind {

namespace {
template <class T>
const T* cptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <class T>
T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void require_ptr(std::uintptr_t p, const char* name) {
    if (p == 0) throw value_error(std::string(name) + ": null device pointer");
}
}  // namespace

void register_cpd(py::module_& m) {
    m.def(
        "cpd_estep",
        [](std::uintptr_t X, int64_t N, std::uintptr_t TY, int64_t M, int D, std::uintptr_t weights, bool f64,
           double sigma2, double c, std::uintptr_t log_s, std::uintptr_t g, std::uintptr_t shift,
           std::uintptr_t Pt1, std::uintptr_t P1, std::uintptr_t PX, std::uintptr_t best, std::uintptr_t prob,
           std::uintptr_t stream) {
            for (auto [p, n] : {std::pair{X, "fixed"}, {TY, "moved"}, {log_s, "log_s"}, {g, "g"}, {shift, "shift"},
                                {Pt1, "Pt1"}, {P1, "P1"}, {PX, "PX"}, {best, "best"}, {prob, "prob"}})
                require_ptr(p, n);
            py::gil_scoped_release release;
            auto st = reinterpret_cast<cudaStream_t>(stream);
            if (f64)
                xmodal::cuda::cpd::estep<double>(cptr<double>(X), N, cptr<double>(TY), M, D, cptr<double>(weights),
                                                 sigma2, c, mptr<double>(log_s), mptr<double>(g), mptr<double>(shift), mptr<double>(Pt1),
                                                 mptr<double>(P1), mptr<double>(PX), mptr<int64_t>(best),
                                                 mptr<double>(prob), st);
            else
                xmodal::cuda::cpd::estep<float>(cptr<float>(X), N, cptr<float>(TY), M, D, cptr<float>(weights),
                                                sigma2, c, mptr<double>(log_s), mptr<double>(g), mptr<double>(shift), mptr<double>(Pt1),
                                                mptr<double>(P1), mptr<double>(PX), mptr<int64_t>(best),
                                                mptr<double>(prob), st);
        },
        "CPD E-step on device buffers: fixed (N, D), moved (M, D) of float32/float64 (f64), weights (M,) "
        "or 0; outputs float64: log_s (log s_n, -inf where s_n = 0), g, shift (scratch), Pt1 (N), P1 (M), "
        "PX (M, D), prob (M); best int64 (M).");
    m.def(
        "cpd_gauss_transform",
        [](std::uintptr_t centers, int64_t K, std::uintptr_t coef, std::uintptr_t points, int64_t Q, int D,
           bool f64, double beta, std::uintptr_t out, std::uintptr_t stream) {
            for (auto [p, n] : {std::pair{centers, "centers"}, {coef, "coefficients"}, {points, "points"},
                                {out, "out"}})
                require_ptr(p, n);
            py::gil_scoped_release release;
            auto st = reinterpret_cast<cudaStream_t>(stream);
            if (f64)
                xmodal::cuda::cpd::gauss_transform<double>(cptr<double>(centers), K, cptr<double>(coef),
                                                           cptr<double>(points), Q, D, beta, mptr<double>(out), st);
            else
                xmodal::cuda::cpd::gauss_transform<float>(cptr<float>(centers), K, cptr<float>(coef),
                                                          cptr<float>(points), Q, D, beta, mptr<float>(out), st);
        },
        "out (Q, D) = sum_k exp(-|p - c_k|^2 / (2 beta^2)) coef[k] on device buffers (same dtype).");
}

}  // namespace xmodal::cuda_bind
