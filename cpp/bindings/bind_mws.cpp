// Bindings of the mutex watershed (checks, GIL release, calls; no algorithms here).
#include <array>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/mws.hpp"

namespace xmodal::bind {

namespace {

py::dict result(py::array_t<uint32_t> labels, const mws::Stats& s) {
    py::dict d;
    d["labels"] = labels;
    d["n_labels"] = s.n_labels;
    d["n_edges"] = s.n_edges;
    d["n_merges"] = s.n_merges;
    d["n_mutexes"] = s.n_mutexes;
    d["bytes_per_edge"] = s.bytes_per_edge;
    d["peak_bytes"] = s.peak_bytes;
    d["seconds_edges"] = s.seconds_edges;
    d["seconds_sort"] = s.seconds_sort;
    d["seconds_cluster"] = s.seconds_cluster;
    return d;
}

template <class T>
py::dict grid_mws(carray<T> affinities, carray<int64_t> offsets, int64_t n_attractive,
                   std::array<int64_t, 3> strides, bool randomize_strides, uint64_t seed,
                   bool invert, py::object mask, py::object seeds, py::object channel_strides,
                   py::object bias) {
    check_ndim(affinities, 4, "affinities");
    check_ndim(offsets, 2, "offsets");
    const int64_t C = affinities.shape(0);
    if (offsets.shape(0) != C || offsets.shape(1) != 3)
        throw value_error("offsets: expected shape (" + std::to_string(C) + ", 3), got (" +
                          std::to_string(offsets.shape(0)) + ", " +
                          std::to_string(offsets.shape(1)) + ")");
    mws::GridSpec spec;
    spec.shape = {affinities.shape(1), affinities.shape(2), affinities.shape(3)};
    spec.n_channels = C;
    spec.offsets = offsets.data();
    spec.n_attractive = n_attractive;
    spec.strides = strides;
    spec.randomize_strides = randomize_strides;
    spec.seed = seed;
    spec.invert = invert;
    const int64_t n = spec.shape[0] * spec.shape[1] * spec.shape[2];
    carray<uint8_t> mask_arr;
    carray<uint64_t> seeds_arr;
    if (!mask.is_none()) {
        mask_arr = mask.cast<carray<uint8_t>>();
        if (mask_arr.size() != n) throw value_error("mask: expected one value per voxel");
        spec.mask = mask_arr.data();
    }
    if (!seeds.is_none()) {
        seeds_arr = seeds.cast<carray<uint64_t>>();
        if (seeds_arr.size() != n) throw value_error("seeds: expected one value per voxel");
        spec.seeds = seeds_arr.data();
    }
    carray<int64_t> cstrides_arr;
    carray<double> bias_arr;
    if (!channel_strides.is_none()) {
        cstrides_arr = channel_strides.cast<carray<int64_t>>();
        check_ndim(cstrides_arr, 2, "strides");
        if (cstrides_arr.shape(0) != C || cstrides_arr.shape(1) != 3)
            throw value_error("strides: expected per-channel strides of shape (" + std::to_string(C) +
                              ", 3)");
        spec.channel_strides = cstrides_arr.data();
    }
    if (!bias.is_none()) {
        bias_arr = bias.cast<carray<double>>();
        if (bias_arr.ndim() != 1 || bias_arr.shape(0) != C)
            throw value_error("bias: expected one value per channel (" + std::to_string(C) + ")");
        spec.bias = bias_arr.data();
    }
    py::array_t<uint32_t> labels({spec.shape[0], spec.shape[1], spec.shape[2]});
    uint32_t* out = labels.mutable_data();
    const T* a = affinities.data();
    mws::Stats st;
    {
        py::gil_scoped_release release;
        st = mws::grid_mutex_watershed(a, spec, out);
    }
    return result(labels, st);
}

py::dict graph_mws(uint64_t n_nodes, carray<uint64_t> uv, carray<double> w, carray<uint64_t> muv,
                    carray<double> mw, py::object seeds) {
    check_ndim(uv, 2, "edges");
    check_ndim(muv, 2, "mutex_edges");
    if (uv.shape(1) != 2) throw value_error("edges: expected shape (n_edges, 2)");
    if (muv.shape(1) != 2) throw value_error("mutex_edges: expected shape (n_mutex, 2)");
    if (w.size() != uv.shape(0)) throw value_error("weights: expected one weight per edge");
    if (mw.size() != muv.shape(0))
        throw value_error("mutex_weights: expected one weight per mutex edge");
    carray<uint64_t> seeds_arr;
    const uint64_t* sp = nullptr;
    if (!seeds.is_none()) {
        seeds_arr = seeds.cast<carray<uint64_t>>();
        if (uint64_t(seeds_arr.size()) != n_nodes)
            throw value_error("seeds: expected one value per node");
        sp = seeds_arr.data();
    }
    py::array_t<uint32_t> labels(static_cast<py::ssize_t>(n_nodes));
    uint32_t* out = labels.mutable_data();
    mws::Stats st;
    {
        py::gil_scoped_release release;
        st = mws::graph_mutex_watershed(n_nodes, uv.data(), w.data(), uint64_t(uv.shape(0)),
                                        muv.data(), mw.data(), uint64_t(muv.shape(0)), sp, out);
    }
    return result(labels, st);
}

}  // namespace

void register_mws(py::module_& m) {
    m.def(
        "mws_grid",
        [](const py::array& affinities, carray<int64_t> offsets, int64_t n_attractive, std::array<int64_t, 3> strides,
           bool randomize_strides, uint64_t seed, bool invert, py::object mask, py::object seeds,
           py::object channel_strides, py::object bias) {
            return with_float_type(affinities, "affinities", [&](auto t) {
                using T = decltype(t);
                return grid_mws<T>(as_carray<T>(affinities, "affinities"), offsets, n_attractive, strides, randomize_strides,
                                   seed, invert, mask, seeds, channel_strides, bias);
            });
        },
        py::arg("affinities"), py::arg("offsets"), py::arg("n_attractive"), py::arg("strides"),
        py::arg("randomize_strides"), py::arg("seed"), py::arg("invert"), py::arg("mask"), py::arg("seeds"),
        py::arg("channel_strides") = py::none(), py::arg("bias") = py::none(),
        "Mutex watershed on a (C, Z, Y, X) float32 or float64 grid; returns a dict: labels (uint32) and the "
        "statistics (n_labels, n_edges, n_merges, n_mutexes, bytes_per_edge, peak_bytes, seconds_*).");
    m.def("mws_graph", &graph_mws, py::arg("n_nodes"), py::arg("edges"), py::arg("weights"),
          py::arg("mutex_edges"), py::arg("mutex_weights"), py::arg("seeds"),
          "Mutex watershed on a graph; returns a dict: labels (uint32) and the statistics.");
}

}  // namespace xmodal::bind
