#include "bindings.hpp"

namespace xmodal::bind {

void register_mws(py::module_& m) { (void)m; }

}  // namespace xmodal::bind
