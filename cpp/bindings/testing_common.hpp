// xmodal._core._testing: pieces shared by the GPU emulations (bind_testing.cpp,
// bind_testing_cpd_grid.cpp): the E-step statistics' one-block reduction and the k-NN graph's
// final CSR assembly, each exactly as the CUDA code does them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bindings.hpp"
#include "xmodal/detail/cpd_arith.hpp"
#include "xmodal/detail/knn_arith.hpp"

namespace xmodal::bind {

struct LaneStats {
    double log_s_sum = 0;
    int64_t empty = 0, shifted = 0;
};

// sum_n log s_n by the GPU's one-block reduction (thread t sums n = t, t + L, ...; then a tree),
// and the counts of empty and shifted fixed points.
inline LaneStats gpu_statistics(const double* log_s, const std::vector<char>& empty, const std::vector<char>& shifted,
                                int64_t N) {
    namespace ca = xmodal::cpd::arith;
    constexpr int L = ca::kStatsThreads;
    double lane[L];
    LaneStats st;
    for (int t = 0; t < L; ++t) {
        lane[t] = 0;
        for (int64_t n = t; n < N; n += L) lane[t] = ca::add_rn(lane[t], ca::log_s_term(log_s[n], empty[n] != 0));
    }
    for (int stride = L / 2; stride > 0; stride >>= 1)
        for (int t = 0; t < stride; ++t) lane[t] = ca::add_rn(lane[t], lane[t + stride]);
    for (int64_t n = 0; n < N; ++n) {
        st.empty += empty[n];
        st.shifted += shifted[n];
    }
    st.log_s_sum = lane[0];
    return st;
}

// The graph from pair keys row * nb + col: sorted, made unique, distances sqrt(dist2) (cuda/knn.cu).
inline py::dict csr_from_keys(std::vector<int64_t>& keys, const double* a, const double* b, int64_t na, int64_t nb,
                              int dim) {
    namespace ka = xmodal::knn::arith;
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    std::vector<int64_t> indptr(static_cast<size_t>(na) + 1, 0);
    std::vector<int32_t> indices(keys.size());
    std::vector<double> data(keys.size());
    for (size_t e = 0; e < keys.size(); ++e) {
        const int64_t row = keys[e] / nb, col = keys[e] % nb;
        ++indptr[static_cast<size_t>(row) + 1];
        indices[e] = static_cast<int32_t>(col);
        data[e] = std::sqrt(ka::dist2(a + row * dim, b + col * dim, dim));
    }
    for (int64_t i = 0; i < na; ++i) indptr[i + 1] += indptr[i];
    py::dict out;
    out["indptr"] = to_numpy(std::move(indptr));
    out["indices"] = to_numpy(std::move(indices));
    out["data"] = to_numpy(std::move(data));
    return out;
}

}  // namespace xmodal::bind
