// Every point's best stability in a batch of ragged pairs of diagrams (SPEC 3, 4.3 and 4.5): the
// selection's transport step, one fused pass per problem (costs, plan, stabilities, best match)
// on the solver of sinkhorn_cpu.cpp, so nothing padded to the largest problem is built.
#include "best_stability_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "parallel.h"
#include "simd.h"
#include "sinkhorn_cpu.h"

namespace topoot {
namespace {

// max(init, x[0..n)) with eight independent running maxima: the compiler may not reorder a
// floating-point reduction itself, and one chain waits on every compare. Exact (a maximum is one of
// its inputs, whatever the order; a NaN never wins a strict compare).
template <typename T>
TOPOOT_INLINE T max_of(const T* x, int64_t n, T init) {
  T acc[8] = {init, init, init, init, init, init, init, init};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int t = 0; t < 8; ++t) acc[t] = x[j + t] > acc[t] ? x[j + t] : acc[t];
  }
  for (; j < n; ++j) acc[0] = x[j] > acc[0] ? x[j] : acc[0];
  for (int t = 1; t < 8; ++t) acc[0] = acc[t] > acc[0] ? acc[t] : acc[0];
  return acc[0];
}

// One problem's points and outputs, and the row buffers of its stabilities (m(+1) entries).
struct StabilityRows {
  const double* P;
  int64_t n;
  const double *ql, *qh;  // Q's lows and highs, each contiguous (no strided loads in the loops)
  int64_t m;
  bool diagonal;
  Divisor<double> by_scale;  // dmax + 1e-12; not fused where it is infinite (then 1 / it is 0)
  double *sr, *cr, *sc, *cc;
  double* S;         // a plan row
  float* estimate;   // its stabilities estimated (stabilities_of_row_as)
  uint8_t* open;     // whether an estimate leaves its entry to be computed exactly
  float inv_scale;   // 1 / (dmax + 1e-12) for the estimates
  bool screen;       // whether the estimates are within kEstimateError (else every entry is exact)
};

// Cost M[i, j] of a point pair (i < n, j < m) and its stability divisor 1 + sqrt(max(M, 0)), the
// one place these expressions are written (the kernel's rows and the stabilities must agree bit for
// bit). The released costs are (sqrt(d2) / scale)^2. Through Divisor (Fused) the quotient r has the
// division's bits: sqrt(d2) <= dmax < scale, so r <= 1 never overflows, and a subnormal r
// (r < 2^-1022) squares to 0 and leaves 1 + r = 1 either way. The divisor is then 1 + r, r the
// root that M = r * r came from: sqrt(fl(r * r)) == r for every r >= 0 whose square does not
// underflow (binary floating point, round to nearest), and where it underflows (r < 2^-511) 1 + r
// and 1 + sqrt(fl(r * r)) both round to 1; NaN and inf go through both alike. So the stabilities
// take one square root per entry instead of two, bit for bit.
template <bool Diagonal, bool Fused>
TOPOOT_INLINE void cost_and_divisor(const StabilityRows& p, double pl, double ph, int64_t j, double& M, double& div) {
  const double dl = pl - p.ql[j], dh = ph - p.qh[j];
  const double d2 = dl * dl + dh * dh;
  if constexpr (Diagonal) {
    M = d2;
    div = 1.0 + std::sqrt(std::max(M, 0.0));
  } else {
    const double d = std::sqrt(d2);
    const double r = Fused ? p.by_scale.divide(d) : d / p.by_scale.d;
    M = r * r;
    div = 1.0 + r;
  }
}

template <bool Diagonal, bool Fused>
TOPOOT_INLINE void cost_row_as(const StabilityRows& p, double pl, double ph, double* out) {
  for (int64_t j = 0; j < p.m; ++j) {
    double div;
    cost_and_divisor<Diagonal, Fused>(p, pl, ph, j, out[j], div);
  }
}

// Row i of the costs, m(+1) entries; with the diagonal (paper text), an extra last column (the
// point's distance to the diagonal) and an extra last row (the other side's, then 0).
TOPOOT_INLINE void cost_row(const StabilityRows& p, int64_t i, double* out) {
  const int64_t m = p.m;
  if (i == p.n) {
    for (int64_t j = 0; j < m; ++j) out[j] = (p.qh[j] - p.ql[j]) * (p.qh[j] - p.ql[j]) / 2;
    out[m] = 0;  // diagonal to diagonal
    return;
  }
  const double pl = p.P[2 * i], ph = p.P[2 * i + 1];
  if (p.diagonal) {
    cost_row_as<true, false>(p, pl, ph, out);
    out[m] = (ph - pl) * (ph - pl) / 2;
  } else if (p.by_scale.fused) {
    cost_row_as<false, true>(p, pl, ph, out);
  } else {
    cost_row_as<false, false>(p, pl, ph, out);
  }
}

// Before the first row of stabilities: no column has a best yet (a column whose S are all NaN
// keeps S = -1 and C = NaN).
TOPOOT_INLINE void begin_stabilities(StabilityRows& p) {
  for (int64_t j = 0; j < p.m; ++j) {
    p.sc[j] = -1;
    p.cc[j] = std::numeric_limits<double>::quiet_NaN();
  }
}

// The estimates' relative error bound (see stabilities_of_row_as) and the margins that rule an
// entry out with it: far apart, so that no rounding of the tests themselves matters.
constexpr double kEstimateError = 0x1p-20;
constexpr double kColumnMargin = 1 + 0x1p-12;
constexpr double kRowMargin = 1 - 0x1p-11;
static_assert(kColumnMargin - 1 >= 256 * kEstimateError && 1 - kRowMargin >= 256 * kEstimateError,
              "the margins must dwarf the estimates' error");
// Estimates trusted only in [kEstimateLow, kEstimateHigh]: every float in their computation normal.
constexpr double kEstimateLow = 0x1p-100, kEstimateHigh = 0x1p100;

// Entries j .. j + W of row i exactly (W = 8: one vector of each clone's width or two; W = 1: a
// row's last entries): the stabilities x = S / (1 + sqrt(max(M, 0))), each column's best updated
// (rows in order, strictly greater: each column's first maximum), and the row's best (best, its
// cost best_M) over them (j in order, strictly greater: the first maximum; from -1, so a NaN never
// wins).
template <int W, bool Diagonal, bool Fused>
TOPOOT_INLINE void exact_stabilities(StabilityRows& p, double pl, double ph, int64_t j, double& best, double& best_M) {
  double x[W], M[W];
  for (int t = 0; t < W; ++t) {
    double div;
    cost_and_divisor<Diagonal, Fused>(p, pl, ph, j + t, M[t], div);
    x[t] = p.S[j + t] / div;
  }
  double *sc = p.sc + j, *cc = p.cc + j;
  for (int t = 0; t < W; ++t) {
    const bool better = x[t] > sc[t];
    cc[t] = better ? M[t] : cc[t];
    sc[t] = better ? x[t] : sc[t];
  }
  for (int t = 0; t < W; ++t) {
    if (x[t] > best) {
      best = x[t];
      best_M = M[t];
    }
  }
}

// Row i (< n) of the stabilities S = plan / (1 + sqrt(max(M, 0))), its plan row in p.S: each
// column's best updated, and the row's best (sr, and its cost cr; S = -1 and C = NaN where every
// S is NaN). A stability costs a square root and two divisions, a fifth of a raw-noise map's
// selection, yet on its 10k x 10k problems only 4% of the entries raise their column's best and
// 3 per row come near the row's. So each is first estimated in float (a quarter of the work: no
// Divisor, single-precision root and quotient) and computed exactly only in the blocks of eight
// where some estimate does not rule its entry out (a fifth of them there): the same bests, bit
// for bit.
//
// Why an estimate e rules out: e = fl(S) / (1 + sqrt(fl(d2)) * inv_scale) in float (the diagonal's
// costs: no inv_scale). Each of its roundings is relative 2^-24 while its values are normal, so
// |e - x| <= 8 * 2^-24 * x < x * kEstimateError, x the exact stability; d2 below float's normal
// range moves the root by under 2^-74 * inv_scale <= 2^-54 against a divisor >= 1 (screen asks
// inv_scale <= 2^20), and an e outside [kEstimateLow, kEstimateHigh] (S or d2 out of float's
// range, NaN, 0) is not trusted.
// A trusted e with e * kColumnMargin <= sc[j] has x < sc[j]: not better. With top the row's largest
// estimate (NaN never wins), trusted if at least kEstimateLow, a trusted e below top * kRowMargin
// has x < top (1 - kEstimateError) <= top's own x: not the row's first maximum (with top above
// kEstimateHigh no e is ruled out so).
template <bool Diagonal, bool Fused, typename Plan>
TOPOOT_INLINE void stabilities_of_row_as(StabilityRows& p, int64_t i, const Plan& plan) {
  const int64_t m = p.m;
  const double pl = p.P[2 * i], ph = p.P[2 * i + 1];
  double best = -1, best_M = std::numeric_limits<double>::quiet_NaN();
  int64_t j = 0;
  if (p.screen) {
    double* S = p.S;
    const double *ql = p.ql, *qh = p.qh;
    const double* sc = p.sc;
    float* e = p.estimate;
    uint8_t* open = p.open;
    const float inv_scale = p.inv_scale;
    for (int64_t k = 0; k < m; ++k) {
      const double dl = pl - ql[k], dh = ph - qh[k];
      const float r = std::sqrt(static_cast<float>(dl * dl + dh * dh));
      const double x = plan.entry(S, k);
      if constexpr (Plan::kComputed) S[k] = x;
      e[k] = static_cast<float>(x) / (1.0f + (Diagonal ? r : r * inv_scale));
    }
    const double top = max_of(e, m, -1.0f);
    const double row_floor = top <= kEstimateHigh ? top * kRowMargin : -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < m; ++k) {
      const double x = e[k];
      open[k] = !((x >= kEstimateLow) & (x <= kEstimateHigh) & (x < row_floor) & (x * kColumnMargin <= sc[k]));
    }
    for (; j + 8 <= m; j += 8) {
      uint64_t any;
      std::memcpy(&any, open + j, sizeof any);
      if (any != 0) exact_stabilities<8, Diagonal, Fused>(p, pl, ph, j, best, best_M);
    }
  } else {
    if constexpr (Plan::kComputed) {
      for (int64_t k = 0; k < m; ++k) p.S[k] = plan.entry(p.S, k);
    }
    for (; j + 8 <= m; j += 8) exact_stabilities<8, Diagonal, Fused>(p, pl, ph, j, best, best_M);
  }
  for (; j < m; ++j) exact_stabilities<1, Diagonal, Fused>(p, pl, ph, j, best, best_M);
  p.sr[i] = best;
  p.cr[i] = best_M;
}

// Where a row's plan entries come from: p.S as written there (StoredPlan), or the solver's scalings
// (ScaledPlan: u_i K_ij v_j, the products of sinkhorn_plan_row_f64 in its order, written to p.S as
// the stabilities' first loop computes them, where a loop of their own cost 2% of a raw-noise map).
struct StoredPlan {
  static constexpr bool kComputed = false;
  TOPOOT_INLINE double entry(const double* S, int64_t j) const { return S[j]; }
};
struct ScaledPlan {
  static constexpr bool kComputed = true;
  double ui;
  const double *Ki, *v;
  TOPOOT_INLINE double entry(const double*, int64_t j) const { return ui * Ki[j] * v[j]; }
};

template <typename Plan>
TOPOOT_INLINE void stabilities_of_row(StabilityRows& p, int64_t i, const Plan& plan) {
  if (p.diagonal) {
    stabilities_of_row_as<true, false>(p, i, plan);
  } else if (p.by_scale.fused) {
    stabilities_of_row_as<false, true>(p, i, plan);
  } else {
    stabilities_of_row_as<false, false>(p, i, plan);
  }
}

// The solver's offered rows (SinkhornRowSink) through the clones below: the sink's own methods are
// built for the baseline target.
TOPOOT_TARGET_CLONES_EXACT void begin_offered(StabilityRows& p) { begin_stabilities(p); }

// The plan row u_i K_ij v_j as sinkhorn_plan_row_f64 computes it (the same products, in the same
// order; the diagonal's extra column is never a candidate), then its stabilities; the diagonal's
// extra row has none.
TOPOOT_TARGET_CLONES_EXACT void offered_row(StabilityRows& p, int64_t i, double ui, const double* Ki,
                                             const double* v) {
  if (i < p.n) stabilities_of_row(p, i, ScaledPlan{ui, Ki, v});
}

struct StabilitySink final : SinkhornRowSink {
  explicit StabilitySink(StabilityRows& rows) : p(rows) {}
  void begin() override { begin_offered(p); }
  void row(int64_t i, double u_i, const double* K_i, const double* v) override { offered_row(p, i, u_i, K_i, v); }
  StabilityRows& p;
};

struct StabilityScratch {
  SinkhornScratch<double> solver;
  std::vector<double> wa, wb, ql, qh, cost_row, plan_row, bound, ktu;
  std::vector<float> estimate;
  std::vector<uint8_t> open;
  std::vector<int64_t> order;
  size_t scratch_bytes() const { return solver.scratch_bytes(); }  // StatePool's order (parallel.h)
};

// Costs are never stored: each row is computed from the points when it is needed (for the largest
// cost, only the rows that can hold it; then the solver's matrix and the stabilities), always by
// the same expressions, so the same bits as a stored matrix. Only the solver's matrix
// K [n(+1), m(+1)] is held: a 10k x 10k problem of a raw-noise map needs 800 MB for it, not 3.2 GB
// for costs, K, plan and their copies.
//
// The costs and stabilities are square roots, quotients and products, each correctly rounded, and
// this file is compiled without floating-point contraction (CMakeLists.txt), so the AVX-512 and
// AVX2 clones compute the same bits as the baseline build.
TOPOOT_TARGET_CLONES_EXACT void stability_problem(StabilityScratch& s, const double* Pk, int64_t n, const double* Qk,
                                                  int64_t m, bool diagonal, const SinkhornOptions& opt,
                                                  double scaling_limit, bool screen, double* sr, double* cr,
                                                  double* sc, double* cc, int64_t& n_iter) {
    n_iter = 0;
    if (n == 0 || m == 0) {  // never compared: S = 0, C = +inf
      std::fill(sr, sr + n, 0.0);
      std::fill(cr, cr + n, std::numeric_limits<double>::infinity());
      std::fill(sc, sc + m, 0.0);
      std::fill(cc, cc + m, std::numeric_limits<double>::infinity());
      return;
    }
    const int64_t nr = diagonal ? n + 1 : n, mc = diagonal ? m + 1 : m;
    // Released: squared Euclidean distances over the largest one, (sqrt(d2) / (dmax + 1e-12))^2.
    // Each step is a correctly rounded, non-decreasing function of d2, so the largest distance is
    // sqrt of the largest d2 and the largest cost is the cost at the largest d2.
    double dmax = 0;
    // Large problems (10k x 10k points on raw noise) take seconds per pass: poll every few rows.
    const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / std::max<int64_t>(1, m));
    s.ql.resize(m);
    s.qh.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      s.ql[j] = Qk[2 * j];
      s.qh[j] = Qk[2 * j + 1];
    }
    s.cost_row.resize(mc);
    double* row = s.cost_row.data();
    if (!diagonal) {
      // Rows are scanned from the largest bound on their d2 down, and the scan stops at the first
      // bound no larger than the largest d2 found: every later row is bounded by it, so the maximum
      // is the full scan's, exactly. The bound of row i comes from Q's bounding box through the
      // same correctly rounded steps as d2: fl(p - x) is monotone in x, so |dl| is largest at an
      // end of Q's low range (|dh| likewise), and fl(x * x) and fl(x + y) are monotone in |x| and
      // in each term. On a raw-noise map's diagrams (bands along the diagonal) only rows near the
      // band's ends are scanned, where every row of 10^4 was (an eighth of this function's time).
      s.bound.resize(n);
      s.order.resize(n);
      double ql0 = Qk[0], ql1 = Qk[0], qh0 = Qk[1], qh1 = Qk[1];
      for (int64_t j = 1; j < m; ++j) {
        ql0 = std::min(ql0, Qk[2 * j]);
        ql1 = std::max(ql1, Qk[2 * j]);
        qh0 = std::min(qh0, Qk[2 * j + 1]);
        qh1 = std::max(qh1, Qk[2 * j + 1]);
      }
      for (int64_t i = 0; i < n; ++i) {
        const double pl = Pk[2 * i], ph = Pk[2 * i + 1];
        const double L = std::max(std::fabs(pl - ql0), std::fabs(pl - ql1));
        const double H = std::max(std::fabs(ph - qh0), std::fabs(ph - qh1));
        const double b = L * L + H * H;
        s.bound[i] = std::isnan(b) ? std::numeric_limits<double>::infinity() : b;  // NaN: scanned
        s.order[i] = i;
      }
      std::sort(s.order.begin(), s.order.end(), [&](int64_t x, int64_t y) { return s.bound[x] > s.bound[y]; });
      double d2max = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = s.order[k];
        if (s.bound[i] <= d2max) break;
        if (k % poll_rows == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
        const double pl = Pk[2 * i], ph = Pk[2 * i + 1];
        for (int64_t j = 0; j < m; ++j) {
          const double dl = pl - s.ql[j], dh = ph - s.qh[j];
          row[j] = dl * dl + dh * dh;
        }
        d2max = max_of(row, m, d2max);
      }
      dmax = std::sqrt(d2max);
    }
    const double scale = dmax + 1e-12;
    s.plan_row.resize(mc);
    s.estimate.resize(mc);
    s.open.resize(mc);
    // The estimates' 1 / scale: within float's range, far from its ends (stabilities_of_row_as).
    const double inv_scale = 1.0 / scale;
    screen &= diagonal || (inv_scale >= 0x1p-60 && inv_scale <= 0x1p20);
    StabilityRows rows{Pk,        n,         s.ql.data(),       s.qh.data(), m, diagonal, Divisor<double>(scale),
                       sr,        cr,        sc,                cc,          s.plan_row.data(),
                       s.estimate.data(), s.open.data(), static_cast<float>(inv_scale), screen};
    double worst = 0;  // max |M|: every cost is >= 0
    if (diagonal) {
      for (int64_t i = 0; i < nr; ++i) {
        if (i % poll_rows == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
        cost_row(rows, i, row);
        worst = max_of(row, mc, worst);
      }
      s.wa.assign(nr, 1.0 / static_cast<double>(n + m));
      s.wb.assign(mc, 1.0 / static_cast<double>(n + m));
      s.wa[n] = static_cast<double>(m) / static_cast<double>(n + m);
      s.wb[m] = static_cast<double>(n) / static_cast<double>(n + m);
    } else {
      const double r = dmax / scale;
      worst = r * r;
      s.wa.assign(nr, 1.0 / static_cast<double>(n));
      s.wb.assign(mc, 1.0 / static_cast<double>(m));
    }
    SinkhornOptions o = opt;
    o.log_domain = worst / opt.reg > scaling_limit;
    o.subnormal_kernel = sinkhorn_kernel_may_be_subnormal(worst, opt.reg, false);
    s.solver.K.resize(nr * mc);
    // The solver's first K^T u, summed while K is built (one pass less over a matrix of up to 800 MB).
    s.ktu.assign(mc, 0.0);
    double* ktu = o.log_domain ? nullptr : s.ktu.data();
    for (int64_t i = 0; i < nr; ++i) {
      if (i % poll_rows == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
      cost_row(rows, i, row);
      sinkhorn_kernel_row_f64(row, mc, opt.reg, o.log_domain, o.subnormal_kernel, s.solver.K.data() + i * mc, ktu,
                              1.0 / static_cast<double>(nr));
    }
    // Every weight is positive, so the solver's problem is this one: the plan is read row by row
    // from its scalings and never stored; in the scaling domain the solver's last pass hands its rows
    // over as it computes them (StabilitySink), when it expects to stop there.
    double err = 0;
    bool sunk = false;
    StabilitySink sink(rows);
    sinkhorn_solve_kernel_f64(s.solver, s.wa.data(), s.wb.data(), nr, mc, o, n_iter, err, ktu, &sink, &sunk);
    if (interrupted() || sunk) return;
    begin_stabilities(rows);
    for (int64_t i = 0; i < n; ++i) {
      if (i % poll_rows == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
      sinkhorn_plan_row_f64(s.solver, o.log_domain, i, rows.S);
      stabilities_of_row(rows, i, StoredPlan{});
    }
}

}  // namespace

void best_stability_batch(const double* P, const int64_t* p_off, const double* Q, const int64_t* q_off, int64_t B,
                          bool diagonal, const SinkhornOptions& opt, double scaling_limit, int num_threads,
                          double* s_row, double* c_row, double* s_col, double* c_col, int64_t* n_iter, bool screen) {
  // Largest problems first (n * m, ties by index): the threads' last problems are the small ones,
  // so no thread is left with a 10k x 10k problem while the others idle. Each problem writes only
  // its own outputs, so the order changes no result.
  std::vector<int64_t> order(B);
  for (int64_t k = 0; k < B; ++k) order[k] = k;
  auto entries = [&](int64_t k) { return (p_off[k + 1] - p_off[k]) * (q_off[k + 1] - q_off[k]); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return entries(x) > entries(y); });
  parallel_for<StabilityScratch>(B, num_threads, [&](StabilityScratch& s, int64_t rank) {
    const int64_t k = order[rank];
    stability_problem(s, P + 2 * p_off[k], p_off[k + 1] - p_off[k], Q + 2 * q_off[k], q_off[k + 1] - q_off[k], diagonal,
                      opt, scaling_limit, screen, s_row + p_off[k], c_row + p_off[k], s_col + q_off[k],
                      c_col + q_off[k], n_iter[k]);
    poll();  // throws here, outside the clones, if the call was cancelled
  });
}

}  // namespace topoot
