// xmodal: the one rule that maps a coordinate to a cell of a regular grid, shared by the cell grids
// of the exact CPD E-step (cpp/src/cpd.cpp) and of the fast one (cpp/src/cpd_fast.cpp).
#pragma once

#include <cmath>
#include <cstdint>

namespace xmodal::detail {

// Cell index along one axis of a grid with origin lo, cell edge h > 0 and n >= 1 cells, of the
// coordinate v: floor((v - lo) / h) clamped to [0, n - 1] (0 when n == 1).
inline std::int64_t clamped_cell(double v, double lo, double h, std::int64_t n) {
    if (n == 1) return 0;
    double c = std::floor((v - lo) / h);
    if (c < 0) c = 0;
    if (c > (double)(n - 1)) c = (double)(n - 1);
    return (std::int64_t)c;
}

}  // namespace xmodal::detail
