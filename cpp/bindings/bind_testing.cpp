// xmodal._core._testing: the CUDA kernels' per-thread arithmetic, run on the CPU (tests only).
//
// cuda/cpd.cu and cuda/knn.cu compute every output with the XM_HD functions of
// xmodal/detail/cpd_arith.hpp and knn_arith.hpp: one GPU thread per point, the other set visited
// tile by tile in index order. The emulations below run the same functions in the same order on
// the CPU, so the tests (tests/test_cuda_arith.py) compare the GPU's arithmetic with the CPU
// kernels on any machine. What they do not cover: the tiling and launch code of the .cu files,
// and the device's libm (log/log1p/exp in finish_column, last-place differences).
// knn_graph_grid_emulation runs cuda/knn.cu's other k-NN path, the uniform-grid search of
// xmodal/detail/knn_grid.hpp (binning, load refinement, ring search, both visitors), the same way.
#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "testing_common.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal/detail/knn_arith.hpp"
#include "xmodal/detail/knn_grid.hpp"

namespace xmodal::bind {
namespace {

namespace ca = xmodal::cpd::arith;
namespace ka = xmodal::knn::arith;
namespace kg = xmodal::knn::grid;

// ------------------------------------------------------------------ CPD E-step, GPU algorithm
struct EmuStats {
    double log_s_sum = 0;
    int64_t empty = 0, shifted = 0, pairs = 0;
};

template <class T, int D>
EmuStats emulate_estep(const T* X, int64_t N, const T* TY, int64_t M, const T* w, double sigma2, double c,
                       double cutoff, T* P1, T* Pt1, T* PX, int64_t* best, T* prob, double* log_s) {
    const ca::Scalars<T> sc = ca::estep_scalars<T>(sigma2, cutoff);
    const bool may = ca::may_shift(sc.r2, sc.inv);
    std::vector<T> g(N), h(N);
    std::vector<char> empty(N), shifted(N);
    for (int64_t n = 0; n < N; ++n) {  // pass 1: one thread per fixed point
        ca::FixedPoint<T, D> fp(&X[n * D], sc.inv, sc.r2);
        for (int64_t m = 0; m < M; ++m) fp.visit(&TY[m * D], w ? w[m] : T(1));
        if (fp.start_shift(may))
            for (int64_t m = 0; m < M; ++m) fp.visit_shifted(&TY[m * D], w ? w[m] : T(1));
        const ca::Column col = fp.finish(c);
        g[n] = static_cast<T>(col.g);
        h[n] = fp.h;
        Pt1[n] = static_cast<T>(col.pt);
        log_s[n] = col.log_s;
        empty[n] = col.empty;
        shifted[n] = fp.shift;
    }
    for (int64_t m = 0; m < M; ++m) {  // pass 2: one thread per moving point
        ca::MovingPoint<T, D> mp(&TY[m * D], sc.inv, sc.r2);
        for (int64_t n = 0; n < N; ++n) mp.visit(&X[n * D], g[n], h[n], n);
        ca::finish_moving<T, D>(w ? static_cast<double>(w[m]) : 1.0, mp.s0, mp.cs, mp.best_n, mp.best_v, &P1[m],
                                &PX[m * D], &best[m], &prob[m]);
    }
    const LaneStats ls = gpu_statistics(log_s, empty, shifted, N);  // the GPU's one-block reduction
    return {ls.log_s_sum, ls.empty, ls.shifted, ca::dense_pairs(N, M, ls.shifted)};
}

template <class T>
py::dict estep_emulation(const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights,
                         double sigma2, double c, double cutoff) {
    const EStepInputs<T> in(fixed, moved, weights, "cpd_estep_gpu_emulation");
    const carray<T>&X = in.X, &TY = in.TY;
    const int64_t N = in.N, M = in.M;
    const int D = in.D;
    ca::check_estep_args(N, M, D, sigma2, c, cutoff);
    py::array_t<T> P1(M), Pt1(N), PX({M, static_cast<int64_t>(D)}), prob(M);
    py::array_t<int64_t> best(M);
    py::array_t<double> log_s(N);
    EmuStats st;
    auto run = [&](const auto* x, const auto* y, const auto* wp, auto* p1, auto* pt1, auto* px, auto* pb) {
        using U = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
        if (D == 2)
            st = emulate_estep<U, 2>(x, N, y, M, wp, sigma2, c, cutoff, p1, pt1, px, best.mutable_data(), pb,
                                     log_s.mutable_data());
        else
            st = emulate_estep<U, 3>(x, N, y, M, wp, sigma2, c, cutoff, p1, pt1, px, best.mutable_data(), pb,
                                     log_s.mutable_data());
    };
    const T* wp = in.wp;
    bool via_double = false;
    if constexpr (sizeof(T) == sizeof(float)) via_double = ca::float_needs_double(sigma2, cutoff);
    if (via_double) {  // as both devices: float64 on converted copies, rounded back
        std::vector<double> x(X.data(), X.data() + N * D), y(TY.data(), TY.data() + M * D), wd;
        if (wp) wd.assign(wp, wp + M);
        std::vector<double> p1(M), pt1(N), px(M * D), pb(M);
        run(x.data(), y.data(), wp ? wd.data() : static_cast<const double*>(nullptr), p1.data(), pt1.data(),
            px.data(), pb.data());
        std::copy(p1.begin(), p1.end(), P1.mutable_data());
        std::copy(pt1.begin(), pt1.end(), Pt1.mutable_data());
        std::copy(px.begin(), px.end(), PX.mutable_data());
        std::copy(pb.begin(), pb.end(), prob.mutable_data());
    } else {
        run(X.data(), TY.data(), wp, P1.mutable_data(), Pt1.mutable_data(), PX.mutable_data(), prob.mutable_data());
    }
    return estep_result(P1, Pt1, PX, best, prob, log_s, st.log_s_sum, st.pairs, st.empty, st.shifted);
}

// ------------------------------------------------------------------ k-NN graph, GPU algorithm
// Per query the k best by (d2, index) and the radius count (knn::arith::Query over every
// reference point in index order), keys row * nb + col sorted and made unique, distances
// sqrt(dist2) of each kept pair: the steps of cuda/knn.cu.
py::dict knn_emulation(carray<double> a, carray<double> b, int k, double radius, bool symmetric) {
    check_ndim(a, 2, "a");
    check_ndim(b, 2, "b");
    const int64_t na = a.shape(0), nb = b.shape(0);
    const int dim = static_cast<int>(a.shape(1));
    if (b.shape(1) != dim) throw value_error("a, b: expected the same number of columns");
    ka::check_args(na, nb, dim, k, radius);
    const double r2 = radius >= 0.0 ? radius * radius : -1.0;
    const int kb = static_cast<int>(std::min<int64_t>(k, nb)), ka_ = static_cast<int>(std::min<int64_t>(k, na));
    std::vector<int64_t> keys;
    auto select = [&](const double* q, int64_t nq, const double* p, int64_t np, int kk, double rr, bool reverse) {
        // the GPU's scratch layout: entry t of query i at t * nq + i
        std::vector<double> bd(static_cast<size_t>(std::max<int64_t>(kk * nq, 1)));
        std::vector<int32_t> bi(bd.size());
        for (int64_t i = 0; i < nq; ++i) {
            ka::Query qu(&q[i * dim], dim, kk, rr, bd.data() + i, bi.data() + i, nq);
            for (int64_t j = 0; j < np; ++j) qu.visit(&p[j * dim], static_cast<int32_t>(j));
            for (int t = 0; t < qu.size; ++t) {
                const int64_t other = bi[static_cast<size_t>(t * nq + i)];
                keys.push_back(reverse ? other * nb + i : i * nb + other);
            }
            if (rr >= 0.0)  // radius pairs, in ascending column order
                for (int64_t j = 0; j < np; ++j)
                    if (ka::in_radius(ka::dist2(&q[i * dim], &p[j * dim], dim), rr)) keys.push_back(i * nb + j);
        }
    };
    if (na > 0 && nb > 0) {
        select(a.data(), na, b.data(), nb, kb, r2, false);
        if (symmetric && ka_ > 0) select(b.data(), nb, a.data(), na, ka_, -1.0, true);
    }
    py::dict out = csr_from_keys(keys, a.data(), b.data(), na, nb, dim);
    return out;
}

// ------------------------------------------------------------------ k-NN graph, GPU grid search
// The steps of cuda/knn.cu's grid path on the CPU: per direction the grid over the reference
// points (bounding box, knn::grid::make_grid, points sorted by cell id, cell starts, grid_pays),
// queries in cell order, knn::grid::search with the kernels' visitors; then the keys as above.
struct EmuGrid {
    kg::Grid g;
    bool use = false;
    std::vector<int32_t> start, ids;
    std::vector<double> pts;
};

EmuGrid emu_build_grid(const double* p, int64_t np, int dim, int k, double r2, int64_t nq, const std::string& alg,
                       double cell_size, const double* box) {
    EmuGrid out;
    if (alg == "brute" || np <= 0 || nq <= 0) return out;
    double lo[kg::kMaxDim], hi[kg::kMaxDim];
    for (int d = 0; d < dim; ++d) {
        lo[d] = box ? box[d] : p[d];
        hi[d] = box ? box[dim + d] : p[d];
        if (!box)
            for (int64_t t = 1; t < np; ++t) {
                lo[d] = std::min(lo[d], p[t * dim + d]);
                hi[d] = std::max(hi[d], p[t * dim + d]);
            }
    }
    out.g = kg::make_grid(lo, hi, dim, np, k, r2, cell_size);
    if (!out.g.valid) return out;
    double sum_sq = 0;
    for (int iter = 0;; ++iter) {  // as the kernels: bin, measure the load, refine at most twice
        std::vector<uint32_t> key(static_cast<size_t>(np));
        for (int64_t t = 0; t < np; ++t) key[t] = static_cast<uint32_t>(kg::cell_id(out.g, p + t * dim));
        out.ids.resize(static_cast<size_t>(np));
        for (int64_t t = 0; t < np; ++t) out.ids[t] = static_cast<int32_t>(t);
        std::stable_sort(out.ids.begin(), out.ids.end(), [&](int32_t x, int32_t y) { return key[x] < key[y]; });
        out.start.assign(static_cast<size_t>(out.g.cells) + 1, 0);
        sum_sq = 0;
        int64_t pos = 0;
        for (int64_t c = 0; c <= out.g.cells; ++c) {
            while (pos < np && static_cast<int64_t>(key[out.ids[pos]]) < c) ++pos;
            out.start[c] = static_cast<int32_t>(pos);
            if (c > 0) sum_sq += static_cast<double>(out.start[c] - out.start[c - 1]) * (out.start[c] - out.start[c - 1]);
        }
        if (iter == 2 || cell_size > 0) break;
        const double h = kg::refined_cell_size(out.g, sum_sq, np, k, r2);
        if (!(h > 0)) break;
        const kg::Grid finer = kg::make_grid(lo, hi, dim, np, k, r2, h);
        if (!finer.valid) break;
        out.g = finer;
    }
    out.use = alg == "grid" || kg::grid_pays(out.g, nq, np, sum_sq);
    if (out.use) {
        out.pts.resize(static_cast<size_t>(np * dim));
        for (int64_t t = 0; t < np; ++t)
            for (int d = 0; d < dim; ++d) out.pts[t * dim + d] = p[static_cast<int64_t>(out.ids[t]) * dim + d];
    }
    return out;
}

std::vector<int32_t> emu_query_order(const kg::Grid& g, const double* q, int64_t nq) {
    std::vector<uint32_t> key(static_cast<size_t>(nq));
    std::vector<int32_t> order(static_cast<size_t>(nq));
    for (int64_t t = 0; t < nq; ++t) {
        key[t] = static_cast<uint32_t>(kg::cell_id(g, q + t * g.dim));
        order[t] = static_cast<int32_t>(t);
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return key[x] < key[y]; });
    return order;
}

template <int DIM>
void emu_grid_select(const EmuGrid& eg, const std::vector<int32_t>& order, const double* q, int kk, double rr,
                     int64_t nb, bool reverse, std::vector<int64_t>& keys, kg::SearchStats& stats) {
    const int dim = eg.g.dim;
    std::vector<double> bd(static_cast<size_t>(std::max(kk, 1)));
    std::vector<int32_t> bi(bd.size());
    for (const int32_t i : order) {
        const double* qi = q + static_cast<int64_t>(i) * dim;
        kg::KnnVisitor<DIM> v(qi, dim, kk, rr, eg.pts.data(), eg.ids.data(), bd.data(), bi.data(), 1);
        kg::search<DIM>(eg.g, eg.start.data(), qi, v, &stats);
        for (int t = 0; t < v.size; ++t) keys.push_back(reverse ? int64_t(bi[t]) * nb + i : int64_t(i) * nb + bi[t]);
        if (rr >= 0.0) {  // the second pass: the radius pairs into exactly v.count slots
            std::vector<int64_t> slots(static_cast<size_t>(v.count) + 1, -1);
            kg::RadiusVisitor<DIM> rv{qi, dim, rr, eg.pts.data(), eg.ids.data(), int64_t(i) * nb, slots.data(), 0,
                                      v.count};
            kg::search<DIM>(eg.g, eg.start.data(), qi, rv);
            if (rv.out != v.count || slots[static_cast<size_t>(v.count)] != -1)
                throw std::runtime_error("knn grid emulation: radius passes disagree");
            keys.insert(keys.end(), slots.begin(), slots.end() - 1);
        }
    }
}

py::dict knn_grid_emulation(carray<double> a, carray<double> b, int k, double radius, bool symmetric,
                            const std::string& algorithm, double cell_size, const std::optional<py::array>& box) {
    check_ndim(a, 2, "a");
    check_ndim(b, 2, "b");
    const int64_t na = a.shape(0), nb = b.shape(0);
    const int dim = static_cast<int>(a.shape(1));
    if (b.shape(1) != dim) throw value_error("a, b: expected the same number of columns");
    ka::check_args(na, nb, dim, k, radius);
    if (algorithm != "auto" && algorithm != "brute" && algorithm != "grid")
        throw value_error("algorithm: expected 'auto', 'brute' or 'grid', got '" + algorithm + "'");
    carray<double> bx;
    if (box) {
        bx = as_carray<double>(*box, "box");
        if (bx.ndim() != 2 || bx.shape(0) != 2 || bx.shape(1) != dim)
            throw value_error("box: expected shape (2, d): the grid's lower and upper corners");
    }
    const double r2 = radius >= 0.0 ? radius * radius : -1.0;
    const int kb = static_cast<int>(std::min<int64_t>(k, nb)), ka_ = static_cast<int>(std::min<int64_t>(k, na));
    std::vector<int64_t> keys;
    kg::SearchStats stats;
    py::object path_fwd = py::none(), path_rev = py::none();
    int64_t cells = 0;
    double h = 0;
    // one direction: the grid search when used, else brute force as knn_emulation
    auto direction = [&](const double* q, int64_t nq, const double* p, int64_t np, int kk, double rr, bool reverse) {
        EmuGrid eg = emu_build_grid(p, np, dim, kk, rr, nq, algorithm, cell_size, box ? bx.data() : nullptr);
        if (!reverse) {
            cells = eg.g.valid ? eg.g.cells : 0;
            h = eg.g.h;
        }
        if (eg.use) {
            const std::vector<int32_t> order = emu_query_order(eg.g, q, nq);
            if (dim == 3)
                emu_grid_select<3>(eg, order, q, kk, rr, nb, reverse, keys, stats);
            else if (dim == 2)
                emu_grid_select<2>(eg, order, q, kk, rr, nb, reverse, keys, stats);
            else
                emu_grid_select<0>(eg, order, q, kk, rr, nb, reverse, keys, stats);
            return py::object(py::str("grid"));
        }
        std::vector<double> bd(static_cast<size_t>(std::max(kk, 1)));
        std::vector<int32_t> bi(bd.size());
        for (int64_t i = 0; i < nq; ++i) {
            ka::Query qu(&q[i * dim], dim, kk, rr, bd.data(), bi.data(), 1);
            for (int64_t j = 0; j < np; ++j) qu.visit(&p[j * dim], static_cast<int32_t>(j));
            stats.points += np;
            for (int t = 0; t < qu.size; ++t) keys.push_back(reverse ? int64_t(bi[t]) * nb + i : i * nb + bi[t]);
            if (rr >= 0.0)
                for (int64_t j = 0; j < np; ++j)
                    if (ka::in_radius(ka::dist2(&q[i * dim], &p[j * dim], dim), rr)) keys.push_back(i * nb + j);
        }
        return py::object(py::str("brute"));
    };
    if (na > 0 && nb > 0) {
        path_fwd = direction(a.data(), na, b.data(), nb, kb, r2, false);
        if (symmetric && ka_ > 0) path_rev = direction(b.data(), nb, a.data(), na, ka_, -1.0, true);
    }
    py::dict out = csr_from_keys(keys, a.data(), b.data(), na, nb, dim);
    out["algorithm"] = path_fwd;
    out["algorithm_reverse"] = path_rev;
    out["cells_visited"] = stats.cells;
    out["points_visited"] = stats.points;
    out["grid_cells"] = cells;
    out["cell_size"] = h;
    return out;
}

template <class T>
py::array_t<T> exp_neg_array(const py::array& x) {
    auto a = as_carray<T>(x, "x");
    py::array_t<T> out(a.size());
    T* o = out.mutable_data();
    for (py::ssize_t i = 0; i < a.size(); ++i) o[i] = ca::exp_neg(a.data()[i]);
    return out;
}

}  // namespace

void register_testing(py::module_& m) {
    py::module_ t = m.def_submodule(
        "_testing", "The CUDA kernels' arithmetic (xmodal/detail/*_arith.hpp) run on the CPU. Tests only.");
    t.def(
        "cpd_estep_gpu_emulation",
        [](const py::array& fixed, const py::array& moved, const std::optional<py::array>& weights, double sigma2,
           double c, double cutoff) {
            return with_float_type(fixed, "fixed", [&](auto tag) {
                return estep_emulation<decltype(tag)>(fixed, moved, weights, sigma2, c, cutoff);
            });
        },
        py::arg("fixed"), py::arg("moved"), py::arg("weights"), py::arg("sigma2"), py::arg("c"), py::arg("cutoff"),
        "The CUDA E-step's per-thread arithmetic on the CPU: the dict of cpd_estep (want_best=True).");
    t.def("knn_graph_gpu_emulation", &knn_emulation, py::arg("a"), py::arg("b"), py::arg("k"), py::arg("radius"),
          py::arg("symmetric"), "The CUDA k-NN graph's arithmetic on the CPU: the dict of knn_graph.");
    t.def("knn_graph_grid_emulation", &knn_grid_emulation, py::arg("a"), py::arg("b"), py::arg("k"),
          py::arg("radius"), py::arg("symmetric"), py::arg("algorithm") = "grid", py::arg("cell_size") = 0.0,
          py::arg("box") = py::none(),
          "The CUDA k-NN graph's grid path on the CPU (knn/detail/knn_grid.hpp): the dict of knn_graph plus "
          "algorithm / algorithm_reverse ('grid', 'brute' or None), cells_visited and points_visited (summed over "
          "queries and directions; brute force counts every point), grid_cells and cell_size of the a -> b grid. "
          "algorithm: 'grid' (whenever a grid can be built), 'auto' (the kernels' choice) or 'brute'; cell_size > 0 "
          "forces the cell side; box (2, d) replaces the reference points' bounding box (points outside fall into "
          "the unbounded border cells).");
    t.def(
        "exp_neg",
        [](const py::array& x) -> py::object {
            return with_float_type(x, "x", [&](auto tag) -> py::object { return exp_neg_array<decltype(tag)>(x); });
        },
        py::arg("x"), "The E-step's exp(x) for x <= 0 (float32 or float64), elementwise on a flat copy.");
    t.def(
        "finish_column",
        [](double S, double e, double c) {
            const ca::Column col = ca::finish_column(S, e, c);
            py::dict out;
            out["g"] = col.g;
            out["pt"] = col.pt;
            out["log_s"] = col.log_s;
            out["empty"] = col.empty;
            return out;
        },
        py::arg("S"), py::arg("e"), py::arg("c"), "The E-step's denominator of one fixed point.");
    register_testing_cpd_grid(t);
}

}  // namespace xmodal::bind
