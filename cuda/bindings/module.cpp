// The module xmodal._cuda: thin bindings over the CUDA kernels in cuda/*.cu.
// Built only when CMake finds a CUDA toolkit; importing it never requires a GPU.
#include "cuda_bindings.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "xmodal CUDA kernels. Internal: use the xmodal package API.";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const xmodal::type_error& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        }
    });
    m.attr("cuda_version") = XMODAL_CUDA_VERSION;
    m.def("devices", []() {
        py::list out;
        for (const auto& d : xmodal::cuda::devices()) {
            py::dict e;
            e["index"] = d.index;
            e["name"] = d.name;
            e["compute_capability"] = py::make_tuple(d.major, d.minor);
            e["total_memory"] = d.total_memory;
            e["multiprocessors"] = d.multiprocessors;
            out.append(e);
        }
        return out;
    }, "Visible CUDA devices as a list of dicts (empty without a driver or GPU).");
    m.def("driver_version", &xmodal::cuda::driver_version);
    m.def("runtime_version", &xmodal::cuda::runtime_version);

    xmodal::cuda_bind::register_knn(m);
    xmodal::cuda_bind::register_cpd(m);
    xmodal::cuda_bind::register_mws(m);
    xmodal::cuda_bind::register_stitch(m);
}
