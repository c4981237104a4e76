#include "bindings.hpp"

namespace xmodal::bind {

void register_cpd(py::module_& m) { (void)m; }

}  // namespace xmodal::bind
