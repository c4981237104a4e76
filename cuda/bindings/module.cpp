// The module xmodal._cuda: thin bindings over the CUDA kernels in cuda/*.cu (declared in
// cuda/xmodal_cuda.hpp). Built only when CMake finds a CUDA toolkit; importing it never requires a
// GPU (calls report "no CUDA device" as RuntimeError).
#include "cuda_bindings.hpp"

namespace py = pybind11;

namespace xmodal::cuda_bind {

DeviceArg device_arg(const py::handle& obj, const char* name, int ndim) {
    if (!py::hasattr(obj, "__cuda_array_interface__"))
        throw type_error(std::string(name) + ": expected a CUDA array (an object with __cuda_array_interface__), got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
    py::dict cai = obj.attr("__cuda_array_interface__");
    DeviceArg a;
    for (auto s : cai["shape"].cast<py::tuple>()) a.shape.push_back(s.cast<std::int64_t>());
    a.typestr = cai["typestr"].cast<std::string>();
    a.ptr = cai["data"].cast<py::tuple>()[0].cast<std::uintptr_t>();
    if (ndim >= 0 && static_cast<int>(a.shape.size()) != ndim)
        throw value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                          std::to_string(a.shape.size()) + "-D");
    if (cai.contains("mask") && !cai["mask"].is_none())
        throw value_error(std::string(name) + ": masked CUDA arrays are not supported");
    if (cai.contains("strides") && !cai["strides"].is_none()) {
        const auto strides = cai["strides"].cast<std::vector<std::int64_t>>();
        const std::int64_t item = a.typestr.size() >= 3 ? std::stoll(a.typestr.substr(2)) : 0;
        std::int64_t expect = item;
        for (std::size_t d = a.shape.size(); d-- > 0;) {
            if (a.shape[d] > 1 && strides.at(d) != expect)
                throw value_error(std::string(name) + ": expected a C-contiguous array");
            expect *= a.shape[d];
        }
    }
    if (a.size() > 0 && a.ptr == 0) throw value_error(std::string(name) + ": null device pointer");
    return a;
}

int common_device(const std::vector<std::pair<const DeviceArg*, const char*>>& args) {
    int device = -1;
    std::string first;
    for (const auto& [a, name] : args) {
        if (!a || a->size() == 0) continue;
        const int d = xmodal::cuda::pointer_device(reinterpret_cast<const void*>(a->ptr), name);
        if (device >= 0 && d != device)
            throw value_error(first + ", " + name + ": expected arrays on the same GPU, got devices " +
                              std::to_string(device) + " and " + std::to_string(d));
        if (device < 0) {
            device = d;
            first = name;
        }
    }
    if (device < 0) xmodal::cuda::check(static_cast<int>(cudaGetDevice(&device)), "cudaGetDevice");
    return device;
}

void register_device_array(py::module_& m) {
    py::class_<DeviceArray>(m, "DeviceArray",
                            "Device memory owned by this object (freed with it); wrap it with cupy.asarray or "
                            "torch.as_tensor (no copy) through __cuda_array_interface__.")
        .def_property_readonly("__cuda_array_interface__",
                               [](const DeviceArray& a) {
                                   py::dict d;
                                   d["shape"] = py::tuple(py::cast(a.shape));
                                   d["typestr"] = a.typestr;
                                   d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(a.buffer->get()), false);
                                   d["strides"] = py::none();
                                   d["version"] = 3;
                                   return d;
                               })
        .def_property_readonly("shape", [](const DeviceArray& a) { return py::tuple(py::cast(a.shape)); })
        .def_property_readonly("typestr", [](const DeviceArray& a) { return a.typestr; })
        .def_property_readonly("device", [](const DeviceArray& a) { return a.buffer->device(); });
}

}  // namespace xmodal::cuda_bind

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

    xmodal::cuda_bind::register_device_array(m);
    xmodal::cuda_bind::register_knn(m);
    xmodal::cuda_bind::register_cpd(m);
}
