// The head's training loss (SPEC 5) without its matrix products: the OT-consistency loss and
// the contrastive loss of every image, computed with their gradient in one pass each.
#pragma once

#include <cstdint>

namespace topoot {

struct HeadLossOptions {
  double reg = 0.05;         // OT kernel exp(-cost / reg)
  int iters = 200;           // plain Sinkhorn iterations (>= 1)
  double eps = 1e-9;         // kernel floor, denominators, entropy's log
  double entropy_base = 3;   // confidence 1 - H / ln(entropy_base)
  double ot_weight = 0.5;    // loss = ot_weight * L_OT + L_contrastive (weights carry the rest)
  double margin = 0.4;       // contrastive margin
  double pair_eps = 1e-6;    // d = |e_i - e_j + pair_eps|
};

// For each image b, e [B, P, E], y [B, P] in {0, 1} (both labels present):
// * loss_ot[b]: the OT-consistency loss. n = e / |e|, prototypes = normalised class means of n,
//   cos = n . p, K = max(exp(-max(1 - cos, 0) / reg), eps), plain Sinkhorn r_t = K v_{t-1} + eps,
//   u_t = (1/P) / r_t, v_t = (1/2) / (K^T u_t + eps), v_0 = 1/2, plan = u_T K v_T, then the
//   entropy-weighted |M_prot - M_cls| (SPEC 5). Its gradient runs back through every iteration
//   keeping only the v_t (two numbers each) and recomputing u_t on the way.
// * loss_contrastive[b] = sum_k weight_k ((1 - y_k) d_k^2 + y_k max(0, margin - d_k)^2) over pairs
//   k = (k / 2, partner[k]) with y_k = k % 2, d_k = |e_i - e_j + pair_eps|, visited in order (a
//   fixed summation order: deterministic).
// * grad_e = d(ot_weight * loss_ot + loss_contrastive) / de.
template <typename T>
void head_loss(const T* e, const uint8_t* y, const int64_t* partner, const T* weight, int64_t B, int64_t P, int64_t E,
               const HeadLossOptions& opt, double* loss_ot, double* loss_contrastive, T* grad_e, int num_threads);

}  // namespace topoot
