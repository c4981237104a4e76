// Seeded watershed by priority flood (see watershed.hpp).
#include "xmodal/watershed.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "xmodal/common.hpp"

namespace xmodal::watershed {
namespace {

template <class T>
struct Item {
    T height;
    uint32_t age;
    uint32_t index;
};

// std heap is a max-heap for "less": lower height first, then older first.
template <class T>
struct ItemLess {
    bool operator()(const Item<T>& a, const Item<T>& b) const {
        if (a.height != b.height) return a.height > b.height;
        return a.age > b.age;
    }
};

template <class T>
uint64_t flood(const T* h, const Shape& s, const uint8_t* mask, uint32_t* labels) {
    for (int d = 0; d < 3; ++d)
        require(s[d] >= 1, "height: expected a non-empty shape");
    const int64_t Z = s[0], Y = s[1], X = s[2];
    const int64_t n = Z * Y * X;
    require(n < int64_t(std::numeric_limits<uint32_t>::max()),
            "height: at most 2^32 - 2 voxels per call, got " + std::to_string(n));
    for (int64_t i = 0; i < n; ++i) {
        if (std::isnan(double(h[i])))
            throw value_error("height: expected no NaN values, found one at flat index " +
                              std::to_string(i));
        if (mask && !mask[i]) labels[i] = 0;
    }
    std::vector<Item<T>> heap;
    uint32_t age = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (labels[i]) heap.push_back({h[i], age++, uint32_t(i)});
    }
    std::make_heap(heap.begin(), heap.end(), ItemLess<T>{});
    const int64_t plane = Y * X;
    uint64_t flooded = 0;
    auto visit = [&](int64_t q, uint32_t lab) {
        if (labels[q] || (mask && !mask[q])) return;
        labels[q] = lab;
        ++flooded;
        heap.push_back({h[q], age++, uint32_t(q)});
        std::push_heap(heap.begin(), heap.end(), ItemLess<T>{});
    };
    uint64_t n_popped = 0;
    while (!heap.empty()) {
        if ((++n_popped & 0xFFFF) == 0) xmodal::poll_interrupt();
        std::pop_heap(heap.begin(), heap.end(), ItemLess<T>{});
        const Item<T> it = heap.back();
        heap.pop_back();
        const int64_t p = it.index;
        const uint32_t lab = labels[p];
        const int64_t z = p / plane, r = p % plane, y = r / X, x = r % X;
        if (z > 0) visit(p - plane, lab);
        if (y > 0) visit(p - X, lab);
        if (x > 0) visit(p - 1, lab);
        if (x + 1 < X) visit(p + 1, lab);
        if (y + 1 < Y) visit(p + X, lab);
        if (z + 1 < Z) visit(p + plane, lab);
    }
    return flooded;
}

}  // namespace

uint64_t seeded_watershed(const float* height, const Shape& shape, const uint8_t* mask,
                          uint32_t* labels) {
    return flood(height, shape, mask, labels);
}
uint64_t seeded_watershed(const double* height, const Shape& shape, const uint8_t* mask,
                          uint32_t* labels) {
    return flood(height, shape, mask, labels);
}

}  // namespace xmodal::watershed
