// Bindings of the region-graph segmentation kernels: GASP, region adjacency graph and edge
// statistics, seeded watershed (checks, GIL release, calls; no algorithms here).
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/gasp.hpp"
#include "xmodal/rag.hpp"
#include "xmodal/watershed.hpp"

namespace xmodal::bind {

namespace {

py::dict run_gasp(uint64_t n_nodes, carray<uint64_t> uv, carray<double> w, py::object sizes,
                   py::object mergeable, int linkage, bool cannot_link, uint64_t n_clusters_stop) {
    check_ndim(uv, 2, "edges");
    if (uv.shape(1) != 2) throw value_error("edges: expected shape (n_edges, 2)");
    const uint64_t E = uint64_t(uv.shape(0));
    if (uint64_t(w.size()) != E) throw value_error("weights: expected one weight per edge");
    if (linkage < 0 || linkage > 4) throw value_error("linkage: unknown linkage code");
    carray<double> sz;
    carray<uint8_t> mg;
    const double* sp = nullptr;
    const uint8_t* mp = nullptr;
    if (!sizes.is_none()) {
        sz = sizes.cast<carray<double>>();
        if (uint64_t(sz.size()) != E) throw value_error("edge_sizes: expected one size per edge");
        sp = sz.data();
    }
    if (!mergeable.is_none()) {
        mg = mergeable.cast<carray<uint8_t>>();
        if (uint64_t(mg.size()) != E) throw value_error("mergeable: expected one flag per edge");
        mp = mg.data();
    }
    gasp::Options opt;
    opt.linkage = static_cast<gasp::Linkage>(linkage);
    opt.cannot_link = cannot_link;
    opt.n_clusters_stop = n_clusters_stop;
    py::array_t<uint32_t> labels(static_cast<py::ssize_t>(n_nodes));
    uint32_t* out = labels.mutable_data();
    const uint64_t* up = uv.data();
    const double* wp = w.data();
    gasp::Stats st;
    {
        py::gil_scoped_release release;
        st = gasp::gasp(n_nodes, up, wp, sp, mp, E, opt, out);
    }
    py::dict d;
    d["labels"] = labels;
    d["n_clusters"] = st.n_clusters;
    d["n_merges"] = st.n_merges;
    d["n_constraints"] = st.n_constraints;
    d["n_pushes"] = st.n_pushes;
    d["n_duplicate_edges"] = st.n_duplicate_edges;
    d["n_rebuilds"] = st.n_rebuilds;
    d["seconds"] = st.seconds;
    return d;
}

rag::Shape shape3(const py::array& a) {
    check_ndim(a, 3, "labels");
    return {a.shape(0), a.shape(1), a.shape(2)};
}

const int64_t* offsets_ptr(const carray<int64_t>& o, int64_t& n, const char* name) {
    if (o.size() == 0) {
        n = 0;
        return nullptr;
    }
    if (o.ndim() != 2 || o.shape(1) != 3)
        throw value_error(std::string(name) + ": expected shape (n, 3)");
    n = o.shape(0);
    return o.data();
}

template <class L>
py::dict rag_build(carray<L> labels, bool ignore_active, uint64_t ignore_label,
                    carray<int64_t> offsets) {
    const rag::Shape s = shape3(labels);
    rag::Ignore ig{ignore_active, ignore_label};
    int64_t n_off = 0;
    const int64_t* op = offsets_ptr(offsets, n_off, "offsets");
    const L* lp = labels.data();
    rag::Graph g;
    {
        py::gil_scoped_release release;
        g = rag::build(lp, s, ig, op, n_off);
    }
    const py::ssize_t E = static_cast<py::ssize_t>(g.n_edges());
    py::array_t<uint64_t> uv = to_numpy(std::move(g.uv));
    uv.resize({E, py::ssize_t(2)});
    py::dict d;
    d["n_nodes"] = g.n_nodes;
    d["edges"] = uv;
    d["n_faces"] = to_numpy(std::move(g.n_faces));
    return d;
}

rag::Graph graph_from(uint64_t n_nodes, const carray<uint64_t>& uv) {
    check_ndim(uv, 2, "edges");
    if (uv.shape(1) != 2) throw value_error("edges: expected shape (n_edges, 2)");
    const uint64_t E = uint64_t(uv.shape(0));
    rag::Graph g;
    g.n_nodes = n_nodes;
    g.uv.assign(uv.data(), uv.data() + 2 * E);
    g.n_faces.assign(E, 0);
    g.row.assign(n_nodes + 1, 0);
    for (uint64_t e = 0; e < E; ++e) {
        const uint64_t u = g.uv[2 * e], v = g.uv[2 * e + 1];
        if (!(u < v && v < n_nodes))
            throw value_error("edges: expected u < v < n_nodes in every row, row " +
                              std::to_string(e) + " is (" + std::to_string(u) + ", " +
                              std::to_string(v) + ")");
        if (e > 0) {
            const uint64_t pu = g.uv[2 * e - 2], pv = g.uv[2 * e - 1];
            if (!(pu < u || (pu == u && pv < v)))
                throw value_error("edges: expected rows sorted lexicographically without repeats "
                                  "(as region_adjacency_graph returns them), row " +
                                  std::to_string(e));
        }
        ++g.row[u + 1];
    }
    for (uint64_t u = 0; u < n_nodes; ++u) g.row[u + 1] += g.row[u];
    return g;
}

template <class L, class T>
py::array_t<double> rag_boundary(carray<L> labels, bool ignore_active, uint64_t ignore_label,
                                 uint64_t n_nodes, carray<uint64_t> uv, carray<T> boundary,
                                 carray<double> quantiles) {
    const rag::Shape s = shape3(labels);
    if (boundary.ndim() != 3 || boundary.shape(0) != s[0] || boundary.shape(1) != s[1] ||
        boundary.shape(2) != s[2])
        throw value_error("boundaries: expected the shape of labels");
    rag::Graph g = graph_from(n_nodes, uv);
    const int64_t nq = quantiles.size();
    py::array_t<double> out({py::ssize_t(g.n_edges()), py::ssize_t(4 + nq)});
    double* op = out.mutable_data();
    const L* lp = labels.data();
    const T* bp = boundary.data();
    const double* qp = quantiles.data();
    {
        py::gil_scoped_release release;
        rag::boundary_features(lp, s, rag::Ignore{ignore_active, ignore_label}, g, bp, qp, nq, op);
    }
    return out;
}

template <class L, class T>
py::array_t<double> rag_affinity(carray<L> labels, bool ignore_active, uint64_t ignore_label,
                                 uint64_t n_nodes, carray<uint64_t> uv, carray<T> affinities,
                                 carray<int64_t> offsets, carray<double> quantiles) {
    const rag::Shape s = shape3(labels);
    check_ndim(affinities, 4, "affinities");
    if (affinities.shape(1) != s[0] || affinities.shape(2) != s[1] || affinities.shape(3) != s[2])
        throw value_error("affinities: expected spatial shape equal to the shape of labels");
    int64_t n_off = 0;
    const int64_t* op_off = offsets_ptr(offsets, n_off, "offsets");
    if (n_off != affinities.shape(0))
        throw value_error("offsets: expected one offset per affinity channel");
    rag::Graph g = graph_from(n_nodes, uv);
    const int64_t nq = quantiles.size();
    py::array_t<double> out({py::ssize_t(g.n_edges()), py::ssize_t(4 + nq)});
    double* op = out.mutable_data();
    const L* lp = labels.data();
    const T* ap = affinities.data();
    const double* qp = quantiles.data();
    {
        py::gil_scoped_release release;
        rag::affinity_features(lp, s, rag::Ignore{ignore_active, ignore_label}, g, ap, op_off,
                               n_off, qp, nq, op);
    }
    return out;
}

template <class T>
py::dict seeded_ws(carray<T> height, carray<uint32_t> seeds, py::object mask) {
    check_ndim(height, 3, "height");
    const watershed::Shape s{height.shape(0), height.shape(1), height.shape(2)};
    if (seeds.ndim() != 3 || seeds.shape(0) != s[0] || seeds.shape(1) != s[1] ||
        seeds.shape(2) != s[2])
        throw value_error("seeds: expected the shape of height");
    carray<uint8_t> m;
    const uint8_t* mp = nullptr;
    if (!mask.is_none()) {
        m = mask.cast<carray<uint8_t>>();
        if (m.size() != height.size()) throw value_error("mask: expected the shape of height");
        mp = m.data();
    }
    py::array_t<uint32_t> labels({s[0], s[1], s[2]});
    uint32_t* lp = labels.mutable_data();
    std::copy(seeds.data(), seeds.data() + seeds.size(), lp);
    const T* hp = height.data();
    uint64_t flooded = 0;
    {
        py::gil_scoped_release release;
        flooded = watershed::seeded_watershed(hp, s, mp, lp);
    }
    py::dict d;
    d["labels"] = labels;
    d["n_flooded"] = flooded;
    return d;
}

}  // namespace

// Run f(L{}) with L = uint32_t or uint64_t after the dtype of the label array `a`.
template <class F>
decltype(auto) with_label_type(const py::array& a, F&& f) {
    if (holds<uint32_t>(a.dtype())) return f(uint32_t{});
    if (holds<uint64_t>(a.dtype())) return f(uint64_t{});
    throw type_error("labels: expected uint32 or uint64 labels, got dtype " + std::string(py::str(a.dtype())));
}

void register_gasp(py::module_& m) {
    m.def("gasp", &run_gasp, py::arg("n_nodes"), py::arg("edges"), py::arg("weights"),
          py::arg("edge_sizes"), py::arg("mergeable"), py::arg("linkage"), py::arg("cannot_link"),
          py::arg("n_clusters_stop"),
          "GASP on a signed graph; linkage 0 sum, 1 mean, 2 max, 3 min, 4 abs_max. "
          "Returns a dict: labels (uint32) and the statistics.");
    m.def(
        "rag_build",
        [](const py::array& labels, bool ignore_active, uint64_t ignore_label, carray<int64_t> offsets) {
            return with_label_type(labels, [&](auto l) {
                using L = decltype(l);
                return rag_build<L>(as_carray<L>(labels, "labels"), ignore_active, ignore_label, offsets);
            });
        },
        py::arg("labels"), py::arg("ignore_active"), py::arg("ignore_label"), py::arg("offsets"),
        "Region adjacency graph of (Z, Y, X) uint32 or uint64 labels; returns a dict: n_nodes, edges "
        "(E, 2) uint64, n_faces.");
    m.def(
        "rag_boundary_features",
        [](const py::array& labels, bool ignore_active, uint64_t ignore_label, uint64_t n_nodes,
           carray<uint64_t> uv, const py::array& boundaries, carray<double> quantiles) {
            return with_label_type(labels, [&](auto l) {
                using L = decltype(l);
                return with_float_type(boundaries, "boundaries", [&](auto t) {
                    using T = decltype(t);
                    return rag_boundary<L, T>(as_carray<L>(labels, "labels"), ignore_active, ignore_label, n_nodes,
                                              uv, as_carray<T>(boundaries, "boundaries"), quantiles);
                });
            });
        },
        py::arg("labels"), py::arg("ignore_active"), py::arg("ignore_label"), py::arg("n_nodes"), py::arg("edges"),
        py::arg("boundaries"), py::arg("quantiles"),
        "Edge statistics of a boundary map: (E, 4 + n_quantiles) mean, min, max, q..., count.");
    m.def(
        "rag_affinity_features",
        [](const py::array& labels, bool ignore_active, uint64_t ignore_label, uint64_t n_nodes,
           carray<uint64_t> uv, const py::array& affinities, carray<int64_t> offsets, carray<double> quantiles) {
            return with_label_type(labels, [&](auto l) {
                using L = decltype(l);
                return with_float_type(affinities, "affinities", [&](auto t) {
                    using T = decltype(t);
                    return rag_affinity<L, T>(as_carray<L>(labels, "labels"), ignore_active, ignore_label, n_nodes,
                                              uv, as_carray<T>(affinities, "affinities"), offsets, quantiles);
                });
            });
        },
        py::arg("labels"), py::arg("ignore_active"), py::arg("ignore_label"), py::arg("n_nodes"), py::arg("edges"),
        py::arg("affinities"), py::arg("offsets"), py::arg("quantiles"),
        "Edge statistics of affinities: (E, 4 + n_quantiles) mean, min, max, q..., count.");
    m.def(
        "seeded_watershed",
        [](const py::array& height, carray<uint32_t> seeds, py::object mask) {
            return with_float_type(height, "height", [&](auto t) {
                using T = decltype(t);
                return seeded_ws<T>(as_carray<T>(height, "height"), seeds, mask);
            });
        },
        py::arg("height"), py::arg("seeds"), py::arg("mask"),
        "Seeded watershed on a (Z, Y, X) float32 or float64 height map; returns a dict: labels (uint32), "
        "n_flooded.");
}

}  // namespace xmodal::bind
