// Bindings of the CPD kernels (xmodal/cpd.hpp): conversion, GIL release, calls.
#include <optional>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/cpd.hpp"

namespace xmodal::bind {

py::dict estep_result(py::array P1, py::array Pt1, py::array PX, py::array best_idx, py::array best_prob,
                      py::array log_s, double log_s_sum, std::int64_t pairs, std::int64_t empty_columns,
                      std::int64_t shifted_columns) {
    py::dict out;
    out["P1"] = P1;
    out["Pt1"] = Pt1;
    out["PX"] = PX;
    out["best_idx"] = best_idx;
    out["best_prob"] = best_prob;
    out["log_s"] = log_s;
    out["log_s_sum"] = log_s_sum;
    out["pairs"] = pairs;
    out["empty_columns"] = empty_columns;
    out["shifted_columns"] = shifted_columns;
    return out;
}

namespace {

// The output arrays of an E-step (allocated with the GIL held) and their raw pointers.
template <class T>
struct EStepBuffers {
    py::array_t<T> P1, Pt1, PX;
    py::array_t<int64_t> best_idx;
    py::array_t<T> best_prob;
    py::array_t<double> log_s;
    T *p1, *pt1, *px, *bp;
    int64_t* bi;
    double* sp;

    EStepBuffers(int64_t N, int64_t M, int D, bool want_best)
        : P1(M), Pt1(N), PX({M, (int64_t)D}), best_idx(want_best ? M : 0), best_prob(want_best ? M : 0), log_s(N) {
        p1 = P1.mutable_data();
        pt1 = Pt1.mutable_data();
        px = PX.mutable_data();
        bi = want_best ? best_idx.mutable_data() : nullptr;
        bp = want_best ? best_prob.mutable_data() : nullptr;
        sp = log_s.mutable_data();
    }
    py::dict result(const cpd::EStepStats& st) {
        return estep_result(P1, Pt1, PX, best_idx, best_prob, log_s, st.log_s_sum, st.pairs, st.empty_columns,
                            st.shifted_columns);
    }
};

template <class T>
py::dict estep_impl(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                    double sigma2, double c, double cutoff, bool want_best) {
    const EStepInputs<T> in(fixed, moved, weights, "cpd_estep");
    EStepBuffers<T> b(in.N, in.M, in.D, want_best);
    cpd::EStepStats st;
    {
        py::gil_scoped_release release;
        st = cpd::estep<T>(in.X.data(), in.N, in.TY.data(), in.M, in.D, in.wp, sigma2, c, cutoff, b.p1, b.pt1, b.px,
                           b.bi, b.bp, b.sp);
    }
    return b.result(st);
}

template <class T>
py::dict estep_features_impl(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                             const py::array& fixed_features, const py::array& moved_features, double feature_inv,
                             double sigma2, double c, double cutoff, bool want_best) {
    const EStepInputs<T> in(fixed, moved, weights, "cpd_estep_features");
    const auto FX = as_carray<T>(fixed_features, "fixed_features");
    const auto FY = as_carray<T>(moved_features, "moved_features");
    check_ndim(FX, 2, "fixed_features");
    check_ndim(FY, 2, "moved_features");
    if (FX.shape(0) != in.N) throw value_error("fixed_features: expected one row per fixed point");
    if (FY.shape(0) != in.M) throw value_error("moved_features: expected one row per moving point");
    if (FX.shape(1) != FY.shape(1) || FX.shape(1) < 1)
        throw value_error("fixed_features, moved_features: expected the same number (>= 1) of columns");
    EStepBuffers<T> b(in.N, in.M, in.D, want_best);
    cpd::EStepStats st;
    {
        py::gil_scoped_release release;
        st = cpd::estep_features<T>(in.X.data(), in.N, in.TY.data(), in.M, in.D, in.wp, FX.data(), FY.data(),
                                    (int)FX.shape(1), feature_inv, sigma2, c, cutoff, b.p1, b.pt1, b.px, b.bi, b.bp,
                                    b.sp);
    }
    return b.result(st);
}

template <class T>
py::dict gauss_impl(const py::array& centers_in, const py::array& coef_in, const py::array& points_in, double beta,
                    double cutoff) {
    const auto centers = as_carray<T>(centers_in, "centers");
    const auto coef = as_carray<T>(coef_in, "coefficients");
    const auto points = as_carray<T>(points_in, "points");
    check_points(centers, "centers");
    check_points(points, "points");
    check_ndim(coef, 2, "coefficients");
    const int D = (int)centers.shape(1);
    if (points.shape(1) != D || coef.shape(1) != D || coef.shape(0) != centers.shape(0))
        throw value_error("cpd_gauss_transform: centers, coefficients and points must agree in shape");
    const int64_t K = centers.shape(0), Q = points.shape(0);
    py::array_t<T> values({Q, (int64_t)D});
    T* o = values.mutable_data();
    {
        py::gil_scoped_release release;
        cpd::gauss_transform<T>(centers.data(), K, coef.data(), points.data(), Q, D, beta, cutoff, o);
    }
    py::dict out;
    out["values"] = values;
    return out;
}

}  // namespace

void register_cpd(py::module_& m) {
    m.def(
        "cpd_estep",
        [](const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights, double sigma2,
           double c, double cutoff, bool want_best) {
            return with_float_type(fixed, "fixed", [&](auto t) {
                return estep_impl<decltype(t)>(fixed, moved, weights, sigma2, c, cutoff, want_best);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"),
        py::arg("want_best"),
        "CPD E-step without the M x N matrix, in the precision of `fixed` (float32 or float64; moved and "
        "weights are converted to it). Returns a dict: P1 (M), Pt1 (N), PX (M, d), best_idx (int64, M or 0), "
        "best_prob (M or 0), log_s (N, float64: log s_n, -inf where s_n = 0), log_s_sum, pairs, "
        "empty_columns, shifted_columns (fixed points summed relative to their largest term). See "
        "xmodal/cpd.hpp.");
    m.def(
        "cpd_estep_features",
        [](const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
           const py::array& fixed_features, const py::array& moved_features, double feature_inv, double sigma2,
           double c, double cutoff, bool want_best) {
            return with_float_type(fixed, "fixed", [&](auto t) {
                return estep_features_impl<decltype(t)>(fixed, moved, weights, fixed_features, moved_features,
                                                        feature_inv, sigma2, c, cutoff, want_best);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("fixed_features"), py::arg("moved_features"),
        py::arg("feature_inv"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"), py::arg("want_best"),
        "CPD E-step with per-point features: the kernel of cpd_estep times exp(-|f_n - g_m|^2 feature_inv) "
        "(feature_inv = 1 / (2 feature_sigma^2)); the same outputs. See xmodal/cpd.hpp.");
    m.def(
        "cpd_gauss_transform",
        [](const py::array& centers, const py::array& coefficients, const py::array& points, double beta,
           double cutoff) {
            return with_float_type(centers, "centers", [&](auto t) {
                return gauss_impl<decltype(t)>(centers, coefficients, points, beta, cutoff);
            });
        },
        py::arg("centers"), py::arg("coefficients"), py::arg("points"), py::arg("beta"), py::arg("cutoff"),
        "Gaussian transform in the precision of `centers`: dict with values (Q, d) = sum_k "
        "exp(-|p - c_k|^2 / (2 beta^2)) coefficients[k].");
}

}  // namespace xmodal::bind
