// xmodal._cuda: k-NN / radius graph on the GPU (conversion, device selection, GIL release, call
// into cuda/knn.cu). Twin of cpp/bindings/bind_knn.cpp: the same arguments (CUDA arrays instead of
// numpy arrays, plus a stream) and the same result dict.
#include "cuda_bindings.hpp"

namespace xmodal::cuda_bind {

void register_knn(py::module_& m) {
    m.def(
        "knn_graph",
        [](py::object a_obj, py::object b_obj, int k, double radius, bool symmetric, std::uintptr_t stream,
           const std::string& algorithm) {
            xmodal::cuda::KnnAlgorithm alg;
            if (algorithm == "auto")
                alg = xmodal::cuda::KnnAlgorithm::automatic;
            else if (algorithm == "brute")
                alg = xmodal::cuda::KnnAlgorithm::brute;
            else if (algorithm == "grid")
                alg = xmodal::cuda::KnnAlgorithm::grid;
            else
                throw value_error("algorithm: expected 'auto', 'brute' or 'grid', got '" + algorithm + "'");
            const DeviceArg a = device_arg(a_obj, "a", 2), b = device_arg(b_obj, "b", 2);
            require_dtype<double>(a, "a");
            require_dtype<double>(b, "b");
            if (a.shape[1] != b.shape[1])
                throw value_error("a, b: expected the same number of columns, got " + std::to_string(a.shape[1]) +
                                  " and " + std::to_string(b.shape[1]));
            const int device = common_device({{&a, "a"}, {&b, "b"}});
            xmodal::cuda::DeviceCsr g;
            xmodal::cuda::KnnInfo info;
            {
                py::gil_scoped_release release;
                xmodal::cuda::DeviceGuard guard(device);
                g = xmodal::cuda::knn_graph(reinterpret_cast<const double*>(a.ptr), a.shape[0],
                                            reinterpret_cast<const double*>(b.ptr), b.shape[0],
                                            static_cast<int>(a.shape[1]), k, radius, symmetric,
                                            reinterpret_cast<cudaStream_t>(stream), alg, &info);
            }
            py::dict out;
            out["indptr"] = device_array<std::int64_t>(std::move(g.indptr), {g.n_rows + 1});
            out["indices"] = device_array<std::int32_t>(std::move(g.indices), {g.nnz});
            out["data"] = device_array<double>(std::move(g.data), {g.nnz});
            auto path = [](xmodal::cuda::KnnPath p) -> py::object {
                if (p == xmodal::cuda::KnnPath::grid) return py::str("grid");
                if (p == xmodal::cuda::KnnPath::brute) return py::str("brute");
                return py::none();
            };
            out["algorithm"] = path(info.forward);
            out["algorithm_reverse"] = path(info.reverse);
            return out;
        },
        py::arg("a"), py::arg("b"), py::arg("k"), py::arg("radius"), py::arg("symmetric"), py::arg("stream") = 0,
        py::arg("algorithm") = "auto",
        "k-NN / radius graph between two float64 C-contiguous CUDA arrays (on one GPU), on `stream` (an "
        "address; 0: the default stream): dict of the CSR DeviceArrays indptr (int64), indices (int32), data "
        "(float64), and algorithm / algorithm_reverse: how the a -> b / b -> a search ran ('grid': uniform grid, "
        "'brute': brute force, None: not needed). k = 0: no k-NN part; radius < 0: no radius part. Any k. "
        "algorithm: 'auto' (the grid where it pays), 'brute' or 'grid' (the grid whenever one can be built; the "
        "graph is the same).");
}

}  // namespace xmodal::cuda_bind
