// xmodal: a sub-quadratic CPD E-step (grid Gauss transform with a reported error bound), a fast
// Gauss transform for field interpolation, and a voxel-grid subsample for coarse-to-fine CPD.
//
// The E-step needs two Gauss transforms (see cpd.hpp for the notation):
//   T1  S_n  = sum_m a_m k_mn                       (sources: moving points, targets: fixed points)
//   T2  P1_m = a_m sum_n k_mn g_n,  PX_m = a_m sum_n k_mn g_n x_n,  g_n = 1 / (S_n + c)
//                                                   (sources: fixed points, targets: moving points)
// with k_mn = exp(-|x_n - ty_m|^2 / (2 sigma2)).
//
// Grid Gauss transform (used when sigma is wide against the point spacing): sources are splatted
// onto a regular grid of spacing h = sigma / q with cardinal B-spline weights of degree p (3: cubic,
// 4 x 4 x 4 nodes per point in 3D; 5: quintic, 6 x 6 x 6), the grid is convolved along each axis
// with a discrete kernel g (|k| <= ceil(R q) taps), and the result is interpolated back at the
// targets with the same B-spline weights (the scheme of smooth particle-mesh Ewald). The taps are
// the inverse DTFT of G^(w) / B^(w)^2 on [-pi, pi] (G^: the Gaussian's spectrum, B^ = sinc^(p+1):
// the B-spline's), so the shift-averaged effective kernel equals the Gaussian up to aliasing; the
// remaining error K(t, s) - G(t - s) is shift-variant and small (~1e-3 at q = 2 for cubic).
//
// Error bound. grid_error_profile computes, for (p, q, R, D), an envelope e(r) >= |K(t, s) - G(t - s)|
// over all pairs whose infinity-norm distance is >= r sigma (peak-normalised: G(0) = 1), from the
// one-dimensional error sampled on a fine grid of offsets (32 per cell for both points, plus 5 %)
// and the product rule |prod K_i - prod G_i| <= sum_i |K_i - G_i| prod_{j != i} max(|K_j|, G_j).
// Every grid transform then bounds its own error per target: with U_k the source weight in the
// grid cells overlapping the box of half-width r_k around the target (an integral image),
//   |err| <= e(0) W + sum_{k >= 1} (e(r_k) - e(r_{k-1})) (W - U_k),      W = total source weight,
// which is sum_j e(dist_j) w_j summed by shells (Abel summation; exact arithmetic on the bound, no
// assumption on the point distribution). The same with e_x(r) >= |K - G| |t - s| / sigma bounds
// the error of the centred first moment sum_j (K - G) w_j (s_j - t) (used for PX - ty P1).
//
// Fast E-step (estep_fast, method fast, or auto when it is cheaper): T1 on the grid; every fixed
// point whose bound exceeds tol/2 S_n (isolated points, S_n small against its neighbourhood) is
// summed exactly over the support d2 <= 2 sigma2 cutoff with the log-sum-exp shift of the exact
// kernel ("exact columns"); T2 on the grid over the other fixed points plus an exact gather of the
// exact columns' terms; every moving row whose bound exceeds tol/2 P1_m is summed exactly (as long
// as the exact work stays within a budget of the grid's own work; rows left over keep the grid
// value, clamped at 0, and their bound is reported). Outputs: relative error of s_n <= tol/2 (bound
// per fixed point), relative error of P1_m <= tol/2 + max relative error of the s_n in reach
// (bound per moving point), and |delta(PX_m - ty_m P1_m)| <= bound_px_m + (s_n error) *
// sum_n P_mn |x_n - ty_m| (bound_px per moving point, in input units). Pt1_n = S_n / (S_n + c)
// has the relative error of s_n, log s_n an absolute error <= -log(1 - relative error of s_n).
//
// Automatic choice (method automatic): the exact truncated kernel of cpd.hpp (cutoff as given)
// unless the grid is expected to be cheaper. Grid candidates: p in {3, 5} x q from a table (0.75 .. 6),
// R = sqrt(2 ln(100 / tol)) rounded up to 4.5 / 5.5 / 6.5 / 7.5; per order the smallest q whose a priori
// bounds on a uniform density meet dense_rel <= tol / 4 and dense_rel_dist <= tol / 2, if its grid
// fits in max_cells cells (default 4 (M + N), at least 4096); otherwise, when the exact kernel would
// cost far more, the grid the cap allows, profiled at its q, if it meets tol / 2 and tol. Costs:
// (M + N)(p + 1)^D (D + 2) splat/slice terms + 0.6 cells D (2 ceil(R q) + 1)(D + 2) blur terms + 4 per
// bound look-up, against 2 per candidate pair of the exact kernel (both passes; estimated from a
// histogram of both sets at the cutoff radius). The cheaper runs. method fast: the grid whenever a
// grid with q >= 0.75 fits (the capped one with the smaller a priori bound when none meets tol);
// exact: the exact kernel. Either way, when the exact columns alone would cost more than half the
// exact kernel, the exact kernel runs instead (fell_back).
//
// Determinism: splatting runs per grid plane along axis 0 (one writer per plane, sources visited
// in a fixed order: by plane of their first node, then by index), the convolution per grid line,
// slicing and exact sums per target: bit-identical for any thread count. All grid arithmetic is
// in double; inputs and outputs in T (float or double). Memory O(M + N + cells).
#pragma once

#include <cstdint>
#include <vector>

namespace xmodal::cpd {

enum class EStepMethod : int { automatic = 0, exact = 1, fast = 2 };

// Error envelope of the grid Gauss transform for B-spline degree `order` (3 or 5), q = sigma / h,
// kernel reach R (taps |k| <= ceil(R q)), dimension D (1, 2 or 3; D = 1 is the one-dimensional
// profile itself).
struct GridErrorProfile {
    int order = 3;
    double q = 2.0;
    double reach = 5.5;
    int D = 3;
    std::vector<double> taps;      // g[0..kmax] (symmetric)
    std::vector<double> radii;     // shell radii r_k in units of sigma (infinity norm), radii[0] = 0
    std::vector<double> env;       // env[k] >= |K - G| for pairs at infinity-distance >= radii[k]
    std::vector<double> env_dist;  // env_dist[k] >= |K - G| |t - s| / sigma for such pairs
    double dense_rel = 0;          // a priori relative error of a Gauss sum over a uniform density
    double dense_rel_dist = 0;     // the same for the centred first moment (units of sigma)
    double sup_1d = 0;             // sup |K1 - G1| of the one-dimensional kernel
};

GridErrorProfile grid_error_profile(int order, double q, double reach, int D);

// The kernel reach R used for a tolerance (R = sqrt(2 ln(100 / tol)), clamped to [4, 8]; the E-step
// rounds it up to the levels 4.5, 5.5, 6.5, 7.5).
double grid_reach_for_tol(double tol);

struct FastEStepStats {
    int method = 1;                 // what ran: 1 exact kernel, 2 grid
    int order = 0;                  // B-spline degree (grid)
    double q = 0;                   // sigma / h actually used (grid)
    double h = 0;                   // grid spacing, input units (grid)
    int64_t cells = 0;              // grid cells (grid)
    bool capped = false;            // h enlarged to fit max_cells
    double dense_rel = 0;           // a priori bound for (order, q) on a uniform density
    double max_rel_s = 0;           // max over fixed points of the bound on |ds_n| / s_n
    double max_rel_p1 = 0;          // max over moving points of the bound on |dP1_m| / P1_m (P1_m > 0)
    double max_px = 0;              // max over moving points of bound_px_m / (sigma P1_m) (P1_m > 0)
    int64_t exact_columns = 0;      // fixed points summed exactly (grid bound above tol/2)
    int64_t exact_rows = 0;         // moving points summed exactly
    int64_t unresolved_rows = 0;    // moving points above tol/2 left on the grid (budget exhausted)
    bool fell_back = false;         // grid chosen, but its exact columns would cost more than the exact kernel
    double sampled_rel_s = 0;       // max |ds_n| / s_n measured on 8 grid columns summed exactly (a check)
    // wall seconds of the grid path: splat, blur, slice, bound look-ups, exact parts, best match
    double seconds[6] = {0, 0, 0, 0, 0, 0};
    double est_cost_exact = 0;      // cost model (arbitrary units, comparable; NaN: not estimated, no grid fits)
    double est_cost_grid = 0;
    double log_s_sum = 0;           // sum_n log s_n (as cpd.hpp)
    int64_t pairs = 0;              // kernel evaluations of the exact parts
    int64_t empty_columns = 0;      // fixed points with s_n == 0
    int64_t shifted_columns = 0;    // fixed points summed with the log-sum-exp shift (exact kernel
                                    // only: the grid path's exact columns are always shifted; 0 there)
};

// E-step with the outputs of cpd::estep (P1, Pt1, PX, best_idx, best_prob, log_s_out; the last
// three may be null) plus optional per-point bounds (may be null): bound_s (N, relative, of s_n),
// bound_p1 (M, absolute, of P1_m), bound_px (M, absolute, input units, of PX_m - ty_m P1_m; the
// s_n part excluded, see above). For the exact method the bounds are 0. tol in (0, 0.5];
// max_cells <= 0: 4 (M + N) (at least 4096). Best match on the grid path: the largest posterior
// among the fixed points nearest to the moving point (the cells of a neighbour grid around it up
// to the ring that guarantees the nearest point), with the grid's s_n.
template <class T>
FastEStepStats estep_fast(const T* X, int64_t N, const T* TY, int64_t M, int D, const T* weights, double sigma2,
                          double c, double cutoff, EStepMethod method, double tol, int64_t max_cells, T* P1,
                          T* Pt1, T* PX, int64_t* best_idx, T* best_prob, double* log_s_out, double* bound_s,
                          double* bound_p1, double* bound_px);

struct GaussFastStats {
    int method = 1;  // 1 exact truncated sums (cpd::gauss_transform), 2 grid
    int order = 0;
    double q = 0;
    int64_t cells = 0;
    double max_abs = 0;  // max over points of the error bound (input units of the coefficients)
};

// out[q, :] = sum_k exp(-|p_q - c_k|^2 / (2 beta^2)) coef[k, :] (as cpd::gauss_transform) with an
// absolute error bound per point (bound_out, Q, may be null) of at most tol * sum_k |coef_k|_inf
// where the grid is used; method automatic picks the cheaper of the grid and the exact truncated
// sums (cutoff 36).
template <class T>
GaussFastStats gauss_transform_fast(const T* centers, int64_t K, const T* coef, const T* points, int64_t Q, int D,
                                    double beta, EStepMethod method, double tol, int64_t max_cells, T* out,
                                    double* bound_out);

// Spatially uniform subsample: the points nearest the centres of the occupied cells of a voxel grid
// (ties: lower index), returned as sorted indices. voxel > 0 gives the voxel edge (input units);
// else the edge is searched so that the count is at most `target` and, where the counts allow, at
// least 0.9 target. voxel_used receives the edge. Deterministic, O(n log n).
template <class T>
std::vector<int64_t> voxel_subsample(const T* P, int64_t n, int D, int64_t target, double voxel, double* voxel_used);

}  // namespace xmodal::cpd
