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

}  // namespace topoot
