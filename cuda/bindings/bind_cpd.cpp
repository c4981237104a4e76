// xmodal._cuda: CPD E-step on the GPU (conversion, device selection, GIL release, call into
// cuda/cpd.cu). Twin of cpp/bindings/bind_cpd.cpp: the same arguments (CUDA arrays instead of
// numpy arrays, plus a stream) and the same result dict.
#include <optional>

#include "cuda_bindings.hpp"

namespace xmodal::cuda_bind {
namespace {

// The output buffers of both E-steps (allocated on the current device) and their result dict (the
// keys of xmodal._core.cpd_estep with want_best=True).
template <class T>
struct Outputs {
    xmodal::cuda::DeviceBuffer P1, Pt1, PX, best, prob, log_s;
    std::int64_t N, M;
    int D;

    Outputs(std::int64_t N_, std::int64_t M_, int D_)
        : P1(sizeof(T) * M_, "cpd (cuda): P1"), Pt1(sizeof(T) * N_, "cpd (cuda): Pt1"),
          PX(sizeof(T) * M_ * D_, "cpd (cuda): PX"), best(sizeof(std::int64_t) * M_, "cpd (cuda): best_idx"),
          prob(sizeof(T) * M_, "cpd (cuda): best_prob"), log_s(sizeof(double) * N_, "cpd (cuda): log_s"), N(N_),
          M(M_), D(D_) {}

    T* p1() { return P1.as<T>(); }
    T* pt1() { return Pt1.as<T>(); }
    T* px() { return PX.as<T>(); }
    std::int64_t* best_idx() { return best.as<std::int64_t>(); }
    T* best_prob() { return prob.as<T>(); }
    double* log_s_ptr() { return log_s.as<double>(); }

    py::dict result(const xmodal::cpd::EStepStats& st) {
        py::dict out;
        out["P1"] = device_array<T>(std::move(P1), {M});
        out["Pt1"] = device_array<T>(std::move(Pt1), {N});
        out["PX"] = device_array<T>(std::move(PX), {M, D});
        out["best_idx"] = device_array<std::int64_t>(std::move(best), {M});
        out["best_prob"] = device_array<T>(std::move(prob), {M});
        out["log_s"] = device_array<double>(std::move(log_s), {N});
        out["log_s_sum"] = st.log_s_sum;
        out["pairs"] = st.pairs;
        out["empty_columns"] = st.empty_columns;
        out["shifted_columns"] = st.shifted_columns;
        out["grid_cells"] = st.grid_cells;
        out["cell_edge"] = st.cell_edge;
        return out;
    }
};

template <class T>
py::dict estep(const DeviceArg& X, const DeviceArg& TY, const std::optional<DeviceArg>& w, double sigma2, double c,
               double cutoff, std::uintptr_t stream, bool grid) {
    require_dtype<T>(TY, "moved");
    if (w) require_dtype<T>(*w, "weights");
    if (X.shape[1] != TY.shape[1]) throw value_error("cpd_estep: fixed and moved differ in dimension");
    if (X.shape[1] != 2 && X.shape[1] != 3)
        throw value_error("fixed: expected 2 or 3 columns, got " + std::to_string(X.shape[1]));
    const std::int64_t N = X.shape[0], M = TY.shape[0];
    const int D = static_cast<int>(X.shape[1]);
    if (w && w->shape[0] != M) throw value_error("weights: expected one weight per moving point");
    const int device = common_device({{&X, "fixed"}, {&TY, "moved"}, {w ? &*w : nullptr, "weights"}});
    std::optional<Outputs<T>> o;
    xmodal::cpd::EStepStats st;
    {
        py::gil_scoped_release release;
        xmodal::cuda::DeviceGuard guard(device);
        o.emplace(N, M, D);
        st = xmodal::cuda::cpd::estep<T>(reinterpret_cast<const T*>(X.ptr), N, reinterpret_cast<const T*>(TY.ptr), M, D,
                                         w ? reinterpret_cast<const T*>(w->ptr) : nullptr, sigma2, c, cutoff,
                                         o->p1(), o->pt1(), o->px(), o->best_idx(), o->best_prob(),
                                         o->log_s_ptr(), reinterpret_cast<cudaStream_t>(stream), grid);
    }
    return o->result(st);
}

template <class T>
py::dict estep_features(const DeviceArg& X, const DeviceArg& TY, const std::optional<DeviceArg>& w,
                        const DeviceArg& FX, const DeviceArg& FY, double feature_inv, double sigma2, double c,
                        double cutoff, std::uintptr_t stream, bool grid) {
    require_dtype<T>(TY, "moved");
    if (w) require_dtype<T>(*w, "weights");
    require_dtype<T>(FX, "fixed_features");
    require_dtype<T>(FY, "moved_features");
    if (X.shape[1] != TY.shape[1]) throw value_error("cpd_estep_features: fixed and moved differ in dimension");
    if (X.shape[1] != 2 && X.shape[1] != 3)
        throw value_error("fixed: expected 2 or 3 columns, got " + std::to_string(X.shape[1]));
    const std::int64_t N = X.shape[0], M = TY.shape[0];
    const int D = static_cast<int>(X.shape[1]);
    if (w && w->shape[0] != M) throw value_error("weights: expected one weight per moving point");
    if (FX.shape[0] != N) throw value_error("fixed_features: expected one row per fixed point");
    if (FY.shape[0] != M) throw value_error("moved_features: expected one row per moving point");
    if (FX.shape[1] != FY.shape[1] || FX.shape[1] < 1)
        throw value_error("fixed_features, moved_features: expected the same number (>= 1) of columns");
    const int F = static_cast<int>(FX.shape[1]);
    const int device = common_device({{&X, "fixed"}, {&TY, "moved"}, {w ? &*w : nullptr, "weights"},
                                      {&FX, "fixed_features"}, {&FY, "moved_features"}});
    std::optional<Outputs<T>> o;
    xmodal::cpd::EStepStats st;
    {
        py::gil_scoped_release release;
        xmodal::cuda::DeviceGuard guard(device);
        o.emplace(N, M, D);
        st = xmodal::cuda::cpd::estep_features<T>(
            reinterpret_cast<const T*>(X.ptr), N, reinterpret_cast<const T*>(TY.ptr), M, D,
            w ? reinterpret_cast<const T*>(w->ptr) : nullptr, reinterpret_cast<const T*>(FX.ptr),
            reinterpret_cast<const T*>(FY.ptr), F, feature_inv, sigma2, c, cutoff, o->p1(),
            o->pt1(), o->px(), o->best_idx(), o->best_prob(), o->log_s_ptr(),
            reinterpret_cast<cudaStream_t>(stream), grid);
    }
    return o->result(st);
}

template <class T>
py::dict grid_bins(const DeviceArg& X, const DeviceArg& TY, double sigma2, double cutoff, std::uintptr_t stream) {
    require_dtype<T>(TY, "moved");
    if (X.shape[1] != TY.shape[1] || (X.shape[1] != 2 && X.shape[1] != 3))
        throw value_error("cpd_grid_bins: fixed and moved must both have 2 or 3 columns");
    const std::int64_t N = X.shape[0], M = TY.shape[0];
    const int device = common_device({{&X, "fixed"}, {&TY, "moved"}});
    xmodal::cuda::cpd::GridBins b;
    {
        py::gil_scoped_release release;
        xmodal::cuda::DeviceGuard guard(device);
        b = xmodal::cuda::cpd::grid_bins<T>(reinterpret_cast<const T*>(X.ptr), N, reinterpret_cast<const T*>(TY.ptr), M,
                                            static_cast<int>(X.shape[1]), sigma2, cutoff,
                                            reinterpret_cast<cudaStream_t>(stream));
    }
    py::dict out;
    out["cells"] = b.cells;
    out["edge"] = b.edge;
    out["shape"] = py::make_tuple(b.shape[0], b.shape[1], b.shape[2]);
    if (b.cells > 0) {
        out["fixed_idx"] = device_array<std::int32_t>(std::move(b.fixed_idx), {N});
        out["fixed_start"] = device_array<std::int32_t>(std::move(b.fixed_start), {b.cells});
        out["fixed_end"] = device_array<std::int32_t>(std::move(b.fixed_end), {b.cells});
        out["moved_idx"] = device_array<std::int32_t>(std::move(b.moved_idx), {M});
        out["moved_start"] = device_array<std::int32_t>(std::move(b.moved_start), {b.cells});
        out["moved_end"] = device_array<std::int32_t>(std::move(b.moved_end), {b.cells});
    }
    return out;
}

}  // namespace

void register_cpd(py::module_& m) {
    m.def(
        "cpd_estep",
        [](py::object fixed, py::object moved, py::object weights, double sigma2, double c, double cutoff,
           std::uintptr_t stream, bool grid) {
            const DeviceArg X = device_arg(fixed, "fixed", 2), TY = device_arg(moved, "moved", 2);
            std::optional<DeviceArg> w;
            if (!weights.is_none()) w = device_arg(weights, "weights", 1);
            return with_float_type(X, "fixed", [&](auto t) {
                return estep<decltype(t)>(X, TY, w, sigma2, c, cutoff, stream, grid);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"),
        py::arg("stream") = 0, py::arg("grid") = true,
        "CPD E-step on C-contiguous CUDA arrays (one GPU; float32 or float64 after `fixed`, moved and weights "
        "of the same dtype), on `stream` (an address; 0: the default stream). `grid`: allow the cell-grid path "
        "(False: every pair, in index order). Returns the dict of xmodal._core.cpd_estep (want_best=True) with "
        "DeviceArrays.");
    m.def(
        "cpd_estep_features",
        [](py::object fixed, py::object moved, py::object weights, py::object fixed_features, py::object moved_features,
           double feature_inv, double sigma2, double c, double cutoff, std::uintptr_t stream, bool grid) {
            const DeviceArg X = device_arg(fixed, "fixed", 2), TY = device_arg(moved, "moved", 2);
            const DeviceArg FX = device_arg(fixed_features, "fixed_features", 2);
            const DeviceArg FY = device_arg(moved_features, "moved_features", 2);
            std::optional<DeviceArg> w;
            if (!weights.is_none()) w = device_arg(weights, "weights", 1);
            return with_float_type(X, "fixed", [&](auto t) {
                return estep_features<decltype(t)>(X, TY, w, FX, FY, feature_inv, sigma2, c, cutoff, stream, grid);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("fixed_features"), py::arg("moved_features"),
        py::arg("feature_inv"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"), py::arg("stream") = 0,
        py::arg("grid") = true,
        "CPD E-step with per-point features on C-contiguous CUDA arrays (all of the dtype of `fixed`): the kernel "
        "of cpd_estep times exp(-|f_n - g_m|^2 feature_inv); the dict of cpd_estep. Twin of "
        "xmodal._core.cpd_estep_features.");
    m.def(
        "cpd_grid_bins",
        [](py::object fixed, py::object moved, double sigma2, double cutoff, std::uintptr_t stream) {
            const DeviceArg X = device_arg(fixed, "fixed", 2), TY = device_arg(moved, "moved", 2);
            return with_float_type(X, "fixed", [&](auto t) { return grid_bins<decltype(t)>(X, TY, sigma2, cutoff, stream); });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("sigma2"), py::arg("cutoff"), py::arg("stream") = 0,
        "The E-step grid path's bins (tests): cells, edge, shape and per set the original indices in cell order "
        "and the per-cell [start, end) ranges (int32 DeviceArrays).");
}

}  // namespace xmodal::cuda_bind
