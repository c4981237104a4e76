// Mutex watershed: edge generation, parallel LSD radix sort, Kruskal with mutex constraints.
#include "xmodal/mws.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#ifdef XMODAL_HAVE_OPENMP
#include <omp.h>
#endif

#include "xmodal/common.hpp"

namespace xmodal::mws {
namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// ---- order-preserving keys: ascending key <=> descending weight --------------------------------
inline uint32_t descending_key(float w) {
    w += 0.0f;  // -0 -> +0, so that -0 and +0 tie as they compare equal
    uint32_t u;
    std::memcpy(&u, &w, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending with w
    return ~u;
}
inline uint64_t descending_key(double w) {
    w += 0.0;
    uint64_t u;
    std::memcpy(&u, &w, sizeof u);
    u = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
    return ~u;
}

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// The thread number inside an OpenMP parallel region (0 without OpenMP).
inline int this_thread() {
#ifdef XMODAL_HAVE_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// ---- parallel stable LSD radix sort on a key of `key_bits` bits ---------------------------------
// `key(item)` returns the key (uint64). Items with equal keys keep their input order, so the result
// is the same for any number of threads.
template <class Item, class KeyFn>
void radix_sort(std::vector<Item>& a, int key_bits, KeyFn key) {
    constexpr int kBits = 11;
    constexpr size_t kBuckets = size_t(1) << kBits;
    const size_t n = a.size();
    if (n < 2) return;
    int nt = 1;
#ifdef XMODAL_HAVE_OPENMP
    nt = std::max(1, xmodal::num_threads());
    if (n < (size_t(1) << 16)) nt = 1;
#endif
    std::vector<Item> b(n);
    std::vector<size_t> hist(size_t(nt) * kBuckets);
    Item* src = a.data();
    Item* dst = b.data();
    for (int shift = 0; shift < key_bits; shift += kBits) {
        xmodal::poll_interrupt();
        std::fill(hist.begin(), hist.end(), size_t(0));
        const uint64_t dmask = kBuckets - 1;
#pragma omp parallel num_threads(nt)
        {
            const int t = this_thread();
            const size_t lo = n * size_t(t) / size_t(nt), hi = n * size_t(t + 1) / size_t(nt);
            size_t* h = hist.data() + size_t(t) * kBuckets;
            for (size_t i = lo; i < hi; ++i) ++h[(key(src[i]) >> shift) & dmask];
        }
        // Skip a pass in which every key has the same digit.
        bool trivial = false;
        for (size_t d = 0; d < kBuckets; ++d) {
            size_t total = 0;
            for (int t = 0; t < nt; ++t) total += hist[size_t(t) * kBuckets + d];
            if (total == n) trivial = true;
            if (total) break;
        }
        if (trivial) continue;
        size_t run = 0;
        for (size_t d = 0; d < kBuckets; ++d)
            for (int t = 0; t < nt; ++t) {
                size_t c = hist[size_t(t) * kBuckets + d];
                hist[size_t(t) * kBuckets + d] = run;
                run += c;
            }
#pragma omp parallel num_threads(nt)
        {
            const int t = this_thread();
            const size_t lo = n * size_t(t) / size_t(nt), hi = n * size_t(t + 1) / size_t(nt);
            size_t* h = hist.data() + size_t(t) * kBuckets;
            for (size_t i = lo; i < hi; ++i) dst[h[(key(src[i]) >> shift) & dmask]++] = src[i];
        }
        std::swap(src, dst);
    }
    if (src != a.data()) a.swap(b);
}

// ---- hash set of unordered root pairs (never erased: stale pairs are never queried) -------------
class PairSet {
public:
    PairSet() { rehash(1024); }
    static uint64_t pack(uint32_t a, uint32_t b) {
        return a < b ? (uint64_t(a) << 32) | b : (uint64_t(b) << 32) | a;
    }
    bool contains(uint64_t k) const {
        size_t i = slot(k);
        while (true) {
            const uint64_t s = table_[i];
            if (s == k) return true;
            if (s == kEmpty) return false;
            i = (i + 1) & mask_;
        }
    }
    // Returns true when k was not there before.
    bool insert(uint64_t k) {
        if ((size_ + 1) * 2 > table_.size()) rehash(table_.size() * 2);
        size_t i = slot(k);
        while (true) {
            const uint64_t s = table_[i];
            if (s == k) return false;
            if (s == kEmpty) {
                table_[i] = k;
                ++size_;
                return true;
            }
            i = (i + 1) & mask_;
        }
    }
    size_t size() const { return size_; }
    size_t bytes() const { return table_.size() * sizeof(uint64_t); }

private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> shift_); }
    void rehash(size_t cap) {
        std::vector<uint64_t> old(cap, kEmpty);
        old.swap(table_);
        mask_ = cap - 1;
        int logc = 0;
        while ((size_t(1) << logc) < cap) ++logc;
        shift_ = 64 - logc;
        size_ = 0;
        for (uint64_t k : old)
            if (k != kEmpty) {
                size_t i = slot(k);
                while (table_[i] != kEmpty) i = (i + 1) & mask_;
                table_[i] = k;
                ++size_;
            }
    }
    std::vector<uint64_t> table_;
    size_t mask_ = 0;
    int shift_ = 64;
    size_t size_ = 0;
};

// ---- union-find with mutex constraints --------------------------------------------------------
class MutexClustering {
public:
    explicit MutexClustering(uint32_t n) : parent_(n), slot_(n, 0) {
        for (uint32_t i = 0; i < n; ++i) parent_[i] = i;
        lists_.emplace_back();  // slot 0 = no list
    }

    void prefetch(uint32_t x) const {
#if defined(__GNUC__)
        __builtin_prefetch(parent_.data() + x);
#else
        (void)x;
#endif
    }

    uint32_t find(uint32_t x) {
        while (parent_[x] != x) {
            parent_[x] = parent_[parent_[x]];
            x = parent_[x];
        }
        return x;
    }

    // Seeds: nodes with the same nonzero seed are merged now; different seeds never merge.
    void set_seeds(const uint64_t* seeds, uint32_t n) {
        seed_.assign(n, 0);
        std::unordered_map<uint64_t, uint32_t> first;
        for (uint32_t i = 0; i < n; ++i) {
            if (!seeds[i]) continue;
            auto it = first.emplace(seeds[i], i);
            if (it.second) {
                seed_[i] = seeds[i];
            } else {
                parent_[i] = it.first->second;  // roots stay the first occurrence
            }
        }
    }

    void repel(uint32_t u, uint32_t v) {
        const uint32_t a = find(u), b = find(v);
        if (a == b) return;
        if (pairs_.insert(PairSet::pack(a, b))) {
            list(a).push_back(b);
            list(b).push_back(a);
        }
    }

    // Returns true when u and v were merged.
    bool attract(uint32_t u, uint32_t v) {
        uint32_t a = find(u), b = find(v);
        if (a == b) return false;
        if (!seed_.empty() && seed_[a] && seed_[b] && seed_[a] != seed_[b]) return false;
        if (slot_[a] && slot_[b] && pairs_.contains(PairSet::pack(a, b))) return false;
        // The root with the longer mutex list survives: lists merge smaller into larger.
        if (list_size(a) < list_size(b)) std::swap(a, b);
        parent_[b] = a;
        if (!seed_.empty() && !seed_[a]) seed_[a] = seed_[b];
        if (slot_[b]) {
            std::vector<uint32_t> moved;
            moved.swap(lists_[slot_[b]]);
            free_.push_back(slot_[b]);
            slot_[b] = 0;
            std::vector<uint32_t>& la = list(a);
            for (uint32_t x : moved) {
                const uint32_t r = find(x);
                if (pairs_.insert(PairSet::pack(a, r))) la.push_back(r);
            }
        }
        return true;
    }

    // Consecutive labels from 1 in order of first occurrence; excluded nodes get 0.
    uint64_t labels(uint32_t* out, const uint8_t* include) {
        const uint32_t n = uint32_t(parent_.size());
        // Reuse slot_ as root -> label map.
        std::vector<std::vector<uint32_t>>().swap(lists_);
        std::fill(slot_.begin(), slot_.end(), 0u);
        uint32_t next = 0;
        for (uint32_t i = 0; i < n; ++i) {
            if (include && !include[i]) {
                out[i] = 0;
                continue;
            }
            const uint32_t r = find(i);
            if (!slot_[r]) slot_[r] = ++next;
            out[i] = slot_[r];
        }
        return next;
    }

    size_t n_mutexes() const { return pairs_.size(); }
    size_t state_bytes() const {
        size_t b = parent_.size() * 8 + pairs_.bytes() + seed_.size() * 8;
        for (const auto& l : lists_) b += l.capacity() * 4 + sizeof l;
        return b;
    }

private:
    size_t list_size(uint32_t r) const { return slot_[r] ? lists_[slot_[r]].size() : 0; }
    std::vector<uint32_t>& list(uint32_t r) {
        if (!slot_[r]) {
            if (!free_.empty()) {
                slot_[r] = free_.back();
                free_.pop_back();
            } else {
                slot_[r] = uint32_t(lists_.size());
                lists_.emplace_back();
            }
        }
        return lists_[slot_[r]];
    }

    std::vector<uint32_t> parent_;
    std::vector<uint32_t> slot_;  // root -> index in lists_ (0: none)
    std::vector<std::vector<uint32_t>> lists_;
    std::vector<uint32_t> free_;
    std::vector<uint64_t> seed_;
    PairSet pairs_;
};

// ---- grid edges ----------------------------------------------------------------------------------
struct ChannelGeometry {
    int64_t lo[3], hi[3];  // valid source range per axis
    int64_t delta;         // linear offset of the neighbour
    int64_t step[3];       // regular subsampling of the source voxels (1 = all)
    bool attractive;       // classic weighting: attractive channel
    bool empty;
    bool regular;             // step > 1 along some axis (and not random)
    bool random;              // keep each edge with probability 1 / prod(step)
    uint64_t keep_threshold;  // random: keep when hash < keep_threshold
};

struct Grid {
    int64_t Z, Y, X, n, C;
    std::vector<ChannelGeometry> ch;
};

Grid make_grid(const GridSpec& s) {
    Grid g;
    g.Z = s.shape[0];
    g.Y = s.shape[1];
    g.X = s.shape[2];
    require(g.Z >= 1 && g.Y >= 1 && g.X >= 1, "affinities: spatial shape must be positive");
    g.n = g.Z * g.Y * g.X;
    require(g.n < (int64_t(1) << 32) - 1,
            "affinities: at most 2^32 - 2 voxels in one mutex watershed, got " +
                std::to_string(g.n) + " (use blockwise_mutex_watershed)");
    g.C = s.n_channels;
    require(g.C >= 1, "affinities: expected at least one channel");
    require(s.offsets != nullptr, "offsets: missing");
    require(s.n_attractive >= 0 && s.n_attractive <= g.C, "n_attractive: out of range");
    for (int d = 0; d < 3; ++d) require(s.strides[d] >= 1, "strides: must be positive");
    if (s.channel_strides)
        for (int64_t i = 0; i < 3 * g.C; ++i)
            require(s.channel_strides[i] >= 1, "strides: must be positive");
    if (s.bias)
        for (int64_t c = 0; c < g.C; ++c) require(std::isfinite(s.bias[c]), "bias: must be finite");
    const int64_t dims[3] = {g.Z, g.Y, g.X};
    const int64_t ones[3] = {1, 1, 1};
    g.ch.resize(size_t(g.C));
    for (int64_t c = 0; c < g.C; ++c) {
        ChannelGeometry& cg = g.ch[size_t(c)];
        cg.empty = false;
        cg.delta = 0;
        int64_t stride = g.n;
        for (int d = 0; d < 3; ++d) {
            const int64_t o = s.offsets[c * 3 + d];
            stride /= dims[d];
            if (o >= dims[d] || o <= -dims[d]) {  // leaves the volume (no overflow below)
                cg.empty = true;
                cg.lo[d] = cg.hi[d] = 0;
                continue;
            }
            cg.lo[d] = std::max<int64_t>(0, -o);
            cg.hi[d] = std::min<int64_t>(dims[d], dims[d] - o);
            cg.delta += o * stride;
        }
        bool zero = true;
        for (int d = 0; d < 3; ++d) zero = zero && s.offsets[c * 3 + d] == 0;
        if (zero) cg.empty = true;  // a self-loop is no edge
        cg.attractive = c < s.n_attractive;
        // Subsampling: per-channel strides apply to every edge of the channel; the single stride
        // tuple applies to the repulsive channels (c >= n_attractive) only.
        const int64_t* st = s.channel_strides ? s.channel_strides + 3 * c
                                              : (cg.attractive ? ones : s.strides.data());
        bool sub = false;
        double keep = 1.0;
        for (int d = 0; d < 3; ++d) {
            cg.step[d] = st[d];
            sub = sub || st[d] > 1;
            keep /= double(st[d]);
        }
        cg.random = sub && s.randomize_strides;
        cg.regular = sub && !s.randomize_strides;
        if (!cg.regular)
            for (int d = 0; d < 3; ++d) cg.step[d] = 1;
        cg.keep_threshold = keep >= 1.0 ? ~uint64_t(0) : uint64_t(std::ldexp(keep, 64));
    }
    return g;
}

// Calls emit(p, q) for every valid edge of channel c in slice z, in ascending p.
template <class Emit>
inline void for_edges_in_slice(const Grid& g, const GridSpec& s, int64_t c, int64_t z, Emit&& emit) {
    const ChannelGeometry& cg = g.ch[size_t(c)];
    if (cg.empty || z < cg.lo[0] || z >= cg.hi[0]) return;
    if (cg.regular && z % cg.step[0] != 0) return;
    const int64_t ystep = cg.step[1], xstep = cg.step[2];
    // first multiples of the strides in range (the grid is anchored at voxel 0)
    const int64_t y0 = (cg.lo[1] + ystep - 1) / ystep * ystep;
    const int64_t x0 = (cg.lo[2] + xstep - 1) / xstep * xstep;
    // locals, so that the compiler need not reload them after every store of the caller's emit
    const uint8_t* mask = s.mask;
    const bool random = cg.random;
    const uint64_t keep = cg.keep_threshold, seed = s.seed;
    const int64_t hi1 = cg.hi[1], hi2 = cg.hi[2], delta = cg.delta, n = g.n, X = g.X, Y = g.Y;
    for (int64_t y = y0; y < hi1; y += ystep) {
        const int64_t row = (z * Y + y) * X;
        for (int64_t x = x0; x < hi2; x += xstep) {
            const int64_t p = row + x;
            const int64_t q = p + delta;
            if (mask && !(mask[p] && mask[q])) continue;
            if (random && splitmix64(seed ^ splitmix64(uint64_t(c * n + p))) >= keep) continue;
            emit(p, q);
        }
    }
}

// Throws value_error naming the first (channel, slice) task that met a non-finite weight.
inline void check_finite_tasks(const std::vector<uint8_t>& bad, int64_t Z) {
    for (size_t t = 0; t < bad.size(); ++t)
        if (bad[t])
            throw value_error("affinities: expected finite values, found a non-finite weight in channel " +
                              std::to_string(int64_t(t) / Z) + " (z slice " +
                              std::to_string(int64_t(t) % Z) + ")");
}

template <class T, bool Signed>
Stats grid_impl(const T* affs, const GridSpec& s, uint32_t* labels) {
    Stats st;
    const Grid g = make_grid(s);
    const int64_t n = g.n, C = g.C, Z = g.Z;
    int pbits = 0;
    while ((int64_t(1) << pbits) < n) ++pbits;
    int cbits = 0;
    while ((int64_t(1) << cbits) < C) ++cbits;
    // Signed mode keeps each edge's sign in the top bit of its id (fast path: bit 31, so one id bit
    // fewer; other path: bit 63), so that the clustering never reads the affinities again.
    const bool fast = std::is_same<T, float>::value && pbits + cbits + (Signed ? 1 : 0) <= 32;
    require(C < (int64_t(1) << 31), "affinities: at most 2^31 - 1 channels");
    const int nt = std::max(1, xmodal::num_threads());
    std::vector<T> bias_t(size_t(C), T(0));
    if (Signed)
        for (int64_t c = 0; c < C; ++c) bias_t[size_t(c)] = T(s.bias[c]);

    auto t0 = clock_type::now();
    // Pass 1: count the edges of every (channel, slice) task.
    const int64_t n_tasks = C * Z;
    std::vector<uint64_t> start(size_t(n_tasks) + 1, 0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t t = 0; t < n_tasks; ++t) {
        uint64_t cnt = 0;
        for_edges_in_slice(g, s, t / Z, t % Z, [&](int64_t, int64_t) { ++cnt; });
        start[size_t(t) + 1] = cnt;
    }
    for (int64_t t = 0; t < n_tasks; ++t) start[size_t(t) + 1] += start[size_t(t)];
    const uint64_t m = start[size_t(n_tasks)];
    st.n_edges = m;
    std::vector<uint8_t> bad(size_t(n_tasks), 0);

    // Processing weight (higher = earlier) of edge (c, p). Signed mode: |affinity + bias|, and
    // `attract` set when affinity + bias > 0; classic mode: the affinity of an attractive channel or
    // 1 - affinity of a repulsive one (`attract` untouched: the channel decides).
    auto edge_value = [&](int64_t c, int64_t p, bool& attract) -> T {
        const T a = affs[c * n + p];
        if (Signed) {
            const T sv = (s.invert ? T(1) - a : a) + bias_t[size_t(c)];
            attract = sv > T(0);
            return std::abs(sv);
        }
        return (g.ch[size_t(c)].attractive != s.invert) ? a : T(1) - a;
    };

    // Compact per-channel tables for the clustering loop (cheaper to index than ChannelGeometry).
    std::vector<int64_t> deltas(static_cast<size_t>(C));
    std::vector<uint8_t> attractive_channel(static_cast<size_t>(C));
    for (int64_t c = 0; c < C; ++c) {
        deltas[size_t(c)] = g.ch[size_t(c)].delta;
        attractive_channel[size_t(c)] = g.ch[size_t(c)].attractive;
    }
    const int64_t* delta_of = deltas.data();
    const uint8_t* attractive_of = attractive_channel.data();

    auto cluster_order = [&](MutexClustering& mc, int64_t c, int64_t p, bool attractive) {
        const int64_t q = p + delta_of[c];
        if (attractive) {
            if (mc.attract(uint32_t(p), uint32_t(q))) ++st.n_merges;
        } else {
            mc.repel(uint32_t(p), uint32_t(q));
        }
    };

    if (fast) {
        std::vector<uint64_t> items(m);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t t = 0; t < n_tasks; ++t) {
            uint64_t* out = items.data() + start[size_t(t)];
            const int64_t c = t / Z;
            const uint64_t chigh = uint64_t(c) << pbits;
            uint32_t nonfinite = 0;  // branch-free: exponent bits all ones = inf or nan
            for_edges_in_slice(g, s, c, t % Z, [&](int64_t p, int64_t) {
                bool attract = false;
                const float w = float(edge_value(c, p, attract));
                const uint64_t sign = attract ? (uint64_t(1) << 31) : 0;
                uint32_t bits;
                std::memcpy(&bits, &w, sizeof bits);
                nonfinite |= uint32_t((~bits & 0x7F800000u) == 0);
                *out++ = (uint64_t(descending_key(w)) << 32) | sign | (chigh | uint64_t(p));
            });
            bad[size_t(t)] = uint8_t(nonfinite);
        }
        std::vector<uint64_t>().swap(start);
        check_finite_tasks(bad, Z);
        st.seconds_edges = seconds_since(t0);
        st.bytes_per_edge = 8;
        t0 = clock_type::now();
        radix_sort(items, 32, [](uint64_t v) { return v >> 32; });
        st.seconds_sort = seconds_since(t0);
        t0 = clock_type::now();
        MutexClustering mc{uint32_t(n)};
        if (s.seeds) mc.set_seeds(s.seeds, uint32_t(n));
        const uint64_t pmask = (uint64_t(1) << pbits) - 1;
        const uint32_t idmask = Signed ? 0x7FFFFFFFu : 0xFFFFFFFFu;
        constexpr uint64_t kAhead = 16;  // prefetch the union-find entries of a later edge
        for (uint64_t i = 0; i < m; ++i) {
            if ((i & 0xFFFF) == 0) xmodal::poll_interrupt();
            if (i + kAhead < m) {
                const uint32_t nid = uint32_t(items[i + kAhead]) & idmask;
                const int64_t np_ = int64_t(nid & pmask);
                mc.prefetch(uint32_t(np_));
                mc.prefetch(uint32_t(np_ + delta_of[nid >> pbits]));
            }
            const uint32_t raw = uint32_t(items[i]);
            const uint32_t id = raw & idmask;
            const int64_t c = int64_t(id >> pbits);
            cluster_order(mc, c, int64_t(id & pmask), Signed ? bool(raw >> 31) : bool(attractive_of[c]));
        }
        st.peak_bytes = 16 * m + mc.state_bytes();
        std::vector<uint64_t>().swap(items);
        st.n_mutexes = mc.n_mutexes();
        st.n_labels = mc.labels(labels, s.mask);
        st.seconds_cluster = seconds_since(t0);
    } else {
        struct Item {
            uint64_t key;
            uint64_t id;  // c * n + p (signed mode: bit 63 = attractive)
        };
        std::vector<Item> items(m);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t t = 0; t < n_tasks; ++t) {
            Item* out = items.data() + start[size_t(t)];
            const int64_t c = t / Z;
            bool finite = true;
            for_edges_in_slice(g, s, c, t % Z, [&](int64_t p, int64_t) {
                bool attract = false;
                const double w = double(edge_value(c, p, attract));
                const uint64_t sign = attract ? (uint64_t(1) << 63) : 0;
                finite = finite && std::isfinite(w);
                *out++ = Item{descending_key(w), sign | uint64_t(c * n + p)};
            });
            bad[size_t(t)] = !finite;
        }
        std::vector<uint64_t>().swap(start);
        check_finite_tasks(bad, Z);
        st.seconds_edges = seconds_since(t0);
        st.bytes_per_edge = sizeof(Item);
        t0 = clock_type::now();
        radix_sort(items, 64, [](const Item& v) { return v.key; });
        st.seconds_sort = seconds_since(t0);
        t0 = clock_type::now();
        MutexClustering mc{uint32_t(n)};
        if (s.seeds) mc.set_seeds(s.seeds, uint32_t(n));
        constexpr uint64_t kSign = uint64_t(1) << 63;
        for (uint64_t i = 0; i < m; ++i) {
            if ((i & 0xFFFF) == 0) xmodal::poll_interrupt();
            const Item& v = items[i];
            const uint64_t id = v.id & ~kSign;
            const int64_t c = int64_t(id / uint64_t(n));
            cluster_order(mc, c, int64_t(id % uint64_t(n)), Signed ? (v.id & kSign) != 0 : bool(attractive_of[c]));
        }
        st.peak_bytes = 2 * sizeof(Item) * m + mc.state_bytes();
        std::vector<Item>().swap(items);
        st.n_mutexes = mc.n_mutexes();
        st.n_labels = mc.labels(labels, s.mask);
        st.seconds_cluster = seconds_since(t0);
    }
    return st;
}

template <class T>
Stats grid_dispatch(const T* affs, const GridSpec& s, uint32_t* labels) {
    require(affs != nullptr && labels != nullptr, "affinities: missing buffer");
    return s.bias ? grid_impl<T, true>(affs, s, labels) : grid_impl<T, false>(affs, s, labels);
}

}  // namespace

Stats grid_mutex_watershed(const float* affinities, const GridSpec& spec, uint32_t* labels) {
    return grid_dispatch(affinities, spec, labels);
}
Stats grid_mutex_watershed(const double* affinities, const GridSpec& spec, uint32_t* labels) {
    return grid_dispatch(affinities, spec, labels);
}

Stats graph_mutex_watershed(uint64_t n_nodes, const uint64_t* uv, const double* weights,
                            uint64_t n_edges, const uint64_t* mutex_uv,
                            const double* mutex_weights, uint64_t n_mutex, const uint64_t* seeds,
                            uint32_t* labels) {
    require(n_nodes < (uint64_t(1) << 32) - 1, "n_nodes: at most 2^32 - 2 nodes");
    require(labels != nullptr || n_nodes == 0, "labels: missing buffer");
    require((uv && weights) || n_edges == 0, "edges: missing buffer");
    require((mutex_uv && mutex_weights) || n_mutex == 0, "mutex_edges: missing buffer");
    for (uint64_t i = 0; i < 2 * n_edges; ++i)
        require(uv[i] < n_nodes, "edges: node id " + std::to_string(uv[i]) + " >= n_nodes");
    for (uint64_t i = 0; i < 2 * n_mutex; ++i)
        require(mutex_uv[i] < n_nodes,
                "mutex_edges: node id " + std::to_string(mutex_uv[i]) + " >= n_nodes");
    for (uint64_t i = 0; i < n_edges; ++i)
        require(std::isfinite(weights[i]), "weights: expected finite values, got a non-finite weight");
    for (uint64_t j = 0; j < n_mutex; ++j)
        require(std::isfinite(mutex_weights[j]),
                "mutex_weights: expected finite values, got a non-finite weight");
    Stats st;
    auto t0 = clock_type::now();
    struct Item {
        uint64_t key;
        uint64_t id;
    };
    const uint64_t m = n_edges + n_mutex;
    std::vector<Item> items(m);
    for (uint64_t i = 0; i < n_edges; ++i) items[i] = Item{descending_key(weights[i]), i};
    for (uint64_t j = 0; j < n_mutex; ++j)
        items[n_edges + j] = Item{descending_key(mutex_weights[j]), n_edges + j};
    st.n_edges = m;
    st.bytes_per_edge = sizeof(Item);
    st.seconds_edges = seconds_since(t0);
    t0 = clock_type::now();
    radix_sort(items, 64, [](const Item& v) { return v.key; });
    st.seconds_sort = seconds_since(t0);
    t0 = clock_type::now();
    MutexClustering mc{uint32_t(n_nodes)};
    if (seeds) mc.set_seeds(seeds, uint32_t(n_nodes));
    for (uint64_t i = 0; i < m; ++i) {
        if ((i & 0xFFFF) == 0) xmodal::poll_interrupt();
        const Item& v = items[i];
        if (v.id < n_edges) {
            if (mc.attract(uint32_t(uv[2 * v.id]), uint32_t(uv[2 * v.id + 1]))) ++st.n_merges;
        } else {
            const uint64_t j = v.id - n_edges;
            mc.repel(uint32_t(mutex_uv[2 * j]), uint32_t(mutex_uv[2 * j + 1]));
        }
    }
    st.peak_bytes = 2 * sizeof(Item) * m + mc.state_bytes();
    std::vector<Item>().swap(items);
    st.n_mutexes = mc.n_mutexes();
    st.n_labels = n_nodes ? mc.labels(labels, nullptr) : 0;
    st.seconds_cluster = seconds_since(t0);
    return st;
}

}  // namespace xmodal::mws
