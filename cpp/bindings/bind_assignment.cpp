// xmodal._core: sparse exact assignment (conversion, GIL release, call into cpp/src/assignment.cpp).
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "xmodal/assignment.hpp"

namespace xmodal::bind {
namespace {


// The kernel's view of the three arrays (the kernel validates it once, lengths included).
xmodal::CsrRef csr_ref(std::int64_t n_rows, std::int64_t n_cols, const carray<std::int64_t>& indptr,
                       const carray<std::int32_t>& indices, const carray<double>& cost) {
    check_ndim(indptr, 1, "indptr");
    check_ndim(indices, 1, "indices");
    check_ndim(cost, 1, "cost");
    xmodal::CsrRef g;
    g.n_rows = n_rows;
    g.n_cols = n_cols;
    g.indptr = indptr.data();
    g.indptr_size = indptr.shape(0);
    g.indices = indices.data();
    g.indices_size = indices.shape(0);
    g.cost = cost.data();
    g.cost_size = cost.shape(0);
    return g;
}

py::dict to_dict(xmodal::AssignmentOutput&& o) {
    py::dict d;
    d["col_of_row"] = to_numpy(std::move(o.col_of_row));
    d["searches"] = o.searches;
    d["warm_matched"] = o.warm_matched;
    d["scanned"] = o.scanned;
    d["over_capacity"] = o.over_capacity;
    d["scaling_phases"] = o.scaling_phases;
    d["failed_row"] = o.failed_row;
    d["hall_rows"] = to_numpy(std::move(o.hall_rows));
    d["hall_cols"] = to_numpy(std::move(o.hall_cols));
    return d;
}

}  // namespace

void register_assignment(py::module_& m) {
    m.def(
        "sparse_assignment",
        [](std::int64_t n_rows, std::int64_t n_cols, carray<std::int64_t> indptr, carray<std::int32_t> indices,
           carray<double> cost, py::object unmatched_cost) {
            const xmodal::CsrRef g = csr_ref(n_rows, n_cols, indptr, indices, cost);
            const bool partial = !unmatched_cost.is_none();
            const double u = partial ? unmatched_cost.cast<double>() : 0.0;
            xmodal::AssignmentOutput o;
            {
                py::gil_scoped_release release;
                o = partial ? xmodal::assignment_unmatched(g, u) : xmodal::assignment_all_rows(g);
            }
            return to_dict(std::move(o));
        },
        py::arg("n_rows"), py::arg("n_cols"), py::arg("indptr"), py::arg("indices"), py::arg("cost"),
        py::arg("unmatched_cost") = py::none(),
        "Exact min-cost assignment on a CSR graph: all rows matched (n_rows <= n_cols), or partial with "
        "unmatched_cost. Returns a dict (col_of_row, searches, warm_matched, scanned, failed_row, hall_rows, "
        "hall_cols).");
    m.def(
        "partial_dummy_cost",
        [](double unmatched_cost, double cmin, double cmax, std::int64_t max_pairs) {
            return xmodal::partial_dummy_cost(unmatched_cost, cmin, cmax, max_pairs);
        },
        py::arg("unmatched_cost"), py::arg("cmin"), py::arg("cmax"), py::arg("max_pairs"),
        "Dummy-column cost of the partial assignment for unmatched cost u and kept costs in [cmin, cmax]: "
        "2u, or a smaller value with the same optima when 2u exceeds every useful cost difference.");
    m.def(
        "cover_assignment",
        [](std::int64_t n_rows, std::int64_t n_cols, carray<std::int64_t> indptr, carray<std::int32_t> indices,
           carray<double> cost, std::int64_t max_per_target, bool warm_start, int scaling) {
            const xmodal::CsrRef g = csr_ref(n_rows, n_cols, indptr, indices, cost);
            xmodal::AssignmentOutput o;
            {
                py::gil_scoped_release release;
                o = max_per_target <= 0 ? xmodal::cover_assignment(g)
                                        : xmodal::cover_assignment_capacity(g, max_per_target, warm_start, scaling);
            }
            return to_dict(std::move(o));
        },
        py::arg("n_rows"), py::arg("n_cols"), py::arg("indptr"), py::arg("indices"), py::arg("cost"),
        py::arg("max_per_target") = 0, py::arg("warm_start") = true, py::arg("scaling") = -1,
        "Exact cover (many-to-one) assignment; max_per_target <= 0: unlimited. col_of_row is indexed by the "
        "larger side and holds the smaller-side partner. With max_per_target, over_capacity counts the units "
        "above it in the uncapacitated optimum (0: not binding; -1: not measured); warm_start=False starts the "
        "flow solver from every point on its cheapest partner instead of that optimum (a reference for tests). "
        "scaling: -1 (default) takes the cost-scaling route when the repairs run long, 0 never, 1 at once (tests); "
        "scaling_phases: its phases when it gave the result (negative: given up).");
}

}  // namespace xmodal::bind
