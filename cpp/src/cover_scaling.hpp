// Internal: cost-scaling prices for the capacitated cover (used by assignment.cpp only).
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal::detail {

// Prices of the smaller-side points and of the hub of the capacitated-cover network (see
// CapacitatedCover in assignment.cpp), in the units of the costs: an approximate dual, from which
// the exact solver starts.
struct CoverPrices {
    std::vector<double> pot_s;
    double pot_h = 0.0;
    std::int64_t phases = 0;  // refine phases run
    std::int64_t work = 0;    // arcs scanned (all phases)
};

// Epsilon-scaling push-relabel (Goldberg) on the capacitated-cover network with the costs rounded
// to integers (costs c_ls - min_s c_ls, scaled to [0, 2^bits]), down to epsilon = 1 (1 / 2^bits of
// the cost range). `ls` is the larger-side x smaller-side CSR graph (every larger-side point has a
// pair), `cap` the capacity K (>= 1, K * ns >= nl). Returns false (prices unusable) when the work
// exceeds `max_work` arc scans, when a price falls further than a feasible problem allows (no
// cover fits the capacity), or when all the pairs of every larger-side point cost the same
// (nothing to learn). Sequential and deterministic; polls for Ctrl-C.
bool cover_scaling_prices(std::int64_t nl, std::int64_t ns, const std::int64_t* indptr, const std::int32_t* indices,
                          const double* cost, std::int64_t cap, int bits, std::int64_t max_work, CoverPrices& out);

}  // namespace xmodal::detail
