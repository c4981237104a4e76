// Exact sparse assignment by successive shortest augmenting paths (see xmodal/assignment.hpp).
#include "xmodal/assignment.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "xmodal/common.hpp"

namespace xmodal {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
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

AssignmentOutput cover_assignment(const CsrRef& g) {
    check_csr(g, "cover_assignment");
    if (g.n_rows == 0 || g.n_cols == 0) return {};
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
    return out;
}

AssignmentOutput cover_assignment_capacity(const CsrRef& g, std::int64_t max_per_target) {
    check_csr(g, "cover_assignment");
    require(max_per_target >= 1, "cover_assignment: max_per_target must be >= 1");
    if (g.n_rows == 0 || g.n_cols == 0) return {};
    const std::int64_t n_rows = g.n_rows, n_cols = g.n_cols;
    const bool rows_larger = n_rows >= n_cols;
    const std::int64_t nl = rows_larger ? n_rows : n_cols;
    const std::int64_t ns = rows_larger ? n_cols : n_rows;
    Csr ls = oriented(g, rows_larger);  // L x S
    AssignmentOutput out;
    if (ns * max_per_target < nl) {
        out.failed_row = -3;  // not enough capacity
        return out;
    }
    // Flow network: L points [0, nl), first-unit nodes P_s [nl, nl+ns), extra-unit nodes X_s
    // [nl+ns, nl+2ns), hub H. Arcs L->P_s and L->X_s per edge (capacity 1, cost c), X_s->H
    // (capacity max-1). The sink is implicit: P_s absorbs 1 unit, H absorbs nl-ns units. A flow of
    // nl units therefore fills every P_s: every S point is covered. L points are added one at a
    // time along a shortest path (Johnson potentials) to the nearest node that can still absorb.
    // Absorbing nodes keep potential 0, the maximum (potentials only decrease), which plays the
    // role of the sink potential, as free columns do in the assignment solver.
    const std::int64_t nnodes = nl + 2 * ns + 1;
    const std::int32_t H = static_cast<std::int32_t>(nl + 2 * ns);
    struct Arc {
        std::int32_t to;
        std::int32_t rev;
        std::int64_t cap;
        double cost;
    };
    std::vector<std::vector<Arc>> adj(static_cast<std::size_t>(nnodes));
    auto add = [&](std::int32_t u, std::int32_t w, std::int64_t cap, double c) {
        adj[u].push_back({w, static_cast<std::int32_t>(adj[w].size()), cap, c});
        adj[w].push_back({u, static_cast<std::int32_t>(adj[u].size() - 1), 0, -c});
    };
    std::vector<double> pot(static_cast<std::size_t>(nnodes), 0.0);
    for (std::int64_t l = 0; l < nl; ++l) {
        if (ls.indptr[l] == ls.indptr[l + 1]) {
            out.failed_row = -2;
            out.hall_cols.push_back(static_cast<std::int32_t>(l));
        }
        double rowmin = kInf;
        for (std::int64_t e = ls.indptr[l]; e < ls.indptr[l + 1]; ++e) {
            const std::int32_t s = ls.indices[e];
            add(static_cast<std::int32_t>(l), static_cast<std::int32_t>(nl + s), 1, ls.cost[e]);
            if (max_per_target > 1)
                add(static_cast<std::int32_t>(l), static_cast<std::int32_t>(nl + ns + s), 1, ls.cost[e]);
            rowmin = std::min(rowmin, ls.cost[e]);
        }
        pot[l] = std::isfinite(rowmin) ? -rowmin : 0.0;  // c + pot(l) - pot(s) >= 0 with pot(s) = 0
    }
    if (out.failed_row == -2) return out;
    if (max_per_target > 1)
        for (std::int64_t s = 0; s < ns; ++s)
            add(static_cast<std::int32_t>(nl + ns + s), H, max_per_target - 1, 0.0);
    std::vector<std::uint8_t> p_free(static_cast<std::size_t>(ns), 1);
    std::int64_t hub_free = nl - ns;

    std::vector<double> d(static_cast<std::size_t>(nnodes), kInf);
    std::vector<std::int32_t> pnode(static_cast<std::size_t>(nnodes), -1), parc(static_cast<std::size_t>(nnodes), -1);
    std::vector<std::uint8_t> done(static_cast<std::size_t>(nnodes), 0);
    std::vector<std::int32_t> touched, scanned;
    std::vector<HeapItem> heap;
    for (std::int32_t start = 0; start < nl; ++start) {
        xmodal::poll_interrupt();
        ++out.searches;
        heap.clear();
        touched.clear();
        scanned.clear();
        d[start] = 0.0;
        touched.push_back(start);
        heap.push_back({0.0, start});
        std::int32_t end = -1;
        while (!heap.empty()) {
            std::pop_heap(heap.begin(), heap.end(), std::greater<HeapItem>());
            const HeapItem top = heap.back();
            heap.pop_back();
            const std::int32_t u = top.second;
            if (done[u] || top.first > d[u]) continue;
            done[u] = 1;
            scanned.push_back(u);
            if ((u >= nl && u < nl + ns && p_free[u - nl]) || (u == H && hub_free > 0)) {
                end = u;
                break;
            }
            for (std::size_t a = 0; a < adj[u].size(); ++a) {
                const Arc& arc = adj[u][a];
                if (arc.cap <= 0 || done[arc.to]) continue;
                const double rc = std::max(0.0, arc.cost + pot[u] - pot[arc.to]);
                const double nd = d[u] + rc;
                if (nd < d[arc.to]) {
                    if (d[arc.to] == kInf) touched.push_back(arc.to);
                    d[arc.to] = nd;
                    pnode[arc.to] = u;
                    parc[arc.to] = static_cast<std::int32_t>(a);
                    heap.push_back({nd, arc.to});
                    std::push_heap(heap.begin(), heap.end(), std::greater<HeapItem>());
                }
            }
        }
        out.scanned += static_cast<std::int64_t>(scanned.size());
        if (end < 0) {
            out.failed_row = start;
            for (std::int32_t u : scanned)
                if (u < nl) out.hall_rows.push_back(u);
                else if (u < nl + ns) out.hall_cols.push_back(static_cast<std::int32_t>(u - nl));
            for (std::int32_t u : touched) {
                d[u] = kInf;
                done[u] = 0;
            }
            return out;
        }
        const double len = d[end];
        for (std::int32_t u : scanned) pot[u] += d[u] - len;
        for (std::int32_t w = end; w != start; w = pnode[w]) {
            Arc& arc = adj[pnode[w]][parc[w]];
            arc.cap -= 1;
            adj[w][arc.rev].cap += 1;
        }
        if (end == H) --hub_free;
        else p_free[end - nl] = 0;
        for (std::int32_t u : touched) {
            d[u] = kInf;
            done[u] = 0;
        }
    }
    // Read the assignment: the L->P or L->X arc carrying flow.
    out.col_of_row.assign(static_cast<std::size_t>(nl), -1);
    for (std::int64_t l = 0; l < nl; ++l)
        for (const Arc& arc : adj[l])
            if (arc.to >= nl && arc.to < nl + 2 * ns && arc.cap == 0) {
                out.col_of_row[l] = static_cast<std::int32_t>((arc.to - nl) % ns);
                break;
            }
    return out;
}

}  // namespace xmodal
