// xmodal._core: k-NN / radius graph (checks, GIL release, call into cpp/src/knn.cpp).
#include <cmath>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "xmodal/knn.hpp"

namespace xmodal::bind {
namespace {


}  // namespace

void register_knn(py::module_& m) {
    m.def(
        "knn_graph",
        [](carray<double> a, carray<double> b, int k, double radius, bool symmetric) {
            check_ndim(a, 2, "a");
            check_ndim(b, 2, "b");
            if (a.shape(1) != b.shape(1))
                throw value_error("a, b: expected the same number of columns, got " + std::to_string(a.shape(1)) +
                                  " and " + std::to_string(b.shape(1)));
            if (a.shape(1) < 1 || a.shape(1) > 8)
                throw value_error("a: expected 1 to 8 columns, got " + std::to_string(a.shape(1)));
            if (k < 0) throw value_error("k: expected >= 0, got " + std::to_string(k));
            if (std::isnan(radius)) throw value_error("radius: NaN");
            if (k == 0 && radius < 0) throw value_error("k, radius: give k > 0 and/or radius >= 0");
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
            return py::make_tuple(to_numpy(std::move(g.indptr)), to_numpy(std::move(g.indices)),
                                  to_numpy(std::move(g.data)));
        },
        py::arg("a"), py::arg("b"), py::arg("k"), py::arg("radius"), py::arg("symmetric"),
        "CSR (indptr int64, indices int32, data float64) of the k-NN / radius graph between a and b. "
        "k = 0: no k-NN part; radius < 0: no radius part.");
}

}  // namespace xmodal::bind
