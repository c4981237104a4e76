// Bindings of the stitching kernels (xmodal/stitch.hpp): checks, GIL release, calls.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.hpp"
#include "xmodal/stitch.hpp"

namespace xmodal::bind {
namespace {

using f32 = py::array_t<float, py::array::c_style>;

// (C, Z, Y, X) view of a C-contiguous float32 array of ndim 3 (C, Y, X) or 4 (C, Z, Y, X).
std::array<std::int64_t, 4> shape4(const py::array& a, const char* name) {
    if (a.ndim() != 3 && a.ndim() != 4)
        throw value_error(std::string(name) + ": expected a (C, Y, X) or (C, Z, Y, X) array, got " +
                          std::to_string(a.ndim()) + "-D");
    std::array<std::int64_t, 4> s{};
    if (a.ndim() == 3) {
        s = {a.shape(0), 1, a.shape(1), a.shape(2)};
    } else {
        s = {a.shape(0), a.shape(1), a.shape(2), a.shape(3)};
    }
    return s;
}

f32 writable_f32(const py::object& o, const char* name) {
    if (!py::isinstance<py::array>(o)) throw type_error(std::string(name) + ": expected a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(o);
    if (!a.dtype().equal(py::dtype::of<float>()))  // native float32 (written in place)
        throw type_error(std::string(name) + ": expected dtype float32, got " + std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style)) throw value_error(std::string(name) + ": expected a C-contiguous array");
    if (!a.writeable()) throw value_error(std::string(name) + ": array is read-only");
    return py::reinterpret_borrow<f32>(o);
}

// (z, y, x) from ndim values; a 2-D request gets z = `z2d` (0 for offsets, 1 for extents).
std::array<std::int64_t, 3> triple(const std::vector<std::int64_t>& v, int ndim, const char* name,
                                   std::int64_t z2d = 0) {
    if (static_cast<int>(v.size()) != ndim)
        throw value_error(std::string(name) + ": expected " + std::to_string(ndim) + " values, got " +
                          std::to_string(v.size()));
    if (ndim == 2) return {z2d, v[0], v[1]};
    return {v[0], v[1], v[2]};
}

}  // namespace

void register_stitch(py::module_& m) {
    m.def(
        "stitch_paste",
        [](py::object out_o, carray<float> tile, std::vector<std::int64_t> src_lo, std::vector<std::int64_t> dst_lo,
           std::vector<std::int64_t> extent) {
            f32 out = writable_f32(out_o, "out");
            if (out.ndim() != tile.ndim()) throw value_error("tile: must have the same ndim as out");
            const int nd = static_cast<int>(out.ndim()) - 1;
            auto os = shape4(out, "out"), ts = shape4(tile, "tile");
            auto s = triple(src_lo, nd, "src_lo"), d = triple(dst_lo, nd, "dst_lo"), e = triple(extent, nd, "extent", 1);
            float* po = out.mutable_data();
            const float* pt = tile.data();
            py::gil_scoped_release release;
            stitch::paste(po, os.data(), pt, ts.data(), s.data(), d.data(), e.data());
        },
        py::arg("out"), py::arg("tile"), py::arg("src_lo"), py::arg("dst_lo"), py::arg("extent"),
        "Copy tile[:, src_lo:src_lo+extent] into out[:, dst_lo:dst_lo+extent] (float32, C-contiguous).");
    m.def(
        "stitch_accumulate",
        [](py::object out_o, py::object wsum_o, carray<float> tile, std::vector<std::int64_t> offset,
           std::vector<carray<float>> weights) {
            f32 out = writable_f32(out_o, "out");
            f32 wsum = writable_f32(wsum_o, "wsum");
            if (out.ndim() != tile.ndim()) throw value_error("tile: must have the same ndim as out");
            const int nd = static_cast<int>(out.ndim()) - 1;
            if (wsum.ndim() != nd) throw value_error("wsum: must have the spatial shape of out");
            for (int a = 0; a < nd; ++a)
                if (wsum.shape(a) != out.shape(a + 1)) throw value_error("wsum: must have the spatial shape of out");
            if (static_cast<int>(weights.size()) != nd)
                throw value_error("weights: expected one 1-D weight array per spatial axis");
            for (int a = 0; a < nd; ++a)
                if (weights[a].ndim() != 1 || weights[a].shape(0) != tile.shape(a + 1))
                    throw value_error("weights: weight array " + std::to_string(a) + " must have the tile's extent");
            auto os = shape4(out, "out"), ts = shape4(tile, "tile");
            auto off = triple(offset, nd, "offset");
            const float one = 1.0f;
            const float* wz = nd == 2 ? &one : weights[0].data();
            const float* wy = weights[nd - 2].data();
            const float* wx = weights[nd - 1].data();
            float* po = out.mutable_data();
            float* pw = wsum.mutable_data();
            const float* pt = tile.data();
            py::gil_scoped_release release;
            stitch::accumulate(po, pw, os.data(), pt, ts.data(), off.data(), wz, wy, wx);
        },
        py::arg("out"), py::arg("wsum"), py::arg("tile"), py::arg("offset"), py::arg("weights"),
        "out[:, offset+p] += w(p) * tile[:, p]; wsum[offset+p] += w(p), w separable (one 1-D array per axis).");
    m.def(
        "stitch_normalize",
        [](py::object out_o, carray<float> wsum) {
            f32 out = writable_f32(out_o, "out");
            const int nd = static_cast<int>(out.ndim()) - 1;
            if (wsum.ndim() != nd) throw value_error("wsum: must have the spatial shape of out");
            for (int a = 0; a < nd; ++a)
                if (wsum.shape(a) != out.shape(a + 1)) throw value_error("wsum: must have the spatial shape of out");
            auto os = shape4(out, "out");
            float* po = out.mutable_data();
            const float* pw = wsum.data();
            py::gil_scoped_release release;
            stitch::normalize(po, pw, os.data());
        },
        py::arg("out"), py::arg("wsum"), "out[:, v] /= wsum[v] where wsum[v] > 0.");
}

}  // namespace xmodal::bind
