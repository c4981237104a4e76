// xmodal: exact minimum-cost assignment on sparse bipartite graphs.
//
// Graphs are CSR (CsrRef): rows 0..n_rows-1, column indices in 0..n_cols-1 (int32), one double
// cost per edge; a missing edge is a forbidden pair. Every entry point validates its graph once,
// in full (array lengths, indptr, column range, finite costs), before reading it: callers (the
// binding, python/xmodal/matching) only convert arrays and never re-check.
//
// Algorithm: successive shortest augmenting paths with column potentials (Jonker-Volgenant /
// Hungarian dual), Dijkstra with a binary heap over the sparse graph, warm-started by row
// reduction (each row takes its cheapest free column on a tight edge). Every search is
// sequential and ordered by (distance, column index), so results are deterministic.
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal {

// A CSR graph with the lengths of the arrays that hold it.
struct CsrRef {
    std::int64_t n_rows = 0, n_cols = 0;
    const std::int64_t* indptr = nullptr;   // indptr_size entries; must be n_rows + 1
    std::int64_t indptr_size = 0;
    const std::int32_t* indices = nullptr;  // indices_size entries, >= indptr[n_rows]
    std::int64_t indices_size = 0;
    const double* cost = nullptr;           // cost_size entries, == indices_size
    std::int64_t cost_size = 0;
};

// The validation every entry point runs (value_error naming `who` and the first bad entry).
void check_csr(const CsrRef& g, const char* who);

struct AssignmentOutput {
    // Solver orientation: col_of_row[i] is the column matched to row i, -1 when unmatched.
    std::vector<std::int32_t> col_of_row;
    std::int64_t searches = 0;     // Dijkstra searches (one per row not matched by the warm start)
    std::int64_t warm_matched = 0;  // rows matched by the warm start
    std::int64_t scanned = 0;       // columns finalised over all searches
    // Capacitated cover: units above max_per_target in the uncapacitated optimum (0: the capacity
    // does not bind and that optimum is returned; -1: not measured).
    std::int64_t over_capacity = 0;
    // Capacitated cover: phases of the cost-scaling route when it gave the result (0: not taken;
    // negative: taken and given up, the result comes from the repairs).
    std::int64_t scaling_phases = 0;
    // Infeasible problems: failed_row >= 0 and hall_rows / hall_cols hold a Hall violator:
    // |hall_rows| = |hall_cols| + 1 and every edge of hall_rows ends in hall_cols.
    std::int32_t failed_row = -1;
    std::vector<std::int32_t> hall_rows, hall_cols;
};

// Match every row to a distinct column (n_rows <= n_cols) at minimum total cost.
AssignmentOutput assignment_all_rows(const CsrRef& g);

// Partial matching: every row and every column may stay unmatched at `unmatched_cost` (u) each.
// Objective sum c_ij + u * (#unmatched rows + #unmatched columns) = sum c_ij + 2u * #unmatched rows
// + u * (n_cols - n_rows). Solved as the rectangular problem n_rows x (n_cols + n_rows) where every
// row is matched, to a real column at its real cost c_ij (never shifted by u, so no cancellation)
// or to its own dummy column at partial_dummy_cost(u, ...) (2u, or a smaller value with the same
// optima when 2u exceeds every useful cost difference). Edges costing more than 2u are never
// optimal and are dropped. Always feasible; exact for any finite u.
// col_of_row has n_rows entries (real columns or -1).
AssignmentOutput assignment_unmatched(const CsrRef& g, double unmatched_cost);

// Dummy cost used by assignment_unmatched for unmatched cost u, given the smallest and largest kept
// cost (cmin <= cmax <= 2u) and max_pairs = an upper bound on the size of any matching (>= 1):
// min(2u, B + margin) with B = cmax + (max_pairs - 1) * (cmax - cmin), margin = cmax - cmin, or
// more when that is near the rounding of the label sums (1 when all costs are 0). When 2u > B every optimum has maximum cardinality
// (an augmenting path changes the matched cost by at most B and saves 2u), so both dummy costs
// give the same optima; the smaller one keeps all labels at the scale of the costs.
double partial_dummy_cost(double unmatched_cost, double cmin, double cmax, std::int64_t max_pairs);

// Cover matching (many-to-one): every point of the larger side (rows when n_rows >= n_cols) is
// matched to exactly one point of the smaller side, and every point of the smaller side to at least
// one. Exact via the reduction: cost = sum_i min_j c_ij + (one-to-one matching saturating the
// smaller side with reduced costs c_ij - min_j c_ij); the larger-side points left out of that
// matching take their cheapest neighbour (lowest index on ties).
// Returns, for every point of the larger side, its partner (col_of_row is indexed by the larger
// side; when n_rows < n_cols it is indexed by columns and holds rows). Hall violators refer to the
// solver orientation: hall_rows are smaller-side points, hall_cols larger-side points.
// Empty sides (n_rows == 0 or n_cols == 0) give an empty output.
AssignmentOutput cover_assignment(const CsrRef& g);

// Capacitated cover: as cover_assignment, and every point of the smaller side takes at most
// max_per_target points. Exact successive shortest paths on the b-flow network larger -> smaller
// (demand 1 each) -> hub (capacity max_per_target - 1 per smaller-side point; demand
// n_large - n_small), warm-started from the uncapacitated optimum and the potentials of its dual:
// only the overloaded points are repaired. warm_start = false starts from every larger-side point
// on its cheapest partner instead (a reference path for tests; also used to find the witness when
// no cover exists). When the repairs run long (more than 4 (n_large + n_small) nodes finalised: the
// uncapacitated optimum is far from the capacity, e.g. an exact fill K * n_small = n_large with
// the points crowded on some targets), they stop, and an epsilon-scaling push-relabel on the costs
// rounded to 20 bits gives prices from which the same exact repairs start (cover_scaling.cpp);
// scaling = 0 never takes that route, 1 takes it at once (tests), -1 (default) as described. A
// failed search leaves failed_row >= 0, hall_rows = larger-side points B,
// hall_cols = smaller-side points S: every pair of B lies in S and
// |B| > min(max_per_target * |S|, |S| + n_large - n_small).
AssignmentOutput cover_assignment_capacity(const CsrRef& g, std::int64_t max_per_target, bool warm_start = true,
                                           int scaling = -1);

}  // namespace xmodal
