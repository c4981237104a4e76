// Sub-quadratic CPD E-step (grid Gauss transform with error bounds), fast Gauss transform and voxel
// subsample; see xmodal/cpd_fast.hpp.
#if defined(__GNUC__) && !defined(__clang__)
// fp-contract=off: a * b + c stays two roundings under -march=native too, so results do not depend
// on the instruction set the kernels were built or dispatched for.
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#include "xmodal/cpd_fast.hpp"

#include <algorithm>
#include <array>
#include <bitset>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "xmodal/common.hpp"
#include "xmodal/detail/cell_grid.hpp"
#include "xmodal/cpd.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// An AVX2 clone of the hot grid loops, picked at load time; the default clone is SSE2. No FMA
// contraction (fp-contract=off below), so both clones give bit-identical results.
#define XM_FAST_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define XM_FAST_CLONES
#endif

namespace xmodal::cpd {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
constexpr double kPi = 3.14159265358979323846;

std::string fmtg(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

// ------------------------------------------------------------------ B-spline weights
// Centred cardinal B-spline of degree p (3 or 5) at x.
double bspline(int p, double x) {
    x = std::fabs(x);
    if (p == 3) {
        if (x < 1) return 2.0 / 3.0 - x * x + 0.5 * x * x * x;
        if (x < 2) {
            const double y = 2 - x;
            return y * y * y / 6.0;
        }
        return 0;
    }
    if (x < 1) {
        const double x2 = x * x;
        return 11.0 / 20.0 - 0.5 * x2 + 0.25 * x2 * x2 - x2 * x2 * x / 12.0;
    }
    if (x < 2) {
        const double x2 = x * x;
        return 17.0 / 40.0 + 5.0 * x / 8.0 - 7.0 * x2 / 4.0 + 5.0 * x2 * x / 4.0 - 3.0 * x2 * x2 / 8.0 +
               x2 * x2 * x / 24.0;
    }
    if (x < 3) {
        const double y = 3 - x;
        return y * y * y * y * y / 120.0;
    }
    return 0;
}

// Weights of the S = p + 1 nodes base .. base + S - 1 for a point at grid coordinate t (node i at
// integer i), base = floor(t) - (S / 2 - 1); u = t - floor(t).
template <int S>
inline void bweights(double u, double* w);
template <>
inline void bweights<4>(double u, double* w) {
    const double u2 = u * u, u3 = u2 * u, v = 1 - u;
    w[0] = v * v * v / 6.0;
    w[1] = (3 * u3 - 6 * u2 + 4) / 6.0;
    w[2] = (-3 * u3 + 3 * u2 + 3 * u + 1) / 6.0;
    w[3] = u3 / 6.0;
}
template <>
inline void bweights<6>(double u, double* w) {
    const double u2 = u * u, u3 = u2 * u, u4 = u3 * u, u5 = u4 * u, v = 1 - u;
    const double v2 = v * v;
    w[0] = v2 * v2 * v / 120.0;
    w[1] = (26 - 50 * u + 20 * u2 + 20 * u3 - 20 * u4 + 5 * u5) / 120.0;
    w[2] = (66 - 60 * u2 + 30 * u4 - 10 * u5) / 120.0;
    w[3] = (26 + 50 * u + 20 * u2 - 20 * u3 - 20 * u4 + 10 * u5) / 120.0;
    w[4] = (1 + 5 * u + 10 * u2 + 10 * u3 + 5 * u4 - 5 * u5) / 120.0;
    w[5] = u5 / 120.0;
}

// ------------------------------------------------------------------ error profile
// Gauss-Legendre nodes and weights on [-1, 1] (Newton on the Legendre recurrence).
void gauss_legendre(int n, std::vector<double>& x, std::vector<double>& w) {
    x.assign(n, 0);
    w.assign(n, 0);
    for (int i = 0; i < (n + 1) / 2; ++i) {
        double z = std::cos(kPi * (i + 0.75) / (n + 0.5)), pp = 0;
        for (int it = 0; it < 100; ++it) {
            double p1 = 1, p2 = 0;
            for (int j = 1; j <= n; ++j) {
                const double p3 = p2;
                p2 = p1;
                p1 = ((2.0 * j - 1) * z * p2 - (j - 1.0) * p3) / j;
            }
            pp = n * (z * p1 - p2) / (z * z - 1);
            const double z1 = z;
            z = z1 - p1 / pp;
            if (std::fabs(z - z1) < 1e-15) break;
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        w[i] = w[n - 1 - i] = 2.0 / ((1 - z * z) * pp * pp);
    }
}

// Taps g[0..kmax]: inverse DTFT of ghat(w) = q sqrt(2 pi) exp(-q^2 w^2 / 2) / sinc(w / 2)^(2 (p + 1)) on
// [-pi, pi] (composite Gauss-Legendre, 32 panels of 24 nodes).
std::vector<double> make_taps(int p, double q, int kmax) {
    std::vector<double> gx, gw;
    gauss_legendre(24, gx, gw);
    const int panels = 32;
    std::vector<double> taps(kmax + 1, 0.0);
    const double pw = kPi / panels;
    for (int pa = 0; pa < panels; ++pa) {
        for (size_t i = 0; i < gx.size(); ++i) {
            const double w = pw * (pa + 0.5 * (gx[i] + 1));
            const double s = w > 0 ? std::sin(0.5 * w) / (0.5 * w) : 1.0;
            const double b2 = std::pow(s, 2 * (p + 1));
            const double gh = q * std::sqrt(2 * kPi) * std::exp(-0.5 * q * q * w * w) / b2;
            const double f = gh * gw[i] * 0.5 * pw / kPi;  // (1 / pi) * integral over [0, pi]
            for (int k = 0; k <= kmax; ++k) taps[k] += f * std::cos(w * k);
        }
    }
    return taps;
}

// Shell radii (units of sigma) for a kernel extent: steps of 0.5 up to 4, then 1 up to
// max(extent + 1, 7) (beyond the last radius the bound charges exp(-r^2 / 2) <= 2.3e-11 per unit weight).
std::vector<double> shell_radii(double extent) {
    std::vector<double> r;
    for (int i = 0; i < 8; ++i) r.push_back(0.5 * i);
    const double last = std::max(std::ceil(extent) + 1.0, 7.0);
    for (double v = 4; v <= last + 1e-9; v += 1) r.push_back(v);
    return r;
}

GridErrorProfile compute_profile(int p, double q, double reach, int D) {
    require(p == 3 || p == 5, "grid_error_profile: order must be 3 or 5, got " + std::to_string(p));
    require(std::isfinite(q) && q >= 0.25 && q <= 64, "grid_error_profile: q must lie in [0.25, 64], got " + fmtg(q));
    require(std::isfinite(reach) && reach >= 1 && reach <= 16,
            "grid_error_profile: reach must lie in [1, 16], got " + fmtg(reach));
    require(D >= 1 && D <= 3, "grid_error_profile: D must be 1, 2 or 3, got " + std::to_string(D));
    GridErrorProfile pr;
    pr.order = p;
    pr.q = q;
    pr.reach = reach;
    pr.D = D;
    const int S = p + 1;
    const int kmax = (int)std::ceil(reach * q);
    pr.taps = make_taps(p, q, kmax);
    // Effective kernel extent (grid units): spline half-widths on both sides plus the taps.
    const double ext_grid = kmax + S;
    const double ext = ext_grid / q;  // sigma units
    pr.radii = shell_radii(ext);
    const int K = (int)pr.radii.size() - 1;
    // One-dimensional error, sampled: source at fs in [0, 1) (32 offsets), targets every 1/32 cell.
    const int NF = 32;
    const int nbins = 1024;  // fine distance bins in sigma units over [0, ext + 1]
    const double bin_w = (ext + 1.0) / nbins;
    std::vector<double> emax(nbins + 1, 0.0), kmax_abs(nbins + 1, 0.0);
    const int half = S / 2;
    std::vector<double> phi;
    for (int is = 0; is < NF; ++is) {
        const double fs = (double)is / NF;  // source position in grid units (node 0 at 0)
        const int b0 = -(half - 1);         // base node for floor(fs) = 0
        double wsrc[6];
        for (int i = 0; i < S; ++i) wsrc[i] = bspline(p, fs - (b0 + i));
        const int a_lo = b0 - kmax, a_hi = b0 + S - 1 + kmax;
        phi.assign(a_hi - a_lo + 1, 0.0);
        for (int i = 0; i < S; ++i)
            for (int k = -kmax; k <= kmax; ++k) phi[b0 + i + k - a_lo] += wsrc[i] * pr.taps[std::abs(k)];
        const int t_lo = (a_lo - half) * NF, t_hi = (a_hi + half) * NF;
        for (int it = t_lo; it <= t_hi; ++it) {
            const double t = (double)it / NF;
            double Kv = 0;
            const int af = (int)std::floor(t);
            for (int a = af - half; a <= af + half + 1; ++a) {
                if (a < a_lo || a > a_hi) continue;
                Kv += bspline(p, t - a) * phi[a - a_lo];
            }
            const double u = std::fabs(t - fs) / q;
            const double G = std::exp(-0.5 * u * u);
            int bi = (int)(u / bin_w);
            if (bi > nbins) bi = nbins;
            emax[bi] = std::max(emax[bi], std::fabs(Kv - G));
            kmax_abs[bi] = std::max(kmax_abs[bi], std::fabs(Kv));
        }
    }
    // Suffix maxima: e1(r) = sup over sampled distances >= r (a bin holds distances in
    // [bi w, (bi + 1) w), so the bin of r and all later bins count). Beyond the sampled range the
    // kernel is 0 and the error is G(u) <= exp(-r^2 / 2).
    std::vector<double> e_suf(nbins + 2, 0.0), k_suf(nbins + 2, 0.0);
    for (int b = nbins; b >= 0; --b) {
        e_suf[b] = std::max(e_suf[b + 1], emax[b]);
        k_suf[b] = std::max(k_suf[b + 1], kmax_abs[b]);
    }
    auto e1_at = [&](double r) {
        // unsampled distances lie beyond the kernel's extent, where the error is G <= exp(-u^2 / 2)
        const double rt = std::max(r, ext);
        const double g_tail = std::exp(-0.5 * rt * rt);
        if (r > ext + 1.0) return g_tail;
        int b = (int)(r / bin_w);
        if (b > nbins) b = nbins;
        return std::max(e_suf[b] * 1.05 + 1e-18, g_tail);
    };
    const double e0 = e1_at(0);
    pr.sup_1d = e_suf[0];
    const double a1 = std::max(1.0, k_suf[0]) + e0;  // >= sup |K1|, sup G1 = 1
    pr.env.resize(K + 1);
    for (int k = 0; k <= K; ++k) {
        const double r = pr.radii[k];
        const double e1 = e1_at(r);
        const double m1 = std::exp(-0.5 * r * r) + e1;  // >= max(|K1|, G1) at distance >= r
        double ed;
        if (D == 1)
            ed = e1;
        else
            ed = e1 * std::pow(a1, D - 1) + (D - 1) * e0 * m1 * std::pow(a1, D - 2);
        pr.env[k] = ed;
    }
    // Beyond the last radius only the Gaussian itself (K = 0 there): exp(-r^2 / 2) bounds it.
    pr.env[K] = std::max(pr.env[K], std::exp(-0.5 * pr.radii[K] * pr.radii[K]));
    for (int k = K - 1; k >= 0; --k) pr.env[k] = std::max(pr.env[k], pr.env[k + 1]);  // non-increasing
    // Distance-weighted envelope: a pair in shell [r_k, r_k+1) is at Euclidean distance < sqrt(D) r_k+1;
    // beyond the last radius |K - G| |t - s| / sigma = rho exp(-rho^2 / 2) <= r_K exp(-r_K^2 / 2).
    pr.env_dist.resize(K + 1);
    const double sd = std::sqrt((double)D);
    pr.env_dist[K] = pr.radii[K] * std::exp(-0.5 * pr.radii[K] * pr.radii[K]);
    for (int k = K - 1; k >= 0; --k) pr.env_dist[k] = std::max(pr.env_dist[k + 1], pr.env[k] * sd * pr.radii[k + 1]);
    // A priori bound on a uniform density (in sigma units): sum_k env_k mass(shell_k) / (2 pi)^(D/2),
    // mass of the infinity-norm shell = (2 r_k+1)^D - (2 r_k)^D; beyond r_K at most D erfc(r_K / sqrt 2).
    const double norm = std::pow(2 * kPi, 0.5 * D);
    double dr = 0, dd = 0;
    for (int k = 0; k < K; ++k) {
        const double vol = std::pow(2 * pr.radii[k + 1], D) - std::pow(2 * pr.radii[k], D);
        dr += pr.env[k] * vol / norm;
        dd += pr.env_dist[k] * vol / norm;
    }
    const double tail = D * std::erfc(pr.radii[K] / std::sqrt(2.0));
    pr.dense_rel = dr + tail;
    pr.dense_rel_dist = dd + tail * pr.radii[K] * sd;
    return pr;
}

// Candidate table: orders {3, 5} x q levels x reach levels, computed once per (order, reach level).
const double kQLevels[] = {0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0};
constexpr int kNQ = sizeof(kQLevels) / sizeof(kQLevels[0]);
const double kReachLevels[] = {4.5, 5.5, 6.5, 7.5};
constexpr int kNR = 4;

struct ProfileRow {
    std::once_flag once;
    std::vector<GridErrorProfile> prof;  // per q level
};

// The profiles of one (order, reach level, D) for every q level, computed once per process on
// first use (~0.1 s; a constant table, thread-safe initialisation).
const GridErrorProfile& table_profile(int order, int ri, int qi, int D) {
    static ProfileRow rows[2][kNR][2];
    ProfileRow& row = rows[order == 5 ? 1 : 0][ri][D == 3 ? 1 : 0];
    std::call_once(row.once, [&] {
        row.prof.resize(kNQ);
        for (int i = 0; i < kNQ; ++i) row.prof[i] = compute_profile(order, kQLevels[i], kReachLevels[ri], D);
    });
    return row.prof[qi];
}

int reach_level(double tol) {
    const double r = grid_reach_for_tol(tol);
    for (int i = 0; i < kNR; ++i)
        if (kReachLevels[i] >= r - 1e-12) return i;
    return kNR - 1;
}

// ------------------------------------------------------------------ grid geometry
struct Geom {
    int D = 3;
    int S = 4;
    double lo[3] = {0, 0, 0};
    double h = 1, inv_h = 1;
    int64_t n[3] = {1, 1, 1};
    int64_t cells = 1;
};

struct BBox {
    double lo[3], hi[3];
};

template <class T>
void bbox_add(BBox& b, const T* P, int64_t n, int D) {
    for (int64_t i = 0; i < n; ++i)
        for (int d = 0; d < D; ++d) {
            const double v = (double)P[i * D + d];
            b.lo[d] = std::min(b.lo[d], v);
            b.hi[d] = std::max(b.hi[d], v);
        }
}

BBox bbox_empty() {
    BBox b;
    for (int d = 0; d < 3; ++d) {
        b.lo[d] = kInf;
        b.hi[d] = -kInf;
    }
    return b;
}

// Cells of a grid of spacing h covering the box with S/2 + 1 spare nodes on either side (as double,
// so that an overflow shows as a huge value).
double grid_cells(const BBox& b, int D, int S, double h) {
    double c = 1;
    for (int d = 0; d < D; ++d) c *= std::floor((b.hi[d] - b.lo[d]) / h) + S + 3;
    return c;
}

Geom make_geom(const BBox& b, int D, int S, double h) {
    Geom g;
    g.D = D;
    g.S = S;
    g.h = h;
    g.inv_h = 1.0 / h;
    g.cells = 1;
    for (int d = 0; d < D; ++d) {
        g.lo[d] = b.lo[d] - (S / 2 + 1) * h;
        g.n[d] = (int64_t)std::floor((b.hi[d] - b.lo[d]) / h) + S + 3;
        g.cells *= g.n[d];
    }
    for (int d = D; d < 3; ++d) g.n[d] = 1;
    return g;
}

// Smallest spacing >= h0 whose grid has at most max_cells cells.
double fit_spacing(const BBox& b, int D, int S, double h0, double max_cells) {
    double h = h0;
    if (grid_cells(b, D, S, h) <= max_cells) return h;
    double ext = 0;
    for (int d = 0; d < D; ++d) ext = std::max(ext, b.hi[d] - b.lo[d]);
    // Lower estimate from the volume, then grow by 1 % steps.
    double vol = 1;
    for (int d = 0; d < D; ++d) vol *= std::max(b.hi[d] - b.lo[d], 1e-300);
    h = std::max(h, std::pow(vol / max_cells, 1.0 / D));
    for (int it = 0; it < 4000 && !(grid_cells(b, D, S, h) <= max_cells); ++it) h *= 1.01;
    return h;
}

// floor for values far inside the int64 range (grid coordinates): no libm call on the SSE2 baseline.
inline double ffloor(double x) {
    const double t = (double)(int64_t)x;
    return t > x ? t - 1.0 : t;
}

// Grid coordinate, base node and B-spline weights along one axis.
template <int S>
inline int64_t axis_nodes(const Geom& g, int d, double x, double* w) {
    const double t = (x - g.lo[d]) * g.inv_h;
    const double ft = ffloor(t);
    int64_t base = (int64_t)ft - (S / 2 - 1);
    bweights<S>(t - ft, w);
    if (base < 0) base = 0;  // never reached for points inside the box; keeps indices in range
    if (base > g.n[d] - S) base = g.n[d] - S;
    return base;
}

// ------------------------------------------------------------------ splat / blur / slice
// Grid layout: cell-major with the C channels of a cell adjacent (grid[cell * C + c]), zeroed by
// the caller. vals: np x C values per source. Sources are visited by the plane of their first node
// along axis 0, then by index: one writer per plane, a fixed order of additions.
template <class T, int D, int S, int C>
void splat_impl(const Geom& g, const T* P, const int64_t* start, const int64_t* order, const double* vals,
                double* grid, bool parallel) {
    const int64_t n0 = g.n[0];
    const int64_t n2 = D == 3 ? g.n[2] : 1;
    const int64_t plane = g.cells / n0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(xmodal::num_threads()) if (parallel)
    for (int64_t i0 = 0; i0 < n0; ++i0) {
        const int64_t blo = std::max<int64_t>(0, i0 - S + 1), bhi = std::min<int64_t>(i0, n0 - S);
        double* pl = grid + i0 * plane * C;
        for (int64_t b = blo; b <= bhi; ++b) {
            for (int64_t s = start[b]; s < start[b + 1]; ++s) {
                const int64_t i = order[s];
                double w0[S], w1[S], w2[S], wv[S * C];
                axis_nodes<S>(g, 0, (double)P[i * D], w0);
                const double f0 = w0[i0 - b];
                const int64_t b1 = axis_nodes<S>(g, 1, (double)P[i * D + 1], w1);
                if (D == 3) {
                    const int64_t b2 = axis_nodes<S>(g, 2, (double)P[i * D + 2], w2);
                    for (int e = 0; e < S; ++e)
                        for (int c = 0; c < C; ++c) wv[e * C + c] = w2[e] * (vals[i * C + c] * f0);
                    for (int a = 0; a < S; ++a) {
                        double* row = pl + ((b1 + a) * n2 + b2) * C;
                        const double f = w1[a];
                        for (int k = 0; k < S * C; ++k) row[k] += f * wv[k];
                    }
                } else {
                    for (int e = 0; e < S; ++e)
                        for (int c = 0; c < C; ++c) wv[e * C + c] = w1[e] * (vals[i * C + c] * f0);
                    double* row = pl + b1 * C;
                    for (int k = 0; k < S * C; ++k) row[k] += wv[k];
                }
            }
        }
    }
}

// out[i * C + c] = interpolation of channel c at target i.
template <class T, int D, int S, int C>
void slice_impl(const Geom& g, const T* P, int64_t np, const double* grid, double* out, bool parallel) {
    const int64_t n1 = g.n[1], n2 = D == 3 ? g.n[2] : 1;
#pragma omp parallel for schedule(dynamic, 512) num_threads(xmodal::num_threads()) if (parallel)
    for (int64_t i = 0; i < np; ++i) {
        double w0[S], w1[S], w2[S];
        const int64_t b0 = axis_nodes<S>(g, 0, (double)P[i * D], w0);
        const int64_t b1 = axis_nodes<S>(g, 1, (double)P[i * D + 1], w1);
        double acc[C];
        for (int c = 0; c < C; ++c) acc[c] = 0;
        if (D == 3) {
            const int64_t b2 = axis_nodes<S>(g, 2, (double)P[i * D + 2], w2);
            for (int a = 0; a < S; ++a) {
                double acc1[C];
                for (int c = 0; c < C; ++c) acc1[c] = 0;
                for (int b = 0; b < S; ++b) {
                    const double* row = grid + (((b0 + a) * n1 + (b1 + b)) * n2 + b2) * C;
                    double r[C];
                    for (int c = 0; c < C; ++c) r[c] = 0;
                    for (int e = 0; e < S; ++e)
                        for (int c = 0; c < C; ++c) r[c] += w2[e] * row[e * C + c];
                    for (int c = 0; c < C; ++c) acc1[c] += w1[b] * r[c];
                }
                for (int c = 0; c < C; ++c) acc[c] += w0[a] * acc1[c];
            }
        } else {
            for (int a = 0; a < S; ++a) {
                const double* row = grid + ((b0 + a) * n1 + b1) * C;
                double r[C];
                for (int c = 0; c < C; ++c) r[c] = 0;
                for (int e = 0; e < S; ++e)
                    for (int c = 0; c < C; ++c) r[c] += w1[e] * row[e * C + c];
                for (int c = 0; c < C; ++c) acc[c] += w0[a] * r[c];
            }
        }
        for (int c = 0; c < C; ++c) out[i * C + c] = acc[c];
    }
}

// Convolution of one block of lines: data[i * J + j] for i < L, j < jn (stride J), in place, with
// the symmetric taps; buf holds (L + 2K) x B doubles (zero margins).
XM_FAST_CLONES void conv_block(double* base, int64_t L, int64_t J, int64_t jn, const double* taps, int K, double* buf) {
    constexpr int64_t B = 64;
    for (int64_t i = 0; i < L; ++i) {
        const double* src = base + i * J;
        double* dst = buf + (i + K) * B;
        for (int64_t j = 0; j < jn; ++j) dst[j] = src[j];
    }
    for (int64_t i = 0; i < L; ++i) {
        double* dst = base + i * J;
        const double* c0 = buf + (i + K) * B;
        double acc[B];
        for (int64_t j = 0; j < jn; ++j) acc[j] = taps[0] * c0[j];
        for (int k = 1; k <= K; ++k) {
            const double tk = taps[k];
            const double* lo = c0 - k * B;
            const double* hi = c0 + k * B;
            for (int64_t j = 0; j < jn; ++j) acc[j] += tk * (lo[j] + hi[j]);
        }
        for (int64_t j = 0; j < jn; ++j) dst[j] = acc[j];
    }
}

// Convolution of one contiguous line (length L) in place; buf holds L + 2K doubles (zero margins).
XM_FAST_CLONES void conv_line(double* line, int64_t L, const double* taps, int K, double* buf) {
    std::copy(line, line + L, buf + K);
    const double* bp = buf + K;
    for (int64_t i = 0; i < L; ++i) line[i] = taps[0] * bp[i];
    for (int k = 1; k <= K; ++k) {
        const double tk = taps[k];
        for (int64_t i = 0; i < L; ++i) line[i] += tk * (bp[i - k] + bp[i + k]);
    }
}

// In-place convolution of every channel along every axis with the symmetric taps (zero outside).
void blur(const Geom& g, const std::vector<double>& taps, double* grid, int C, bool parallel) {
    const int K = (int)taps.size() - 1;
    const int D = g.D;
    constexpr int64_t B = 64;
    for (int ax = 0; ax < D; ++ax) {
        const int64_t L = g.n[ax];
        int64_t outer = 1, J = C;
        for (int d = 0; d < ax; ++d) outer *= g.n[d];
        for (int d = ax + 1; d < D; ++d) J *= g.n[d];
        if (J == 1) {
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
            {
                std::vector<double> buf(L + 2 * K, 0.0);
#pragma omp for schedule(dynamic, 16)
                for (int64_t ln = 0; ln < outer; ++ln) conv_line(grid + ln * L, L, taps.data(), K, buf.data());
            }
        } else {
            const int64_t nblk = (J + B - 1) / B;
            const int64_t jobs = outer * nblk;
#pragma omp parallel num_threads(xmodal::num_threads()) if (parallel)
            {
                std::vector<double> buf((L + 2 * K) * B, 0.0);
#pragma omp for schedule(dynamic, 4)
                for (int64_t job = 0; job < jobs; ++job) {
                    const int64_t blk = job % nblk, o = job / nblk;
                    const int64_t j0 = blk * B;
                    conv_block(grid + o * L * J + j0, L, J, std::min(B, J - j0), taps.data(), K, buf.data());
                }
            }
        }
    }
}

// Non-template entry points with an AVX2 clone (picked at load time; without FMA contraction the
// clones give bit-identical results). The float and double ones of a kind, D, S and C are overloads
// of one name, which pick_splat / pick_slice resolve by the function pointer type of T.
#define XM_SPLAT(NAME, T, D, S, C)                                                                             \
    XM_FAST_CLONES void NAME(const Geom& g, const T* P, const int64_t* st, const int64_t* ord, const double* v, \
                             double* grid, bool par) {                                                          \
        splat_impl<T, D, S, C>(g, P, st, ord, v, grid, par);                                                    \
    }
#define XM_SLICE(NAME, T, D, S, C)                                                                             \
    XM_FAST_CLONES void NAME(const Geom& g, const T* P, int64_t np, const double* grid, double* out, bool par) { \
        slice_impl<T, D, S, C>(g, P, np, grid, out, par);                                                       \
    }
#define XM_KERNELS(SUF, T, D, S) \
    XM_SPLAT(splat1_##SUF, T, D, S, 1) XM_SPLAT(splat2_##SUF, T, D, S, D) XM_SPLAT(splat3_##SUF, T, D, S, D + 1) \
    XM_SLICE(slice1_##SUF, T, D, S, 1) XM_SLICE(slice2_##SUF, T, D, S, D) XM_SLICE(slice3_##SUF, T, D, S, D + 1)
#define XM_KERNELS_ALL(T) XM_KERNELS(24, T, 2, 4) XM_KERNELS(26, T, 2, 6) XM_KERNELS(34, T, 3, 4) XM_KERNELS(36, T, 3, 6)
XM_KERNELS_ALL(float)
XM_KERNELS_ALL(double)
#undef XM_KERNELS_ALL
#undef XM_KERNELS
#undef XM_SLICE
#undef XM_SPLAT

template <class T>
using SplatFn = void (*)(const Geom&, const T*, const int64_t*, const int64_t*, const double*, double*, bool);
template <class T>
using SliceFn = void (*)(const Geom&, const T*, int64_t, const double*, double*, bool);

// Channel counts supported: 1, D, D + 1. F: the function pointer type, which picks the overload.
#define XM_PICK(F, KIND, SUF, C, D) \
    (C == 1 ? F(KIND##1_##SUF) : (C == D ? F(KIND##2_##SUF) : F(KIND##3_##SUF)))
template <class T>
SplatFn<T> pick_splat(int D, int S, int C) {
    using F = SplatFn<T>;
    if (D == 2) return S == 4 ? XM_PICK(F, splat, 24, C, 2) : XM_PICK(F, splat, 26, C, 2);
    return S == 4 ? XM_PICK(F, splat, 34, C, 3) : XM_PICK(F, splat, 36, C, 3);
}
template <class T>
SliceFn<T> pick_slice(int D, int S, int C) {
    using F = SliceFn<T>;
    if (D == 2) return S == 4 ? XM_PICK(F, slice, 24, C, 2) : XM_PICK(F, slice, 26, C, 2);
    return S == 4 ? XM_PICK(F, slice, 34, C, 3) : XM_PICK(F, slice, 36, C, 3);
}
#undef XM_PICK

// Points in the order of their grid cell (row-major, stable counting sort: ties by index).
template <class T>
std::vector<int64_t> cell_order(const Geom& g, const T* P, int64_t np) {
    const int D = g.D;
    std::vector<int64_t> key(np);
    for (int64_t i = 0; i < np; ++i) {
        int64_t k = 0;
        for (int d = 0; d < D; ++d) {
            double t = ffloor(((double)P[i * D + d] - g.lo[d]) * g.inv_h);
            t = std::min(std::max(t, 0.0), (double)(g.n[d] - 1));
            k = k * g.n[d] + (int64_t)t;
        }
        key[i] = k;
    }
    std::vector<int32_t> cnt(g.cells + 1, 0);
    for (int64_t i = 0; i < np; ++i) ++cnt[key[i] + 1];
    for (int64_t c = 0; c < g.cells; ++c) cnt[c + 1] += cnt[c];
    std::vector<int64_t> order(np);
    for (int64_t i = 0; i < np; ++i) order[cnt[key[i]]++] = i;
    return order;
}

// Splat: sort the sources by the plane of their first node (counting sort, stable), then run.
template <class T>
void splat(const Geom& g, const T* P, int64_t np, const double* vals, int C, double* grid, bool parallel) {
    const int D = g.D, S = g.S;
    const int64_t n0 = g.n[0];
    std::vector<int64_t> start(n0 + 1, 0), order(np);
    std::vector<int32_t> base0(np);
    for (int64_t i = 0; i < np; ++i) {
        const double t = ((double)P[i * D] - g.lo[0]) * g.inv_h;
        int64_t b = (int64_t)ffloor(t) - (S / 2 - 1);
        b = std::min<int64_t>(std::max<int64_t>(b, 0), n0 - S);
        base0[i] = (int32_t)b;
        ++start[b + 1];
    }
    for (int64_t b = 0; b < n0; ++b) start[b + 1] += start[b];
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < np; ++i) order[fill[base0[i]]++] = i;
    }
    pick_splat<T>(D, S, C)(g, P, start.data(), order.data(), vals, grid, parallel);
}

template <class T>
void slice(const Geom& g, const T* P, int64_t np, const double* grid, int C, double* out, bool parallel) {
    pick_slice<T>(g.D, g.S, C)(g, P, np, grid, out, parallel);
}

// ------------------------------------------------------------------ error bound look-ups
// Summed-area table of source weights by the grid cell holding each source.
struct Sat {
    const Geom* g = nullptr;
    int64_t m[3] = {1, 1, 1};  // n + 1 per axis (1 for unused axes)
    std::vector<double> s;
    double total = 0;

    template <class T>
    void build(const Geom& geom, const T* P, int64_t np, int D, const double* w, int wstride) {
        g = &geom;
        for (int d = 0; d < 3; ++d) m[d] = d < D ? geom.n[d] + 1 : 1;
        s.assign(m[0] * m[1] * m[2], 0.0);
        for (int64_t i = 0; i < np; ++i) {
            int64_t idx[3] = {0, 0, 0};
            for (int d = 0; d < D; ++d) idx[d] = cell(d, (double)P[i * D + d]) + 1;
            s[(idx[0] * m[1] + idx[1]) * m[2] + idx[2]] += w[i * wstride];
        }
        // inclusive prefix sums along each used axis (fixed order: deterministic)
        for (int64_t a = 0; a < m[0]; ++a)
            for (int64_t b = 0; b < m[1]; ++b)
                for (int64_t c = 1; c < m[2]; ++c) s[(a * m[1] + b) * m[2] + c] += s[(a * m[1] + b) * m[2] + c - 1];
        if (D >= 2)
            for (int64_t a = 0; a < m[0]; ++a)
                for (int64_t b = 1; b < m[1]; ++b)
                    for (int64_t c = 0; c < m[2]; ++c) s[(a * m[1] + b) * m[2] + c] += s[(a * m[1] + b - 1) * m[2] + c];
        for (int64_t a = 1; a < m[0]; ++a)
            for (int64_t bc = 0; bc < m[1] * m[2]; ++bc) s[a * m[1] * m[2] + bc] += s[(a - 1) * m[1] * m[2] + bc];
        total = s.back();
    }
    int64_t cell(int d, double x) const {
        const double t = ffloor((x - g->lo[d]) * g->inv_h);
        if (t < 0) return 0;
        if (t > (double)(g->n[d] - 1)) return g->n[d] - 1;
        return (int64_t)t;
    }
    double at(int64_t a, int64_t b, int64_t c) const { return s[(a * m[1] + b) * m[2] + c]; }
    // Weight in the cells [lo, hi] (inclusive, per axis; D axes).
    double box(const int64_t* lo, const int64_t* hi, int D) const {
        if (D == 2) {
            const int64_t a0 = lo[0], a1 = hi[0] + 1, b0 = lo[1], b1 = hi[1] + 1;
            return at(a1, b1, 0) - at(a0, b1, 0) - at(a1, b0, 0) + at(a0, b0, 0);
        }
        const int64_t a0 = lo[0], a1 = hi[0] + 1, b0 = lo[1], b1 = hi[1] + 1, c0 = lo[2], c1 = hi[2] + 1;
        return at(a1, b1, c1) - at(a0, b1, c1) - at(a1, b0, c1) - at(a1, b1, c0) + at(a0, b0, c1) + at(a0, b1, c0) +
               at(a1, b0, c0) - at(a0, b0, c0);
    }
    // Bounds sum_j e(dist_j) w_j for a target at x with the non-increasing envelopes env (and env2,
    // when out2 is given) on the radii (sigma units, q = sigma / h): e_K W + sum_k (e_k-1 - e_k) U_k.
    void bound(const double* x, int D, double q, const std::vector<double>& radii, const std::vector<double>& env,
               const std::vector<double>* env2, double* out1, double* out2) const {
        const int K = (int)radii.size() - 1;
        double t[3];
        for (int d = 0; d < D; ++d) t[d] = (x[d] - g->lo[d]) * g->inv_h;
        double b = env[K] * total, b2 = env2 ? (*env2)[K] * total : 0.0;
        for (int k = 1; k <= K; ++k) {
            const double de = env[k - 1] - env[k];
            const double de2 = env2 ? (*env2)[k - 1] - (*env2)[k] : 0.0;
            if (!(de > 0) && !(de2 > 0)) continue;
            const double rg = radii[k] * q;
            int64_t lo[3], hi[3];
            bool all = true;
            for (int d = 0; d < D; ++d) {
                double l = ffloor(t[d] - rg), u = ffloor(t[d] + rg);
                if (l <= 0) l = 0; else all = false;
                if (u >= (double)(g->n[d] - 1)) u = (double)(g->n[d] - 1); else all = false;
                lo[d] = (int64_t)l;
                hi[d] = (int64_t)u;
                if (lo[d] > hi[d]) hi[d] = lo[d];
            }
            if (all) {  // the box holds every cell from here on
                b += (env[k - 1] - env[K]) * total;
                if (env2) b2 += ((*env2)[k - 1] - (*env2)[K]) * total;
                break;
            }
            const double u = std::max(box(lo, hi, D), 0.0);
            b += de * u;
            b2 += de2 * u;
        }
        *out1 = b;
        if (out2) *out2 = b2;
    }
};

// ------------------------------------------------------------------ cell index for exact sums
struct CellIndex {
    int D = 3;
    double lo[3] = {0, 0, 0};
    double h = 1;
    int64_t nc[3] = {1, 1, 1};
    std::vector<int64_t> start;  // cell -> first sorted position
    std::vector<int64_t> ids;    // sorted position -> point id (caller's numbering)
    std::vector<double> coord;   // sorted coordinates (D per point)

    // Points P[ids[i]] (ids null: 0..n-1), cells of edge `edge` (inf: one cell), at most ~2n + 64 cells.
    template <class T>
    void build(const T* P, const int64_t* sel, int64_t n, int D_, double edge) {
        D = D_;
        double hi[3] = {0, 0, 0};
        for (int d = 0; d < D; ++d) {
            lo[d] = kInf;
            hi[d] = -kInf;
        }
        for (int64_t i = 0; i < n; ++i) {
            const int64_t p = sel ? sel[i] : i;
            for (int d = 0; d < D; ++d) {
                lo[d] = std::min(lo[d], (double)P[p * D + d]);
                hi[d] = std::max(hi[d], (double)P[p * D + d]);
            }
        }
        if (n == 0)
            for (int d = 0; d < D; ++d) lo[d] = hi[d] = 0;
        const double cap = 2.0 * (double)n + 64.0;
        auto count = [&](double hh) {
            double c = 1;
            for (int d = 0; d < D; ++d) c *= std::floor((hi[d] - lo[d]) / hh) + 1.0;
            return c;
        };
        h = edge;
        if (!(h > 0) || !std::isfinite(h)) h = kInf;
        if (std::isfinite(h)) {
            if (!(count(h) <= cap)) {
                double vol = 1;
                for (int d = 0; d < D; ++d) vol *= std::max(hi[d] - lo[d], 1e-300);
                h = std::max(h, std::pow(vol / cap, 1.0 / D));
                for (int it = 0; it < 4000 && !(count(h) <= cap); ++it) h *= 1.05;
                if (!(count(h) <= cap)) h = kInf;
            }
        }
        int64_t total = 1;
        for (int d = 0; d < 3; ++d) {
            nc[d] = (d < D && std::isfinite(h)) ? (int64_t)std::floor((hi[d] - lo[d]) / h) + 1 : 1;
            total *= nc[d];
        }
        std::vector<int64_t> cl(n);
        start.assign(total + 1, 0);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t p = sel ? sel[i] : i;
            int64_t c = 0;
            for (int d = 0; d < D; ++d) c = c * nc[d] + axis_cell(d, (double)P[p * D + d]);
            cl[i] = c;
            ++start[c + 1];
        }
        for (int64_t c = 0; c < total; ++c) start[c + 1] += start[c];
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        ids.resize(n);
        coord.resize(n * D);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t pos = fill[cl[i]]++;
            const int64_t p = sel ? sel[i] : i;
            ids[pos] = p;
            for (int d = 0; d < D; ++d) coord[pos * D + d] = (double)P[p * D + d];
        }
    }
    int64_t axis_cell(int d, double v) const { return detail::clamped_cell(v, lo[d], h, nc[d]); }
    // Visit every sorted range of points within the box of half-width r around q (a superset).
    template <class F>
    void ranges(const double* q, double r, F&& f) const {
        int64_t a[3] = {0, 0, 0}, b[3] = {0, 0, 0};
        for (int d = 0; d < D; ++d) {
            if (nc[d] == 1 || !std::isfinite(r)) {
                a[d] = 0;
                b[d] = nc[d] - 1;
                continue;
            }
            const double l = std::floor((q[d] - r - lo[d]) / h), u = std::floor((q[d] + r - lo[d]) / h);
            if (u < 0 || l > (double)(nc[d] - 1)) return;
            a[d] = l < 0 ? 0 : (int64_t)l;
            b[d] = u > (double)(nc[d] - 1) ? nc[d] - 1 : (int64_t)u;
        }
        for (int d = D; d < 3; ++d) a[d] = b[d] = 0;
        const int64_t n1 = D >= 2 ? nc[1] : 1, nL = nc[D - 1];
        if (D == 2) {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0) {
                const int64_t s = start[i0 * nL + a[1]], e = start[i0 * nL + b[1] + 1];
                if (e > s) f(s, e);
            }
        } else {
            for (int64_t i0 = a[0]; i0 <= b[0]; ++i0)
                for (int64_t i1 = a[1]; i1 <= b[1]; ++i1) {
                    const int64_t base = (i0 * n1 + i1) * nL;
                    const int64_t s = start[base + a[2]], e = start[base + b[2] + 1];
                    if (e > s) f(s, e);
                }
        }
    }
    // Visit sorted ranges covering every point within the Euclidean ball of radius r around q (a
    // superset; cells that cannot meet the ball are skipped, so a large ball costs its cells' rows,
    // not the points of its bounding box). Falls back to the box for an infinite r.
    template <class F>
    void ball_ranges(const double* q, double r, F&& f) const {
        if (!std::isfinite(r)) return ranges(q, r, f);
        // the distance from v to cell i of axis d (0 inside it)
        auto gap = [&](int d, int64_t i, double v) {
            if (nc[d] == 1) return 0.0;
            const double a = lo[d] + (double)i * h, b = a + h;
            return v < a ? a - v : (v > b ? v - b : 0.0);
        };
        auto span = [&](int d, double v, double half, int64_t& a, int64_t& b) {
            if (nc[d] == 1) {
                a = b = 0;
                return true;
            }
            const double l = std::floor((v - half - lo[d]) / h), u = std::floor((v + half - lo[d]) / h);
            if (u < 0 || l > (double)(nc[d] - 1)) return false;
            a = l < 0 ? 0 : (int64_t)l;
            b = u > (double)(nc[d] - 1) ? nc[d] - 1 : (int64_t)u;
            return true;
        };
        const double r2 = r * r;
        const int64_t nL = nc[D - 1];
        int64_t a0, b0;
        if (!span(0, q[0], r, a0, b0)) return;
        for (int64_t i0 = a0; i0 <= b0; ++i0) {
            const double g0 = gap(0, i0, q[0]);
            const double r1 = r2 - g0 * g0;
            if (r1 < 0) continue;
            if (D == 2) {
                int64_t a1, b1;
                if (span(1, q[1], std::sqrt(r1), a1, b1)) {
                    const int64_t s = start[i0 * nL + a1], e = start[i0 * nL + b1 + 1];
                    if (e > s) f(s, e);
                }
                continue;
            }
            int64_t a1, b1;
            if (!span(1, q[1], std::sqrt(r1), a1, b1)) continue;
            for (int64_t i1 = a1; i1 <= b1; ++i1) {
                const double g1 = gap(1, i1, q[1]);
                const double rem = r1 - g1 * g1;
                if (rem < 0) continue;
                int64_t a2, b2;
                if (!span(2, q[2], std::sqrt(rem), a2, b2)) continue;
                const int64_t base = (i0 * nc[1] + i1) * nL;
                const int64_t s = start[base + a2], e = start[base + b2 + 1];
                if (e > s) f(s, e);
            }
        }
    }
    // Per query point P[which[k]] the count of indexed points within the box of half-width r
    // around it (the candidates an exact sum over it would visit).
    template <class T>
    std::vector<int64_t> candidates(const T* P, const std::vector<int64_t>& which, double r, bool par) const {
        std::vector<int64_t> cand(which.size(), 0);
#pragma omp parallel for schedule(dynamic, 128) num_threads(xmodal::num_threads()) if (par)
        for (int64_t k = 0; k < (int64_t)which.size(); ++k) {
            double q[3];
            for (int d = 0; d < D; ++d) q[d] = (double)P[which[k] * D + d];
            int64_t cnt = 0;
            ranges(q, r, [&](int64_t s0, int64_t e0) { cnt += e0 - s0; });
            cand[k] = cnt;
        }
        return cand;
    }
};

inline double d2_of(const double* a, const double* b, int D) {
    double s = 0;
    for (int d = 0; d < D; ++d) {
        const double t = a[d] - b[d];
        s += t * t;
    }
    return s;
}

// The exact sums of pass 2 at a moving point y over the fixed points of `in` within the cutoff
// (rcut, r2cut): s0 = sum k, sx_d = sum k x_d with k = exp(-(d2 - h_n)^+ inv) g_n (columns with
// g_n = 0 skipped), and the points visited.
struct ExactRow {
    double s0 = 0, sx[3] = {0, 0, 0};
    int64_t visited = 0;
};
inline ExactRow exact_row(const CellIndex& in, const double* y, int D, double rcut, double r2cut, double inv,
                          const double* gw, const double* hsh) {
    ExactRow r;
    in.ranges(y, rcut, [&](int64_t s, int64_t e) {
        r.visited += e - s;
        for (int64_t i = s; i < e; ++i) {
            const int64_t n = in.ids[i];
            const double d2 = d2_of(&in.coord[i * D], y, D);
            if (!(d2 <= r2cut) || !(gw[n] > 0)) continue;
            const double k = std::exp(-std::max(d2 - hsh[n], 0.0) * inv) * gw[n];
            r.s0 += k;
            for (int d = 0; d < D; ++d) r.sx[d] += k * in.coord[i * D + d];
        }
    });
    return r;
}

// log s_n etc. of one column from its shifted sum Sp = sum a exp(-(d2 - h) inv), e = h inv:
// s_n = exp(-e) (Sp + c exp(e)); g = 1 / (Sp + c exp(e)) multiplies the shifted terms.
struct ColumnOut {
    double g, pt, ls;
    bool empty;
};
ColumnOut column_from_sum(double Sp, double e, double c) {
    ColumnOut o{0, 0, 0, false};
    if (Sp > 0) {
        if (e == 0) {
            const double den = Sp + c;
            o.g = 1.0 / den;
            o.pt = Sp / den;
            o.ls = std::log(den);
        } else {
            const double la = std::log(Sp);
            const double lc = c > 0 ? std::log(c) + e : -kInf;
            if (la >= lc) {
                const double l1 = std::log1p(std::exp(lc - la));
                o.g = std::exp(-(la + l1));
                o.pt = std::exp(-l1);
                o.ls = (la - e) + l1;
            } else {
                const double l1 = std::log1p(std::exp(la - lc));
                o.g = std::exp(-(lc + l1));
                o.pt = std::exp(la - lc - l1);
                o.ls = std::log(c) + l1;
            }
        }
    } else {
        o.g = 0;
        o.pt = 0;
        o.ls = c > 0 ? std::log(c) : -kInf;
        o.empty = !(c > 0);
    }
    return o;
}

// ------------------------------------------------------------------ validation
template <class T>
void check_finite_arr(const T* p, int64_t n, const char* what) {
    for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite((double)p[i])) throw value_error(std::string("cpd fast: ") + what + " has non-finite values");
}

void check_sizes(int64_t N, int64_t M, int D) {
    require(D == 2 || D == 3, "cpd fast: d must be 2 or 3, got " + std::to_string(D));
    require(N >= 1 && M >= 1, "cpd fast: point sets must not be empty");
    require(N < (int64_t(1) << 31) && M < (int64_t(1) << 31), "cpd fast: at most 2^31 - 1 points per set");
}

// ------------------------------------------------------------------ cost model
// Units: one kernel term of the exact path ~ kPairCost, one splat/slice multiply-add ~ 1, one
// blur multiply-add ~ kBlurCost, one bound look-up ~ kLookupCost.
constexpr double kPairCost = 2.0;
constexpr double kBlurCost = 0.6;
constexpr double kLookupCost = 4.0;
// Parallel threshold (work units): below it the calling thread runs alone.
// (A parallel region costs little on a quiet machine, but up to a scheduler time slice when the
// machine is loaded, so small steps run on the calling thread; results are the same either way.)
constexpr double kParallelMin = 2e6;

// Exact kernel work: candidate pairs of both passes, from counts on a grid of cells of edge r
// (3^D neighbourhoods, scaled to the (2.5 r)^D boxes the exact kernel visits).
template <class T>
double exact_pairs_estimate(const T* X, int64_t N, const T* TY, int64_t M, int D, double r) {
    if (!std::isfinite(r)) return 2.0 * (double)N * (double)M;
    BBox b = bbox_empty();
    bbox_add(b, X, N, D);
    bbox_add(b, TY, M, D);
    const double cap = 2.0 * (double)(N + M) + 64.0;
    double h = r;
    auto count = [&](double hh) {
        double c = 1;
        for (int d = 0; d < D; ++d) c *= std::floor((b.hi[d] - b.lo[d]) / hh) + 1.0;
        return c;
    };
    if (!(count(h) <= cap)) {
        double vol = 1;
        for (int d = 0; d < D; ++d) vol *= std::max(b.hi[d] - b.lo[d], 1e-300);
        h = std::max(h, std::pow(vol / cap, 1.0 / D));
        for (int it = 0; it < 4000 && !(count(h) <= cap); ++it) h *= 1.05;
    }
    int64_t nc[3] = {1, 1, 1}, total = 1;
    for (int d = 0; d < D; ++d) {
        nc[d] = (int64_t)std::floor((b.hi[d] - b.lo[d]) / h) + 1;
        total *= nc[d];
    }
    if (total == 1) return 2.0 * (double)N * (double)M;
    std::vector<double> cx(total, 0.0), cy(total, 0.0);
    auto cell = [&](const T* p) {
        int64_t c = 0;
        for (int d = 0; d < D; ++d) {
            double v = std::floor(((double)p[d] - b.lo[d]) / h);
            v = std::min(std::max(v, 0.0), (double)(nc[d] - 1));
            c = c * nc[d] + (int64_t)v;
        }
        return c;
    };
    for (int64_t i = 0; i < N; ++i) cx[cell(&X[i * D])] += 1;
    for (int64_t i = 0; i < M; ++i) cy[cell(&TY[i * D])] += 1;
    // 3-wide box sums of cy along each axis
    int64_t stride[3] = {1, 1, 1};
    for (int d = D - 2; d >= 0; --d) stride[d] = stride[d + 1] * nc[d + 1];
    std::vector<double> tmp(total);
    for (int d = 0; d < D; ++d) {
        for (int64_t c = 0; c < total; ++c) {
            const int64_t id = (c / stride[d]) % nc[d];
            double v = cy[c];
            if (id > 0) v += cy[c - stride[d]];
            if (id + 1 < nc[d]) v += cy[c + stride[d]];
            tmp[c] = v;
        }
        cy.swap(tmp);
    }
    double pairs = 0;
    for (int64_t c = 0; c < total; ++c) pairs += cx[c] * cy[c];
    const double visit = std::pow(std::min(1.0, (2.5 * r) / (3.0 * h)) * 1.0, D);
    return 2.0 * pairs * std::max(visit, 0.05);
}

struct GridChoice {
    bool ok = false;
    int order = 3;
    double q = 0;   // sigma / h
    double h = 0;
    bool capped = false;
    double cost = kInf;
    GridErrorProfile prof;
};

double grid_cost(int64_t npts, double cells, int D, int S, int kmax, int channels, int nshells) {
    return (double)npts * std::pow((double)S, D) * channels + cells * D * (2.0 * kmax + 1) * channels * kBlurCost +
           (double)npts * nshells * kLookupCost;
}

// Pick (order, q, h) for a Gauss transform of width sigma over the box: the cheapest candidate
// whose a priori bound meets tol / 4 without the cap; when none fits under the cap and `force`,
// the capped grid with the smaller bound (q >= 0.75), computed at the resulting q.
GridChoice choose_grid(const BBox& b, int D, double sigma, double tol, double max_cells, int64_t npts, int channels,
                       bool force, double exact_cost) {
    GridChoice best;
    const int ri = reach_level(tol);
    const double reach = kReachLevels[ri];
    bool capped_any = false;
    for (int order : {3, 5}) {
        const int S = order + 1;
        for (int qi = 0; qi < kNQ; ++qi) {
            const GridErrorProfile& pr = table_profile(order, ri, qi, D);
            if (!(pr.dense_rel <= 0.25 * tol && pr.dense_rel_dist <= 0.5 * tol)) continue;
            const double h = sigma / kQLevels[qi];
            const double cells = grid_cells(b, D, S, h);
            if (!(cells <= max_cells)) {  // larger q only grows the grid
                capped_any = true;
                break;
            }
            const int kmax = (int)pr.taps.size() - 1;
            const double cost = grid_cost(npts, cells, D, S, kmax, channels, (int)pr.radii.size());
            if (cost < best.cost) {
                best.ok = true;
                best.order = order;
                best.q = kQLevels[qi];
                best.h = h;
                best.capped = false;
                best.cost = cost;
                best.prof = pr;
            }
            break;  // the smallest feasible q of this order is its cheapest
        }
    }
    // Capped grids (the cap allows a smaller q only): profiled at that q (~10 ms each), so only
    // when forced or when the exact kernel would cost far more. Without force they must still meet
    // tol / 2 on a uniform density (points above it are then summed exactly).
    const bool try_capped = force ? !best.ok : (capped_any && exact_cost > 5e7);
    if (!try_capped) return best;
    GridChoice cap;
    for (int order : {3, 5}) {
        const int S = order + 1;
        const double h = fit_spacing(b, D, S, sigma / 6.0, max_cells);
        const double q = sigma / h;
        if (!(q >= 0.75)) continue;
        GridErrorProfile pr = compute_profile(order, std::min(q, 64.0), reach, D);
        if (!force && !(pr.dense_rel <= 0.5 * tol && pr.dense_rel_dist <= tol)) continue;
        const double cells = grid_cells(b, D, S, h);
        const int kmax = (int)pr.taps.size() - 1;
        const double cost = grid_cost(npts, cells, D, S, kmax, channels, (int)pr.radii.size());
        const bool better = force ? (!cap.ok || pr.dense_rel < cap.prof.dense_rel) : cost < cap.cost;
        if (better) {
            cap.ok = true;
            cap.order = order;
            cap.q = q;
            cap.h = h;
            cap.capped = true;
            cap.cost = cost;
            cap.prof = std::move(pr);
        }
    }
    if (cap.ok && (!best.ok || cap.cost < best.cost)) return cap;
    return best;
}

// ------------------------------------------------------------------ one grid Gauss transform
// Sources P (np, rows `sel` or all) with vals (np x C, by source row), targets Q (nq). out: nq x C.
// bounds (optional): per target, the bound with env (and env_dist into bounds_dist) for channel-0
// weights (must be >= 0; `absw`: weights for the bound, np entries, stride 1).
template <class T, int D, int S>
void grid_transform(const Geom& g, const GridErrorProfile& pr, const T* P, int64_t np, const double* vals, int C,
                    const T* Q, int64_t nq, double* out, const double* absw, double* bounds, double* bounds_dist,
                    double* secs) {
    const double sd = std::pow((double)S, D) * C;
    const bool par = (double)nq * (double)pr.radii.size() * 8.0 >= kParallelMin;
    double t0 = now_s();
    // Sources and targets in grid-cell order (memory locality; the order of additions into a cell
    // is then by cell of the source, then by index: fixed).
    std::vector<T> Ps;
    std::vector<double> vs;
    {
        const std::vector<int64_t> os = cell_order(g, P, np);
        Ps.resize(np * D);
        vs.resize(np * C);
        for (int64_t k = 0; k < np; ++k) {
            for (int d = 0; d < D; ++d) Ps[k * D + d] = P[os[k] * D + d];
            for (int c = 0; c < C; ++c) vs[k * C + c] = vals[os[k] * C + c];
        }
    }
    std::vector<double> grid((size_t)g.cells * C, 0.0);
    splat<T>(g, Ps.data(), np, vs.data(), C, grid.data(), (double)np * sd >= kParallelMin);
    vs.clear();
    vs.shrink_to_fit();
    double t1 = now_s();
    secs[0] += t1 - t0;
    blur(g, pr.taps, grid.data(), C, (double)g.cells * C * D * (double)pr.taps.size() * 2.0 >= kParallelMin);
    t0 = now_s();
    secs[1] += t0 - t1;
    const std::vector<int64_t> ot = cell_order(g, Q, nq);
    {
        std::vector<T> Qs(nq * D);
        for (int64_t k = 0; k < nq; ++k)
            for (int d = 0; d < D; ++d) Qs[k * D + d] = Q[ot[k] * D + d];
        std::vector<double> os(nq * C);
        slice<T>(g, Qs.data(), nq, grid.data(), C, os.data(), (double)nq * sd >= kParallelMin);
        for (int64_t k = 0; k < nq; ++k)
            for (int c = 0; c < C; ++c) out[ot[k] * C + c] = os[k * C + c];
    }
    t1 = now_s();
    secs[2] += t1 - t0;
    grid.clear();
    grid.shrink_to_fit();
    if (bounds || bounds_dist) {
        Sat sat;
        sat.build(g, P, np, D, absw, 1);
        const double q = pr.q;
#pragma omp parallel for schedule(dynamic, 512) num_threads(xmodal::num_threads()) if (par)
        for (int64_t k = 0; k < nq; ++k) {
            const int64_t i = ot[k];
            double x[3];
            for (int d = 0; d < D; ++d) x[d] = (double)Q[i * D + d];
            double b1v = 0, b2v = 0;
            sat.bound(x, D, q, pr.radii, pr.env, bounds_dist ? &pr.env_dist : nullptr, &b1v, bounds_dist ? &b2v : nullptr);
            if (bounds) bounds[i] = b1v;
            if (bounds_dist) bounds_dist[i] = b2v;
        }
        secs[3] += now_s() - t1;
    }
}

template <class T>
void grid_transform_dispatch(const Geom& g, const GridErrorProfile& pr, const T* P, int64_t np, const double* vals,
                             int C, const T* Q, int64_t nq, double* out, const double* absw, double* bounds,
                             double* bounds_dist, double* secs) {
    if (g.D == 2 && g.S == 4) grid_transform<T, 2, 4>(g, pr, P, np, vals, C, Q, nq, out, absw, bounds, bounds_dist, secs);
    else if (g.D == 2) grid_transform<T, 2, 6>(g, pr, P, np, vals, C, Q, nq, out, absw, bounds, bounds_dist, secs);
    else if (g.S == 4) grid_transform<T, 3, 4>(g, pr, P, np, vals, C, Q, nq, out, absw, bounds, bounds_dist, secs);
    else grid_transform<T, 3, 6>(g, pr, P, np, vals, C, Q, nq, out, absw, bounds, bounds_dist, secs);
}

// ------------------------------------------------------------------ the fast E-step
template <class T>
FastEStepStats estep_grid(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2,
                          double c, double cutoff, double tol, double est_exact_pairs, const GridChoice& gc,
                          const BBox& box, T* P1, T* Pt1,
                          T* PX, int64_t* best_idx, T* best_prob, double* log_s_out, double* bound_s,
                          double* bound_p1, double* bound_px) {
    FastEStepStats st;
    st.method = 2;
    st.order = gc.order;
    st.q = gc.q;
    st.h = gc.h;
    st.capped = gc.capped;
    st.dense_rel = gc.prof.dense_rel;
    const double sigma = std::sqrt(sigma2);
    const double inv = 1.0 / (2.0 * sigma2);
    const double r2cut = std::isfinite(cutoff) ? 2.0 * sigma2 * cutoff : kInf;
    const double rcut = std::sqrt(r2cut);
    const Geom g = make_geom(box, D, gc.order + 1, gc.h);
    st.cells = g.cells;
    const GridErrorProfile& pr = gc.prof;
    const double half_tol = 0.5 * tol;
    const bool par = (double)(N + M) * 64.0 >= kParallelMin;

    // ---- T1: S_n on the grid, bound per fixed point
    std::vector<double> aw(M);
    for (int64_t m = 0; m < M; ++m) aw[m] = weights ? (double)weights[m] : 1.0;
    std::vector<double> S(N), b1(N);
    grid_transform_dispatch<T>(g, pr, TY, M, aw.data(), 1, X, N, S.data(), aw.data(), b1.data(), nullptr, st.seconds);
    double tx = now_s();

    // ---- exact columns: bound above tol/2 S_n
    std::vector<int64_t> ecols;
    for (int64_t n = 0; n < N; ++n)
        if (!(S[n] > 0) || !(b1[n] <= half_tol * S[n])) ecols.push_back(n);
    std::vector<double> gw(N), hsh(N, 0.0);  // per fixed point: factor g_n, shift h_n of d2
    std::vector<double> logs(N);
    std::vector<char> empty(N, 0);
    double rel_g = 0;  // max relative error bound of g_n over grid columns
    for (int64_t n = 0; n < N; ++n) {
        const double den = S[n] + c;
        gw[n] = 1.0 / den;
        Pt1[n] = (T)(S[n] / den);
        logs[n] = std::log(den);
        const double rs = b1[n] / den;  // relative bound of s_n (the c part is exact)
        if (bound_s) bound_s[n] = rs;
        if (S[n] > 0 && b1[n] <= half_tol * S[n]) {
            st.max_rel_s = std::max(st.max_rel_s, rs);
            rel_g = std::max(rel_g, rs / (1.0 - rs));
        }
    }
    // A check (with the bounds): 8 grid columns summed exactly (all moving points within the cutoff).
    if (bound_s) {
        std::vector<int64_t> smp;
        for (int k = 0; k < 8; ++k) {
            const int64_t n = (int64_t)(((double)k + 0.5) * (double)N / 8.0);
            if (n < N && S[n] > 0 && b1[n] <= half_tol * S[n] && (smp.empty() || smp.back() != n)) smp.push_back(n);
        }
        for (int64_t n : smp) {
            double x[3], ex = 0;
            for (int d = 0; d < D; ++d) x[d] = (double)X[n * D + d];
            for (int64_t m = 0; m < M; ++m) {
                double y[3];
                for (int d = 0; d < D; ++d) y[d] = (double)TY[m * D + d];
                const double d2 = d2_of(x, y, D);
                if (d2 <= r2cut) ex += aw[m] * std::exp(-d2 * inv);
            }
            if (ex + c > 0) st.sampled_rel_s = std::max(st.sampled_rel_s, std::fabs(S[n] - ex) / (ex + c));
        }
    }
    int64_t pairs = 0;
    if (!ecols.empty()) {
        CellIndex iy;
        iy.build(TY, nullptr, M, D, std::isfinite(rcut) ? rcut : kInf);
        // Give up on the grid when the exact columns alone would cost more than the exact kernel.
        const std::vector<int64_t> cand = iy.candidates(X, ecols, rcut, par);
        double ework = 0;
        for (int64_t v : cand) ework += 2.0 * (double)v;
        if (ework > 0.5 * est_exact_pairs) {
            st.fell_back = true;
            st.method = 1;
            return st;
        }
        std::vector<int64_t> work(ecols.size(), 0);
#pragma omp parallel for schedule(dynamic, 16) num_threads(xmodal::num_threads()) if (par)
        for (int64_t k = 0; k < (int64_t)ecols.size(); ++k) {
            const int64_t n = ecols[k];
            double x[3];
            for (int d = 0; d < D; ++d) x[d] = (double)X[n * D + d];
            double dmin = kInf;
            int64_t cnt = 0;
            iy.ranges(x, rcut, [&](int64_t s, int64_t e) {
                cnt += e - s;
                for (int64_t i = s; i < e; ++i) {
                    const int64_t m = iy.ids[i];
                    if (!(aw[m] > 0)) continue;
                    const double d2 = d2_of(&iy.coord[i * D], x, D);
                    if (d2 <= r2cut && d2 < dmin) dmin = d2;
                }
            });
            double Sp = 0;
            const double h = std::isfinite(dmin) ? dmin : 0.0;
            if (std::isfinite(dmin)) {
                iy.ranges(x, rcut, [&](int64_t s, int64_t e) {
                    for (int64_t i = s; i < e; ++i) {
                        const int64_t m = iy.ids[i];
                        const double d2 = d2_of(&iy.coord[i * D], x, D);
                        if (d2 <= r2cut) Sp += aw[m] * std::exp(-std::max(d2 - h, 0.0) * inv);
                    }
                });
            }
            const ColumnOut co = column_from_sum(Sp, h * inv, c);
            gw[n] = co.g;
            hsh[n] = h;
            Pt1[n] = (T)co.pt;
            logs[n] = co.ls;
            empty[n] = co.empty ? 1 : 0;
            if (bound_s) bound_s[n] = 0;
            work[k] = 2 * cnt;
        }
        for (int64_t w : work) pairs += w;
    }
    st.exact_columns = (int64_t)ecols.size();
    st.seconds[4] += now_s() - tx;
    double logsum = 0;
    for (int64_t n = 0; n < N; ++n) {
        if (log_s_out) log_s_out[n] = logs[n];
        if (empty[n]) {
            logsum += std::log(std::numeric_limits<double>::min());
            ++st.empty_columns;
        } else {
            logsum += logs[n];
        }
    }
    st.log_s_sum = logsum;

    // ---- T2 on the grid over the grid columns: channels g, g (x - o)
    std::vector<char> is_e(N, 0);
    for (int64_t n : ecols) is_e[n] = 1;
    std::vector<int64_t> gcols;
    gcols.reserve(N - ecols.size());
    for (int64_t n = 0; n < N; ++n)
        if (!is_e[n]) gcols.push_back(n);
    const int C = 1 + D;
    double o[3];
    for (int d = 0; d < D; ++d) o[d] = g.lo[d] + 0.5 * (double)g.n[d] * g.h;
    std::vector<T> Xg(gcols.size() * D);
    std::vector<double> vals(gcols.size() * C), wabs(gcols.size());
    for (size_t k = 0; k < gcols.size(); ++k) {
        const int64_t n = gcols[k];
        vals[k * C] = gw[n];
        wabs[k] = gw[n];
        for (int d = 0; d < D; ++d) {
            Xg[k * D + d] = X[n * D + d];
            vals[k * C + 1 + d] = gw[n] * ((double)X[n * D + d] - o[d]);
        }
    }
    std::vector<double> out((size_t)M * C, 0.0), b2(M, 0.0), b2x(M, 0.0);
    if (!gcols.empty())
        grid_transform_dispatch<T>(g, pr, Xg.data(), (int64_t)gcols.size(), vals.data(), C, TY, M, out.data(),
                                   wabs.data(), b2.data(), b2x.data(), st.seconds);
    tx = now_s();
    Xg.clear();
    Xg.shrink_to_fit();
    vals.clear();
    vals.shrink_to_fit();
    // sums per moving point (before the factor a_m): p1 = sum k g, px_d = sum k g x_d
    std::vector<double> p1(M), px((size_t)M * D);
    for (int64_t m = 0; m < M; ++m) {
        p1[m] = out[m * C];
        for (int d = 0; d < D; ++d) px[m * D + d] = out[m * C + 1 + d] + o[d] * out[m * C];
    }
    out.clear();
    out.shrink_to_fit();
    // exact columns gathered at every moving point
    if (!ecols.empty()) {
        CellIndex ix;
        ix.build(X, ecols.data(), (int64_t)ecols.size(), D, std::isfinite(rcut) ? rcut : kInf);
        std::vector<int64_t> work(M, 0);
#pragma omp parallel for schedule(dynamic, 256) num_threads(xmodal::num_threads()) if (par)
        for (int64_t m = 0; m < M; ++m) {
            if (!(aw[m] > 0)) continue;
            double y[3];
            for (int d = 0; d < D; ++d) y[d] = (double)TY[m * D + d];
            const ExactRow r = exact_row(ix, y, D, rcut, r2cut, inv, gw.data(), hsh.data());
            p1[m] += r.s0;
            for (int d = 0; d < D; ++d) px[m * D + d] += r.sx[d];
            work[m] = r.visited;
        }
        for (int64_t w : work) pairs += w;
    }
    // rows above tol/2: exact over all fixed points within the cutoff (within a work budget)
    std::vector<int64_t> frows;
    for (int64_t m = 0; m < M; ++m) {
        if (!(aw[m] > 0)) continue;
        if (!(b2[m] <= half_tol * p1[m]) || !(b2x[m] <= tol * p1[m])) frows.push_back(m);
    }
    if (!frows.empty()) {
        CellIndex ia;
        ia.build(X, nullptr, N, D, std::isfinite(rcut) ? rcut : kInf);
        const std::vector<int64_t> cand = ia.candidates(TY, frows, rcut, par);
        const double budget =
            std::max(4.0 * (double)(N + M) * std::pow((double)g.S, D) * (D + 2), 1e6);
        double used = 0;
        size_t take = 0;
        for (; take < frows.size(); ++take) {
            if (used + (double)cand[take] > budget) break;
            used += (double)cand[take];
        }
        std::vector<int64_t> work(take, 0);
#pragma omp parallel for schedule(dynamic, 16) num_threads(xmodal::num_threads()) if (par)
        for (int64_t k = 0; k < (int64_t)take; ++k) {
            const int64_t m = frows[k];
            double y[3];
            for (int d = 0; d < D; ++d) y[d] = (double)TY[m * D + d];
            const ExactRow r = exact_row(ia, y, D, rcut, r2cut, inv, gw.data(), hsh.data());
            p1[m] = r.s0;
            for (int d = 0; d < D; ++d) px[m * D + d] = r.sx[d];
            b2[m] = 0;
            b2x[m] = 0;
            work[k] = cand[k];
        }
        for (int64_t w : work) pairs += w;
        st.exact_rows = (int64_t)take;
        st.unresolved_rows = (int64_t)(frows.size() - take);
    }
    st.pairs = pairs;
    st.seconds[4] += now_s() - tx;
    // ---- outputs with the factor a_m; bounds
    for (int64_t m = 0; m < M; ++m) {
        const double a = aw[m];
        if (!(a > 0)) {
            P1[m] = 0;
            for (int d = 0; d < D; ++d) PX[m * D + d] = 0;
            if (bound_p1) bound_p1[m] = 0;
            if (bound_px) bound_px[m] = 0;
            continue;
        }
        const double v = std::max(p1[m], 0.0);
        P1[m] = (T)(a * v);
        for (int d = 0; d < D; ++d) PX[m * D + d] = (T)(a * px[m * D + d]);
        const double bp = a * (b2[m] + rel_g * (v + b2[m]));
        const double bx = a * b2x[m] * sigma;
        if (bound_p1) bound_p1[m] = bp;
        if (bound_px) bound_px[m] = bx;
        if (v > 0) {
            st.max_rel_p1 = std::max(st.max_rel_p1, bp / (a * v));
            st.max_px = std::max(st.max_px, bx / (sigma * a * v));
        }
    }
    // ---- best match: largest posterior among the fixed points nearest to each moving point
    if (best_idx || best_prob) {
        tx = now_s();
        BBox bx = bbox_empty();
        bbox_add(bx, X, N, D);
        double vol = 1;
        int nd = 0;
        for (int d = 0; d < D; ++d)
            if (bx.hi[d] > bx.lo[d]) {
                vol *= bx.hi[d] - bx.lo[d];
                ++nd;
            }
        double edge = nd > 0 ? std::pow(vol / (double)N, 1.0 / nd) * 1.5 : 1.0;
        CellIndex in;
        in.build(X, nullptr, N, D, edge);
        // a clustered set fills a fraction of its bounding box: size the cells again by the volume
        // of the occupied cells (the candidates' count per moving point stays bounded)
        if (nd == D && std::isfinite(in.h)) {
            int64_t occupied = 0;
            for (size_t k = 0; k + 1 < in.start.size(); ++k) occupied += in.start[k + 1] > in.start[k];
            const double occ_vol = (double)occupied * std::pow(in.h, D);
            const double e2 = std::pow(occ_vol / (double)N, 1.0 / D) * 1.5;
            if (occupied > 0 && e2 < 0.8 * in.h) in.build(X, nullptr, N, D, e2);
        }
#pragma omp parallel for schedule(dynamic, 256) num_threads(xmodal::num_threads()) if (par)
        for (int64_t m = 0; m < M; ++m) {
            int64_t bi = -1;
            double bv = 0;
            if (aw[m] > 0) {
                double y[3];
                for (int d = 0; d < D; ++d) y[d] = (double)TY[m * D + d];
                // expand a box until it holds a point, then once more to the nearest point's distance
                double r = std::isfinite(in.h) ? 0.5 * in.h : kInf;
                double dnn2 = kInf;
                for (int it = 0; it < 64; ++it) {
                    in.ranges(y, r, [&](int64_t s, int64_t e) {
                        for (int64_t i = s; i < e; ++i) dnn2 = std::min(dnn2, d2_of(&in.coord[i * D], y, D));
                    });
                    if (std::isfinite(dnn2) || !std::isfinite(r)) break;
                    r *= 2;
                }
                // candidates: within min(sigma / 2, one cell) beyond the nearest point
                const double rr = std::isfinite(dnn2)
                                      ? std::sqrt(dnn2) * (1 + 1e-12) + std::min(0.5 * sigma, in.h) + 1e-300
                                      : kInf;
                // the ball (not its bounding box): a moving point far outside the fixed set would
                // otherwise visit a box holding a large part of it (quadratic cost at 1M points)
                in.ball_ranges(y, rr, [&](int64_t s, int64_t e) {
                    for (int64_t i = s; i < e; ++i) {
                        const int64_t n = in.ids[i];
                        const double d2 = d2_of(&in.coord[i * D], y, D);
                        if (d2 > rr * rr || !(d2 <= r2cut) || !(gw[n] > 0)) continue;
                        const double p = std::exp(-std::max(d2 - hsh[n], 0.0) * inv) * gw[n];
                        if (p > bv || (p == bv && bi >= 0 && n < bi)) {
                            bv = p;
                            bi = n;
                        }
                    }
                });
            }
            const bool has = bi >= 0 && bv > 0;
            if (best_idx) best_idx[m] = has ? bi : -1;
            if (best_prob) best_prob[m] = has ? (T)std::min(aw[m] * bv, 1.0) : T(0);
        }
        st.seconds[5] += now_s() - tx;
    }
    return st;
}

}  // namespace

double grid_reach_for_tol(double tol) {
    const double t = std::min(std::max(tol, 1e-12), 0.5);
    return std::min(std::max(std::sqrt(2.0 * std::log(100.0 / t)), 4.0), 8.0);
}

GridErrorProfile grid_error_profile(int order, double q, double reach, int D) {
    return compute_profile(order, q, reach, D);
}

template <class T>
FastEStepStats estep_fast(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2,
                          double c, double cutoff, EStepMethod method, double tol, int64_t max_cells, T* P1,
                          T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out, double* bound_s,
                          double* bound_p1, double* bound_px) {
    check_sizes(N, M, D);
    require(std::isfinite(sigma2) && sigma2 > 0, "cpd estep_fast: sigma2 must be positive and finite, got " + fmtg(sigma2));
    require(std::isfinite(c) && c >= 0, "cpd estep_fast: outlier constant c must be >= 0, got " + fmtg(c));
    require(cutoff > 0, "cpd estep_fast: cutoff must be positive, got " + fmtg(cutoff));
    require(std::isfinite(tol) && tol > 0 && tol <= 0.5, "cpd estep_fast: tol must lie in (0, 0.5], got " + fmtg(tol));
    require(method == EStepMethod::automatic || method == EStepMethod::exact || method == EStepMethod::fast,
            "cpd estep_fast: method must be auto, exact or fast");
    check_finite_arr(X, N * D, "fixed");
    check_finite_arr(TY, M * D, "moved");
    if (weights) {
        check_finite_arr(weights, M, "weights");
        for (int64_t m = 0; m < M; ++m) require(weights[m] >= 0, "cpd estep_fast: weights must be >= 0");
    }
    const double cap = max_cells > 0 ? (double)max_cells : std::max(4.0 * (double)(N + M), 4096.0);
    FastEStepStats st;
    GridChoice gc;
    BBox box = bbox_empty();
    bbox_add(box, X, N, D);
    bbox_add(box, TY, M, D);
    const double sigma = std::sqrt(sigma2);
    const int channels = 1 + (1 + D);  // T1 + T2
    if (method != EStepMethod::exact) {
        double ext2 = 0;
        for (int d = 0; d < D; ++d) ext2 += (box.hi[d] - box.lo[d]) * (box.hi[d] - box.lo[d]);
        require(std::isfinite(ext2), "cpd estep_fast: the points' spread overflows; scale the coordinates");
        const double r = std::isfinite(cutoff) ? std::sqrt(2.0 * sigma2 * cutoff) : kInf;
        // No grid with q = sigma / h >= 0.75 fits in the cap (the cubic grid, the smallest, at the
        // coarsest admissible spacing is already too large; cells only grow as h shrinks): the
        // exact kernel runs whatever its cost, so its (serial, O(N + M + cells)) estimate is
        // skipped and reported as NaN.
        if (grid_cells(box, D, 4, sigma / kQLevels[0]) > cap) {
            st.est_cost_exact = std::numeric_limits<double>::quiet_NaN();
        } else {
            st.est_cost_exact = exact_pairs_estimate(X, N, TY, M, D, r) * kPairCost;
            gc = choose_grid(box, D, sigma, tol, cap, N + M, channels, method == EStepMethod::fast,
                             st.est_cost_exact);
        }
        st.est_cost_grid = gc.ok ? gc.cost : kInf;
    }
    bool use_grid = false;
    if (method == EStepMethod::fast) {
        use_grid = gc.ok;
    } else if (method == EStepMethod::automatic && gc.ok) {
        use_grid = gc.cost < st.est_cost_exact;
    }
    if (use_grid) {
        FastEStepStats g = estep_grid<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, tol, st.est_cost_exact / kPairCost,
                                         gc, box, P1, Pt1, PX, best_idx, best_prob, log_s_out, bound_s, bound_p1,
                                         bound_px);
        g.est_cost_exact = st.est_cost_exact;
        g.est_cost_grid = st.est_cost_grid;
        if (!g.fell_back) return g;
        st.fell_back = true;
        st.order = g.order;
        st.q = g.q;
        st.h = g.h;
        st.cells = g.cells;
        st.capped = g.capped;
        st.dense_rel = g.dense_rel;
    }
    EStepStats es = estep<T>(X, N, TY, M, D, weights, sigma2, c, cutoff, P1, Pt1, PX, best_idx, best_prob, log_s_out);
    st.method = 1;
    st.log_s_sum = es.log_s_sum;
    st.pairs = es.pairs;
    st.empty_columns = es.empty_columns;
    st.shifted_columns = es.shifted_columns;
    if (bound_s) std::fill(bound_s, bound_s + N, 0.0);
    if (bound_p1) std::fill(bound_p1, bound_p1 + M, 0.0);
    if (bound_px) std::fill(bound_px, bound_px + M, 0.0);
    return st;
}

template <class T>
GaussFastStats gauss_transform_fast(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                                    double beta, EStepMethod method, double tol, int64_t max_cells, T* out,
                                    double* bound_out) {
    check_sizes(K, Q, D);
    require(std::isfinite(beta) && beta > 0, "cpd gauss_transform_fast: beta must be positive and finite");
    require(std::isfinite(tol) && tol > 0 && tol <= 0.5, "cpd gauss_transform_fast: tol must lie in (0, 0.5], got " + fmtg(tol));
    check_finite_arr(centers, K * D, "centers");
    check_finite_arr(coef, K * D, "coefficients");
    check_finite_arr(points, Q * D, "points");
    const double cap = max_cells > 0 ? (double)max_cells : std::max(4.0 * (double)(K + Q), 4096.0);
    GaussFastStats st;
    BBox box = bbox_empty();
    bbox_add(box, centers, K, D);
    bbox_add(box, points, Q, D);
    GridChoice gc;
    double ex = 0;
    if (method != EStepMethod::exact) {
        const double r = std::sqrt(2.0 * beta * beta * 36.0);
        ex = exact_pairs_estimate(centers, K, points, Q, D, r) * 0.5 * kPairCost;
        gc = choose_grid(box, D, beta, tol, cap, K + Q, D, method == EStepMethod::fast, ex);
    }
    bool use_grid = false;
    if (method == EStepMethod::fast) {
        use_grid = gc.ok;
    } else if (method == EStepMethod::automatic && gc.ok) {
        use_grid = gc.cost < ex;
    }
    if (!use_grid) {
        gauss_transform<T>(centers, K, coef, points, Q, D, beta, 36.0, out);
        if (bound_out) std::fill(bound_out, bound_out + Q, 0.0);
        st.method = 1;
        return st;
    }
    const Geom g = make_geom(box, D, gc.order + 1, gc.h);
    std::vector<double> vals(K * D), wabs(K);
    for (int64_t k = 0; k < K; ++k) {
        double mx = 0;
        for (int d = 0; d < D; ++d) {
            vals[k * D + d] = (double)coef[k * D + d];
            mx = std::max(mx, std::fabs(vals[k * D + d]));
        }
        wabs[k] = mx;
    }
    std::vector<double> res((size_t)Q * D), bnd(Q);
    double secs[6] = {0, 0, 0, 0, 0, 0};
    grid_transform_dispatch<T>(g, gc.prof, centers, K, vals.data(), D, points, Q, res.data(), wabs.data(), bnd.data(),
                               nullptr, secs);
    for (int64_t i = 0; i < Q * D; ++i) out[i] = (T)res[i];
    for (int64_t i = 0; i < Q; ++i) {
        if (bound_out) bound_out[i] = bnd[i];
        st.max_abs = std::max(st.max_abs, bnd[i]);
    }
    st.method = 2;
    st.order = gc.order;
    st.q = gc.q;
    st.cells = g.cells;
    return st;
}

// The voxel grid of edge v over the box b: per axis floor(extent / v) + 1 cells (at most 2^21), and
// their number (a double: it may not fit an int64). cell_of: the row-major index of the voxel holding
// p, from the per-axis index floor((p - lo) / v) clamped to the grid.
struct VoxelGrid {
    int64_t nc[3] = {1, 1, 1};
    double cells = 1;

    template <class T>
    int64_t cell_of(const T* p, int D, const BBox& b, double v) const {
        int64_t c = 0;
        for (int d = 0; d < D; ++d) {
            double cidx = std::floor(((double)p[d] - b.lo[d]) / v);
            cidx = std::min(std::max(cidx, 0.0), (double)(nc[d] - 1));
            c = c * nc[d] + (int64_t)cidx;
        }
        return c;
    }
};

inline VoxelGrid voxel_grid(const BBox& b, int D, double v) {
    VoxelGrid g;
    for (int d = 0; d < D; ++d) {
        const double c = std::min(std::floor((b.hi[d] - b.lo[d]) / v), 2097151.0) + 1.0;
        g.nc[d] = (int64_t)c;
        g.cells *= c;
    }
    return g;
}

// The voxel subsample's choice through a dense array of cells when the voxel grid over the box
// has at most 4 n + 4096 cells (typical: the target count is far below n): per cell the point of
// smallest dc, the lower index on ties (points visited in index order), O(n + cells) instead of a
// sort of all n points (0.16 of 0.21 s at 1M). The same cells as the packed keys (per-axis index
// floor((p - lo) / v), clamped to the grid), so the same points. Returns false when too many cells.
template <class T>
bool pick_per_cell(const T* P, int64_t n, int D, const BBox& b, double v, const std::vector<double>& dc,
                   std::vector<int64_t>& out) {
    const VoxelGrid vg = voxel_grid(b, D, v);
    if (!(vg.cells <= 4.0 * (double)n + 4096.0)) return false;
    std::vector<int64_t> cell(n), best((size_t)vg.cells, -1);
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= 100000)
    for (int64_t i = 0; i < n; ++i) cell[i] = vg.cell_of(&P[i * D], D, b, v);
    for (int64_t i = 0; i < n; ++i) {
        int64_t& k = best[(size_t)cell[i]];
        if (k < 0 || dc[i] < dc[k]) k = i;
    }
    out.clear();
    for (const int64_t k : best)
        if (k >= 0) out.push_back(k);
    std::sort(out.begin(), out.end());
    return true;
}

template <class T>
std::vector<int64_t> voxel_subsample(const T* P, int64_t n, int D, int64_t target, double voxel, double* voxel_used) {
    require(D == 2 || D == 3, "voxel_subsample: d must be 2 or 3, got " + std::to_string(D));
    require(n >= 1, "voxel_subsample: expected at least one point");
    check_finite_arr(P, n * D, "points");
    require(std::isfinite(voxel) && voxel >= 0, "voxel_subsample: voxel must be >= 0 and finite, got " + fmtg(voxel));
    require(voxel > 0 || target >= 1, "voxel_subsample: give a voxel edge > 0 or a target count >= 1");
    BBox b = bbox_empty();
    bbox_add(b, P, n, D);
    double ext = 0, vol = 1;
    int nd = 0;
    for (int d = 0; d < D; ++d) {
        const double e = b.hi[d] - b.lo[d];
        ext = std::max(ext, e);
        if (e > 0) {
            vol *= e;
            ++nd;
        }
    }
    std::vector<uint64_t> key(n);
    std::vector<int64_t> idx(n);
    // keys: cell index per axis packed in 21 bits (the edge is enlarged so that every axis fits)
    auto make_keys = [&](double v) {
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= 100000)
        for (int64_t i = 0; i < n; ++i) {
            uint64_t k = 0;
            for (int d = 0; d < D; ++d) {
                double cidx = std::floor(((double)P[i * D + d] - b.lo[d]) / v);
                cidx = std::min(std::max(cidx, 0.0), 2097151.0);
                k = (k << 21) | (uint64_t)cidx;
            }
            key[i] = k;
        }
    };
    // The number of occupied voxels at edge v. Where the voxel grid over the bounding box has at
    // most 64 n cells, one bit per cell (O(n + cells)); else the packed keys sorted. Both exact.
    std::vector<uint64_t> bits;
    auto count = [&](double v) {
        const VoxelGrid vg = voxel_grid(b, D, v);
        if (vg.cells <= 64.0 * (double)n + 4096.0) {
            bits.assign(((size_t)vg.cells + 63) / 64, 0);
            uint64_t* bw = bits.data();
            // the bits are set by atomic ORs (threads may share a word); the count of set bits,
            // and so the result, does not depend on the order
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= 100000)
            for (int64_t i = 0; i < n; ++i) {
                const int64_t c = vg.cell_of(&P[i * D], D, b, v);
                const uint64_t m = uint64_t(1) << (c & 63);
                uint64_t& w = bw[(size_t)(c >> 6)];
#pragma omp atomic
                w |= m;
            }
            int64_t occupied = 0;
            for (const uint64_t w : bits) occupied += (int64_t)std::bitset<64>(w).count();
            return occupied;
        }
        make_keys(v);
        std::vector<uint64_t> k2(key);
        std::sort(k2.begin(), k2.end());
        return (int64_t)(std::unique(k2.begin(), k2.end()) - k2.begin());
    };
    const double vmin = ext > 0 ? ext / 2097000.0 : 1.0;
    double v = voxel;
    if (!(v > 0)) {
        if (target >= n || ext == 0) {
            v = ext > 0 ? vmin : 1.0;
        } else {
            // secant steps on log(count) ~ -nd log(v), then bisection keeping count <= target
            double lo_v = vmin, hi_v = std::max(ext, vmin) * 2.0;  // count(lo_v) large, count(hi_v) = 1
            v = std::max(std::pow(vol / (double)target, 1.0 / std::max(nd, 1)), vmin);
            for (int it = 0; it < 40; ++it) {
                const int64_t cnt = count(v);
                if (cnt <= target) {
                    hi_v = std::min(hi_v, v);
                    if ((double)cnt >= 0.9 * (double)target) break;
                } else {
                    lo_v = std::max(lo_v, v);
                }
                double nv = v * std::pow((double)cnt / (double)target, 1.0 / std::max(nd, 1));
                if (!(nv > lo_v && nv < hi_v)) nv = std::sqrt(lo_v * hi_v);
                if (it >= 8) nv = std::sqrt(lo_v * hi_v);
                v = nv;
                if (hi_v / lo_v < 1.0 + 1e-9) {
                    v = hi_v;
                    break;
                }
            }
            if (count(v) > target) v = hi_v;
        }
    }
    v = std::max(v, vmin);
    if (voxel_used) *voxel_used = v;
    // per occupied voxel: the point nearest its centre (ties: lower index)
    std::vector<double> dc(n);
#pragma omp parallel for num_threads(xmodal::num_threads()) schedule(static) if (n >= 100000)
    for (int64_t i = 0; i < n; ++i) {
        double s = 0;
        for (int d = 0; d < D; ++d) {
            const double cidx = std::min(std::max(std::floor(((double)P[i * D + d] - b.lo[d]) / v), 0.0), 2097151.0);
            const double cen = b.lo[d] + (cidx + 0.5) * v;
            const double t = (double)P[i * D + d] - cen;
            s += t * t;
        }
        dc[i] = s;
    }
    std::vector<int64_t> out;
    if (pick_per_cell(P, n, D, b, v, dc, out)) return out;
    make_keys(v);
    std::iota(idx.begin(), idx.end(), int64_t(0));
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t c2) {
        if (key[a] != key[c2]) return key[a] < key[c2];
        if (dc[a] != dc[c2]) return dc[a] < dc[c2];
        return a < c2;
    });
    for (int64_t i = 0; i < n; ++i)
        if (i == 0 || key[idx[i]] != key[idx[i - 1]]) out.push_back(idx[i]);
    std::sort(out.begin(), out.end());
    return out;
}

template FastEStepStats estep_fast<float>(const float*, int64_t, const float*, int64_t, int, const float*, double,
                                          double, double, EStepMethod, double, int64_t, float*, float*, float*,
                                          int64_t*, float*, double*, double*, double*, double*);
template FastEStepStats estep_fast<double>(const double*, int64_t, const double*, int64_t, int, const double*, double,
                                           double, double, EStepMethod, double, int64_t, double*, double*, double*,
                                           int64_t*, double*, double*, double*, double*, double*);
template GaussFastStats gauss_transform_fast<float>(const float*, int64_t, const float*, const float*, int64_t, int,
                                                    double, EStepMethod, double, int64_t, float*, double*);
template GaussFastStats gauss_transform_fast<double>(const double*, int64_t, const double*, const double*, int64_t,
                                                     int, double, EStepMethod, double, int64_t, double*, double*);
template std::vector<int64_t> voxel_subsample<float>(const float*, int64_t, int, int64_t, double, double*);
template std::vector<int64_t> voxel_subsample<double>(const double*, int64_t, int, int64_t, double, double*);

}  // namespace xmodal::cpd
