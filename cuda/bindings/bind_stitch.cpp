#include "cuda_bindings.hpp"

namespace xmodal::cuda_bind {

void register_stitch(py::module_& m) { (void)m; }

}  // namespace xmodal::cuda_bind
