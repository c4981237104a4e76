// Bindings of the CPD kernels (xmodal/cpd.hpp): checks, GIL release, calls.
#include <cmath>
#include <optional>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/cpd.hpp"

namespace xmodal::bind {

namespace {

template <class T>
void check_points(const carray<T>& a, const char* name) {
    check_ndim(a, 2, name);
    if (a.shape(1) != 2 && a.shape(1) != 3)
        throw value_error(std::string(name) + ": expected 2 or 3 columns, got " + std::to_string(a.shape(1)));
    if (a.shape(0) < 1) throw value_error(std::string(name) + ": expected at least one point");
}

template <class T>
py::tuple estep_impl(const carray<T>& X, const carray<T>& TY, std::optional<carray<T>> weights,
                     double sigma2, double c, double cutoff, bool want_best) {
    check_points(X, "fixed");
    check_points(TY, "moved");
    if (X.shape(1) != TY.shape(1)) throw value_error("cpd_estep: fixed and moved differ in dimension");
    const int64_t N = X.shape(0), M = TY.shape(0);
    const int D = (int)X.shape(1);
    const T* wp = nullptr;
    if (weights) {
        check_ndim(*weights, 1, "weights");
        if (weights->shape(0) != M) throw value_error("weights: expected one weight per moving point");
        wp = weights->data();
    }
    py::array_t<T> P1(M), Pt1(N), PX({M, (int64_t)D});
    py::array_t<int64_t> best_idx(want_best ? M : 0);
    py::array_t<T> best_prob(want_best ? M : 0);
    py::array_t<double> log_s(N);
    double* sp = log_s.mutable_data();
    T *p1 = P1.mutable_data(), *pt1 = Pt1.mutable_data(), *px = PX.mutable_data();
    int64_t* bi = want_best ? best_idx.mutable_data() : nullptr;
    T* bp = want_best ? best_prob.mutable_data() : nullptr;
    cpd::EStepStats st;
    {
        py::gil_scoped_release release;
        st = cpd::estep<T>(X.data(), N, TY.data(), M, D, wp, sigma2, c, cutoff, p1, pt1, px, bi, bp, sp);
    }
    return py::make_tuple(P1, Pt1, PX, best_idx, best_prob, st.log_s_sum, st.pairs, st.empty_columns, log_s,
                          st.shifted_columns);
}

template <class T>
py::array_t<T> gauss_impl(const carray<T>& centers, const carray<T>& coef, const carray<T>& points,
                          double beta, double cutoff) {
    check_points(centers, "centers");
    check_points(points, "points");
    check_ndim(coef, 2, "coefficients");
    const int D = (int)centers.shape(1);
    if (points.shape(1) != D || coef.shape(1) != D || coef.shape(0) != centers.shape(0))
        throw value_error("cpd_gauss_transform: centers, coefficients and points must agree in shape");
    const int64_t K = centers.shape(0), Q = points.shape(0);
    py::array_t<T> out({Q, (int64_t)D});
    T* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        cpd::gauss_transform<T>(centers.data(), K, coef.data(), points.data(), Q, D, beta, cutoff, o);
    }
    return out;
}

}  // namespace

void register_cpd(py::module_& m) {
    const char* edoc =
        "cpd_estep(fixed, moved, weights, sigma2, c, cutoff, want_best) -> (P1, Pt1, PX, best_idx, "
        "best_prob, log_s_sum, pairs, empty_columns, log_s, shifted_columns). CPD E-step without the "
        "M x N matrix; float32 or float64 (both arrays the same dtype). log_s (N, float64) holds log s_n "
        "(-inf where s_n = 0); shifted_columns counts fixed points summed relative to their largest "
        "term. See xmodal/cpd.hpp.";
    m.def("cpd_estep", &estep_impl<double>, py::arg("fixed"), py::arg("moved"), py::arg("weights"),
          py::arg("sigma2"), py::arg("c"), py::arg("cutoff"), py::arg("want_best"), edoc);
    m.def("cpd_estep_f32", &estep_impl<float>, py::arg("fixed"), py::arg("moved"), py::arg("weights"),
          py::arg("sigma2"), py::arg("c"), py::arg("cutoff"), py::arg("want_best"), edoc);
    const char* gdoc =
        "cpd_gauss_transform(centers, coefficients, points, beta, cutoff) -> (Q, d): sum_k "
        "exp(-|p - c_k|^2 / (2 beta^2)) coefficients[k].";
    m.def("cpd_gauss_transform", &gauss_impl<double>, py::arg("centers"), py::arg("coefficients"),
          py::arg("points"), py::arg("beta"), py::arg("cutoff"), gdoc);
    m.def("cpd_gauss_transform_f32", &gauss_impl<float>, py::arg("centers"), py::arg("coefficients"),
          py::arg("points"), py::arg("beta"), py::arg("cutoff"), gdoc);
}

}  // namespace xmodal::bind
