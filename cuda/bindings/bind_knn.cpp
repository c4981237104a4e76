// xmodal._cuda: k-NN / radius graph on the GPU (checks, GIL release, call into cuda/knn.cu).
// Device arrays arrive as integer addresses; the result buffers are returned as owner objects
// (KnnDeviceBuffer) that free their memory when the last Python reference goes away, so cupy can
// wrap them without a copy.
#include <cmath>
#include <memory>
#include <string>

#include "cuda_bindings.hpp"
#include "xmodal/knn.hpp"

namespace xmodal::cuda_bind {
namespace {

struct KnnDeviceBuffer {
    void* ptr = nullptr;
    std::size_t nbytes = 0;
    int device = 0;
    KnnDeviceBuffer(void* p, std::size_t n, int d) : ptr(p), nbytes(n), device(d) {}
    KnnDeviceBuffer(const KnnDeviceBuffer&) = delete;
    KnnDeviceBuffer& operator=(const KnnDeviceBuffer&) = delete;
    ~KnnDeviceBuffer() { xmodal::cuda::free_device(ptr); }
};

}  // namespace

void register_knn(py::module_& m) {
    py::class_<KnnDeviceBuffer, std::shared_ptr<KnnDeviceBuffer>>(m, "KnnDeviceBuffer")
        .def_property_readonly("ptr", [](const KnnDeviceBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.ptr); })
        .def_property_readonly("nbytes", [](const KnnDeviceBuffer& b) { return b.nbytes; })
        .def_property_readonly("device", [](const KnnDeviceBuffer& b) { return b.device; });
    m.attr("knn_max_k") = xmodal::cuda::kKnnMaxK;
    m.def(
        "knn_graph",
        [](std::uintptr_t a_ptr, std::int64_t na, std::uintptr_t b_ptr, std::int64_t nb, int dim, int k,
           double radius, bool symmetric, int device) {
            if (na < 0 || nb < 0) throw value_error("a, b: negative point counts");
            if (dim < 1 || dim > xmodal::cuda::kKnnMaxDim)
                throw value_error("a: expected 1 to 8 columns, got " + std::to_string(dim));
            if (k < 0 || k > xmodal::cuda::kKnnMaxK)
                throw value_error("k: the CUDA k-NN graph supports 0 <= k <= " +
                                  std::to_string(xmodal::cuda::kKnnMaxK) + ", got " + std::to_string(k));
            if (std::isnan(radius)) throw value_error("radius: NaN");
            if (k == 0 && radius < 0) throw value_error("k, radius: give k > 0 and/or radius >= 0");
            if ((na > 0 && a_ptr == 0) || (nb > 0 && b_ptr == 0)) throw value_error("a, b: null device pointer");
            xmodal::cuda::DeviceCsr g;
            {
                py::gil_scoped_release release;
                g = xmodal::cuda::knn_graph_device(reinterpret_cast<const double*>(a_ptr), na,
                                                   reinterpret_cast<const double*>(b_ptr), nb, dim, k, radius,
                                                   symmetric, device);
            }
            auto indptr = std::make_shared<KnnDeviceBuffer>(g.indptr, sizeof(std::int64_t) * (g.n_rows + 1), device);
            auto indices = std::make_shared<KnnDeviceBuffer>(g.indices, sizeof(std::int32_t) * g.nnz, device);
            auto data = std::make_shared<KnnDeviceBuffer>(g.data, sizeof(double) * g.nnz, device);
            return py::make_tuple(indptr, indices, data, g.nnz);
        },
        py::arg("a_ptr"), py::arg("na"), py::arg("b_ptr"), py::arg("nb"), py::arg("dim"), py::arg("k"),
        py::arg("radius"), py::arg("symmetric"), py::arg("device"),
        "k-NN / radius graph of two float64 C-contiguous device arrays (addresses). Returns "
        "(indptr int64, indices int32, data float64) as KnnDeviceBuffer owners, and nnz.");
}

}  // namespace xmodal::cuda_bind
