// The selection's transport step (SPEC 4.3 and 4.5) for a batch of ragged pairs of diagrams.
#pragma once

#include <cstdint>

#include "sinkhorn_cpu.h"

namespace topoot {

// For B pairs of diagrams (ragged: problem k has points P[p_off[k]:p_off[k+1]]
// and Q[q_off[k]:q_off[k+1]], (low, high) rows, float64): the SPEC 3 costs
// (normalized, or with the diagonal), the entropic plan (scaling domain when
// max |M| / reg <= scaling_limit, else log domain), the stabilities
// S = G / (1 + sqrt(max(M, 0))), and for every point its best stability over
// the real points of the other diagram and the cost there (first maximum on
// ties; S = 0, C = +inf when the other diagram is empty). Nothing
// [B, n, m]-sized is ever materialised. screen: whether stabilities are
// estimated first and only those that may change a best computed exactly (the
// same bits either way; false is for tests).
void best_stability_batch(const double* P, const int64_t* p_off, const double* Q, const int64_t* q_off, int64_t B,
                          bool diagonal, const SinkhornOptions& opt, double scaling_limit, int num_threads,
                          double* s_row, double* c_row, double* s_col, double* c_col, int64_t* n_iter,
                          bool screen = true);

}  // namespace topoot
