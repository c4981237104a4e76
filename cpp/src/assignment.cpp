// Exact sparse assignment by successive shortest augmenting paths (see xmodal/assignment.hpp).
#include "xmodal/assignment.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "cover_members.hpp"
#include "cover_scaling.hpp"
#include "xmodal/common.hpp"

namespace xmodal {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// The cost-scaling route of the capacitated cover (priced_cover): rounded costs in [0, 2^kScalingBits],
// at most kScalingWork * (pairs + points) arc scans; taken when the repairs have finalised more than
// kRepairScans * (points) nodes.
constexpr int kScalingBits = 20;
constexpr std::int64_t kScalingWork = 512;
constexpr std::int64_t kRepairScans = 4;
using HeapItem = std::pair<double, std::int32_t>;  // (distance, node); min-heap on (d, index)

}  // namespace

void check_csr(const CsrRef& g, const char* who) {
    const std::string w(who);
    const std::int64_t n_rows = g.n_rows, n_cols = g.n_cols;
    const std::int64_t* indptr = g.indptr;
    const std::int32_t* indices = g.indices;
    const double* cost = g.cost;
    require(n_rows >= 0 && n_cols >= 0, w + ": negative shape");
    require(n_rows < (std::int64_t(1) << 30) && n_cols < (std::int64_t(1) << 30), w + ": at most 2^30 rows/columns");
    require(g.indptr_size == n_rows + 1, w + ": indptr: expected " + std::to_string(n_rows + 1) + " entries, got " +
                                             std::to_string(g.indptr_size));
    require(g.indices_size == g.cost_size, w + ": indices, cost: expected equal lengths, got " +
                                               std::to_string(g.indices_size) + " and " + std::to_string(g.cost_size));
    require(indptr[0] == 0, w + ": indptr[0] must be 0");
    for (std::int64_t i = 0; i < n_rows; ++i)
        require(indptr[i + 1] >= indptr[i], w + ": indptr must be non-decreasing");
    const std::int64_t nnz = indptr[n_rows];
    require(nnz <= g.indices_size, w + ": indptr: last entry " + std::to_string(nnz) + " exceeds the " +
                                       std::to_string(g.indices_size) + " stored entries");
    for (std::int64_t e = 0; e < nnz; ++e) {
        require(indices[e] >= 0 && indices[e] < n_cols,
                w + ": column index out of range at entry " + std::to_string(e));
        require(std::isfinite(cost[e]), w + ": costs must be finite (entry " + std::to_string(e) + ")");
    }
}

namespace {

// Successive shortest paths for "every row matched" on a CSR graph with n_rows <= n_cols.
// Dual: column potentials v (row potentials implicit: u_r = c(r, col(r)) - v(col(r))), reduced
// costs c_rj - u_r - v_j >= 0 on every edge, zero on matched edges; free columns keep v = 0, the
// maximum, which makes the rectangular solution optimal too.
class Ssp {
public:
    Ssp(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr, const std::int32_t* indices,
        const double* cost)
        : nr_(static_cast<std::int32_t>(n_rows)), nc_(static_cast<std::int32_t>(n_cols)), indptr_(indptr),
          v_(n_cols, 0.0), row_of_col_(n_cols, -1), col_of_row_(n_rows, -1), mcost_(n_rows, 0.0), d_(n_cols, kInf),
          pred_(n_cols, -1), predc_(n_cols, 0.0), state_(n_cols, 0) {
        // Each row's edges sorted by (cost, column): lets a search stop relaxing a row once
        // base + cost exceeds the best free-column label found (v <= 0 everywhere).
        const std::int64_t nnz = indptr[n_rows];
        sidx_.resize(static_cast<std::size_t>(nnz));
        scost_.resize(static_cast<std::size_t>(nnz));
        std::vector<std::pair<double, std::int32_t>> tmp;
        for (std::int64_t r = 0; r < n_rows; ++r) {
            tmp.clear();
            for (std::int64_t e = indptr[r]; e < indptr[r + 1]; ++e) tmp.push_back({cost[e], indices[e]});
            std::sort(tmp.begin(), tmp.end());
            std::int64_t e = indptr[r];
            for (const auto& t : tmp) {
                scost_[e] = t.first;
                sidx_[e] = t.second;
                ++e;
            }
        }
        indices_ = sidx_.data();
        cost_ = scost_.data();
    }

    AssignmentOutput run() {
        AssignmentOutput out;
        // Warm start (row reduction with v = 0): a row takes the first free column among its
        // cheapest ones (edges are sorted by (cost, column), so the lowest index on ties); such an
        // edge is tight for u_r = min_j c_rj. On a constant matrix this is the identity.
        for (std::int32_t r = 0; r < nr_; ++r) {
            const std::int64_t e0 = indptr_[r], e1 = indptr_[r + 1];
            for (std::int64_t e = e0; e < e1 && cost_[e] == cost_[e0]; ++e) {
                const std::int32_t j = indices_[e];
                if (row_of_col_[j] < 0) {
                    row_of_col_[j] = r;
                    col_of_row_[r] = j;
                    mcost_[r] = cost_[e];
                    ++out.warm_matched;
                    break;
                }
            }
        }
        augmenting_row_reduction(out);
        for (std::int32_t r = 0; r < nr_; ++r) {
            if (col_of_row_[r] >= 0) continue;
            ++out.searches;
            if (!augment(r, out)) {
                out.failed_row = r;
                break;
            }
        }
        out.col_of_row = std::move(col_of_row_);
        return out;
    }

    // The dual after run(): column potential v_j (<= 0; exactly 0 for columns left free) and the
    // cost of row r's matched edge, so that u_r = matched_cost(r) - v(col(r)).
    double v(std::int32_t j) const { return v_[j]; }
    double matched_cost(std::int32_t r) const { return mcost_[r]; }

private:
    // Jonker-Volgenant augmenting row reduction (two passes, bounded work): a free row takes its
    // cheapest column j1 (reduced c - v), lowering v[j1] by the gap to its second cheapest so that
    // the edge is tight, and evicts j1's previous row. Keeps v feasible and matched edges tight;
    // only matched columns get v < 0, so free columns keep the maximum v = 0.
    void augmenting_row_reduction(AssignmentOutput& out) {
        std::vector<std::int32_t> free;
        for (int pass = 0; pass < 2; ++pass) {
            free.clear();
            for (std::int32_t r = 0; r < nr_; ++r)
                if (col_of_row_[r] < 0) free.push_back(r);
            std::size_t k = 0;
            std::int64_t budget = static_cast<std::int64_t>(nr_) + 16;
            while (k < free.size() && budget-- > 0) {
                const std::int32_t i = free[k++];
                double m1 = kInf, m2 = kInf, c1 = 0.0, c2 = 0.0;
                std::int32_t j1 = -1, j2 = -1;
                for (std::int64_t e = indptr_[i]; e < indptr_[i + 1]; ++e) {
                    const std::int32_t j = indices_[e];
                    const double h = cost_[e] - v_[j];
                    if (h < m1 || (h == m1 && j < j1)) {
                        m2 = m1; j2 = j1; c2 = c1;
                        m1 = h; j1 = j; c1 = cost_[e];
                    } else if (h < m2 || (h == m2 && j < j2)) {
                        m2 = h; j2 = j; c2 = cost_[e];
                    }
                }
                if (j2 < 0) continue;  // fewer than two candidates: left to the shortest-path phase
                std::int32_t jt = j1;
                double ct = c1;
                std::int32_t evicted = row_of_col_[j1];
                const bool lower = m1 < m2;
                if (lower) {
                    v_[j1] -= m2 - m1;
                } else if (evicted >= 0) {
                    jt = j2;
                    ct = c2;
                    evicted = row_of_col_[j2];
                }
                row_of_col_[jt] = i;
                col_of_row_[i] = jt;
                mcost_[i] = ct;
                if (evicted >= 0) {
                    col_of_row_[evicted] = -1;
                    if (lower && k > 0) free[--k] = evicted;
                    else free.push_back(evicted);
                }
            }
        }
        out.warm_matched = 0;
        for (std::int32_t r = 0; r < nr_; ++r) out.warm_matched += col_of_row_[r] >= 0;
    }

    // Dijkstra from free row `start` to the nearest free column, then augment and update v.
    bool augment(std::int32_t start, AssignmentOutput& out) {
        xmodal::poll_interrupt();
        heap_.clear();
        touched_.clear();
        scanned_.clear();
        double best_free = kInf;  // smallest label of a free column so far: an upper bound on the path
        std::int32_t best_free_col = -1;
        auto relax = [&](std::int32_t r, double base) {
            for (std::int64_t e = indptr_[r]; e < indptr_[r + 1]; ++e) {
                // v <= 0, so every later edge of r has a label >= base + cost > best_free: such
                // columns cannot be finalised before the search ends.
                if (base + cost_[e] > best_free) break;
                const std::int32_t j = indices_[e];
                if (state_[j] == 2) continue;
                const double nd = base + cost_[e] - v_[j];
                if (row_of_col_[j] < 0 && nd < best_free) {
                    best_free = nd;
                    best_free_col = j;
                }
                if (state_[j] == 0) {
                    state_[j] = 1;
                    touched_.push_back(j);
                } else if (!(nd < d_[j])) {
                    continue;
                }
                d_[j] = nd;
                pred_[j] = r;
                predc_[j] = cost_[e];
                heap_.push_back({nd, j});
                std::push_heap(heap_.begin(), heap_.end(), std::greater<HeapItem>());
            }
        };
        relax(start, 0.0);
        std::int32_t end = -1;
        double len = 0.0;
        while (!heap_.empty()) {
            // A free column labelled no higher than the heap minimum (a lower bound on every
            // unfinalised label) ends the search now: this skips plateaus of equal labels.
            if (best_free <= heap_.front().first) {
                end = best_free_col;
                len = best_free;
                state_[end] = 2;
                scanned_.push_back(end);
                break;
            }
            std::pop_heap(heap_.begin(), heap_.end(), std::greater<HeapItem>());
            const HeapItem top = heap_.back();
            heap_.pop_back();
            const std::int32_t j = top.second;
            if (state_[j] == 2 || top.first > d_[j]) continue;
            state_[j] = 2;
            scanned_.push_back(j);
            const std::int32_t r = row_of_col_[j];
            if (r < 0) {
                end = j;
                len = d_[j];
                break;
            }
            // reduced cost of the matched edge is zero: u_r = mcost_r - v_j.
            relax(r, d_[j] - (mcost_[r] - v_[j]));
        }
        out.scanned += static_cast<std::int64_t>(scanned_.size());
        if (end < 0) {
            out.hall_rows.push_back(start);
            for (std::int32_t j : scanned_) {
                out.hall_cols.push_back(j);
                out.hall_rows.push_back(row_of_col_[j]);
            }
            reset();
            return false;
        }
        for (std::int32_t j : scanned_) v_[j] += d_[j] - len;
        // Augment along the predecessor chain.
        std::int32_t j = end;
        while (true) {
            const std::int32_t r = pred_[j];
            const std::int32_t prev = col_of_row_[r];
            row_of_col_[j] = r;
            col_of_row_[r] = j;
            mcost_[r] = predc_[j];
            if (r == start) break;
            j = prev;
        }
        reset();
        return true;
    }

    void reset() {
        for (std::int32_t j : touched_) {
            state_[j] = 0;
            d_[j] = kInf;
        }
    }

    std::int32_t nr_, nc_;
    const std::int64_t* indptr_;
    std::vector<std::int32_t> sidx_;
    std::vector<double> scost_;
    const std::int32_t* indices_ = nullptr;
    const double* cost_ = nullptr;
    std::vector<double> v_;
    std::vector<std::int32_t> row_of_col_, col_of_row_;
    std::vector<double> mcost_;
    std::vector<double> d_;
    std::vector<std::int32_t> pred_;
    std::vector<double> predc_;
    std::vector<std::uint8_t> state_;
    std::vector<HeapItem> heap_;
    std::vector<std::int32_t> touched_, scanned_;
};

struct Csr {
    std::vector<std::int64_t> indptr;
    std::vector<std::int32_t> indices;
    std::vector<double> cost;
};

// Transpose (columns become rows); entries of each new row in ascending old-row order.
Csr transpose(std::int64_t n_rows, std::int64_t n_cols, const std::int64_t* indptr, const std::int32_t* indices,
              const double* cost) {
    Csr t;
    t.indptr.assign(static_cast<std::size_t>(n_cols) + 1, 0);
    const std::int64_t nnz = indptr[n_rows];
    for (std::int64_t e = 0; e < nnz; ++e) ++t.indptr[static_cast<std::size_t>(indices[e]) + 1];
    for (std::int64_t j = 0; j < n_cols; ++j) t.indptr[j + 1] += t.indptr[j];
    t.indices.resize(static_cast<std::size_t>(nnz));
    t.cost.resize(static_cast<std::size_t>(nnz));
    std::vector<std::int64_t> fill(t.indptr.begin(), t.indptr.end() - 1);
    for (std::int64_t i = 0; i < n_rows; ++i)
        for (std::int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
            const std::int64_t p = fill[indices[e]]++;
            t.indices[p] = static_cast<std::int32_t>(i);
            t.cost[p] = cost[e];
        }
    return t;
}

// The CSR matrix as given (rows_as_rows) or transposed, as an owned copy.
Csr oriented(const CsrRef& g, bool rows_as_rows) {
    if (!rows_as_rows) return transpose(g.n_rows, g.n_cols, g.indptr, g.indices, g.cost);
    const std::int64_t nnz = g.indptr[g.n_rows];
    Csr c;
    c.indptr.assign(g.indptr, g.indptr + g.n_rows + 1);
    c.indices.assign(g.indices, g.indices + nnz);
    c.cost.assign(g.cost, g.cost + nnz);
    return c;
}

}  // namespace

AssignmentOutput assignment_all_rows(const CsrRef& g) {
    check_csr(g, "assignment");
    require(g.n_rows <= g.n_cols, "assignment: needs n_rows <= n_cols (transpose the problem)");
    if (g.n_rows == 0) return {};
    Ssp s(g.n_rows, g.n_cols, g.indptr, g.indices, g.cost);
    return s.run();
}

double partial_dummy_cost(double unmatched_cost, double cmin, double cmax, std::int64_t max_pairs) {
    const double two_u = 2.0 * unmatched_cost;  // exact (a power-of-two scaling), or +-inf on overflow
    if (max_pairs <= 0 || !(cmin <= cmax)) return two_u;
    // An augmenting path that raises the cardinality from k to k+1 (k < max_pairs) changes the
    // matched cost by at most cmax + k * (cmax - cmin) <= bound and saves 2u: when 2u > bound,
    // every optimum has maximum cardinality, and any dummy cost above the bound gives the same
    // optima. The margin keeps the bound clear of rounding in the solver's label sums.
    // The margin is the spread of the costs, but at least far above the rounding of the label
    // sums (~ pairs * eps * magnitude), so that the bound stays clear of it. Any margin > 0 is
    // exact in real arithmetic; a small one keeps the dummy close to the costs, which also keeps
    // c - dummy well conditioned for the HiGHS path.
    const double range = cmax - cmin;
    const double pairs = static_cast<double>(max_pairs);
    const double bound = cmax + (pairs - 1.0) * range;
    const double eps = std::numeric_limits<double>::epsilon();
    double margin = std::max(range, 64.0 * (pairs + 1.0) * eps *
                                        (std::fabs(cmax) + std::fabs(cmin) + (pairs + 1.0) * range));
    if (!(margin > 0.0)) margin = 1.0;  // all costs are 0
    const double cap = bound + margin;
    return std::isfinite(cap) ? std::min(two_u, cap) : two_u;
}

AssignmentOutput assignment_unmatched(const CsrRef& in, double unmatched_cost) {
    check_csr(in, "assignment");
    require(std::isfinite(unmatched_cost), "assignment: unmatched_cost must be finite");
    if (in.n_rows == 0) return {};
    const std::int64_t n_rows = in.n_rows, n_cols = in.n_cols;
    const std::int64_t* indptr = in.indptr;
    const std::int32_t* indices = in.indices;
    const double* cost = in.cost;
    // total = sum_matched c_ij + u * (#unmatched rows) + u * (n_cols - #matched)
    //       = sum_matched c_ij + 2u * (#unmatched rows) + u * (n_cols - n_rows):
    // every row is matched, to a real column at c_ij (unchanged: no c - u cancellation) or to
    // its private dummy column n_cols + i at 2u. Edges with c_ij > 2u lose against the dummy
    // and are dropped. When 2u exceeds every useful cost difference, the dummy cost is lowered to
    // a value that gives the same optima (see partial_dummy_cost), so that the solver's labels
    // stay at the scale of the costs.
    const double limit = 2.0 * unmatched_cost;
    Csr g;
    g.indptr.assign(static_cast<std::size_t>(n_rows) + 1, 0);
    g.indices.reserve(static_cast<std::size_t>(indptr[n_rows] + n_rows));
    g.cost.reserve(g.indices.capacity());
    double cmin = kInf, cmax = -kInf;
    std::vector<std::uint8_t> col_used(static_cast<std::size_t>(n_cols), 0);
    std::int64_t rows_used = 0, cols_used = 0;
    for (std::int64_t i = 0; i < n_rows; ++i) {
        const std::size_t before = g.indices.size();
        for (std::int64_t e = indptr[i]; e < indptr[i + 1]; ++e)
            if (cost[e] <= limit) {
                g.indices.push_back(indices[e]);
                g.cost.push_back(cost[e]);
                cmin = std::min(cmin, cost[e]);
                cmax = std::max(cmax, cost[e]);
                if (!col_used[indices[e]]) {
                    col_used[indices[e]] = 1;
                    ++cols_used;
                }
            }
        rows_used += g.indices.size() > before;
        g.indices.push_back(static_cast<std::int32_t>(n_cols + i));
        g.cost.push_back(0.0);  // dummy cost, set below
        g.indptr[i + 1] = static_cast<std::int64_t>(g.indices.size());
    }
    AssignmentOutput out;
    if (rows_used == 0) {  // no edge worth matching: everything stays unmatched
        out.col_of_row.assign(static_cast<std::size_t>(n_rows), -1);
        out.warm_matched = n_rows;
        return out;
    }
    const double dummy = partial_dummy_cost(unmatched_cost, cmin, cmax, std::min(rows_used, cols_used));
    require(std::isfinite(dummy) && std::isfinite(cmax - cmin),
            "assignment: costs and unmatched_cost too large to sum in float64 (scale them down)");
    for (std::int64_t i = 0; i < n_rows; ++i) g.cost[static_cast<std::size_t>(g.indptr[i + 1] - 1)] = dummy;
    Ssp s(n_rows, n_rows + n_cols, g.indptr.data(), g.indices.data(), g.cost.data());
    out = s.run();
    require(out.failed_row < 0, "assignment: internal error (augmented problem infeasible)");
    for (auto& j : out.col_of_row)
        if (j >= n_cols) j = -1;
    return out;
}

namespace {

// Dual of an uncapacitated cover, as potentials of the capacitated solver's network (see
// CapacitatedCover): pot_l[l] = -(m_l + v_l), pot_s[s] = u_s.
struct CoverDual {
    std::vector<double> pot_l, pot_s;
};

// The uncapacitated cover (see cover_assignment in the header); fills `dual` when it succeeds.
AssignmentOutput cover_uncapacitated(const CsrRef& g, CoverDual* dual) {
    const std::int64_t n_rows = g.n_rows, n_cols = g.n_cols;
    // Orientation: L = larger side, S = smaller side. Build the S x L graph with reduced costs.
    const bool rows_larger = n_rows >= n_cols;
    const std::int64_t nl = rows_larger ? n_rows : n_cols;
    const std::int64_t ns = rows_larger ? n_cols : n_rows;
    Csr sl = oriented(g, !rows_larger);  // S x L
    // Cheapest partner of each L point (lowest S index on ties).
    std::vector<double> lmin(static_cast<std::size_t>(nl), kInf);
    std::vector<std::int32_t> larg(static_cast<std::size_t>(nl), -1);
    for (std::int64_t s = 0; s < ns; ++s)
        for (std::int64_t e = sl.indptr[s]; e < sl.indptr[s + 1]; ++e) {
            const std::int32_t l = sl.indices[e];
            if (sl.cost[e] < lmin[l]) {  // rows s ascending: first strict minimum = lowest index
                lmin[l] = sl.cost[e];
                larg[l] = static_cast<std::int32_t>(s);
            }
        }
    AssignmentOutput out;
    for (std::int64_t l = 0; l < nl; ++l)
        if (larg[l] < 0) {
            // An L point without any candidate cannot be matched: report it as a Hall violator.
            out.failed_row = -2;
            out.hall_cols.push_back(static_cast<std::int32_t>(l));
        }
    if (out.failed_row == -2) return out;
    const std::int64_t nnz = sl.indptr[ns];
    for (std::int64_t e = 0; e < nnz; ++e) sl.cost[e] -= lmin[sl.indices[e]];
    Ssp s(ns, nl, sl.indptr.data(), sl.indices.data(), sl.cost.data());
    AssignmentOutput m = s.run();
    out.searches = m.searches;
    out.warm_matched = m.warm_matched;
    out.scanned = m.scanned;
    if (m.failed_row >= 0) {
        out.failed_row = m.failed_row;
        out.hall_rows = std::move(m.hall_rows);
        out.hall_cols = std::move(m.hall_cols);
        return out;
    }
    out.col_of_row = larg;  // every L point: cheapest partner ...
    for (std::int64_t sidx = 0; sidx < ns; ++sidx)
        out.col_of_row[m.col_of_row[sidx]] = static_cast<std::int32_t>(sidx);  // ... unless matched
    if (dual != nullptr) {
        dual->pot_l.resize(static_cast<std::size_t>(nl));
        dual->pot_s.resize(static_cast<std::size_t>(ns));
        for (std::int64_t l = 0; l < nl; ++l)
            dual->pot_l[l] = -(lmin[l] + s.v(static_cast<std::int32_t>(l)));
        for (std::int64_t sidx = 0; sidx < ns; ++sidx) {
            const std::int32_t r = static_cast<std::int32_t>(sidx);
            dual->pot_s[sidx] = s.matched_cost(r) - s.v(m.col_of_row[sidx]);
        }
    }
    return out;
}

// Capacitated cover as a b-flow (transportation) problem. Nodes: the nl larger-side points l
// (supply 1 each), the ns smaller-side points s (demand 1 each) and a hub H (demand nl - ns). Arcs:
// l -> s for every allowed pair (capacity 1, cost c_ls) and s -> H (capacity K - 1, cost 0). In a
// feasible flow every l sends its unit to one s, and s keeps one unit and passes f_s in [0, K - 1]
// on to H: it receives 1 + f_s in [1, K] units. The feasible integral flows are exactly the covers
// with max_per_target = K, at the same cost. (No arc is doubled per unit, and H is only passed
// through when a unit moves from a point with more than one to another one.)
//
// Successive shortest paths on a pseudoflow (a flow within the capacities that may leave nodes
// with an excess or a deficit). Invariant: potentials p with reduced costs
// rc(a -> b) = cost + p(a) - p(b) >= 0 on every residual arc. A step runs Dijkstra on the reduced
// costs from one node with an excess, stops at the first node with a deficit that it finalises (at
// distance len), adds d(x) - len to p(x) for every finalised x and pushes one unit along the path.
// This keeps the invariant: for a residual arc a -> b with a finalised, d(b) <= d(a) + rc when b is
// finalised and len <= tentative d(b) <= d(a) + rc when it is not, so the new reduced cost
// rc + d(a) - min(d(b), len) is >= 0; when only b is finalised it grows by len - d(b) >= 0; the
// arcs of the path get reduced cost 0, so their reverses (the new residual arcs) are fine too.
// Each step removes one unit of excess and creates none. When no excess is left the flow is
// feasible, and a feasible flow with such potentials is optimal (LP complementary slackness).
//
// A failed search proves infeasibility. Let X be what it reached (no deficit in it), B its l
// nodes, S its s nodes. Every allowed pair of B lies in S (l -> s arcs are residual unless used),
// and B holds every l placed on S (the reverse arcs s -> l), so |B| = sum of the loads of S. If H
// is not in X, no s of S can pass a unit on (f_s = K - 1) and none has a deficit, so the loads are
// >= K and the source's is > K: |B| > K |S|. If H is in X, S holds every s with f_s > 0; the
// others have load 1 + excess, and since excesses sum to 0 over the network and X (which holds the
// source) has only excesses, one of them has load 0: |B| > |S| + nl - ns. Either bound is what the
// Python message states.
//
// Starting points (start_from): any assignment of every l to a partner, with potentials making
// the reduced costs of its residual network non-negative; f_s = min(load_s - 1, K - 1), clipped at
// 0. cover_assignment_capacity starts from the uncapacitated optimum (see there), so that only the
// overloaded points need repairs. Reduced costs are clamped at 0 against rounding, as the
// assignment solver's labels are. Searches are ordered by (distance, node index): deterministic.
class CapacitatedCover {
public:
    CapacitatedCover(const Csr& ls, std::int64_t nl, std::int64_t ns, std::int64_t cap)
        : ls_(ls), nl_(static_cast<std::int32_t>(nl)), ns_(static_cast<std::int32_t>(ns)),
          hub_(static_cast<std::int32_t>(nl + ns)), cap_(cap), mem_(nl, ns),
          acost_(static_cast<std::size_t>(nl), 0.0), fh_(static_cast<std::size_t>(ns), 0),
          pot_(static_cast<std::size_t>(nl + ns + 1), 0.0),
          dist_(pot_.size(), kInf), predc_(pot_.size(), 0.0), pred_(pot_.size(), -1), mark_(pot_.size(), 0) {}

    // partner[l] in [0, ns) for every l; pot_l / pot_s / pot_h: potentials of l, s and H. The s -> H
    // flows: f_s = min(load_s - 1, K - 1) clipped at 0, or, with by_price, K - 1 where
    // pot_s < pot_h and 0 where pot_s > pot_h (the clipped load on ties), so that the arcs between
    // s and H are non-negative for any potentials (s may then have a deficit and H an excess).
    void start_from(const std::vector<std::int32_t>& partner, const std::vector<double>& pot_l,
                    const std::vector<double>& pot_s, double pot_h = 0.0, bool by_price = false) {
        for (std::int32_t l = 0; l < nl_; ++l) {
            const std::int32_t s = partner[l];
            double c = kInf;  // the cheapest stored entry of the pair (entries are unique from Python)
            for (std::int64_t e = ls_.indptr[l]; e < ls_.indptr[l + 1]; ++e)
                if (ls_.indices[e] == s) c = std::min(c, ls_.cost[e]);
            acost_[l] = c;
            mem_.attach(l, s);
            pot_[l] = pot_l[l];
        }
        eh_ = -(static_cast<std::int64_t>(nl_) - ns_);
        for (std::int32_t s = 0; s < ns_; ++s) {
            fh_[s] = std::max<std::int64_t>(0, std::min<std::int64_t>(mem_.load[s] - 1, cap_ - 1));
            if (by_price && pot_s[s] < pot_h) fh_[s] = cap_ - 1;
            if (by_price && pot_s[s] > pot_h) fh_[s] = 0;
            eh_ += fh_[s];
            pot_[nl_ + s] = pot_s[s];
        }
        pot_[hub_] = pot_h;
    }

    // Remove every excess: 1; 0 when the problem is infeasible (a witness in out); -1 as soon as the
    // searches have finalised more than max_scanned nodes in all (max_scanned < 0: no limit).
    int run(AssignmentOutput& out, std::int64_t max_scanned = -1) {
        const std::int64_t stop =
            max_scanned < 0 ? std::numeric_limits<std::int64_t>::max() : out.scanned + max_scanned;
        for (std::int32_t s = 0; s < ns_; ++s)
            while (excess_s(s) > 0) {
                if (!search(nl_ + s, out)) return 0;
                if (out.scanned > stop) return -1;
            }
        while (eh_ > 0) {
            if (!search(hub_, out)) return 0;
            if (out.scanned > stop) return -1;
        }
        return 1;
    }

    const std::vector<std::int32_t>& partners() const { return mem_.assign; }

private:
    std::int64_t excess_s(std::int32_t s) const { return mem_.load[s] - 1 - fh_[s]; }

    bool deficit(std::int32_t x) const {
        if (x < nl_) return false;
        if (x == hub_) return eh_ < 0;
        return excess_s(x - nl_) < 0;
    }

    void label(std::int32_t x, double d, std::int32_t from, double c) {
        // A label no lower than the best deficit's can never be finalised before the search ends.
        if (mark_[x] == done_ || !(d < best_d_)) return;
        if (mark_[x] == seen_ && !(d < dist_[x])) return;
        mark_[x] = seen_;
        dist_[x] = d;
        pred_[x] = from;
        predc_[x] = c;
        if (deficit(x)) {  // not queued: the search ends at the best of these (see search)
            best_d_ = d;
            best_x_ = x;
            return;
        }
        heap_.push_back({d, x});
        std::push_heap(heap_.begin(), heap_.end(), std::greater<HeapItem>());
    }

    // Relax every residual arc out of x (finalised at distance d).
    void relax(std::int32_t x, double d) {
        const double px = pot_[x];
        if (x < nl_) {  // l -> s for every pair but the one in use
            for (std::int64_t e = ls_.indptr[x]; e < ls_.indptr[x + 1]; ++e) {
                const std::int32_t s = ls_.indices[e];
                if (s == mem_.assign[x]) continue;
                const std::int32_t y = nl_ + s;
                label(y, d + std::max(0.0, ls_.cost[e] + px - pot_[y]), x, ls_.cost[e]);
            }
        } else if (x < hub_) {  // s -> l for the l placed on s; s -> H while f_s < K - 1
            const std::int32_t s = x - nl_;
            for (std::int32_t l = mem_.head[s]; l >= 0; l = mem_.next[l])
                label(l, d + std::max(0.0, -acost_[l] + px - pot_[l]), x, 0.0);
            if (fh_[s] < cap_ - 1) label(hub_, d + std::max(0.0, px - pot_[hub_]), x, 0.0);
        } else {  // H -> s for every s with f_s > 0
            for (std::int32_t s = 0; s < ns_; ++s)
                if (fh_[s] > 0) label(nl_ + s, d + std::max(0.0, px - pot_[nl_ + s]), x, 0.0);
        }
    }

    bool search(std::int32_t source, AssignmentOutput& out) {
        xmodal::poll_interrupt();
        ++out.searches;
        seen_ += 2;
        done_ += 2;
        heap_.clear();
        scanned_.clear();
        best_d_ = kInf;
        best_x_ = -1;
        label(source, 0.0, -1, 0.0);
        std::int32_t end = -1;
        double len = 0.0;
        while (true) {
            // The best labelled deficit node ends the search as soon as no queued label is lower
            // (the heap minimum bounds every label still to come): it is finalised at that
            // distance, and plateaus of equal labels are not explored.
            if (best_x_ >= 0 && (heap_.empty() || best_d_ <= heap_.front().first)) {
                end = best_x_;
                len = best_d_;
                mark_[end] = done_;
                scanned_.push_back(end);
                break;
            }
            if (heap_.empty()) break;
            std::pop_heap(heap_.begin(), heap_.end(), std::greater<HeapItem>());
            const HeapItem top = heap_.back();
            heap_.pop_back();
            const std::int32_t x = top.second;
            if (mark_[x] == done_ || top.first > dist_[x]) continue;
            mark_[x] = done_;
            scanned_.push_back(x);
            relax(x, dist_[x]);
        }
        out.scanned += static_cast<std::int64_t>(scanned_.size());
        if (end < 0) {
            out.failed_row = source;
            for (std::int32_t x : scanned_)
                if (x < nl_) out.hall_rows.push_back(x);
                else if (x < hub_) out.hall_cols.push_back(x - nl_);
            return false;
        }
        for (std::int32_t x : scanned_) pot_[x] += dist_[x] - len;
        // Push one unit along the path, walking back from its end. An arc s -> l (l leaves s) is
        // applied with the arc l -> s' that follows it on the path.
        for (std::int32_t y = end; y != source;) {
            const std::int32_t x = pred_[y];
            if (x < nl_) {
                mem_.detach(x);
                acost_[x] = predc_[y];
                mem_.attach(x, y - nl_);
            } else if (x == hub_) {
                --fh_[y - nl_];
                --eh_;
            } else if (y == hub_) {
                ++fh_[x - nl_];
                ++eh_;
            }
            y = x;
        }
        return true;
    }

    const Csr& ls_;
    std::int32_t nl_, ns_, hub_;
    std::int64_t cap_;
    detail::CoverMembers mem_;  // the partner of each l, the loads and the l on each s
    std::vector<double> acost_;  // the cost of each l's pair in use
    std::vector<std::int64_t> fh_;
    std::int64_t eh_ = 0;  // excess of H: sum f_s - (nl - ns)
    std::vector<double> pot_, dist_, predc_;
    std::vector<std::int32_t> pred_;
    // Search stamps: mark_[x] == seen_ (labelled) or done_ (finalised) in the current search;
    // older values mean unlabelled, so nothing is reset between searches.
    std::vector<std::uint64_t> mark_;
    std::uint64_t seen_ = 1, done_ = 2;
    std::vector<HeapItem> heap_;
    std::vector<std::int32_t> scanned_;
    double best_d_ = kInf;    // the lowest label of a deficit node in the current search ...
    std::int32_t best_x_ = -1;  // ... and that node (the first one labelled on ties)
};

}  // namespace

AssignmentOutput cover_assignment(const CsrRef& g) {
    check_csr(g, "cover_assignment");
    if (g.n_rows == 0 || g.n_cols == 0) return {};
    return cover_uncapacitated(g, nullptr);
}

namespace {

// The cost-scaling route (cover_scaling.cpp): prices of s and H from push-relabel on the rounded
// costs, then the exact solver started from every l on its best s under those prices (largest
// p_s - c_ls, lowest index on ties) with p(l) = that value, which makes every arc out of l
// non-negative and the one in use zero, and the s -> H flows set by price (start_from): only the
// points that the rounding left unbalanced need repairs. false (out's counters updated, nothing
// else) when the prices are unusable or a search fails: the caller then takes the warm-started
// route, which also names the witness of an infeasible problem.
bool priced_cover(const Csr& ls, std::int64_t nl, std::int64_t ns, std::int64_t cap, AssignmentOutput& out) {
    const std::int64_t nnz = ls.indptr[static_cast<std::size_t>(nl)];
    detail::CoverPrices pr;
    const bool ok = detail::cover_scaling_prices(nl, ns, ls.indptr.data(), ls.indices.data(), ls.cost.data(), cap,
                                                 kScalingBits, kScalingWork * (nnz + nl + ns) + (1 << 20), pr);
    out.scaling_phases = -pr.phases;  // made positive when the route succeeds
    if (!ok) return false;
    std::vector<std::int32_t> partner(static_cast<std::size_t>(nl), -1);
    std::vector<double> pot_l(static_cast<std::size_t>(nl), 0.0);
    for (std::int64_t l = 0; l < nl; ++l) {
        double best = -kInf;
        for (std::int64_t e = ls.indptr[l]; e < ls.indptr[l + 1]; ++e) {
            const std::int32_t x = ls.indices[e];
            const double v = pr.pot_s[x] - ls.cost[e];
            if (v > best || (v == best && x < partner[l])) {
                best = v;
                partner[l] = x;
            }
        }
        pot_l[l] = best;
    }
    CapacitatedCover flow(ls, nl, ns, cap);
    flow.start_from(partner, pot_l, pr.pot_s, pr.pot_h, true);
    if (flow.run(out) != 1) {
        out.failed_row = -1;
        out.hall_rows.clear();
        out.hall_cols.clear();
        return false;
    }
    out.col_of_row = flow.partners();
    out.scaling_phases = pr.phases;
    return true;
}

// Successive shortest paths from `partner` with the potentials `dual` (CapacitatedCover::run's
// result: 1 solved, partners in out; 0 infeasible, witness in out; -1 over max_scanned).
int repair(const Csr& ls, std::int64_t nl, std::int64_t ns, std::int64_t cap, const std::vector<std::int32_t>& partner,
           const CoverDual& dual, AssignmentOutput& out, std::int64_t max_scanned) {
    CapacitatedCover flow(ls, nl, ns, cap);
    flow.start_from(partner, dual.pot_l, dual.pot_s);
    const int r = flow.run(out, max_scanned);
    if (r == 1) out.col_of_row = flow.partners();
    return r;
}

}  // namespace

// Warm start (see CapacitatedCover): the uncapacitated optimum, which covers every s. Flow: each l
// on its partner there, f_s = min(load_s - 1, K - 1). Excess: load_s - K at the overloaded s;
// deficit: their sum at H; no other imbalance. Potentials from the dual of the reduced matching
// problem that cover_uncapacitated solves (rows S, columns L, costs c'_sl = c_sl - m_l >= 0 with
// m_l = min_s c_sl): v_l <= 0, and v_l = 0 for l outside the matching (free columns never change),
// u_s = c'_{s,col(s)} - v_col(s), c'_sl - u_s - v_l >= 0 on every pair, = 0 on matched pairs.
// Take p(l) = -(m_l + v_l), p(s) = u_s, p(H) = 0. Reduced costs of the residual arcs:
//   l -> s (pair not used):        c_sl - m_l - v_l - u_s = c'_sl - u_s - v_l >= 0;
//   s -> l (reverse of a used pair): -(c'_sl - u_s - v_l): 0 for a matched pair; for l outside the
//                                  matching, on its cheapest partner s, c'_sl = 0 and v_l = 0, so it
//                                  is u_s, and u_s = 0 (see H -> s);
//   s -> H (f_s < K - 1):           u_s >= 0, since c' >= 0 and v <= 0;
//   H -> s (f_s > 0, so s holds some l outside the matching): -u_s = 0, since that pair gives
//                                  u_s <= c'_sl - v_l = 0 - 0.
// The arcs into H and out of it exist only in these two cases, so all are >= 0: the invariant holds
// from the start, and only the overloaded points are repaired, usually by a few short paths
// (s -> l -> s' -> H, where s' has room).
AssignmentOutput cover_assignment_capacity(const CsrRef& g, std::int64_t max_per_target, bool warm_start,
                                           int scaling) {
    check_csr(g, "cover_assignment");
    require(max_per_target >= 1, "cover_assignment: max_per_target must be >= 1");
    if (g.n_rows == 0 || g.n_cols == 0) return {};
    const bool rows_larger = g.n_rows >= g.n_cols;
    const std::int64_t nl = rows_larger ? g.n_rows : g.n_cols;
    const std::int64_t ns = rows_larger ? g.n_cols : g.n_rows;
    AssignmentOutput out;
    if (ns * std::min(max_per_target, nl) < nl) {
        out.failed_row = -3;  // not enough capacity
        return out;
    }
    const std::int64_t cap = std::min(max_per_target, nl);  // a larger capacity never binds
    CoverDual dual;
    std::vector<std::int32_t> partner;
    if (warm_start) {
        AssignmentOutput free = cover_uncapacitated(g, &dual);
        if (free.failed_row == -2) return free;  // a larger-side point without any pair
        out.searches = free.searches;
        out.warm_matched = free.warm_matched;
        out.scanned = free.scanned;
        if (free.failed_row >= 0) {
            // No cover even without a capacity: smaller-side points S' whose pairs all lie in the
            // larger-side points B', |B'| < |S'|. Reported in the capacitated form by complements:
            // every pair of B = L \ B' lies in S = S \ S' (a pair (l, s') would put l in B'), and
            // |B| = nl - |B'| > nl - |S'| = |S| + nl - ns.
            const std::int64_t nb = nl - static_cast<std::int64_t>(free.hall_cols.size());
            const std::int64_t nss = ns - static_cast<std::int64_t>(free.hall_rows.size());
            std::vector<std::uint8_t> in_l(static_cast<std::size_t>(nl), 1), in_s(static_cast<std::size_t>(ns), 1);
            for (const std::int32_t l : free.hall_cols) in_l[l] = 0;
            for (const std::int32_t x : free.hall_rows) in_s[x] = 0;
            out.hall_rows.reserve(static_cast<std::size_t>(std::max<std::int64_t>(nb, 0)));
            out.hall_cols.reserve(static_cast<std::size_t>(std::max<std::int64_t>(nss, 0)));
            for (std::int32_t l = 0; l < nl; ++l)
                if (in_l[l]) out.hall_rows.push_back(l);
            for (std::int32_t x = 0; x < ns; ++x)
                if (in_s[x]) out.hall_cols.push_back(x);
            out.failed_row = free.failed_row;
            out.over_capacity = -1;
            return out;
        }
        // The uncapacitated optimum: optimal as it is when it respects the capacity (same objective,
        // smaller feasible set); otherwise the warm start, with the potentials of its dual.
        std::vector<std::int64_t> load(static_cast<std::size_t>(ns), 0);
        for (const std::int32_t x : free.col_of_row) ++load[x];
        for (const std::int64_t k : load) out.over_capacity += std::max<std::int64_t>(0, k - cap);
        if (out.over_capacity == 0) {
            out.col_of_row = std::move(free.col_of_row);
            return out;
        }
        partner = std::move(free.col_of_row);
    }
    const Csr ls = oriented(g, rows_larger);
    if (warm_start && scaling > 0 && priced_cover(ls, nl, ns, cap, out)) return out;
    if (!warm_start) {
        // The reference start: every l on its cheapest partner (lowest index on ties), p(l) = -m_l,
        // p(s) = p(H) = 0. Reduced costs: c_ls - m_l >= 0 on unused pairs, 0 on the used ones
        // (reverse arcs) and 0 on the arcs between s and H.
        partner.assign(static_cast<std::size_t>(nl), -1);
        dual.pot_l.assign(static_cast<std::size_t>(nl), 0.0);
        dual.pot_s.assign(static_cast<std::size_t>(ns), 0.0);
        for (std::int64_t l = 0; l < nl; ++l) {
            double best = kInf;
            for (std::int64_t e = ls.indptr[l]; e < ls.indptr[l + 1]; ++e)
                if (ls.cost[e] < best || (ls.cost[e] == best && ls.indices[e] < partner[l])) {
                    best = ls.cost[e];
                    partner[l] = ls.indices[e];
                }
            if (partner[l] < 0) {
                out.failed_row = -2;
                out.hall_cols.push_back(static_cast<std::int32_t>(l));
            }
            dual.pot_l[l] = -best;
        }
        if (out.failed_row == -2) return out;
        out.over_capacity = -1;  // not measured
    }
    // The repairs; by default (scaling < 0) within a budget, past which the paths are long (the
    // uncapacitated optimum is far from the capacity): then the cost-scaling route, and if that
    // fails, the repairs again without a budget.
    const bool budget = warm_start && scaling < 0;
    const int done = repair(ls, nl, ns, cap, partner, dual, out, budget ? kRepairScans * (nl + ns) : -1);
    if (done >= 0 || priced_cover(ls, nl, ns, cap, out)) return out;
    repair(ls, nl, ns, cap, partner, dual, out, -1);
    return out;
}

}  // namespace xmodal
