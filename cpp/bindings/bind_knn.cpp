// xmodal._core: k-NN / radius graph (conversion, GIL release, call into cpp/src/knn.cpp).
#include <utility>

#include "bindings.hpp"
#include "xmodal/knn.hpp"

namespace xmodal::bind {

void register_knn(py::module_& m) {
    m.def(
        "knn_graph",
        [](carray<double> a, carray<double> b, int k, double radius, bool symmetric) {
            check_ndim(a, 2, "a");
            check_ndim(b, 2, "b");
            if (a.shape(1) != b.shape(1))
                throw value_error("a, b: expected the same number of columns, got " + std::to_string(a.shape(1)) +
                                  " and " + std::to_string(b.shape(1)));
            const double* pa = a.data();
            const double* pb = b.data();
            const auto na = static_cast<std::int64_t>(a.shape(0));
            const auto nb = static_cast<std::int64_t>(b.shape(0));
            const int dim = static_cast<int>(a.shape(1));
            xmodal::CsrGraph g;
            {
                py::gil_scoped_release release;
                g = xmodal::knn_graph(pa, na, pb, nb, dim, k, radius, symmetric);
            }
            py::dict out;
            out["indptr"] = to_numpy(std::move(g.indptr));
            out["indices"] = to_numpy(std::move(g.indices));
            out["data"] = to_numpy(std::move(g.data));
            return out;
        },
        py::arg("a"), py::arg("b"), py::arg("k"), py::arg("radius"), py::arg("symmetric"),
        "k-NN / radius graph between a and b (float64): dict of the CSR arrays indptr (int64), indices "
        "(int32), data (float64). k = 0: no k-NN part; radius < 0: no radius part.");
}

}  // namespace xmodal::bind
