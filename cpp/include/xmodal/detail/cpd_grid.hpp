// xmodal: the cell grid of the CUDA E-step's sparse path (cuda/cpd.cu), shared with the C++ tests
// (xmodal._core._testing replays the kernel's per-thread traversal on the CPU).
//
// With a finite support radius r = sqrt(2 sigma2 cutoff), a pair contributes to the E-step only
// when its squared distance is within r^2 (cpd_arith.hpp, in_support). Both point sets are binned
// into one uniform grid of cubic cells of edge at least r, so every pair within the support lies in
// the same or an adjacent cell (3^D cells per query). Each thread then visits those cells instead
// of every point of the other set: the same terms as the dense kernel (terms outside the support
// are 0 there), summed in cell order instead of index order, so the results agree to rounding, and
// the best match (largest value, smaller index among equal values) is the same.
//
// Robustness: the edge is r inflated by 1e-5 relative (a pair whose T-rounded squared distance
// passes the support test is at most a few T ulps beyond r), cell coordinates are computed in
// double from the T coordinates (exact) and clamped to the grid, and the grid spans both sets.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "xmodal/detail/hd.hpp"

namespace xmodal::cpd::grid {

struct Grid {
    double lo[3] = {0, 0, 0};  // lower corner (both sets)
    double inv = 0;            // 1 / cell edge
    int nc[3] = {1, 1, 1};     // cells per axis
    int dim = 3;
    std::int64_t cells = 0;    // total; 0: no grid (the dense kernel runs)
};

// Grid cell coordinate of value v along one axis (clamped: points on the upper face and rounding
// at the edges stay inside).
XM_HD int coord(double v, double lo, double inv, int nc) {
    const double t = (v - lo) * inv;
    if (!(t > 0.0)) return 0;
    if (t >= static_cast<double>(nc)) return nc - 1;
    return static_cast<int>(t);
}

template <class T>
XM_HD void coords(const Grid& g, const T* p, int* c) {
    for (int d = 0; d < g.dim; ++d) c[d] = coord(static_cast<double>(p[d]), g.lo[d], g.inv, g.nc[d]);
}

XM_HD std::int64_t cell_id(const Grid& g, const int* c) {
    std::int64_t id = c[0];
    for (int d = 1; d < g.dim; ++d) id = id * g.nc[d] + c[d];
    return id;
}

template <class T>
XM_HD std::int64_t cell_of(const Grid& g, const T* p) {
    int c[3] = {0, 0, 0};
    coords(g, p, c);
    return cell_id(g, c);
}

// Visit the points of every cell adjacent to (or equal to) cell coordinates c, in a fixed order
// (x-major over the 3^D block, then the cell's points in their sorted order): fn(j) for each
// sorted index j. start / end: per cell, the range of sorted indices (end == start: empty).
template <class Fn>
XM_HD std::int64_t for_each_near(const Grid& g, const int* c, const std::int32_t* start, const std::int32_t* end,
                                 Fn&& fn) {
    std::int64_t visited = 0;
    const int lo0 = c[0] > 0 ? c[0] - 1 : 0, hi0 = c[0] + 1 < g.nc[0] ? c[0] + 1 : g.nc[0] - 1;
    const int lo1 = c[1] > 0 ? c[1] - 1 : 0, hi1 = c[1] + 1 < g.nc[1] ? c[1] + 1 : g.nc[1] - 1;
    const int lo2 = g.dim == 3 ? (c[2] > 0 ? c[2] - 1 : 0) : 0;
    const int hi2 = g.dim == 3 ? (c[2] + 1 < g.nc[2] ? c[2] + 1 : g.nc[2] - 1) : 0;
    for (int a = lo0; a <= hi0; ++a)
        for (int b = lo1; b <= hi1; ++b)
            for (int e = lo2; e <= hi2; ++e) {
                const int cc[3] = {a, b, e};
                const std::int64_t id = cell_id(g, cc);
                const std::int32_t s = start[id], t = end[id];
                for (std::int32_t j = s; j < t; ++j) fn(j);
                visited += t - s;
            }
    return visited;
}

// The grid of a call (host). lo / hi: per-axis bounds of both sets; r2: the support radius
// squared (input units; +inf: no grid); points: N + M. The edge is at least the inflated radius
// and grows until the cell count is at most max(64, 2 points) (memory O(N + M)). No grid (cells
// 0) when it would have fewer than min_cells cells: with 3^D cells visited per query, the dense
// kernel is then about as cheap.
inline Grid make_grid(const double* lo, const double* hi, int D, double r2, std::int64_t points,
                      std::int64_t min_cells) {
    Grid g;
    g.dim = D;
    if (!(r2 > 0.0) || !std::isfinite(r2)) return g;
    double edge = std::sqrt(r2) * (1.0 + 1e-5);
    double span_max = 0.0;
    for (int d = 0; d < D; ++d) span_max = std::fmax(span_max, hi[d] - lo[d]);
    if (!(span_max > 0.0) || !std::isfinite(span_max)) return g;
    edge = std::fmax(edge, span_max * 1e-6);  // at most 10^6 cells along any axis
    const double cap = std::fmax(64.0, 2.0 * static_cast<double>(points));
    for (int iter = 0; iter < 200; ++iter) {
        double total = 1.0;
        for (int d = 0; d < D; ++d) total *= std::floor((hi[d] - lo[d]) / edge) + 1.0;
        if (total <= cap) break;
        edge *= 1.25;
    }
    std::int64_t total = 1;
    for (int d = 0; d < D; ++d) {
        g.lo[d] = lo[d];
        g.nc[d] = static_cast<int>(std::floor((hi[d] - lo[d]) / edge) + 1.0);
        total *= g.nc[d];
    }
    g.inv = 1.0 / edge;
    g.cells = total >= min_cells ? total : 0;
    return g;
}

// Cells below which the dense kernel runs: 4 x 3^D (a query visits at most a quarter of the
// other set on evenly spread points).
inline std::int64_t min_cells(int D) { return D == 3 ? 108 : 36; }

}  // namespace xmodal::cpd::grid
