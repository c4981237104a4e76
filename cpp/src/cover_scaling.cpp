// Cost-scaling prices for the capacitated cover (see cover_scaling.hpp; the network is the one of
// CapacitatedCover in assignment.cpp).
//
// Network: larger-side points l (supply 1), smaller-side points s (demand 1), hub H (demand
// nl - ns); arcs l -> s (capacity 1, cost c_ls) and s -> H (capacity K - 1, cost 0). Reduced cost of
// an arc a -> b: c + p(a) - p(b); a flow is eps-optimal when every residual arc has a reduced cost
// >= -eps. Phases (Goldberg-Tarjan push-relabel, with the "double push" of Goldberg and Kennedy's
// CSA for the l nodes), eps divided by kAlpha from (cost range) / kAlpha down to 1. A phase keeps
// the prices, and the place of each l that is on its best s (its arcs are then eps-optimal with
// p(l) = second best - eps); the other l are taken off. It sets the s -> H flows f_s from the
// prices (K - 1 where p(s) < p(H), 0 where p(s) > p(H), unchanged on ties), so that no arc between s
// and H is negative, and then moves units until no node has an excess:
//   - an unassigned l takes its best s (largest p(s) - c_ls) and gets the price (second best) - eps:
//     the arc it used gets a reverse of reduced cost >= eps and its other arcs stay >= -eps; s keeps
//     the l's "bid" p(l) + c_ls (the reverse arc s -> l has reduced cost p(s) - bid);
//   - an s with an excess sends one unit back to its l of highest bid, or on to H when f_s < K - 1
//     and p(H) is higher; when neither is above p(s), s is first relabelled to that value - eps
//     (every residual arc out of s then has a reduced cost >= -eps, the one used -eps);
//   - H with an excess sends a unit back to an s with f_s > 0 and p(s) > p(H) (current-arc scan),
//     relabelled to max p(s) - eps when there is none.
// The l that are taken off wait on a stack (the last one first: chains of moves stay local).
// Integer arithmetic (int64): every relabel lowers a price by >= eps >= 1. The costs are rounded, so
// the prices are only a warm start of the exact float solver (priced_cover in assignment.cpp).
//
// Guards: a feasible problem keeps every price within a few (nl + ns + 1) * eps of its value at the
// start of the phase (Goldberg-Tarjan: a node with an excess has a residual path to a deficit); a
// larger drop means that no cover fits the capacity, and the work is bounded in all: both stop the
// phases (false), and the caller takes the plain route, which names the witness.
#include "cover_scaling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cover_members.hpp"
#include "xmodal/common.hpp"

namespace xmodal::detail {
namespace {

constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::min() / 4;
constexpr std::int64_t kAlpha = 4;  // eps divisor between phases

class CostScaling {
public:
    CostScaling(std::int64_t nl, std::int64_t ns, const std::int64_t* indptr, const std::int32_t* indices,
                std::vector<std::int64_t> cc, std::int64_t cap, std::int64_t max_work)
        : nl_(static_cast<std::int32_t>(nl)), ns_(static_cast<std::int32_t>(ns)), indptr_(indptr),
          indices_(indices), cc_(std::move(cc)), cap_(cap), max_work_(max_work),
          ps_(static_cast<std::size_t>(ns), 0), ps0_(static_cast<std::size_t>(ns), 0),
          fs_(static_cast<std::size_t>(ns), 0), mem_(nl, ns), bid_(static_cast<std::size_t>(nl), 0) {
        stack_.reserve(static_cast<std::size_t>(nl));
    }

    // One phase; false when a guard stops it.
    bool refine(std::int64_t eps) {
        eps_ = eps;
        // The largest price drop of a feasible problem in a phase is about 2 (nl + ns + 1) eps.
        drop_ = 8 * (static_cast<std::int64_t>(nl_) + ns_ + 1) * eps;
        ps0_ = ps_;
        ph0_ = ph_;
        eh_ = -(static_cast<std::int64_t>(nl_) - ns_);
        for (std::int32_t s = 0; s < ns_; ++s) {
            if (ps_[s] < ph_) fs_[s] = cap_ - 1;
            else if (ps_[s] > ph_) fs_[s] = 0;
            eh_ += fs_[s];
        }
        hcur_ = 0;
        stack_.clear();
        for (std::int32_t l = nl_ - 1; l >= 0; --l) {
            if (mem_.assign[l] >= 0 && !keep(l)) mem_.detach(l);
            if (mem_.assign[l] < 0) stack_.push_back(l);
        }
        if (!spend(indptr_[nl_])) return false;
        for (std::int32_t s = 0; s < ns_; ++s)
            while (mem_.load[s] - 1 - fs_[s] > 0)
                if (!settle(s)) return false;
        while (eh_ > 0)
            if (!settle(-1)) return false;
        while (!stack_.empty()) {
            const std::int32_t l = stack_.back();
            stack_.pop_back();
            if (!place(l)) return false;
        }
        return true;
    }

    std::int64_t price_s(std::int32_t s) const { return ps_[s]; }
    std::int64_t price_h() const { return ph_; }
    std::int64_t work() const { return work_; }

private:
    bool spend(std::int64_t w) {
        work_ += w;
        if ((work_ >> 20) != polled_) {
            polled_ = work_ >> 20;
            xmodal::poll_interrupt();
        }
        return work_ <= max_work_;
    }

    // Whether l's s is its best (largest p(s) - c_ls); if so its bid is set for the new eps.
    bool keep(std::int32_t l) {
        std::int64_t other = kNone, vcur = kNone, ccur = 0;
        for (std::int64_t e = indptr_[l]; e < indptr_[l + 1]; ++e) {
            const std::int64_t v = ps_[indices_[e]] - cc_[e];
            if (indices_[e] == mem_.assign[l]) {
                vcur = v;
                ccur = cc_[e];
            } else {
                other = std::max(other, v);
            }
        }
        if (vcur < other) return false;
        bid_[l] = (other == kNone ? vcur : other) - eps_ + ccur;
        return true;
    }

    // Double push of an unassigned l: to its best s, then on from s while a unit is in excess.
    bool place(std::int32_t l) {
        std::int64_t b1 = kNone, b2 = kNone, c1 = 0;
        std::int32_t s1 = -1;
        for (std::int64_t e = indptr_[l]; e < indptr_[l + 1]; ++e) {
            const std::int64_t v = ps_[indices_[e]] - cc_[e];
            if (v > b1) {
                b2 = b1;
                b1 = v;
                s1 = indices_[e];
                c1 = cc_[e];
            } else if (v > b2) {
                b2 = v;
            }
        }
        bid_[l] = (b2 == kNone ? b1 : b2) - eps_ + c1;
        mem_.attach(l, s1);
        if (!spend(indptr_[l + 1] - indptr_[l] + 1)) return false;
        return mem_.load[s1] - 1 - fs_[s1] > 0 ? settle(s1) : true;
    }

    // Moves one unit of excess out of s (s >= 0) or H (s = -1), following it through H and the s
    // it reaches until it rests or an l is taken off.
    bool settle(std::int32_t s) {
        while (true) {
            if (s < 0) {
                if (eh_ <= 0) return true;
                s = hub_target();
                if (s < 0) return false;
                --fs_[s];
                --eh_;
                if (mem_.load[s] - 1 - fs_[s] <= 0) return true;
            }
            std::int64_t best = kNone, w = 1;
            std::int32_t who = -1;
            for (std::int32_t l = mem_.head[s]; l >= 0; l = mem_.next[l], ++w)
                if (bid_[l] > best) {
                    best = bid_[l];
                    who = l;
                }
            const bool to_hub = fs_[s] < cap_ - 1 && ph_ > best;
            if (to_hub) best = ph_;
            if (!(best > ps_[s])) {
                ps_[s] = best - eps_;
                if (ps_[s] < ps0_[s] - drop_) return false;
            }
            if (!spend(w)) return false;
            if (!to_hub) {
                mem_.detach(who);
                stack_.push_back(who);
                return true;
            }
            ++fs_[s];
            ++eh_;
            s = -1;
        }
    }

    // The s that takes H's unit: f_s > 0 and p(s) > p(H), from the current arc on; when there is
    // none, H is relabelled to the highest such p(s) - eps (H has an excess, so some f_s > 0).
    // -1 when a guard stops the phase.
    std::int32_t hub_target() {
        const std::int32_t from = hcur_;
        while (hcur_ < ns_ && !(fs_[hcur_] > 0 && ps_[hcur_] > ph_)) ++hcur_;
        if (!spend(hcur_ - from + 1)) return -1;
        if (hcur_ < ns_) return hcur_;
        std::int64_t best = kNone;
        std::int32_t who = -1;
        for (std::int32_t s = 0; s < ns_; ++s)
            if (fs_[s] > 0 && ps_[s] > best) {
                best = ps_[s];
                who = s;
            }
        if (who < 0 || !spend(ns_)) return -1;
        ph_ = best - eps_;
        if (ph_ < ph0_ - drop_) return -1;
        hcur_ = who;
        return who;
    }

    std::int32_t nl_, ns_;
    const std::int64_t* indptr_;
    const std::int32_t* indices_;
    std::vector<std::int64_t> cc_;  // rounded costs, per pair
    std::int64_t cap_, max_work_;
    std::vector<std::int64_t> ps_, ps0_, fs_;  // per s: price (and at the phase start), f_s
    CoverMembers mem_;  // the s of each l, the loads and the l on each s
    std::vector<std::int64_t> bid_;  // per l: p(l) + c of the pair it is on
    std::vector<std::int32_t> stack_;  // the unassigned l
    std::int32_t hcur_ = 0;  // H's current arc
    std::int64_t ph_ = 0, ph0_ = 0, eh_ = 0, eps_ = 1, drop_ = 0;
    std::int64_t work_ = 0, polled_ = 0;
};

}  // namespace

bool cover_scaling_prices(std::int64_t nl, std::int64_t ns, const std::int64_t* indptr, const std::int32_t* indices,
                          const double* cost, std::int64_t cap, int bits, std::int64_t max_work, CoverPrices& out) {
    // Costs relative to each l's cheapest pair (shifting all pairs of one l changes every cover by
    // the same amount), scaled to integers in [0, 2^bits].
    const std::int64_t nnz = indptr[nl];
    std::vector<double> rel(static_cast<std::size_t>(nnz));
    double range = 0.0;
    for (std::int64_t l = 0; l < nl; ++l) {
        double m = std::numeric_limits<double>::infinity();
        for (std::int64_t e = indptr[l]; e < indptr[l + 1]; ++e) m = std::min(m, cost[e]);
        for (std::int64_t e = indptr[l]; e < indptr[l + 1]; ++e) {
            rel[e] = cost[e] - m;
            range = std::max(range, rel[e]);
        }
    }
    const double scale = std::ldexp(1.0, bits) / range;
    if (!(range > 0.0) || !std::isfinite(range) || !std::isfinite(scale)) return false;
    std::vector<std::int64_t> cc(static_cast<std::size_t>(nnz));
    for (std::int64_t e = 0; e < nnz; ++e) cc[e] = std::llround(std::min(rel[e] * scale, std::ldexp(1.0, bits)));
    rel = {};
    CostScaling cs(nl, ns, indptr, indices, std::move(cc), cap, max_work);
    std::int64_t eps = std::max<std::int64_t>(1, (std::int64_t(1) << bits) / kAlpha);
    out.phases = 0;
    while (true) {
        ++out.phases;
        const bool ok = cs.refine(eps);
        out.work = cs.work();
        if (!ok) return false;
        if (eps == 1) break;
        eps = std::max<std::int64_t>(1, eps / kAlpha);
    }
    out.pot_s.resize(static_cast<std::size_t>(ns));
    for (std::int32_t s = 0; s < ns; ++s) out.pot_s[s] = static_cast<double>(cs.price_s(s)) / scale;
    out.pot_h = static_cast<double>(cs.price_h()) / scale;
    return true;
}

}  // namespace xmodal::detail
