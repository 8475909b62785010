// Entropic OT for a batch of small padded problems, POT's iterates (SPEC 3).
#pragma once

#include <cstdint>
#include <vector>

#include "buffer.h"

namespace topoot {

struct SinkhornOptions {
  double reg = 1.0;
  int64_t max_iter = 1000;
  double stop_thr = 1e-9;
  bool log_domain = false;
  // sinkhorn_batch only: pick the domain from the costs, as one rule for the whole batch (the
  // scaling domain when max |M| / reg <= scaling_limit over every problem's real entries).
  bool auto_domain = false;
  double scaling_limit = 0;
  // Whether exp(-M / reg) may be subnormal (the scaling domain then keeps such entries, as POT
  // does). Solvers clear it for a problem whose max |M| / reg rules that out: the same kernel,
  // from a cheaper exp.
  bool subnormal_kernel = true;
  // A solve with a row sink (sinkhorn_solve_kernel_f64) offers a pass when its check's error,
  // extrapolated, is below stop_thr * offer_margin: 0 never offers, +inf offers every check after
  // the first two iterations (tests reach each path of the sink with them).
  double offer_margin = 1.0;
  // sinkhorn_batch writes a batch's plan of at least this many bytes with non-temporal stores
  // (StreamWriter, simd.h): too large to be still in cache when the caller reads it, it then costs
  // its writes only, not a read of every line first (2 cores, batches of 256 x 256 and of padded
  // 5..200 problems, 32 and 330 MB: 5% and 17% less time). Smaller plans are left in the caches.
  int64_t stream_plan_bytes = int64_t(16) << 20;
  // Set by sinkhorn_batch from stream_plan_bytes: the plans' stores bypass the caches.
  bool stream_plan = false;
  // The scaling domain takes its rows' dot products two at a time (the same bits) for rows of at
  // least this many bytes: then the rows share their loads of v, which no longer stays in L1 beside
  // them (a 10k x 10k kernel's pass on a 2-core Xeon: 9.7 GB/s one row at a time, 11.4 two; rows of
  // 512 to 2048 entries were 1-3% slower two at a time, so not below 32 KiB).
  int64_t share_dots_bytes = int64_t(32) << 10;
};

// Where problem k of a batch lies in flat buffers: n[k] x m[k] entries; its a at a_off[k], b at
// b_off[k], M (row-major [n[k], m[k]], contiguous) at m_off[k]; its plan, log_u and log_v at the
// same offsets as M, a and b. A padded batch [B, n, m] is the layout with n[k] = n, m[k] = m,
// a_off[k] = k n, b_off[k] = k m, m_off[k] = k n m; a packed one puts the problems end to end.
struct SinkhornLayout {
  const int64_t* n;
  const int64_t* m;
  const int64_t* a_off;
  const int64_t* b_off;
  const int64_t* m_off;
};

// The input check of a batch: whether a and b are finite and non-negative (every entry, padding
// included), whether M is finite, and max |M|, both over the real entries (padding costs are not
// read).
struct SinkhornInputStats {
  bool finite = true, a_ok = true, b_ok = true;
  double worst = 0;
};

// What a batch call found besides its outputs.
struct SinkhornReport {
  SinkhornInputStats inputs;  // the whole batch's
  bool overflow = false;      // max |M| / reg overflows T: nothing solved
  bool log_domain = false;    // the domain that ran
  bool plan_finite = true;    // every plan entry written is finite
};

// Rows with a == 0 and columns with b == 0 are padding (plan 0, log scalings -inf). plan may be
// null: then no plan is written (nothing of any problem's size n x m is touched but the scratch).
// n_iter [B] is POT's log["niter"], err [B] the column-marginal error at the last check.
//
// The input check is folded into the solve: a problem with no zero weight, in the scaling domain or
// opt.auto_domain, is checked in the pass that builds its kernel (its costs read once); any other
// right before it is solved, while its costs are in cache (one pass less over the batch in
// memory). With bad inputs (see report.inputs, report.overflow) the outputs are undefined: the
// caller raises. With opt.auto_domain each problem starts in the domain its own costs allow; if any needs the log
// domain, those solved in the scaling domain are solved again in the log domain, so the batch
// follows the one rule.
template <typename T>
SinkhornReport sinkhorn_batch(const T* a, const T* b, const T* M, const SinkhornLayout& layout, int64_t B,
                              const SinkhornOptions& opt, int num_threads, T* plan, T* log_u, T* log_v,
                              int64_t* n_iter, T* err);

// The input check alone, threaded over the problems (for the batches the other backends solve).
template <typename T>
SinkhornInputStats sinkhorn_check_batch(const T* a, const T* b, const T* M, const SinkhornLayout& layout, int64_t B,
                                        int num_threads);

// Per-thread buffers of the solver: a problem's real rows and columns, copied compactly.
template <typename T>
struct SinkhornScratch {
  std::vector<int64_t> rows, cols;
  std::vector<T> a, b, u, v, u_prev, v_prev, col, mx;
  std::vector<T> out_row;  // [m]: a plan row as the output holds it, padding included
  Buffer<T> K;  // [rows, cols]: uninitialised when it grows (buffer.h)
  size_t scratch_bytes() const { return K.capacity() * sizeof(T); }  // StatePool's order (parallel.h)
  // Whether the real columns are the problem's first ones (any unpadded problem, and every problem of
  // a batch padded to its largest): its cost rows are read and its plan rows written in place.
  bool columns_first() const { return cols.back() == static_cast<int64_t>(cols.size()) - 1; }
};

// A problem whose matrix the caller fills itself, row by row, with no [n, m] cost array (the
// selection's costs are computed from points): sinkhorn_kernel_row_f64 turns a row of costs M [m]
// into the row K [m] of the solver's matrix (what sinkhorn_batch would put there); once
// s.K [n, m] is filled, sinkhorn_solve_kernel_f64 iterates (all weights a [n], b [m] positive).
// Same iterates, n_iter and err as sinkhorn_batch on that problem.
//
// In the scaling domain the solver starts from K^T u with u = 1 / n, one more pass over K; a caller
// may sum it while K is built instead: ktu [m] zeroed, each row built with ktu and u0 = 1.0 / n
// (rows in order), then ktu given to sinkhorn_solve_kernel_f64 (the same sums, the same bits).
// nullptr: not summed / summed by the solver.
void sinkhorn_kernel_row_f64(const double* M, int64_t m, double reg, bool log_domain, bool subnormal, double* K,
                             double* ktu, double u0);
//
// A scaling-domain solve may also hand the plan's rows to a sink as its last pass computes them, so
// that a caller who reads the plan row by row (best_stability) does not read K once more. The
// solver only knows a pass was the last after it: it offers the passes that end in a check whose
// error the two iterations before extrapolate (geometrically) below stop_thr (times
// opt.offer_margin). begin() opens an offered pass; row(i, u_i, K_i, v) follows for each row in
// order, the plan row being u_i K_ij v_j (K_i: m entries). *sunk tells whether the pass that
// stopped the solve was offered: then the rows given last are the plan's; else the caller reads it
// (sinkhorn_plan_row_f64).
struct SinkhornRowSink {
  virtual void begin() = 0;
  virtual void row(int64_t i, double u_i, const double* K_i, const double* v) = 0;

 protected:
  ~SinkhornRowSink() = default;
};
void sinkhorn_solve_kernel_f64(SinkhornScratch<double>& s, const double* a, const double* b, int64_t n, int64_t m,
                               const SinkhornOptions& opt, int64_t& n_iter, double& err, const double* ktu0,
                               SinkhornRowSink* sink = nullptr, bool* sunk = nullptr);

// Whether exp(-M / reg) may be subnormal for some |M| <= worst (see subnormal_kernel).
bool sinkhorn_kernel_may_be_subnormal(double worst, double reg, bool f32);

// Row i of the plan of the problem last solved in s, for a problem with no zero weight (compact
// rows and columns = the problem's own): row [m], the same values the padded plan would hold.
void sinkhorn_plan_row_f64(const SinkhornScratch<double>& s, bool log_domain, int64_t i, double* row);

}  // namespace topoot
