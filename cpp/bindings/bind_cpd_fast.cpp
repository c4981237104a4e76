// Bindings of the fast CPD kernels (xmodal/cpd_fast.hpp): checks, GIL release, calls.
#include <cmath>
#include <optional>
#include <string>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/cpd_fast.hpp"

namespace xmodal::bind {

namespace {

// An (n, d) point array with d = 2 or 3 and n >= 1.
void check_pts(const py::array& a, const char* name) {
    check_points(a, name);
    if (a.shape(0) < 1) throw value_error(std::string(name) + ": expected at least one point");
}

cpd::EStepMethod parse_method(const std::string& m) {
    if (m == "auto") return cpd::EStepMethod::automatic;
    if (m == "exact") return cpd::EStepMethod::exact;
    if (m == "fast") return cpd::EStepMethod::fast;
    throw value_error("method: expected 'auto', 'exact' or 'fast', got '" + m + "'");
}

py::dict stats_dict(const cpd::FastEStepStats& st) {
    py::dict d;
    d["method"] = st.method == 2 ? "fast" : "exact";
    d["order"] = st.order;
    d["q"] = st.q;
    d["h"] = st.h;
    d["cells"] = st.cells;
    d["capped"] = st.capped;
    d["dense_rel"] = st.dense_rel;
    d["max_rel_s"] = st.max_rel_s;
    d["max_rel_p1"] = st.max_rel_p1;
    d["max_px"] = st.max_px;
    d["exact_columns"] = st.exact_columns;
    d["exact_rows"] = st.exact_rows;
    d["unresolved_rows"] = st.unresolved_rows;
    d["fell_back"] = st.fell_back;
    d["sampled_rel_s"] = st.sampled_rel_s;
    py::dict sec;
    const char* names[6] = {"splat", "blur", "slice", "bound", "exact", "best"};
    for (int i = 0; i < 6; ++i) sec[names[i]] = st.seconds[i];
    d["seconds"] = sec;
    d["est_cost_exact"] = st.est_cost_exact;
    d["est_cost_grid"] = st.est_cost_grid;
    d["log_s_sum"] = st.log_s_sum;
    d["pairs"] = st.pairs;
    d["empty_columns"] = st.empty_columns;
    return d;
}

template <class T>
py::dict estep_fast_impl(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                         double sigma2, double c, double cutoff, const std::string& method, double tol,
                         int64_t max_cells, bool want_best, bool want_bounds) {
    const EStepInputs<T> in(fixed, moved, weights, "cpd_estep_fast");
    check_pts(in.X, "fixed");
    check_pts(in.TY, "moved");
    const int64_t N = in.N, M = in.M;
    const int D = in.D;
    const cpd::EStepMethod meth = parse_method(method);
    py::array_t<T> P1(M), Pt1(N), PX({M, (int64_t)D});
    py::array_t<int64_t> best_idx(want_best ? M : 0);
    py::array_t<T> best_prob(want_best ? M : 0);
    py::array_t<double> log_s(N);
    py::array_t<double> bs(want_bounds ? N : 0), bp1(want_bounds ? M : 0), bpx(want_bounds ? M : 0);
    T *p1 = P1.mutable_data(), *pt1 = Pt1.mutable_data(), *px = PX.mutable_data();
    int64_t* bi = want_best ? best_idx.mutable_data() : nullptr;
    T* bpp = want_best ? best_prob.mutable_data() : nullptr;
    double* ls = log_s.mutable_data();
    double* bsp = want_bounds ? bs.mutable_data() : nullptr;
    double* bp1p = want_bounds ? bp1.mutable_data() : nullptr;
    double* bpxp = want_bounds ? bpx.mutable_data() : nullptr;
    cpd::FastEStepStats st;
    {
        py::gil_scoped_release release;
        st = cpd::estep_fast<T>(in.X.data(), N, in.TY.data(), M, D, in.wp, sigma2, c, cutoff, meth, tol, max_cells, p1, pt1, px,
                                bi, bpp, ls, bsp, bp1p, bpxp);
    }
    // the exact E-step's fields, then the bounds
    // and the fast path's statistics
    py::dict out = estep_result(P1, Pt1, PX, best_idx, best_prob, log_s, st.log_s_sum, st.pairs, st.empty_columns,
                                st.shifted_columns);
    out["bound_s"] = bs;
    out["bound_p1"] = bp1;
    out["bound_px"] = bpx;
    out["stats"] = stats_dict(st);
    return out;
}

template <class T>
py::dict gauss_fast_impl(const py::array& centers_in, const py::array& coef_in, const py::array& points_in,
                         double beta, const std::string& method, double tol, int64_t max_cells) {
    const auto centers = as_carray<T>(centers_in, "centers");
    const auto coef = as_carray<T>(coef_in, "coefficients");
    const auto points = as_carray<T>(points_in, "points");
    check_pts(centers, "centers");
    check_pts(points, "points");
    check_ndim(coef, 2, "coefficients");
    const int D = (int)centers.shape(1);
    if (points.shape(1) != D || coef.shape(1) != D || coef.shape(0) != centers.shape(0))
        throw value_error("cpd_gauss_transform_fast: centers, coefficients and points must agree in shape");
    const int64_t K = centers.shape(0), Q = points.shape(0);
    const cpd::EStepMethod meth = parse_method(method);
    py::array_t<T> values({Q, (int64_t)D});
    py::array_t<double> bound(Q);
    T* o = values.mutable_data();
    double* b = bound.mutable_data();
    cpd::GaussFastStats st;
    {
        py::gil_scoped_release release;
        st = cpd::gauss_transform_fast<T>(centers.data(), K, coef.data(), points.data(), Q, D, beta, meth, tol,
                                          max_cells, o, b);
    }
    py::dict d;
    d["values"] = values;
    d["bound"] = bound;
    d["method"] = st.method == 2 ? "fast" : "exact";
    d["order"] = st.order;
    d["q"] = st.q;
    d["cells"] = st.cells;
    d["max_abs"] = st.max_abs;
    return d;
}

template <class T>
py::dict voxel_impl(const py::array& points, int64_t target, double voxel) {
    const auto P = as_carray<T>(points, "points");
    check_pts(P, "points");
    const int64_t n = P.shape(0);
    const int D = (int)P.shape(1);
    std::vector<int64_t> idx;
    double used = 0;
    {
        py::gil_scoped_release release;
        idx = cpd::voxel_subsample<T>(P.data(), n, D, target, voxel, &used);
    }
    py::dict d;
    d["indices"] = to_numpy(std::move(idx));
    d["voxel"] = used;
    return d;
}

py::dict profile_impl(int order, double q, double reach, int D) {
    cpd::GridErrorProfile pr;
    {
        py::gil_scoped_release release;
        pr = cpd::grid_error_profile(order, q, reach, D);
    }
    py::dict d;
    d["order"] = pr.order;
    d["q"] = pr.q;
    d["reach"] = pr.reach;
    d["d"] = pr.D;
    d["taps"] = to_numpy(std::move(pr.taps));
    d["radii"] = to_numpy(std::move(pr.radii));
    d["env"] = to_numpy(std::move(pr.env));
    d["env_dist"] = to_numpy(std::move(pr.env_dist));
    d["dense_rel"] = pr.dense_rel;
    d["dense_rel_dist"] = pr.dense_rel_dist;
    d["sup_1d"] = pr.sup_1d;
    return d;
}

}  // namespace

void register_cpd_fast(py::module_& m) {
    m.def(
        "cpd_estep_fast",
        [](const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights, double sigma2,
           double c, double cutoff, const std::string& method, double tol, int64_t max_cells, bool want_best,
           bool want_bounds) {
            return with_float_type(fixed, "fixed", [&](auto t) {
                return estep_fast_impl<decltype(t)>(fixed, moved, weights, sigma2, c, cutoff, method, tol, max_cells,
                                                    want_best, want_bounds);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"),
        py::arg("method"), py::arg("tol"), py::arg("max_cells"), py::arg("want_best"), py::arg("want_bounds"),
        "CPD E-step with the grid Gauss transform (method 'fast'), the exact truncated kernel ('exact') or the "
        "cheaper of the two ('auto'), in the precision of `fixed`. Returns the dict of cpd_estep plus bound_s (N "
        "or 0), bound_p1 (M or 0), bound_px (M or 0; float64, per-point error bounds when want_bounds) and stats "
        "(a dict: method run, grid, a posteriori bounds, timings). See xmodal/cpd_fast.hpp.");
    m.def(
        "cpd_gauss_transform_fast",
        [](const py::array& centers, const py::array& coefficients, const py::array& points, double beta,
           const std::string& method, double tol, int64_t max_cells) {
            return with_float_type(centers, "centers", [&](auto t) {
                return gauss_fast_impl<decltype(t)>(centers, coefficients, points, beta, method, tol, max_cells);
            });
        },
        py::arg("centers"), py::arg("coefficients"), py::arg("points"), py::arg("beta"), py::arg("method"),
        py::arg("tol"), py::arg("max_cells"),
        "Gauss transform in the precision of `centers`: dict with values (Q, d) = sum_k exp(-|p - c_k|^2 / "
        "(2 beta^2)) coefficients[k], bound (Q, float64: absolute error bound per point), method, order, q, "
        "cells, max_abs.");
    m.def(
        "voxel_subsample",
        [](const py::array& points, int64_t target, double voxel) {
            return with_float_type(points, "points",
                                   [&](auto t) { return voxel_impl<decltype(t)>(points, target, voxel); });
        },
        py::arg("points"), py::arg("target"), py::arg("voxel"),
        "Dict with indices (sorted int64: per occupied voxel the point nearest its centre) and voxel (the edge "
        "used); voxel > 0 fixes the edge, else it is searched for at most `target` points.");
    m.def("cpd_grid_error_profile", &profile_impl, py::arg("order"), py::arg("q"), py::arg("reach"), py::arg("d"),
          "cpd_grid_error_profile(order, q, reach, d) -> dict(taps, radii, env, env_dist, dense_rel, "
          "dense_rel_dist, sup_1d): error envelope of the grid Gauss transform (sigma units, peak-normalised).");
    m.def("cpd_grid_reach_for_tol", &cpd::grid_reach_for_tol, py::arg("tol"),
          "Kernel reach R (units of sigma) the fast E-step uses for a tolerance.");
}

}  // namespace xmodal::bind
