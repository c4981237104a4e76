// GASP: agglomerative clustering of signed graphs with lazy priority updates (see gasp.hpp).
#include "xmodal/gasp.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "xmodal/common.hpp"

namespace xmodal::gasp {
namespace {

constexpr uint8_t kDead = 1;        // folded into another edge, or contracted
constexpr uint8_t kConstraint = 2;  // cannot-link between the two clusters it joins
constexpr uint8_t kNoMerge = 4;     // taking it installs a cannot-link instead of contracting
constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

// Adjacency entries live in one pool; each cluster owns a singly linked list of them, so merging
// two clusters concatenates lists (no allocation, no copying).
struct Adj {
    uint32_t node;  // a node of the neighbouring cluster (resolve with find)
    uint32_t edge;
    uint32_t next;  // next entry of the same cluster, or kNone
};

struct Entry {
    double key;
    uint32_t edge;
};

// std::push_heap builds a max-heap for "less": larger key first, then smaller edge id.
struct EntryLess {
    bool operator()(const Entry& a, const Entry& b) const {
        if (a.key != b.key) return a.key < b.key;
        return a.edge > b.edge;
    }
};

// 4-ary max-heap of queue entries (fewer levels than a binary heap: cheaper pops).
class QuadHeap {
public:
    static bool before(const Entry& x, const Entry& y) {  // x is taken before y
        return x.key > y.key || (x.key == y.key && x.edge < y.edge);
    }
    bool empty() const { return a_.empty(); }
    const Entry& top() const { return a_.front(); }
    void reserve(size_t n) { a_.reserve(n); }
    void push(const Entry& e) {
        size_t i = a_.size();
        a_.push_back(e);
        while (i > 0) {
            const size_t p = (i - 1) / 4;
            if (!before(e, a_[p])) break;
            a_[i] = a_[p];
            i = p;
        }
        a_[i] = e;
    }
    void pop() {
        const Entry last = a_.back();
        a_.pop_back();
        if (!a_.empty()) sift_down(0, last);
    }
    // Take all entries of v and order them (O(n)).
    void assign(std::vector<Entry>& v) {
        a_.swap(v);
        if (a_.size() < 2) return;
        for (size_t i = (a_.size() - 2) / 4 + 1; i-- > 0;) sift_down(i, a_[i]);
    }

private:
    void sift_down(size_t i, const Entry e) {
        const size_t n = a_.size();
        for (;;) {
            const size_t c = 4 * i + 1;
            if (c >= n) break;
            size_t best = c;
            const size_t end = std::min(c + 4, n);
            for (size_t k = c + 1; k < end; ++k) {
                if (before(a_[k], a_[best])) best = k;
            }
            if (!before(a_[best], e)) break;
            a_[i] = a_[best];
            i = best;
        }
        a_[i] = e;
    }
    std::vector<Entry> a_;
};

// Order-preserving map of a double to uint64 (ascending with the value; -0 and +0 equal).
inline uint64_t ordered_bits(double w) {
    w += 0.0;
    uint64_t u;
    std::memcpy(&u, &w, sizeof u);
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Sort entries by descending key, then ascending edge id (the queue order), by a stable LSD
// radix sort on the key: the input is in ascending edge order, so ties keep that order.
void sort_entries(std::vector<Entry>& a) {
    const size_t n = a.size();
    if (n < 2) return;
    if (n < 2048) {
        std::sort(a.begin(), a.end(), [](const Entry& x, const Entry& y) { return EntryLess{}(y, x); });
        return;
    }
    constexpr int kBits = 11;
    constexpr size_t kBuckets = size_t(1) << kBits;
    std::vector<uint64_t> key(n), key2(n);
    for (size_t i = 0; i < n; ++i) key[i] = ~ordered_bits(a[i].key);  // ascending = descending w
    std::vector<Entry> b(n);
    std::vector<size_t> count(kBuckets);
    for (int shift = 0; shift < 64; shift += kBits) {
        std::fill(count.begin(), count.end(), size_t(0));
        for (size_t i = 0; i < n; ++i) ++count[(key[i] >> shift) & (kBuckets - 1)];
        if (count[(key[0] >> shift) & (kBuckets - 1)] == n) continue;  // one bucket: no move
        size_t acc = 0;
        for (size_t d = 0; d < kBuckets; ++d) {
            const size_t c = count[d];
            count[d] = acc;
            acc += c;
        }
        for (size_t i = 0; i < n; ++i) {
            const size_t pos = count[(key[i] >> shift) & (kBuckets - 1)]++;
            b[pos] = a[i];
            key2[pos] = key[i];
        }
        a.swap(b);
        key.swap(key2);
    }
}

inline uint64_t pair_key(uint32_t a, uint32_t b) {
    return a < b ? (uint64_t(a) << 32) | b : (uint64_t(b) << 32) | a;
}

// Open-addressing hash map (linear probing) from a pair of clusters to the one live edge joining
// them. Insert-only: when clusters merge, the keys of the removed cluster are simply left behind
// (a key whose smaller or larger node is no longer a root is never looked up again) and the table
// is rebuilt from the live edges when it fills up. Keys never equal kEmpty (node ids < 2^32 - 1).
class PairMap {
public:
    // Room for n_items at a load factor of at most 2/3 (initial table) or 1/2 (rebuilt tables, so
    // that the next rebuild is at least n_items / 4 insertions away: amortised O(1)).
    void reset(uint64_t n_items, bool rebuilt) {
        uint64_t cap = 16;
        const uint64_t want = rebuilt ? 2 * n_items + 16 : n_items + n_items / 2 + 16;
        while (cap < want) cap <<= 1;
        slots_.assign(cap, Slot{kEmpty, 0});
        mask_ = cap - 1;
        used_ = 0;
    }
    // Slot of key, or the empty slot where it would go.
    uint64_t slot(uint64_t key) const {
        uint64_t i = hash(key);
        while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
        return i;
    }
    bool occupied(uint64_t i) const { return slots_[i].key != kEmpty; }
    uint32_t& value(uint64_t i) { return slots_[i].value; }
    void put(uint64_t i, uint64_t key, uint32_t v) {
        slots_[i] = Slot{key, v};
        ++used_;
    }
    // Whether `extra` more insertions keep the load factor below 3/4.
    bool has_room(uint64_t extra) const { return 4 * (used_ + extra) < 3 * (mask_ + 1); }

private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);
    struct Slot {
        uint64_t key;
        uint32_t value;
    };
    uint64_t hash(uint64_t k) const {  // murmur3 finaliser
        k ^= k >> 33;
        k *= 0xff51afd7ed558ccdull;
        k ^= k >> 33;
        k *= 0xc4ceb9fe1a85ec53ull;
        k ^= k >> 33;
        return k & mask_;
    }
    std::vector<Slot> slots_;
    uint64_t mask_ = 0;
    uint64_t used_ = 0;
};

class Agglomerator {
public:
    Agglomerator(uint64_t n_nodes, uint64_t n_edges, const Options& opt)
        : opt_(opt), parent_(n_nodes), deg_(n_nodes, 0), head_(n_nodes, kNone),
          tail_(n_nodes, kNone), w_(n_edges),
          s_(n_edges), flags_(n_edges, 0), eu_(n_edges), ev_(n_edges) {
        pairs_.reset(n_edges, false);
        for (uint64_t i = 0; i < n_nodes; ++i) parent_[i] = static_cast<uint32_t>(i);
        alive_ = n_nodes;
    }

    Stats run(const uint64_t* uv, const double* weights, const double* sizes,
              const uint8_t* mergeable, uint32_t* labels);

private:
    double key_of(double w) const { return opt_.cannot_link ? std::fabs(w) : w; }

    uint32_t find(uint32_t x) {
        while (parent_[x] != x) {
            parent_[x] = parent_[parent_[x]];
            x = parent_[x];
        }
        return x;
    }

    // Without cannot-link constraints an edge of weight <= 0 can only stop the agglomeration, which
    // an empty queue does as well: such edges are never queued.
    bool queued(double w) const { return opt_.cannot_link || w > 0.0; }

    void push(uint32_t e) {
        if (!queued(w_[e])) return;
        heap_.push({key_of(w_[e]), e});
        ++stats_.n_pushes;
    }

    // Merge edge `hi` into edge `lo` (lo < hi, both joining the same pair of clusters).
    // Returns whether the queue key of `lo` increased (a decrease is handled lazily: the entry with
    // the old, higher key is re-queued with the current key when it is popped).
    bool fold(uint32_t lo, uint32_t hi) {
        const double wa = w_[lo], wb = w_[hi], sa = s_[lo], sb = s_[hi];
        double w = wa;
        switch (opt_.linkage) {
            case Linkage::sum: w = wa + wb; break;
            case Linkage::mean: {
                const double total = sa + sb;
                w = total > 0.0 ? (sa * wa + sb * wb) / total : wa;
                break;
            }
            case Linkage::max: w = std::max(wa, wb); break;
            case Linkage::min: w = std::min(wa, wb); break;
            case Linkage::abs_max: w = std::fabs(wa) >= std::fabs(wb) ? wa : wb; break;
        }
        const double old_key = key_of(wa);
        w_[lo] = w;
        s_[lo] = sa + sb;
        flags_[lo] = static_cast<uint8_t>(flags_[lo] | (flags_[hi] & (kConstraint | kNoMerge)));
        flags_[hi] |= kDead;
        return key_of(w) > old_key;
    }

    void contract(uint32_t e);

    // Rebuild the pair map from the live edges (between contractions only).
    void rebuild_pairs() {
        uint64_t live = 0;
        for (size_t e = 0; e < flags_.size(); ++e) live += !(flags_[e] & kDead);
        pairs_.reset(live, true);
        ++stats_.n_rebuilds;
        for (size_t e = 0; e < flags_.size(); ++e) {
            if (flags_[e] & kDead) continue;
            const uint64_t key = pair_key(find(eu_[e]), find(ev_[e]));
            pairs_.put(pairs_.slot(key), key, static_cast<uint32_t>(e));
        }
    }

    // Next queue entry: the initial edges sorted once, changed edges in a binary heap.
    bool pop(Entry& out) {
        const bool has_sorted = cursor_ < sorted_.size();
        if (!heap_.empty() && (!has_sorted || QuadHeap::before(heap_.top(), sorted_[cursor_]))) {
            out = heap_.top();
            heap_.pop();
            return true;
        }
        if (!has_sorted) return false;
        out = sorted_[cursor_++];
        return true;
    }

    Options opt_;
    std::vector<uint32_t> parent_;
    std::vector<uint64_t> deg_;  // live edges of each root
    std::vector<uint32_t> head_, tail_;  // per cluster: first and last entry of its list
    std::vector<Adj> pool_;
    std::vector<double> w_, s_;
    std::vector<uint8_t> flags_;
    std::vector<uint32_t> eu_, ev_;
    PairMap pairs_;
    std::vector<Entry> sorted_;  // initial edges by descending priority
    size_t cursor_ = 0;
    QuadHeap heap_;              // edges whose priority rose (and small queues)
    uint64_t alive_ = 0;
    Stats stats_;
};

void Agglomerator::contract(uint32_t e) {
    uint32_t stable = find(eu_[e]), removed = find(ev_[e]);
    if (stable == removed) {  // cannot happen: an edge inside a cluster is dead
        flags_[e] |= kDead;
        return;
    }
    // Move the cluster with fewer live edges: each merge costs O(edges moved).
    if (deg_[stable] < deg_[removed]) std::swap(stable, removed);
    if (!pairs_.has_room(deg_[removed])) rebuild_pairs();
    parent_[removed] = stable;
    flags_[e] |= kDead;
    --alive_;
    ++stats_.n_merges;
    deg_[stable] += deg_[removed] - 2;

    // Re-key the live entries of `removed` to `stable`, fold parallel edges, and chain the
    // surviving entries (dead ones are unlinked on the way) onto the list of `stable`.
    uint32_t chain_head = kNone, chain_tail = kNone;
    for (uint32_t i = head_[removed]; i != kNone;) {
        Adj& a = pool_[i];
        const uint32_t next = a.next;
        bool keep = false;
        if (!(flags_[a.edge] & kDead)) {
            const uint32_t n = find(a.node);
            if (n == stable) {  // defensive: an intra-cluster edge
                flags_[a.edge] |= kDead;
            } else {
                a.node = n;
                const uint64_t key = pair_key(stable, n);
                const uint64_t slot = pairs_.slot(key);
                if (!pairs_.occupied(slot)) {
                    pairs_.put(slot, key, a.edge);
                    keep = true;
                } else {
                    const uint32_t e1 = pairs_.value(slot), e2 = a.edge;
                    const uint32_t lo = std::min(e1, e2), hi = std::max(e1, e2);
                    const bool raised = fold(lo, hi);
                    pairs_.value(slot) = lo;
                    keep = lo == e2;  // else the entry of e1 in the stable list survives
                    --deg_[stable];
                    --deg_[n];
                    // an increased key needs a new entry; the old one becomes outdated
                    if (raised && !(flags_[lo] & kConstraint)) push(lo);
                }
            }
        }
        if (keep) {
            a.next = kNone;
            if (chain_tail == kNone) {
                chain_head = i;
            } else {
                pool_[chain_tail].next = i;
            }
            chain_tail = i;
        }
        i = next;
    }
    head_[removed] = tail_[removed] = kNone;
    if (chain_head != kNone) {
        if (head_[stable] == kNone) {
            head_[stable] = chain_head;
        } else {
            pool_[tail_[stable]].next = chain_head;
        }
        tail_[stable] = chain_tail;
    }
}

Stats Agglomerator::run(const uint64_t* uv, const double* weights, const double* sizes,
                        const uint8_t* mergeable, uint32_t* labels) {
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t n_nodes = parent_.size();
    const uint64_t n_edges = w_.size();

    for (uint64_t e = 0; e < n_edges; ++e) {
        const uint32_t u = static_cast<uint32_t>(uv[2 * e]), v = static_cast<uint32_t>(uv[2 * e + 1]);
        eu_[e] = u;
        ev_[e] = v;
        w_[e] = weights[e];
        s_[e] = sizes ? sizes[e] : 1.0;
        if (mergeable && !mergeable[e]) flags_[e] = kNoMerge;
        // Repeated (u, v) pairs: fold into the first occurrence, in edge order.
        const uint64_t key = pair_key(u, v);
        const uint64_t slot = pairs_.slot(key);
        if (pairs_.occupied(slot)) {
            fold(pairs_.value(slot), static_cast<uint32_t>(e));
            ++stats_.n_duplicate_edges;
            continue;
        }
        pairs_.put(slot, key, static_cast<uint32_t>(e));
        ++deg_[u];
        ++deg_[v];
    }
    // Lists in CSR order (each node's entries contiguous, in edge order).
    {
        std::vector<uint64_t> start(n_nodes + 1, 0);
        for (uint64_t i = 0; i < n_nodes; ++i) start[i + 1] = start[i] + deg_[i];
        pool_.resize(start[n_nodes]);
        std::vector<uint64_t> fill(start.begin(), start.end() - 1);
        for (uint64_t e = 0; e < n_edges; ++e) {
            if (flags_[e] & kDead) continue;
            pool_[fill[eu_[e]]++] = {ev_[e], static_cast<uint32_t>(e), kNone};
            pool_[fill[ev_[e]]++] = {eu_[e], static_cast<uint32_t>(e), kNone};
        }
        for (uint64_t i = 0; i < n_nodes; ++i) {
            if (start[i] == start[i + 1]) continue;
            head_[i] = static_cast<uint32_t>(start[i]);
            tail_[i] = static_cast<uint32_t>(start[i + 1] - 1);
            for (uint64_t k = start[i]; k + 1 < start[i + 1]; ++k) pool_[k].next = static_cast<uint32_t>(k + 1);
        }
    }

    sorted_.reserve(n_edges);
    for (uint64_t e = 0; e < n_edges; ++e) {
        if (!(flags_[e] & kDead) && queued(w_[e])) sorted_.push_back({key_of(w_[e]), static_cast<uint32_t>(e)});
    }
    stats_.n_pushes = sorted_.size();
    if (sorted_.size() < 2048) {
        // Small queues: a heap built in O(n) (only the edges actually taken are ever ordered).
        heap_.assign(sorted_);
    } else {
        // Large queues: one radix sort, then sequential reads (a big heap misses the cache).
        sort_entries(sorted_);
    }

    const uint64_t stop = std::max<uint64_t>(opt_.n_clusters_stop, 1);
    Entry top;
    uint64_t n_popped = 0;
    while (alive_ > stop && pop(top)) {
        if ((++n_popped & 0xFFFF) == 0) xmodal::poll_interrupt();
        const uint32_t e = top.edge;
        if (flags_[e] & (kDead | kConstraint)) continue;
        const double key = key_of(w_[e]);
        if (top.key != key) {  // outdated: re-queue if the key went down since (lazy decrease)
            if (top.key > key) push(e);
            continue;
        }
        const double w = w_[e];
        if (!opt_.cannot_link && w <= 0.0) break;  // no attractive edge left
        if ((flags_[e] & kNoMerge) || w <= 0.0) {
            flags_[e] |= kConstraint;
            ++stats_.n_constraints;
            continue;
        }
        contract(e);
    }

    // Labels: consecutive from 1 in node order of first occurrence.
    std::vector<uint32_t> root_label(n_nodes, 0);
    uint32_t next = 0;
    for (uint64_t i = 0; i < n_nodes; ++i) {
        const uint32_t r = find(static_cast<uint32_t>(i));
        if (root_label[r] == 0) root_label[r] = ++next;
        labels[i] = root_label[r];
    }
    stats_.n_clusters = next;
    stats_.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return stats_;
}

}  // namespace

Stats gasp(uint64_t n_nodes, const uint64_t* uv, const double* weights, const double* sizes,
           const uint8_t* mergeable, uint64_t n_edges, const Options& options, uint32_t* labels) {
    require(n_nodes < uint64_t(std::numeric_limits<uint32_t>::max()),
            "n_nodes: expected fewer than 2^32 - 1 nodes, got " + std::to_string(n_nodes));
    require(n_edges < (uint64_t(1) << 31),
            "edges: expected fewer than 2^31 edges, got " + std::to_string(n_edges));
    const int lk = static_cast<int>(options.linkage);
    require(lk >= 0 && lk <= 4, "linkage: unknown linkage code " + std::to_string(lk));
    for (uint64_t e = 0; e < n_edges; ++e) {
        const uint64_t u = uv[2 * e], v = uv[2 * e + 1];
        if (u >= n_nodes || v >= n_nodes)
            throw value_error("edges: node ids must be < n_nodes = " + std::to_string(n_nodes) +
                              ", edge " + std::to_string(e) + " is (" + std::to_string(u) + ", " +
                              std::to_string(v) + ")");
        if (u == v)
            throw value_error("edges: self-loops are not allowed, edge " + std::to_string(e) +
                              " is (" + std::to_string(u) + ", " + std::to_string(v) + ")");
        if (!std::isfinite(weights[e]))
            throw value_error("weights: expected finite values, edge " + std::to_string(e) +
                              " has " + std::to_string(weights[e]));
        if (sizes && !(std::isfinite(sizes[e]) && sizes[e] > 0.0))
            throw value_error("edge_sizes: expected positive finite values, edge " +
                              std::to_string(e) + " has " + std::to_string(sizes[e]));
    }
    Agglomerator agg(n_nodes, n_edges, options);
    return agg.run(uv, weights, sizes, mergeable, labels);
}

}  // namespace xmodal::gasp
