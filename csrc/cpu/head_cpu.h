// The two losses of the head's training step (SPEC 5) that are neither matrix products nor
// plain elementwise maps, each computed with its gradient in one call.
#pragma once

#include <cstdint>

namespace topoot {

struct OTConsistencyOptions {
  double reg = 0.05;         // kernel exp(-cost / reg)
  int iters = 200;           // plain Sinkhorn iterations (>= 1)
  double eps = 1e-9;         // kernel floor, denominators, entropy's log
  double entropy_base = 3;   // confidence 1 - H / ln(entropy_base)
};

// SPEC 5's OT-consistency loss of each image and its exact gradient with respect to e [B, P, E]
// (through the normalisation, the prototypes and every Sinkhorn iteration). y [B, P] in {0, 1},
// both labels present. Sinkhorn: r_t = K v_{t-1} + eps, u_t = (1/P) / r_t,
// v_t = (1/2) / (K^T u_t + eps), v_0 = 1/2, plan = u_T K v_T; the backward keeps only the v_t
// (two numbers per iteration) and recomputes u_t on the way back.
template <typename T>
void ot_consistency(const T* e, const uint8_t* y, int64_t B, int64_t P, int64_t E, const OTConsistencyOptions& opt,
                    double* loss, T* grad_e, int num_threads);

// Contrastive loss over pairs k = (k / 2, partner[k]), label y = k % 2 (SPEC 5):
//   d_k = |e_i - e_j + pd_eps| (torch.nn.functional.pairwise_distance),
//   loss = sum_k weight_k ((1 - y) d^2 + y max(0, margin - d)^2),
// per image, and its gradient with respect to e [B, P, E]. Pairs are visited in order, so
// the gradient's sums have a fixed order (deterministic).
template <typename T>
void contrastive_pairs(const T* e, const int64_t* partner, const T* weight, int64_t B, int64_t P, int64_t E,
                       double margin, double pd_eps, double* loss, T* grad_e, int num_threads);

}  // namespace topoot
