// Internal: which larger-side point sits on which smaller-side point, for the two capacitated-cover
// solvers (CapacitatedCover in assignment.cpp, CostScaling in cover_scaling.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal::detail {

// The smaller-side point s of every larger-side point l, the load of every s, and the l on each s
// as a doubly linked list (head[s], next[l], ...; prev[l] = -1 at the head), so that moving an l is
// O(1) and an s walks its own l only: for (l = head[s]; l >= 0; l = next[l]).
struct CoverMembers {
    std::vector<std::int32_t> assign;      // per l: its s, -1 when on none
    std::vector<std::int32_t> next, prev;  // per l: its neighbours in the list of its s (-1: none)
    std::vector<std::int32_t> head;        // per s: the first l of its list, -1 when empty
    std::vector<std::int64_t> load;        // per s: how many l it holds

    CoverMembers(std::int64_t nl, std::int64_t ns)
        : assign(static_cast<std::size_t>(nl), -1), next(static_cast<std::size_t>(nl), -1),
          prev(static_cast<std::size_t>(nl), -1), head(static_cast<std::size_t>(ns), -1),
          load(static_cast<std::size_t>(ns), 0) {}

    // Place l (on no s before) on s, at the head of its list.
    void attach(std::int32_t l, std::int32_t s) {
        assign[l] = s;
        ++load[s];
        prev[l] = -1;
        next[l] = head[s];
        if (head[s] >= 0) prev[head[s]] = l;
        head[s] = l;
    }

    // Take l off its s.
    void detach(std::int32_t l) {
        const std::int32_t s = assign[l];
        --load[s];
        if (prev[l] >= 0) next[prev[l]] = next[l];
        else head[s] = next[l];
        if (next[l] >= 0) prev[next[l]] = prev[l];
        assign[l] = -1;
    }
};

}  // namespace xmodal::detail
