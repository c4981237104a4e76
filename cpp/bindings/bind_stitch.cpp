#include "bindings.hpp"

namespace xmodal::bind {

void register_stitch(py::module_& m) { (void)m; }

}  // namespace xmodal::bind
