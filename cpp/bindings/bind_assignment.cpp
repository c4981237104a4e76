#include "bindings.hpp"

namespace xmodal::bind {

void register_assignment(py::module_& m) { (void)m; }

}  // namespace xmodal::bind
