// Helpers shared by the pybind11 binding files of xmodal._cuda.
//
// Each capability has one binding file (bind_<name>.cpp) defining register_<name>(module).
// Device buffers arrive from Python as integer addresses (from __cuda_array_interface__ or
// DLPack, unpacked in python/xmodal/_device.py); bindings check sizes, release the GIL and call
// the kernels of cuda/*.cu.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "xmodal/common.hpp"
#include "xmodal_cuda.hpp"

namespace xmodal::cuda_bind {

namespace py = pybind11;

void register_knn(py::module_& m);
void register_cpd(py::module_& m);
void register_mws(py::module_& m);
void register_stitch(py::module_& m);

}  // namespace xmodal::cuda_bind
