// Region adjacency graph and per-edge statistics (see rag.hpp).
#include "xmodal/rag.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#ifdef XMODAL_HAVE_OPENMP
#include <omp.h>
#endif

#include "xmodal/common.hpp"

namespace xmodal::rag {
namespace {

constexpr uint64_t kMaxLabel = uint64_t(std::numeric_limits<uint32_t>::max()) - 2;

struct Run {
    uint64_t key;    // (u << 32) | v, u < v
    uint64_t count;  // faces
};

int chunks_for(int64_t rows, int64_t voxels) {
    int nt = std::max(1, xmodal::num_threads());
    if (voxels < (int64_t(1) << 15)) nt = 1;
    return static_cast<int>(std::min<int64_t>(nt, std::max<int64_t>(rows, 1)));
}

inline int64_t row_lo(int64_t rows, int chunks, int c) { return rows * c / chunks; }

void check_shape(const Shape& s) {
    for (int d = 0; d < 3; ++d)
        require(s[d] >= 1, "labels: expected a non-empty shape, got axis " + std::to_string(d) +
                               " of size " + std::to_string(s[d]));
}

template <class L>
inline bool skip(const Ignore& ig, L v) {
    return ig.active && uint64_t(v) == ig.label;
}

template <class L>
uint64_t max_label(const L* labels, int64_t n) {
    uint64_t m = 0;
#pragma omp parallel for reduction(max : m) num_threads(std::max(1, xmodal::num_threads())) \
    schedule(static) if (n > (int64_t(1) << 16))
    for (int64_t i = 0; i < n; ++i) m = std::max<uint64_t>(m, uint64_t(labels[i]));
    return m;
}

// Calls visit(p, q) for every face (p, q = p + unit step along z, y or x) of voxel p in rows
// [r0, r1) (row = z * Y + y), in raster order of p, then axis order z, y, x.
template <class Visit>
void for_each_face(const Shape& s, int64_t r0, int64_t r1, Visit&& visit) {
    const int64_t Y = s[1], X = s[2], Z = s[0];
    const int64_t plane = Y * X;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t z = r / Y, y = r % Y;
        const int64_t base = r * X;
        const bool has_z = z + 1 < Z, has_y = y + 1 < Y;
        for (int64_t x = 0; x < X; ++x) {
            const int64_t p = base + x;
            if (has_z) visit(p, p + plane);
            if (has_y) visit(p, p + X);
            if (x + 1 < X) visit(p, p + 1);
        }
    }
}

// Calls visit(c, p, q) for every in-volume link (p, q = p + offsets[c]) of voxel p in rows
// [r0, r1), in raster order of p, then channel order.
template <class Visit>
void for_each_link(const Shape& s, const int64_t* offsets, int64_t n_off, int64_t r0, int64_t r1,
                   Visit&& visit) {
    const int64_t Z = s[0], Y = s[1], X = s[2];
    std::vector<int64_t> delta(n_off), xlo(n_off), xhi(n_off);
    std::vector<char> ok(n_off);
    for (int64_t c = 0; c < n_off; ++c) {
        const int64_t* o = offsets + 3 * c;
        delta[c] = (o[0] * Y + o[1]) * X + o[2];
        xlo[c] = std::max<int64_t>(0, -o[2]);
        xhi[c] = std::min<int64_t>(X, X - o[2]);
    }
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t z = r / Y, y = r % Y;
        const int64_t base = r * X;
        for (int64_t c = 0; c < n_off; ++c) {
            const int64_t* o = offsets + 3 * c;
            const int64_t zz = z + o[0], yy = y + o[1];
            ok[c] = (zz >= 0 && zz < Z && yy >= 0 && yy < Y && xlo[c] < xhi[c]) ? 1 : 0;
        }
        for (int64_t x = 0; x < X; ++x) {
            const int64_t p = base + x;
            for (int64_t c = 0; c < n_off; ++c) {
                if (ok[c] && x >= xlo[c] && x < xhi[c]) visit(c, p, p + delta[c]);
            }
        }
    }
}

inline uint64_t pair_key(uint64_t a, uint64_t b) {
    return a < b ? (a << 32) | b : (b << 32) | a;
}

template <class L>
Graph build_impl(const L* labels, const Shape& s, const Ignore& ig, const int64_t* offsets,
                 int64_t n_off) {
    check_shape(s);
    require(n_off >= 0 && (n_off == 0 || offsets != nullptr), "offsets: expected (n, 3) offsets");
    const int64_t n = s[0] * s[1] * s[2];
    const int64_t rows = s[0] * s[1];
    const uint64_t mx = max_label(labels, n);
    if (mx > kMaxLabel)
        throw value_error("labels: expected label values < 2^32 - 2, got " + std::to_string(mx) +
                          " (relabel consecutively first)");
    Graph g;
    g.n_nodes = mx + 1;

    const int chunks = chunks_for(rows, n);
    std::vector<std::vector<Run>> runs(chunks);
#pragma omp parallel for schedule(static, 1) num_threads(chunks)
    for (int c = 0; c < chunks; ++c) {
        std::vector<Run>& out = runs[c];
        const int64_t r0 = row_lo(rows, chunks, c), r1 = row_lo(rows, chunks, c + 1);
        auto add = [&](uint64_t key, uint64_t count) {
            if (!out.empty() && out.back().key == key) {
                out.back().count += count;
            } else {
                out.push_back({key, count});
            }
        };
        for_each_face(s, r0, r1, [&](int64_t p, int64_t q) {
            const L a = labels[p], b = labels[q];
            if (a == b || skip(ig, a) || skip(ig, b)) return;
            add(pair_key(uint64_t(a), uint64_t(b)), 1);
        });
        if (n_off > 0) {
            for_each_link(s, offsets, n_off, r0, r1, [&](int64_t, int64_t p, int64_t q) {
                const L a = labels[p], b = labels[q];
                if (a == b || skip(ig, a) || skip(ig, b)) return;
                add(pair_key(uint64_t(a), uint64_t(b)), 0);
            });
        }
        std::sort(out.begin(), out.end(), [](const Run& x, const Run& y) { return x.key < y.key; });
        size_t k = 0;
        for (size_t i = 0; i < out.size(); ++i) {
            if (k > 0 && out[k - 1].key == out[i].key) {
                out[k - 1].count += out[i].count;
            } else {
                out[k++] = out[i];
            }
        }
        out.resize(k);
    }
    // k-way merge of the sorted per-chunk lists (pairwise; chunks are few).
    std::vector<Run> all = std::move(runs[0]);
    for (int c = 1; c < chunks; ++c) {
        std::vector<Run> merged;
        merged.reserve(all.size() + runs[c].size());
        size_t i = 0, j = 0;
        const auto& b = runs[c];
        while (i < all.size() || j < b.size()) {
            if (j == b.size() || (i < all.size() && all[i].key < b[j].key)) {
                merged.push_back(all[i++]);
            } else if (i == all.size() || b[j].key < all[i].key) {
                merged.push_back(b[j++]);
            } else {
                merged.push_back({all[i].key, all[i].count + b[j].count});
                ++i;
                ++j;
            }
        }
        all.swap(merged);
        std::vector<Run>().swap(runs[c]);
    }
    const uint64_t E = all.size();
    g.uv.resize(2 * E);
    g.n_faces.resize(E);
    g.row.assign(g.n_nodes + 1, 0);
    for (uint64_t e = 0; e < E; ++e) {
        const uint64_t u = all[e].key >> 32, v = all[e].key & 0xFFFFFFFFull;
        g.uv[2 * e] = u;
        g.uv[2 * e + 1] = v;
        g.n_faces[e] = all[e].count;
        ++g.row[u + 1];
    }
    for (uint64_t u = 0; u < g.n_nodes; ++u) g.row[u + 1] += g.row[u];
    return g;
}

// Sample gathering: edges' samples in raster order, then per-edge reduction.
template <class T, class Enumerate>
void reduce_features(const Graph& g, int64_t rows, int64_t n_vox, const double* quantiles,
                     int64_t nq, double* out, Enumerate&& enumerate) {
    const uint64_t E = g.n_edges();
    const int64_t ncol = 4 + nq;
    const int chunks = chunks_for(rows, n_vox);
    std::vector<uint64_t> cursor(size_t(chunks) * E, 0);
#pragma omp parallel for schedule(static, 1) num_threads(chunks)
    for (int c = 0; c < chunks; ++c) {
        uint64_t* cnt = cursor.data() + size_t(c) * E;
        enumerate(row_lo(rows, chunks, c), row_lo(rows, chunks, c + 1),
                  [&](int64_t e, T) { ++cnt[e]; });
    }
    std::vector<uint64_t> start(E + 1, 0);
    for (uint64_t e = 0; e < E; ++e) {
        uint64_t acc = start[e];
        for (int c = 0; c < chunks; ++c) {
            const uint64_t k = cursor[size_t(c) * E + e];
            cursor[size_t(c) * E + e] = acc;
            acc += k;
        }
        start[e + 1] = acc;
    }
    std::vector<T> samples(start[E]);
#pragma omp parallel for schedule(static, 1) num_threads(chunks)
    for (int c = 0; c < chunks; ++c) {
        uint64_t* cur = cursor.data() + size_t(c) * E;
        T* dst = samples.data();
        enumerate(row_lo(rows, chunks, c), row_lo(rows, chunks, c + 1),
                  [&](int64_t e, T v) { dst[cur[e]++] = v; });
    }
    std::vector<uint64_t>().swap(cursor);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const int nt = std::max(1, xmodal::num_threads());
#pragma omp parallel for schedule(dynamic, 256) num_threads(nt) if (E > 4096)
    for (int64_t e = 0; e < int64_t(E); ++e) {
        double* row = out + e * ncol;
        T* first = samples.data() + start[e];
        const uint64_t m = start[e + 1] - start[e];
        if (m == 0) {
            for (int64_t k = 0; k < ncol - 1; ++k) row[k] = nan;
            row[ncol - 1] = 0.0;
            continue;
        }
        double sum = 0.0, lo = double(first[0]), hi = double(first[0]);
        for (uint64_t i = 0; i < m; ++i) {
            const double v = double(first[i]);
            sum += v;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
        row[0] = sum / double(m);
        row[1] = lo;
        row[2] = hi;
        if (nq > 0) {
            std::sort(first, first + m);
            for (int64_t k = 0; k < nq; ++k) {
                // numpy's "linear" method, including its lerp formulation
                const double h = quantiles[k] * double(m - 1);
                double fl = std::floor(h);
                if (fl < 0) fl = 0;
                uint64_t i0 = std::min<uint64_t>(uint64_t(fl), m - 1);
                uint64_t i1 = std::min<uint64_t>(i0 + 1, m - 1);
                const double t = h - fl;
                const double a = double(first[i0]), b = double(first[i1]);
                const double d = b - a;
                row[3 + k] = t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
            }
        }
        row[ncol - 1] = double(m);
    }
}

void check_features(const Graph& g, const double* quantiles, int64_t nq) {
    require(nq >= 0, "quantiles: expected a list of values in [0, 1]");
    for (int64_t k = 0; k < nq; ++k)
        require(quantiles[k] >= 0.0 && quantiles[k] <= 1.0,
                "quantiles: expected values in [0, 1], got " + std::to_string(quantiles[k]));
    require(g.row.size() == g.n_nodes + 1 && g.uv.size() == 2 * g.n_edges(),
            "graph: inconsistent region adjacency graph");
}

// One-entry cache of the last edge lookup (consecutive faces usually join the same pair).
struct EdgeCache {
    uint64_t key = ~uint64_t(0);
    int64_t edge = -1;
    int64_t get(const Graph& g, uint64_t a, uint64_t b) {
        const uint64_t k = pair_key(a, b);
        if (k != key) {
            key = k;
            edge = (a < g.n_nodes && b < g.n_nodes) ? g.find(std::min(a, b), std::max(a, b)) : -1;
        }
        return edge;
    }
};

}  // namespace

int64_t Graph::find(uint64_t u, uint64_t v) const {
    if (u >= n_nodes) return -1;
    const uint64_t* first = uv.data();
    uint64_t lo = row[u], hi = row[u + 1];
    while (lo < hi) {
        const uint64_t mid = (lo + hi) / 2;
        const uint64_t w = first[2 * mid + 1];
        if (w < v) {
            lo = mid + 1;
        } else if (w > v) {
            hi = mid;
        } else {
            return int64_t(mid);
        }
    }
    return -1;
}

Graph build(const uint32_t* labels, const Shape& shape, const Ignore& ignore,
            const int64_t* offsets, int64_t n_offsets) {
    return build_impl(labels, shape, ignore, offsets, n_offsets);
}
Graph build(const uint64_t* labels, const Shape& shape, const Ignore& ignore,
            const int64_t* offsets, int64_t n_offsets) {
    return build_impl(labels, shape, ignore, offsets, n_offsets);
}

template <class L, class T>
void boundary_features(const L* labels, const Shape& s, const Ignore& ig, const Graph& g,
                       const T* boundary, const double* quantiles, int64_t nq, double* out) {
    check_shape(s);
    check_features(g, quantiles, nq);
    const int64_t rows = s[0] * s[1];
    auto enumerate = [&](int64_t r0, int64_t r1, auto&& emit) {
        EdgeCache cache;
        for_each_face(s, r0, r1, [&](int64_t p, int64_t q) {
            const L a = labels[p], b = labels[q];
            if (a == b || skip(ig, a) || skip(ig, b)) return;
            const int64_t e = cache.get(g, uint64_t(a), uint64_t(b));
            if (e < 0) return;
            emit(e, boundary[p]);
            emit(e, boundary[q]);
        });
    };
    reduce_features<T>(g, rows, s[0] * s[1] * s[2], quantiles, nq, out, enumerate);
}

template <class L, class T>
void affinity_features(const L* labels, const Shape& s, const Ignore& ig, const Graph& g,
                       const T* affinities, const int64_t* offsets, int64_t C,
                       const double* quantiles, int64_t nq, double* out) {
    check_shape(s);
    check_features(g, quantiles, nq);
    require(C >= 1 && offsets != nullptr, "offsets: expected one offset per affinity channel");
    const int64_t rows = s[0] * s[1];
    const int64_t n = s[0] * s[1] * s[2];
    auto enumerate = [&](int64_t r0, int64_t r1, auto&& emit) {
        EdgeCache cache;
        for_each_link(s, offsets, C, r0, r1, [&](int64_t c, int64_t p, int64_t q) {
            const L a = labels[p], b = labels[q];
            if (a == b || skip(ig, a) || skip(ig, b)) return;
            const int64_t e = cache.get(g, uint64_t(a), uint64_t(b));
            if (e < 0) return;
            emit(e, affinities[c * n + p]);
        });
    };
    reduce_features<T>(g, rows, n, quantiles, nq, out, enumerate);
}

#define XMODAL_RAG_INSTANTIATE(L, T)                                                             \
    template void boundary_features<L, T>(const L*, const Shape&, const Ignore&, const Graph&,   \
                                          const T*, const double*, int64_t, double*);            \
    template void affinity_features<L, T>(const L*, const Shape&, const Ignore&, const Graph&,   \
                                          const T*, const int64_t*, int64_t, const double*,      \
                                          int64_t, double*);
XMODAL_RAG_INSTANTIATE(uint32_t, float)
XMODAL_RAG_INSTANTIATE(uint32_t, double)
XMODAL_RAG_INSTANTIATE(uint64_t, float)
XMODAL_RAG_INSTANTIATE(uint64_t, double)
#undef XMODAL_RAG_INSTANTIATE

}  // namespace xmodal::rag
