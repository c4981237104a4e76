// k-d tree k-nearest-neighbour and radius graph (see xmodal/knn.hpp for the contract). The
// arithmetic of a pair (d2), the ranking and the top-k insertion are in
// xmodal/detail/knn_arith.hpp, shared with the CUDA kernel (cuda/knn.cu).
#include "xmodal/knn.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "xmodal/common.hpp"
#include "xmodal/detail/knn_arith.hpp"

namespace xmodal {
namespace {

constexpr int kMaxDim = knn::arith::kMaxDim;
constexpr int kLeafSize = 16;
// Below this many rows a pass runs on the calling thread: the work is well under a millisecond, while
// waking a team costs about as much on a quiet machine and tens of milliseconds on a loaded one
// (a worker that is not scheduled holds up the barrier; measured 67 ms against 5 ms for 400 points).
constexpr std::int64_t kParallelMinRows = 4096;

// A k-d tree over n points of dimension dim: median split on the widest axis of each node.
// Points are stored in tree order (pts) with their original indices (ids).
class KdTree {
public:
    KdTree(const double* p, std::int64_t n, int dim) : dim_(dim) {
        ids_.resize(static_cast<std::size_t>(n));
        std::iota(ids_.begin(), ids_.end(), 0);
        nodes_.reserve(static_cast<std::size_t>(2 * (n / kLeafSize + 1)));
        if (n > 0) build(p, 0, static_cast<std::int32_t>(n));
        pts_.resize(static_cast<std::size_t>(n) * dim);
        for (std::int64_t t = 0; t < n; ++t)
            for (int d = 0; d < dim; ++d) pts_[t * dim + d] = p[static_cast<std::int64_t>(ids_[t]) * dim + d];
    }

    // Visit candidates: fills `near` (k best by (d2, id)) and `ball` (all with d2 <= r2).
    // k == 0: no nearest search. r2 < 0: no radius search.
    void query(const double* q, int k, double r2, std::vector<std::pair<double, std::int32_t>>& near,
               std::vector<std::int32_t>& ball) const {
        near.clear();
        ball.clear();
        if (nodes_.empty()) return;
        double off[kMaxDim] = {0};
        search(0, q, off, 0.0, k, r2, near, ball);
    }

    // Original indices in tree (spatially coherent) order.
    const std::vector<std::int32_t>& order() const { return ids_; }

private:
    struct Node {
        std::int32_t lo, hi;     // range in ids_/pts_
        std::int32_t left = -1;  // children (-1: leaf)
        std::int32_t right = -1;
        int axis = 0;
        double split = 0.0;
    };

    std::int32_t build(const double* p, std::int32_t lo, std::int32_t hi) {
        const std::int32_t id = static_cast<std::int32_t>(nodes_.size());
        nodes_.push_back(Node{lo, hi});
        if (hi - lo <= kLeafSize) return id;
        int axis = 0;
        double best = -1.0;
        for (int d = 0; d < dim_; ++d) {
            double mn = std::numeric_limits<double>::infinity(), mx = -mn;
            for (std::int32_t t = lo; t < hi; ++t) {
                const double v = p[static_cast<std::int64_t>(ids_[t]) * dim_ + d];
                mn = std::min(mn, v);
                mx = std::max(mx, v);
            }
            if (mx - mn > best) {
                best = mx - mn;
                axis = d;
            }
        }
        if (best <= 0.0) return id;  // all points identical: keep as a leaf
        const std::int32_t mid = lo + (hi - lo) / 2;
        auto key = [&](std::int32_t i) { return p[static_cast<std::int64_t>(i) * dim_ + axis]; };
        std::nth_element(ids_.begin() + lo, ids_.begin() + mid, ids_.begin() + hi,
                         [&](std::int32_t x, std::int32_t y) { return key(x) < key(y); });
        const double split = key(ids_[mid]);
        const std::int32_t l = build(p, lo, mid);
        const std::int32_t r = build(p, mid, hi);
        nodes_[id].left = l;
        nodes_[id].right = r;
        nodes_[id].axis = axis;
        nodes_[id].split = split;
        return id;
    }

    // Current pruning bound on squared distance.
    static double bound(int k, double r2, const std::vector<std::pair<double, std::int32_t>>& near) {
        double b = r2;  // r2 < 0 when there is no radius
        if (k > 0) {
            if (static_cast<int>(near.size()) < k) return std::numeric_limits<double>::infinity();
            b = std::max(b, near.back().first);
        }
        return b;
    }

    void search(std::int32_t node, const double* q, double* off, double rd, int k, double r2,
                std::vector<std::pair<double, std::int32_t>>& near, std::vector<std::int32_t>& ball) const {
        const Node& nd = nodes_[node];
        if (nd.left < 0) {
            for (std::int32_t t = nd.lo; t < nd.hi; ++t) {
                const double* x = &pts_[static_cast<std::size_t>(t) * dim_];
                const double d2 = dim_ == 3   ? knn::arith::dist2<3>(q, x)
                                  : dim_ == 2 ? knn::arith::dist2<2>(q, x)
                                              : knn::arith::dist2(q, x, dim_);
                const std::int32_t id = ids_[t];
                if (knn::arith::in_radius(d2, r2)) ball.push_back(id);
                if (k > 0) {
                    // `near` is kept sorted by knn::arith::before; insertion from the back, the steps
                    // of knn::arith::topk_insert (which, on pairs, measured 15 % slower here)
                    const bool full = static_cast<int>(near.size()) == k;
                    if (full && !knn::arith::before(d2, id, near.back().first, near.back().second)) continue;
                    if (!full) near.push_back({d2, id});
                    std::size_t p = near.size() - 1;
                    while (p > 0 && knn::arith::before(d2, id, near[p - 1].first, near[p - 1].second)) {
                        near[p] = near[p - 1];
                        --p;
                    }
                    near[p] = {d2, id};
                }
            }
            return;
        }
        const double diff = q[nd.axis] - nd.split;
        const std::int32_t first = diff < 0 ? nd.left : nd.right;
        const std::int32_t second = diff < 0 ? nd.right : nd.left;
        search(first, q, off, rd, k, r2, near, ball);
        const double old = off[nd.axis];
        const double rd2 = rd - old * old + diff * diff;
        // rd2 is a lower bound of the squared distance to the far side only up to rounding (the
        // incremental update cancels): prune only beyond a margin of 2^-40 of the terms' size, so
        // pairs at exactly the radius or the k-th distance (ties) are always visited.
        const double slack = (rd + old * old + diff * diff) * 0x1p-40;
        if (rd2 - slack <= bound(k, r2, near)) {
            off[nd.axis] = diff;
            search(second, q, off, rd2, k, r2, near, ball);
            off[nd.axis] = old;
        }
    }

    int dim_;
    std::vector<std::int32_t> ids_;
    std::vector<double> pts_;
    std::vector<Node> nodes_;
};

// For every query point, the ids of the tree points it links to (k nearest and/or within radius),
// sorted ascending and unique.
// Queries are visited in `order` (a spatially coherent permutation, for cache locality).
std::vector<std::vector<std::int32_t>> neighbours(const KdTree& tree, const double* q, std::int64_t nq,
                                                  int dim, int k, double r2, const std::vector<std::int32_t>& order) {
    std::vector<std::vector<std::int32_t>> out(static_cast<std::size_t>(nq));
#ifdef XMODAL_HAVE_OPENMP
#pragma omp parallel num_threads(xmodal::num_threads()) if (nq >= kParallelMinRows)
#endif
    {
        std::vector<std::pair<double, std::int32_t>> near;
        std::vector<std::int32_t> ball;
        near.reserve(static_cast<std::size_t>(std::max(k, 1)));
#ifdef XMODAL_HAVE_OPENMP
#pragma omp for schedule(dynamic, 256)
#endif
        for (std::int64_t t = 0; t < nq; ++t) {
            const std::int64_t i = order[static_cast<std::size_t>(t)];
            tree.query(q + i * dim, k, r2, near, ball);
            auto& o = out[static_cast<std::size_t>(i)];
            o.reserve(near.size() + ball.size());
            o.insert(o.end(), ball.begin(), ball.end());
            for (const auto& c : near) o.push_back(c.second);
            std::sort(o.begin(), o.end());
            o.erase(std::unique(o.begin(), o.end()), o.end());
        }
    }
    return out;
}

}  // namespace

CsrGraph knn_graph(const double* a, std::int64_t na, const double* b, std::int64_t nb, int dim, int k,
                   double radius, bool symmetric) {
    knn::arith::check_args(na, nb, dim, k, radius);

    CsrGraph g;
    g.n_rows = na;
    g.n_cols = nb;
    g.indptr.assign(static_cast<std::size_t>(na) + 1, 0);
    if (na == 0 || nb == 0) return g;

    const double r2 = radius >= 0.0 ? radius * radius : -1.0;
    const int kb = static_cast<int>(std::min<std::int64_t>(k, nb));
    const int ka = static_cast<int>(std::min<std::int64_t>(k, na));

    KdTree tree_a(a, na, dim);
    KdTree tree_b(b, nb, dim);
    std::vector<std::vector<std::int32_t>> rows = neighbours(tree_b, a, na, dim, kb, r2, tree_a.order());

    if (symmetric && ka > 0) {
        // k nearest points of a for every b_j, transposed into rows of a (ascending j per row).
        std::vector<std::vector<std::int32_t>> rev = neighbours(tree_a, b, nb, dim, ka, -1.0, tree_b.order());
        std::vector<std::int64_t> start(static_cast<std::size_t>(na) + 1, 0);
        for (const auto& r : rev)
            for (std::int32_t i : r) ++start[static_cast<std::size_t>(i) + 1];
        for (std::int64_t i = 0; i < na; ++i) start[i + 1] += start[i];
        std::vector<std::int32_t> cols(static_cast<std::size_t>(start[na]));
        std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
        for (std::int64_t j = 0; j < nb; ++j)
            for (std::int32_t i : rev[static_cast<std::size_t>(j)]) cols[fill[i]++] = static_cast<std::int32_t>(j);
        rev.clear();
        rev.shrink_to_fit();
#ifdef XMODAL_HAVE_OPENMP
#pragma omp parallel num_threads(xmodal::num_threads()) if (na >= kParallelMinRows)
#endif
        {
            std::vector<std::int32_t> merged;
#ifdef XMODAL_HAVE_OPENMP
#pragma omp for schedule(dynamic, 256)
#endif
            for (std::int64_t i = 0; i < na; ++i) {
                auto& r = rows[static_cast<std::size_t>(i)];
                merged.clear();
                std::set_union(r.begin(), r.end(), cols.begin() + start[i], cols.begin() + start[i + 1],
                               std::back_inserter(merged));
                r.assign(merged.begin(), merged.end());
            }
        }
    }

    for (std::int64_t i = 0; i < na; ++i) g.indptr[i + 1] = g.indptr[i] + static_cast<std::int64_t>(rows[i].size());
    const std::int64_t nnz = g.indptr[na];
    g.indices.resize(static_cast<std::size_t>(nnz));
    g.data.resize(static_cast<std::size_t>(nnz));
#ifdef XMODAL_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 256) num_threads(xmodal::num_threads()) if (na >= kParallelMinRows)
#endif
    for (std::int64_t i = 0; i < na; ++i) {
        const double* ai = a + i * dim;
        std::int64_t e = g.indptr[i];
        for (std::int32_t j : rows[static_cast<std::size_t>(i)]) {
            g.indices[e] = j;
            g.data[e] = std::sqrt(knn::arith::dist2(ai, b + static_cast<std::int64_t>(j) * dim, dim));
            ++e;
        }
    }
    return g;
}

}  // namespace xmodal
