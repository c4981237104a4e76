// xmodal: GASP, generalized agglomerative clustering of signed graphs (Bailoni et al., "GASP, a
// generalized framework for agglomerative clustering of signed graphs and its application to
// instance segmentation", CVPR 2022).
//
// Input: an undirected graph with signed edge weights (w > 0 attracts, w < 0 repels) and optional
// edge sizes. Every pair of adjacent clusters is joined by exactly one (merged) edge whose weight is
// the linkage of the weights of all original edges between the two clusters:
//   sum      w = wa + wb
//   mean     w = (sa * wa + sb * wb) / (sa + sb)      (size-weighted; size = sa + sb)
//   max      w = max(wa, wb)
//   min      w = min(wa, wb)
//   abs_max  w = wa if |wa| >= |wb| else wb   (the weight of larger magnitude, with its sign)
// (the same arithmetic as bioimage-cpp's / nifty's GaspClusterPolicy, so equal inputs give equal
// floating-point weights).
//
// Without cannot-link constraints the merged edge of largest weight is contracted as long as that
// weight is > 0. With cannot-link constraints the merged edge of largest |weight| is taken: w > 0
// contracts it, w <= 0 installs a permanent cannot-link between the two clusters (abs_max with
// constraints is the mutex watershed). An edge marked not mergeable installs a cannot-link when it
// is taken instead of contracting; a merged edge is mergeable only if all its parts are.
//
// Implementation: a cannot-link between two clusters is a flag on the one edge that joins them
// (flags OR when edges merge), so no separate mutex storage is needed. The edge joining two
// clusters is found through one open-addressing hash map keyed by the pair of cluster roots
// (insert-only; rebuilt from the live edges when it fills up). Each cluster's adjacency is a linked
// list in one pool of entries (neighbour hint resolved through a union-find, edge id), so a merge
// re-keys only the entries of the cluster with fewer live edges and concatenates lists without
// allocating. The queue holds the initial edges (radix sorted once, or a heap for small graphs)
// and a 4-ary heap of edges whose key rose; a key that fell is re-queued when its outdated entry is
// popped, and entries of dead edges are skipped. Without cannot-link constraints, edges of weight
// <= 0 are never queued (they could only stop the agglomeration).
//
// Ties: of equal priorities, the edge with the smaller id goes first; a merged edge carries the
// smallest id of its parts. For abs_max with |wa| == |wb| the weight of the part with the smaller
// id is kept. Result: deterministic, single-threaded, independent of xmodal's thread setting.
#pragma once

#include <cstdint>

namespace xmodal::gasp {

enum class Linkage : int { sum = 0, mean = 1, max = 2, min = 3, abs_max = 4 };

struct Options {
    Linkage linkage = Linkage::mean;
    bool cannot_link = false;      // GASP with cannot-link constraints (priority |w|)
    uint64_t n_clusters_stop = 1;  // stop when at most this many clusters remain
};

struct Stats {
    uint64_t n_clusters = 0;     // clusters in the result (isolated nodes included)
    uint64_t n_merges = 0;       // contractions
    uint64_t n_constraints = 0;  // cannot-link constraints installed
    uint64_t n_pushes = 0;       // heap pushes (initial edges included)
    uint64_t n_duplicate_edges = 0;  // input edges that repeated an earlier (u, v) pair
    uint64_t n_rebuilds = 0;  // rebuilds of the cluster-pair hash map (diagnostic)
    double seconds = 0;
};

// GASP on a graph with n_nodes nodes (< 2^32 - 1) and n_edges edges (< 2^31): uv is n_edges x 2
// node ids (u != v; repeated pairs are merged with the linkage, in edge order, before the
// agglomeration); weights are finite; sizes (may be null: all 1) are > 0 (used by mean only);
// mergeable (may be null: all mergeable) is 0/1 per edge. labels receives n_nodes labels,
// consecutive from 1 in node order of first occurrence. Throws value_error on bad input.
Stats gasp(uint64_t n_nodes, const uint64_t* uv, const double* weights, const double* sizes,
           const uint8_t* mergeable, uint64_t n_edges, const Options& options, uint32_t* labels);

}  // namespace xmodal::gasp
