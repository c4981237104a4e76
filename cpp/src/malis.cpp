// MALIS edge weights: see xmodal/malis.hpp for the definition.
#include "xmodal/malis.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xmodal/common.hpp"

namespace xmodal::malis {

namespace {

// Union-find with union by size and path halving.
struct DisjointSets {
    std::vector<int32_t> parent, size;
    explicit DisjointSets(int64_t n) : parent(size_t(n)), size(size_t(n), 1) {
        std::iota(parent.begin(), parent.end(), 0);
    }
    int32_t find(int32_t x) {
        while (parent[size_t(x)] != x) {
            parent[size_t(x)] = parent[size_t(parent[size_t(x)])];
            x = parent[size_t(x)];
        }
        return x;
    }
};

struct Grid {
    Shape shape;
    int ndim;
    int64_t n;
    std::array<int64_t, 3> stride;  // voxel strides of the (Z, Y, X) axes
    // The neighbour p - e_axis of voxel p for channel d, or -1 when outside the grid.
    int64_t neighbour(int64_t p, int d) const {
        const int axis = 3 - ndim + d;
        const int64_t coord = (p / stride[size_t(axis)]) % shape[size_t(axis)];
        return coord >= 1 ? p - stride[size_t(axis)] : -1;
    }
};

// Ground-truth object of every voxel (components of target-1 edges with >= 2 voxels; -1: none).
std::vector<int32_t> objects(const Grid& g, const std::vector<int64_t>& edges, const uint8_t* target,
                             int64_t* n_objects) {
    DisjointSets ds(g.n);
    for (int64_t e : edges) {
        if (!target[e]) continue;
        const int32_t a = ds.find(int32_t(e % g.n));
        const int32_t b = ds.find(int32_t(g.neighbour(e % g.n, int(e / g.n))));
        if (a == b) continue;
        const int32_t big = ds.size[size_t(a)] >= ds.size[size_t(b)] ? a : b;
        const int32_t small = big == a ? b : a;
        ds.parent[size_t(small)] = big;
        ds.size[size_t(big)] += ds.size[size_t(small)];
    }
    std::vector<int32_t> id(size_t(g.n), -1), object(size_t(g.n), -1);
    int32_t next = 0;
    for (int64_t p = 0; p < g.n; ++p) {
        const int32_t r = ds.find(int32_t(p));
        if (ds.size[size_t(r)] < 2) continue;
        if (id[size_t(r)] < 0) id[size_t(r)] = next++;
        object[size_t(p)] = id[size_t(r)];
    }
    *n_objects = next;
    return object;
}

// One Kruskal pass: `value[e]` orders the edges; adds to out[e] the same-object (positive) or
// different-object (negative) pairs joined by e, kept only on edges whose target is `keep_target`.
template <class T>
double kruskal_pass(const Grid& g, const std::vector<int64_t>& edges, const std::vector<T>& value,
                    const std::vector<int32_t>& object, const uint8_t* target, bool positive, double* out) {
    std::vector<int64_t> order(edges);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const T va = value[size_t(a)], vb = value[size_t(b)];
        return va > vb || (va == vb && a < b);
    });
    DisjointSets ds(g.n);
    std::vector<std::unordered_map<int32_t, int64_t>> counts(size_t(g.n));
    std::vector<int64_t> total(size_t(g.n), 0);
    for (int64_t p = 0; p < g.n; ++p)
        if (object[size_t(p)] >= 0) {
            counts[size_t(p)][object[size_t(p)]] = 1;
            total[size_t(p)] = 1;
        }
    double sum = 0;
    const bool keep_target = positive;
    for (int64_t e : order) {
        const int32_t a = ds.find(int32_t(e % g.n));
        const int32_t b = ds.find(int32_t(g.neighbour(e % g.n, int(e / g.n))));
        if (a == b) continue;
        const int32_t big = counts[size_t(a)].size() >= counts[size_t(b)].size() ? a : b;
        const int32_t small = big == a ? b : a;
        double same = 0;
        auto& cb = counts[size_t(big)];
        for (const auto& kv : counts[size_t(small)]) {
            auto it = cb.find(kv.first);
            if (it != cb.end()) {
                same += double(kv.second) * double(it->second);
                it->second += kv.second;
            } else {
                cb.emplace(kv.first, kv.second);
            }
        }
        const double pairs = positive ? same : double(total[size_t(a)]) * double(total[size_t(b)]) - same;
        if (pairs > 0 && (target[e] != 0) == keep_target) {
            out[e] += pairs;
            sum += pairs;
        }
        std::unordered_map<int32_t, int64_t>().swap(counts[size_t(small)]);
        total[size_t(big)] = total[size_t(a)] + total[size_t(b)];
        ds.parent[size_t(small)] = big;
    }
    return sum;
}

template <class T>
Stats weights_impl(const T* affinity, const uint8_t* target, const uint8_t* mask, const Shape& shape, int ndim,
                   double* weight_positive, double* weight_negative) {
    require(ndim >= 1 && ndim <= 3, "ndim: expected 1, 2 or 3, got " + std::to_string(ndim));
    Grid g{shape, ndim, shape[0] * shape[1] * shape[2], {shape[1] * shape[2], shape[2], 1}};
    for (int64_t s : shape) require(s >= 0, "shape: expected non-negative extents");
    require(g.n < (int64_t(1) << 31), "affinities: expected fewer than 2^31 voxels");
    const int64_t n_values = int64_t(ndim) * g.n;
    std::fill(weight_positive, weight_positive + n_values, 0.0);
    std::fill(weight_negative, weight_negative + n_values, 0.0);
    std::vector<int64_t> edges;
    edges.reserve(size_t(n_values));
    for (int d = 0; d < ndim; ++d)
        for (int64_t p = 0; p < g.n; ++p) {
            const int64_t e = int64_t(d) * g.n + p;
            if ((mask && !mask[e]) || g.neighbour(p, d) < 0) continue;
            require(std::isfinite(double(affinity[e])), "affinities: expected finite values, got " +
                                                             std::to_string(double(affinity[e])));
            edges.push_back(e);
        }
    Stats st;
    st.n_edges = int64_t(edges.size());
    const std::vector<int32_t> object = objects(g, edges, target, &st.n_objects);
    std::vector<T> value(size_t(n_values), T(0));
    for (int64_t e : edges) value[size_t(e)] = std::min(affinity[e], T(target[e] ? 1 : 0));
    st.pairs_positive = kruskal_pass(g, edges, value, object, target, true, weight_positive);
    poll_interrupt();
    for (int64_t e : edges) value[size_t(e)] = std::max(affinity[e], T(target[e] ? 1 : 0));
    st.pairs_negative = kruskal_pass(g, edges, value, object, target, false, weight_negative);
    return st;
}

}  // namespace

Stats weights(const float* affinity, const uint8_t* target, const uint8_t* mask, const Shape& shape, int ndim,
              double* weight_positive, double* weight_negative) {
    return weights_impl(affinity, target, mask, shape, ndim, weight_positive, weight_negative);
}

Stats weights(const double* affinity, const uint8_t* target, const uint8_t* mask, const Shape& shape, int ndim,
              double* weight_positive, double* weight_negative) {
    return weights_impl(affinity, target, mask, shape, ndim, weight_positive, weight_negative);
}

}  // namespace xmodal::malis
