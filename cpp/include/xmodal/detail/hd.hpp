// xmodal: helpers for arithmetic shared by the CPU kernels (g++ / clang / MSVC) and the CUDA
// kernels (nvcc).
//
// A function marked XM_HD compiles as __host__ __device__ under nvcc and as a plain inline
// function elsewhere, so the C++ kernels, the C++ tests (xmodal._core._testing) and the CUDA
// kernels run the very same arithmetic. The *_rn helpers are single IEEE round-to-nearest
// operations: on the device they are the intrinsics nvcc never fuses into an FMA; on the host the
// plain operators, which the build compiles with -ffp-contract=off (CMakeLists.txt). Together they
// make a*b + c two roundings on every device, so a value computed by a shared function is
// bit-identical on the CPU and the GPU (the transcendental functions log/log1p/exp of the device's
// libm excepted: they may differ from the host's in the last place).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define XM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define XM_HD inline __attribute__((always_inline))
#else
#define XM_HD inline
#endif

namespace xmodal::detail {

XM_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
XM_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
XM_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
XM_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dsub_rn(a, b);
#else
    return a - b;
#endif
}
XM_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
XM_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}
// a * b + c with two roundings (never an FMA)
template <class T>
XM_HD T madd_rn(T a, T b, T c) {
    return add_rn(mul_rn(a, b), c);
}

// Bit casts between floating-point numbers and integers of the same width.
XM_HD std::int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_int(x);
#else
    std::int32_t i;
    std::memcpy(&i, &x, sizeof i);
    return i;
#endif
}
XM_HD float bits_float(std::int32_t i) {
#if defined(__CUDA_ARCH__)
    return __int_as_float(i);
#else
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
#endif
}
XM_HD std::int64_t double_bits(double x) {
#if defined(__CUDA_ARCH__)
    return __double_as_longlong(x);
#else
    std::int64_t i;
    std::memcpy(&i, &x, sizeof i);
    return i;
#endif
}
XM_HD double bits_double(std::int64_t i) {
#if defined(__CUDA_ARCH__)
    return __longlong_as_double(i);
#else
    double x;
    std::memcpy(&x, &i, sizeof x);
    return x;
#endif
}

// libm functions under one name on both sides (double precision).
XM_HD double log_d(double x) {
#if defined(__CUDA_ARCH__)
    return ::log(x);
#else
    return std::log(x);
#endif
}
XM_HD double log1p_d(double x) {
#if defined(__CUDA_ARCH__)
    return ::log1p(x);
#else
    return std::log1p(x);
#endif
}
XM_HD double exp_d(double x) {
#if defined(__CUDA_ARCH__)
    return ::exp(x);
#else
    return std::exp(x);
#endif
}
XM_HD bool finite_d(double x) {
#if defined(__CUDA_ARCH__)
    return ::isfinite(x);
#else
    return std::isfinite(x);
#endif
}

}  // namespace xmodal::detail
