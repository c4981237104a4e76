// Bindings of the MALIS edge weights (checks, GIL release, calls; no algorithms here).
#include <string>

#include "bindings.hpp"
#include "xmodal/malis.hpp"

namespace xmodal::bind {

namespace {

template <class T>
py::dict malis_weights(const py::array& affinities_in, const py::array& targets_in, py::object mask_in) {
    auto aff = as_carray<T>(affinities_in, "affinities");
    auto tgt = as_carray<uint8_t>(targets_in, "targets");
    const int ndim = int(aff.ndim()) - 1;
    if (ndim < 1 || ndim > 3)
        throw value_error("affinities: expected a (ndim, *spatial) array with ndim 1, 2 or 3, got " +
                          std::to_string(aff.ndim()) + "-D");
    if (aff.shape(0) != ndim)
        throw value_error("affinities: expected " + std::to_string(ndim) + " channels (one per axis) for " +
                          std::to_string(ndim) + "-D data, got " + std::to_string(aff.shape(0)));
    for (int i = 0; i < int(aff.ndim()); ++i)
        if (tgt.ndim() != aff.ndim() || tgt.shape(i) != aff.shape(i))
            throw value_error("targets: expected the shape of affinities");
    carray<uint8_t> mask;
    const uint8_t* mp = nullptr;
    if (!mask_in.is_none()) {
        mask = as_carray<uint8_t>(mask_in, "mask");
        for (int i = 0; i < int(aff.ndim()); ++i)
            if (mask.ndim() != aff.ndim() || mask.shape(i) != aff.shape(i))
                throw value_error("mask: expected the shape of affinities");
        mp = mask.data();
    }
    malis::Shape shape{1, 1, 1};
    for (int i = 0; i < ndim; ++i) shape[size_t(3 - ndim + i)] = aff.shape(i + 1);
    std::vector<py::ssize_t> dims(aff.shape(), aff.shape() + aff.ndim());
    py::array_t<double> wp(dims), wn(dims);
    double* pp = wp.mutable_data();
    double* pn = wn.mutable_data();
    const T* ap = aff.data();
    const uint8_t* tp = tgt.data();
    malis::Stats st;
    {
        py::gil_scoped_release release;
        st = malis::weights(ap, tp, mp, shape, ndim, pp, pn);
    }
    py::dict d;
    d["weight_positive"] = wp;
    d["weight_negative"] = wn;
    d["pairs_positive"] = st.pairs_positive;
    d["pairs_negative"] = st.pairs_negative;
    d["n_objects"] = st.n_objects;
    d["n_edges"] = st.n_edges;
    return d;
}

}  // namespace

void register_malis(py::module_& m) {
    m.def(
        "malis_weights",
        [](const py::array& affinities, const py::array& targets, py::object mask) {
            return with_float_type(affinities, "affinities", [&](auto t) {
                return malis_weights<decltype(t)>(affinities, targets, mask);
            });
        },
        py::arg("affinities"), py::arg("targets"), py::arg("mask") = py::none(),
        "MALIS weights of the nearest-neighbour edges (see xmodal.models.malis_weights).");
}

}  // namespace xmodal::bind
