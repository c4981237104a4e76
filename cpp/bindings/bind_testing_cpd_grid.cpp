// xmodal._core._testing.cpd_estep_grid_emulation: the grid path of the CUDA E-step (cuda/cpd.cu,
// grid_passes) replayed on the CPU, step by step: the same grid (make_grid over both sets), both
// sets sorted by cell with a stable sort (as CUB's radix sort), one "thread" per point in cell order
// visiting the 3^D cells around it (for_each_near), the same per-point arithmetic
// (FixedPoint, MovingPoint, finish_column, finish_moving) and the same output placement. The tests
// compare it with the dense emulation and with the CPU kernel on any machine.
#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

#include "bindings.hpp"
#include "testing_common.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal/detail/cpd_grid.hpp"

namespace xmodal::bind {
namespace {

namespace ca = xmodal::cpd::arith;
namespace cg = xmodal::cpd::grid;

// One set sorted by cell: sorted coordinates and weights, original indices, per-cell ranges.
template <class T, int D>
struct Sorted {
    std::vector<T> pts, wts;
    std::vector<std::int32_t> idx, start, end;
};

template <class T, int D>
Sorted<T, D> sort_by_cell(const T* P, const T* w, int64_t n, const cg::Grid& g) {
    Sorted<T, D> s;
    std::vector<std::int64_t> key(n);
    for (int64_t i = 0; i < n; ++i) key[i] = cg::cell_of(g, &P[i * D]);
    s.idx.resize(n);
    std::iota(s.idx.begin(), s.idx.end(), 0);
    std::stable_sort(s.idx.begin(), s.idx.end(), [&](std::int32_t a, std::int32_t b) { return key[a] < key[b]; });
    s.start.assign(g.cells, 0);
    s.end.assign(g.cells, 0);
    s.pts.resize(n * D);
    s.wts.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        const std::int64_t k = key[s.idx[i]];
        if (i == 0 || key[s.idx[i - 1]] != k) s.start[k] = static_cast<std::int32_t>(i);
        if (i == n - 1 || key[s.idx[i + 1]] != k) s.end[k] = static_cast<std::int32_t>(i + 1);
        for (int d = 0; d < D; ++d) s.pts[i * D + d] = P[static_cast<int64_t>(s.idx[i]) * D + d];
        s.wts[i] = w ? w[s.idx[i]] : T(1);
    }
    return s;
}

template <class T, int D>
py::dict emulate(const T* X, int64_t N, const T* TY, int64_t M, const T* w, double sigma2, double c, double cutoff) {
    double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
    for (int d = 0; d < D; ++d) {
        lo[d] = hi[d] = static_cast<double>(X[d]);
        for (int64_t n = 0; n < N; ++n) {
            lo[d] = std::min(lo[d], static_cast<double>(X[n * D + d]));
            hi[d] = std::max(hi[d], static_cast<double>(X[n * D + d]));
        }
        for (int64_t m = 0; m < M; ++m) {
            lo[d] = std::min(lo[d], static_cast<double>(TY[m * D + d]));
            hi[d] = std::max(hi[d], static_cast<double>(TY[m * D + d]));
        }
    }
    const cg::Grid grid = cg::make_grid(lo, hi, D, 2.0 * sigma2 * cutoff, N + M, cg::min_cells(D));
    if (grid.cells == 0) throw value_error("cpd grid emulation: no grid for these points and sigma2 (dense path)");
    const ca::Scalars<T> sc = ca::estep_scalars<T>(sigma2, cutoff);
    const bool may = ca::may_shift(sc.r2, sc.inv);
    const Sorted<T, D> sx = sort_by_cell<T, D>(X, nullptr, N, grid);
    const Sorted<T, D> sy = sort_by_cell<T, D>(TY, w, M, grid);
    py::array_t<T> P1(M), Pt1(N), PX({M, static_cast<int64_t>(D)}), prob(M);
    py::array_t<int64_t> best(M);
    py::array_t<double> log_s(N);
    std::vector<T> gs(N), hs(N);
    std::vector<char> empty(N), shifted(N);
    std::int64_t pairs = 0;
    for (int64_t i = 0; i < N; ++i) {  // pass 1: one thread per fixed point, in cell order
        const T* q = &sx.pts[i * D];
        ca::FixedPoint<T, D> fp(q, sc.inv, sc.r2);
        int cc[3] = {0, 0, 0};
        cg::coords(grid, q, cc);
        pairs += cg::for_each_near(grid, cc, sy.start.data(), sy.end.data(),
                                   [&](std::int32_t j) { fp.visit(&sy.pts[j * D], sy.wts[j]); });
        if (fp.start_shift(may))
            pairs += cg::for_each_near(grid, cc, sy.start.data(), sy.end.data(),
                                       [&](std::int32_t j) { fp.visit_shifted(&sy.pts[j * D], sy.wts[j]); });
        const ca::Column col = fp.finish(c);
        const int64_t n = sx.idx[i];
        gs[i] = static_cast<T>(col.g);
        hs[i] = fp.h;
        Pt1.mutable_data()[n] = static_cast<T>(col.pt);
        log_s.mutable_data()[n] = col.log_s;
        empty[n] = col.empty;
        shifted[n] = fp.shift;
    }
    for (int64_t i = 0; i < M; ++i) {  // pass 2: one thread per moving point, in cell order
        const T* q = &sy.pts[i * D];
        const double a = static_cast<double>(sy.wts[i]);
        ca::MovingPoint<T, D> mp(q, sc.inv, sc.r2);
        if (a > 0) {
            int cc[3] = {0, 0, 0};
            cg::coords(grid, q, cc);
            pairs += cg::for_each_near(grid, cc, sx.start.data(), sx.end.data(), [&](std::int32_t j) {
                mp.visit(&sx.pts[j * D], gs[j], hs[j], static_cast<std::int64_t>(sx.idx[j]));
            });
        }
        const int64_t m = sy.idx[i];
        ca::finish_moving<T, D>(a, mp.s0, mp.cs, mp.best_n, mp.best_v, &P1.mutable_data()[m],
                                &PX.mutable_data()[m * D], &best.mutable_data()[m], &prob.mutable_data()[m]);
    }
    const LaneStats ls = gpu_statistics(log_s.data(), empty, shifted, N);  // the GPU's one-block reduction
    py::dict out = estep_result(P1, Pt1, PX, best, prob, log_s, ls.log_s_sum, pairs, ls.empty, ls.shifted);
    out["grid_cells"] = grid.cells;
    out["grid_shape"] = py::make_tuple(grid.nc[0], grid.nc[1], D == 3 ? grid.nc[2] : 1);
    out["cell_edge"] = 1.0 / grid.inv;
    return out;
}

template <class T>
py::dict grid_emulation(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                        double sigma2, double c, double cutoff) {
    const EStepInputs<T> in(fixed, moved, weights, "cpd_estep_grid_emulation");
    ca::check_estep_args(in.N, in.M, in.D, sigma2, c, cutoff);
    if constexpr (sizeof(T) == sizeof(float))
        if (ca::float_needs_double(sigma2, cutoff))
            throw value_error("cpd grid emulation: float32 with this sigma2 runs in float64 (not emulated here)");
    return in.D == 2 ? emulate<T, 2>(in.X.data(), in.N, in.TY.data(), in.M, in.wp, sigma2, c, cutoff)
                     : emulate<T, 3>(in.X.data(), in.N, in.TY.data(), in.M, in.wp, sigma2, c, cutoff);
}

}  // namespace

void register_testing_cpd_grid(py::module_& t) {
    t.def(
        "cpd_estep_grid_emulation",
        [](const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights, double sigma2,
           double c, double cutoff) {
            return with_float_type(fixed, "fixed", [&](auto tag) {
                return grid_emulation<decltype(tag)>(fixed, moved, weights, sigma2, c, cutoff);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"),
        "The CUDA E-step's grid path on the CPU: the dict of cpd_estep (want_best=True) plus grid_cells, "
        "grid_shape and cell_edge. ValueError when the GPU would take the dense path.");
}

}  // namespace xmodal::bind
