#include "cuda_bindings.hpp"

namespace xmodal::cuda_bind {

void register_knn(py::module_& m) { (void)m; }

}  // namespace xmodal::cuda_bind
