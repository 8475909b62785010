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
};

// a [B, n], b [B, m], M [B, n, m] (row-major, contiguous). Rows with a == 0
// and columns with b == 0 are padding. Outputs: plan [B, n, m], log_u [B, n],
// log_v [B, m], n_iter [B] (POT's log["niter"]), err [B].
template <typename T>
void sinkhorn_batch(const T* a, const T* b, const T* M, int64_t B, int64_t n, int64_t m,
                    const SinkhornOptions& opt, int num_threads, T* plan, T* log_u, T* log_v,
                    int64_t* n_iter, T* err);

// Per-thread buffers of the solver: a problem's real rows and columns, copied compactly.
template <typename T>
struct SinkhornScratch {
  std::vector<int64_t> rows, cols;
  std::vector<T> a, b, u, v, u_prev, v_prev, col, mx;
  Buffer<T> K;  // [rows, cols]: uninitialised when it grows (buffer.h)
};

// One padded problem start to finish (a [n], b [m], M [n, m]; zero weights are padding): plan
// [n, m], log_u [n], log_v [m], n_iter and err as in sinkhorn_batch. The domain is opt.log_domain.
// plan == nullptr: no plan and no log scalings are written (nothing of size n x m is touched but
// the scratch); read the plan row by row with sinkhorn_plan_row_f64 instead.
void sinkhorn_problem_f32(SinkhornScratch<float>& s, const float* a, const float* b, const float* M, int64_t n,
                          int64_t m, const SinkhornOptions& opt, float* plan, float* log_u, float* log_v,
                          int64_t& n_iter, float& err);
void sinkhorn_problem_f64(SinkhornScratch<double>& s, const double* a, const double* b, const double* M, int64_t n,
                          int64_t m, const SinkhornOptions& opt, double* plan, double* log_u, double* log_v,
                          int64_t& n_iter, double& err);

// A problem whose matrix the caller fills itself, row by row, with no [n, m] cost array (the
// selection's costs are computed from points): sinkhorn_kernel_row_f64 turns a row of costs M [m]
// into the row K [m] of the solver's matrix (what sinkhorn_problem_f64 would put there); once
// s.K [n, m] is filled, sinkhorn_solve_kernel_f64 iterates (all weights a [n], b [m] positive).
// Same iterates, n_iter and err as sinkhorn_problem_f64 on that problem.
void sinkhorn_kernel_row_f64(const double* M, int64_t m, double reg, bool log_domain, double* K);
void sinkhorn_solve_kernel_f64(SinkhornScratch<double>& s, const double* a, const double* b, int64_t n, int64_t m,
                               const SinkhornOptions& opt, int64_t& n_iter, double& err);

// Row i of the plan of the problem last solved in s, for a problem with no zero weight (compact
// rows and columns = the problem's own): row [m], the same values the padded plan would hold.
void sinkhorn_plan_row_f64(const SinkhornScratch<double>& s, bool log_domain, int64_t i, double* row);

}  // namespace topoot
