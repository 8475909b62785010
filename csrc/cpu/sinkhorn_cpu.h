// Entropic OT for a batch of small padded problems, POT's iterates (SPEC 3).
#pragma once

#include <cstdint>

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

// For B pairs of diagrams (ragged: problem k has points P[p_off[k]:p_off[k+1]]
// and Q[q_off[k]:q_off[k+1]], (low, high) rows, float64): the SPEC 3 costs
// (normalized, or with the diagonal), the entropic plan (scaling domain when
// max |M| / reg <= scaling_limit, else log domain), the stabilities
// S = G / (1 + sqrt(max(M, 0))), and for every point its best stability over
// the real points of the other diagram and the cost there (first maximum on
// ties). Nothing [B, n, m]-sized is ever materialised.
void diagram_stability_batch(const double* P, const int64_t* p_off, const double* Q, const int64_t* q_off,
                             int64_t B, bool diagonal, const SinkhornOptions& opt, double scaling_limit,
                             int num_threads, double* s_row, double* c_row, double* s_col, double* c_col,
                             int64_t* n_iter);

}  // namespace topoot
