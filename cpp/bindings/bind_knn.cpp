#include "bindings.hpp"

namespace xmodal::bind {

void register_knn(py::module_& m) { (void)m; }

}  // namespace xmodal::bind
