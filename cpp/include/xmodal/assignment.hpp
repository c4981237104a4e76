// xmodal: exact minimum-cost assignment on sparse bipartite graphs.
//
// Graphs are CSR: rows 0..n_rows-1, column indices in 0..n_cols-1 (int32), one double cost per
// edge; a missing edge is a forbidden pair. Costs must be finite (checked).
//
// Algorithm: successive shortest augmenting paths with column potentials (Jonker-Volgenant /
// Hungarian dual), Dijkstra with a binary heap over the sparse graph, warm-started by row
// reduction (each row takes its cheapest free column on a tight edge). Every search is
// sequential and ordered by (distance, column index), so results are deterministic.
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal {

struct AssignmentOutput {
    // Solver orientation: col_of_row[i] is the column matched to row i, -1 when unmatched.
    std::vector<std::int32_t> col_of_row;
    std::int64_t searches = 0;     // Dijkstra searches (one per row not matched by the warm start)
    std::int64_t warm_matched = 0;  // rows matched by the warm start
    std::int64_t scanned = 0;       // columns finalised over all searches
    // Infeasible problems: failed_row >= 0 and hall_rows / hall_cols hold a Hall violator:
    // |hall_rows| = |hall_cols| + 1 and every edge of hall_rows ends in hall_cols.
    std::int32_t failed_row = -1;
    std::vector<std::int32_t> hall_rows, hall_cols;
};

// Match every row to a distinct column (n_rows <= n_cols) at minimum total cost.
AssignmentOutput assignment_all_rows(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr,
                                     const std::int32_t* indices, const double* cost);

// Partial matching: every row and every column may stay unmatched at `unmatched_cost` each.
// Solved as the rectangular problem n_rows x (n_cols + n_rows) where every row is matched, to a
// real column at cost c_ij - unmatched_cost or to its own dummy column at unmatched_cost (the
// column penalty becomes a constant). Edges costing more than 2 * unmatched_cost are never optimal
// and are dropped. Always feasible.
// col_of_row has n_rows entries (real columns or -1).
AssignmentOutput assignment_unmatched(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr,
                                      const std::int32_t* indices, const double* cost, double unmatched_cost);

// Cover matching (many-to-one): every point of the larger side (rows when n_rows >= n_cols) is
// matched to exactly one point of the smaller side, and every point of the smaller side to at least
// one. Exact via the reduction: cost = sum_i min_j c_ij + (one-to-one matching saturating the
// smaller side with reduced costs c_ij - min_j c_ij); the larger-side points left out of that
// matching take their cheapest neighbour (lowest index on ties).
// Returns, for every point of the larger side, its partner (col_of_row is indexed by the larger
// side; when n_rows < n_cols it is indexed by columns and holds rows). Hall violators refer to the
// solver orientation: hall_rows are smaller-side points, hall_cols larger-side points.
AssignmentOutput cover_assignment(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr,
                                  const std::int32_t* indices, const double* cost);

// Capacitated cover: as cover_assignment, and every point of the smaller side takes at most
// max_per_target points. Exact successive shortest paths on the flow network
// larger -> smaller (first unit) | smaller (extra units, capacity max_per_target - 1) -> hub.
AssignmentOutput cover_assignment_capacity(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr,
                                           const std::int32_t* indices, const double* cost,
                                           std::int64_t max_per_target);

}  // namespace xmodal
