#include "head_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"

namespace topoot {
namespace {

// Column sums over the P rows are accumulated in the compute type T, in the SIMD lanes' order, as
// the released code's float32 matrix products do; double accumulators would halve the vector width.

// One Sinkhorn half-step's row pass: u_i = a / (K_i . v + eps), and the column sums K^T u.
template <typename T>
void row_pass(const T* K, int64_t P, T a, T v0, T v1, T eps, T& s0, T& s1) {
  T acc0 = 0, acc1 = 0;
#pragma omp simd reduction(+ : acc0, acc1)
  for (int64_t i = 0; i < P; ++i) {
    const T k0 = K[2 * i], k1 = K[2 * i + 1];
    const T u = a / (k0 * v0 + k1 * v1 + eps);
    acc0 += k0 * u;
    acc1 += k1 * u;
  }
  s0 = acc0;
  s1 = acc1;
}

// Plain Sinkhorn of one image (see head_cpu.h): fills v_hist [iters + 1, 2] and plan [P, 2].
template <typename T>
void sinkhorn_forward(const T* k, int64_t P, int iters, T e, T* plan, T* vh) {
  const T a = static_cast<T>(1.0 / static_cast<double>(P)), b = static_cast<T>(0.5);
  T v0 = b, v1 = b;
  vh[0] = v0;
  vh[1] = v1;
  for (int t = 1; t <= iters; ++t) {
    T s0, s1;
    row_pass(k, P, a, v0, v1, e, s0, s1);
    v0 = b / (s0 + e);
    v1 = b / (s1 + e);
    vh[2 * t] = v0;
    vh[2 * t + 1] = v1;
  }
  const T p0 = vh[2 * iters - 2], p1 = vh[2 * iters - 1];
#pragma omp simd
  for (int64_t i = 0; i < P; ++i) {
    const T k0 = k[2 * i], k1 = k[2 * i + 1];
    const T u = a / (k0 * p0 + k1 * p1 + e);
    plan[2 * i] = u * k0 * v0;
    plan[2 * i + 1] = u * k1 * v1;
  }
}

// Reverse mode of sinkhorn_forward: grad_K = d(sum(g * plan)) / dK, through every iteration.
// u_t is recomputed from v_{t-1} (one pass per iteration), so nothing of size P is stored.
template <typename T>
void sinkhorn_backward(const T* k, const T* vh, const T* g, int64_t P, int iters, T e, T* gk) {
  const T a = static_cast<T>(1.0 / static_cast<double>(P)), b = static_cast<T>(0.5);
  // plan_ij = u_T,i K_ij v_T,j: the gradient reaching v_T.
  T vb0 = 0, vb1 = 0;
  {
    const T p0 = vh[2 * iters - 2], p1 = vh[2 * iters - 1];
#pragma omp simd reduction(+ : vb0, vb1)
    for (int64_t i = 0; i < P; ++i) {
      const T k0 = k[2 * i], k1 = k[2 * i + 1];
      const T u = a / (k0 * p0 + k1 * p1 + e);
      vb0 += g[2 * i] * u * k0;
      vb1 += g[2 * i + 1] * u * k1;
    }
  }
  for (int t = iters; t >= 1; --t) {
    const T vt0 = vh[2 * t], vt1 = vh[2 * t + 1], vp0 = vh[2 * t - 2], vp1 = vh[2 * t - 1];
    // v_t = b / s_t: ds = -dv * b / s^2 = -dv * v^2 / b.
    const T sb0 = -vb0 * vt0 * vt0 / b, sb1 = -vb1 * vt1 * vt1 / b;
    T nb0 = 0, nb1 = 0;
    if (t == iters) {  // u_T also reaches the plan directly
#pragma omp simd reduction(+ : nb0, nb1)
      for (int64_t i = 0; i < P; ++i) {
        const T k0 = k[2 * i], k1 = k[2 * i + 1], g0 = g[2 * i], g1 = g[2 * i + 1];
        const T r = k0 * vp0 + k1 * vp1 + e, u = a / r;
        const T ub = k0 * sb0 + k1 * sb1 + g0 * k0 * vt0 + g1 * k1 * vt1;
        const T rb = -ub * u / r;
        nb0 += k0 * rb;
        nb1 += k1 * rb;
        gk[2 * i] = g0 * u * vt0 + u * sb0 + rb * vp0;
        gk[2 * i + 1] = g1 * u * vt1 + u * sb1 + rb * vp1;
      }
    } else {
#pragma omp simd reduction(+ : nb0, nb1)
      for (int64_t i = 0; i < P; ++i) {
        const T k0 = k[2 * i], k1 = k[2 * i + 1];
        const T r = k0 * vp0 + k1 * vp1 + e, u = a / r;
        const T ub = k0 * sb0 + k1 * sb1;
        const T rb = -ub * u / r;
        nb0 += k0 * rb;
        nb1 += k1 * rb;
        gk[2 * i] += u * sb0 + rb * vp0;
        gk[2 * i + 1] += u * sb1 + rb * vp1;
      }
    }
    vb0 = nb0;
    vb1 = nb1;
  }
}

struct Scratch {
  std::vector<char> bytes;
  template <typename T>
  T* get(size_t n) {
    if (bytes.size() < n * sizeof(T)) bytes.resize(n * sizeof(T));
    return reinterpret_cast<T*>(bytes.data());
  }
};

// SPEC 5's OT-consistency loss of one image; writes grad_scale * dloss/de to gx.
template <typename T>
double ot_consistency_image(const T* x, const uint8_t* lab, int64_t P, int64_t E, const HeadLossOptions& opt,
                            T grad_scale, T* gx, Scratch& scratch) {
  const int iters = opt.iters;
  const T eps = static_cast<T>(opt.eps);
  // Scratch: n [P, E], |e| [P], cos, K, plan, dplan, dK [P, 2] each, v_hist [iters + 1, 2].
  T* n = scratch.get<T>(static_cast<size_t>(P) * (E + 11) + 2 * (iters + 1));
  T* norm = n + P * E;
  T* cos = norm + P;
  T* K = cos + 2 * P;
  T* plan = K + 2 * P;
  T* dplan = plan + 2 * P;
  T* dK = dplan + 2 * P;
  T* vh = dK + 2 * P;

  // n = e / max(|e|, 1e-12) (F.normalize); class means of n, normalised: the prototypes.
  std::vector<double> mean(2 * E, 0.0);
  int64_t count[2] = {0, 0};
  for (int64_t i = 0; i < P; ++i) {
    const T* xi = x + i * E;
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t d = 0; d < E; ++d) sq += xi[d] * xi[d];
    const T nr = std::max(std::sqrt(sq), static_cast<T>(1e-12));
    norm[i] = nr;
    T* ni = n + i * E;
    double* m = mean.data() + (lab[i] ? E : 0);
    for (int64_t d = 0; d < E; ++d) {
      ni[d] = xi[d] / nr;
      m[d] += static_cast<double>(ni[d]);
    }
    ++count[lab[i] ? 1 : 0];
  }
  std::vector<T> proto(2 * E);
  T mnorm[2];
  for (int c = 0; c < 2; ++c) {
    T sq = 0;
    for (int64_t d = 0; d < E; ++d) {
      const T m = static_cast<T>(mean[c * E + d] / static_cast<double>(count[c]));
      proto[c * E + d] = m;
      sq += m * m;
    }
    mnorm[c] = std::max(std::sqrt(sq), static_cast<T>(1e-12));
    for (int64_t d = 0; d < E; ++d) proto[c * E + d] /= mnorm[c];
  }
  // cos = n . p_c, K = max(exp(-max(1 - cos, 0) / reg), eps).
  const T inv_reg = static_cast<T>(1.0 / opt.reg);
  for (int64_t i = 0; i < P; ++i) {
    const T* ni = n + i * E;
    T c0 = 0, c1 = 0;
#pragma omp simd reduction(+ : c0, c1)
    for (int64_t d = 0; d < E; ++d) {
      c0 += ni[d] * proto[d];
      c1 += ni[d] * proto[E + d];
    }
    cos[2 * i] = c0;
    cos[2 * i + 1] = c1;
    K[2 * i] = std::max(std::exp(-std::max(T(1) - c0, T(0)) * inv_reg), eps);
    K[2 * i + 1] = std::max(std::exp(-std::max(T(1) - c1, T(0)) * inv_reg), eps);
  }
  sinkhorn_forward(K, P, iters, eps, plan, vh);

  // loss = sum_ic w_ic |mp_ic - y_ic| / Z, w = max(1 - H / ln(base), 0) g, g = plan / (rowsum + eps),
  // mp = (clamp(cos, -1, 1) + 1) / 2; and the gradients of the loss with respect to plan and cos.
  const double Z = 2.0 * static_cast<double>(P) + opt.eps;
  const T invZ = static_cast<T>(1.0 / Z), inv_log_base = static_cast<T>(1.0 / std::log(opt.entropy_base));
  double total = 0;
  for (int64_t i = 0; i < P; ++i) {
    const T yc[2] = {static_cast<T>(lab[i] ? 0 : 1), static_cast<T>(lab[i] ? 1 : 0)};
    const T S = plan[2 * i] + plan[2 * i + 1] + eps;
    T g[2], mp[2], diff[2], H = 0;
    for (int c = 0; c < 2; ++c) {
      g[c] = plan[2 * i + c] / S;
      H -= g[c] * std::log(std::max(g[c], eps));
      mp[c] = (std::min(std::max(cos[2 * i + c], T(-1)), T(1)) + 1) * static_cast<T>(0.5);
      diff[c] = mp[c] - yc[c];
    }
    const T conf_in = 1 - H * inv_log_base;
    const T conf = std::max(conf_in, T(0));
    T dg[2], dconf = 0;
    for (int c = 0; c < 2; ++c) {
      const T w = conf * g[c], a = std::abs(diff[c]);
      total += static_cast<double>(w * a);
      const T dw = a * invZ;
      dconf += dw * g[c];
      dg[c] = dw * conf;
      // d|mp - y| / dcos through the clamp (torch passes the gradient on [-1, 1]).
      const T sgn = static_cast<T>((diff[c] > 0) - (diff[c] < 0));
      const T c_ic = cos[2 * i + c];
      cos[2 * i + c] = (c_ic >= -1 && c_ic <= 1) ? w * invZ * sgn * static_cast<T>(0.5) : T(0);  // now dcos
    }
    const T dH = conf_in >= 0 ? -dconf * inv_log_base : T(0);
    for (int c = 0; c < 2; ++c) dg[c] += dH * -(std::log(std::max(g[c], eps)) + (g[c] >= eps ? T(1) : T(0)));
    // g = plan / S: dplan_c = dg_c / S - sum_c' dg_c' plan_c' / S^2.
    const T cross = (dg[0] * plan[2 * i] + dg[1] * plan[2 * i + 1]) / (S * S);
    dplan[2 * i] = dg[0] / S - cross;
    dplan[2 * i + 1] = dg[1] / S - cross;
  }
  sinkhorn_backward(K, vh, dplan, P, iters, eps, dK);

  // dcos += dK * dK/dcos, dK/dcos = K / reg where exp(...) >= eps and 1 - cos >= 0 (torch's
  // clamp masks). Then dp_c = sum_i dcos_ic n_i and dn_i = sum_c dcos_ic p_c + dm_{y_i} / N.
  // cos[] was overwritten with dcos above; the masks need the original cos: recomputed from n.
  std::vector<double> dproto(2 * E, 0.0);
  for (int64_t i = 0; i < P; ++i) {
    const T* ni = n + i * E;
    for (int c = 0; c < 2; ++c) {
      T ci = 0;
#pragma omp simd reduction(+ : ci)
      for (int64_t d = 0; d < E; ++d) ci += ni[d] * proto[c * E + d];
      const T arg = T(1) - ci;
      const T ex = std::exp(-std::max(arg, T(0)) * inv_reg);
      if (arg >= 0 && ex >= eps) cos[2 * i + c] += dK[2 * i + c] * ex * inv_reg;
      const double dc = static_cast<double>(cos[2 * i + c]);
      double* dp = dproto.data() + c * E;
      for (int64_t d = 0; d < E; ++d) dp[d] += dc * static_cast<double>(ni[d]);
    }
  }
  // p_c = m_c / |m_c|: dm_c = (dp_c - p_c (p_c . dp_c)) / |m_c| (when |m_c| > 1e-12), then / N_c.
  std::vector<T> dmean(2 * E);
  for (int c = 0; c < 2; ++c) {
    double dot = 0;
    for (int64_t d = 0; d < E; ++d) dot += dproto[c * E + d] * static_cast<double>(proto[c * E + d]);
    for (int64_t d = 0; d < E; ++d) {
      const T dm = static_cast<T>(dproto[c * E + d] - static_cast<double>(proto[c * E + d]) * dot) / mnorm[c];
      dmean[c * E + d] = dm / static_cast<T>(count[c]);
    }
  }
  // n_i = e_i / |e_i|: de_i = (dn_i - n_i (n_i . dn_i)) / |e_i|.
  for (int64_t i = 0; i < P; ++i) {
    const T* ni = n + i * E;
    const T* dm = dmean.data() + (lab[i] ? E : 0);
    const T d0 = cos[2 * i], d1 = cos[2 * i + 1];
    T* gi = gx + i * E;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < E; ++d) {
      const T dn = d0 * proto[d] + d1 * proto[E + d] + dm[d];
      gi[d] = dn;
      dot += dn * ni[d];
    }
    const T inv = grad_scale / norm[i];
    for (int64_t d = 0; d < E; ++d) gi[d] = (gi[d] - ni[d] * dot) * inv;
  }
  return total / Z;
}

// The contrastive loss of one image's pairs; adds its gradient to gx.
template <typename T>
double contrastive_image(const T* x, const int64_t* part, const T* w, int64_t P, int64_t E, double margin,
                         double pd_eps, T* gx) {
  std::vector<T> diff(E);
  double total = 0;
  const T eps = static_cast<T>(pd_eps), m = static_cast<T>(margin);
  constexpr int64_t kAhead = 8;  // partners are random rows: fetch them ahead of use
  for (int64_t kp = 0; kp < 2 * P; ++kp) {
    if (kp + kAhead < 2 * P) {
      const int64_t jn = part[kp + kAhead];
      for (int64_t d = 0; d < E; d += 64 / static_cast<int64_t>(sizeof(T))) {
        __builtin_prefetch(x + jn * E + d);
        __builtin_prefetch(gx + jn * E + d, 1);
      }
    }
    const int64_t i = kp / 2, j = part[kp];
    const T* xi = x + i * E;
    const T* xj = x + j * E;
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t d = 0; d < E; ++d) {
      diff[d] = xi[d] - xj[d] + eps;
      sq += diff[d] * diff[d];
    }
    T coef;
    if ((kp & 1) == 0) {  // same label: d^2
      total += static_cast<double>(w[kp]) * static_cast<double>(sq);
      coef = 2 * w[kp];
    } else {  // other label: max(0, margin - d)^2
      const T dist = std::sqrt(sq), h = std::max(T(0), m - dist);
      total += static_cast<double>(w[kp]) * static_cast<double>(h * h);
      coef = (h > 0 && dist > 0) ? -2 * w[kp] * h / dist : T(0);
    }
    if (coef == 0) continue;
    T* gi = gx + i * E;
    T* gj = gx + j * E;
    for (int64_t d = 0; d < E; ++d) {
      const T gd = coef * diff[d];
      gi[d] += gd;
      gj[d] -= gd;
    }
  }
  return total;
}

}  // namespace

template <typename T>
void head_loss(const T* e, const uint8_t* y, const int64_t* partner, const T* weight, int64_t B, int64_t P, int64_t E,
               const HeadLossOptions& opt, double* loss_ot, double* loss_contrastive, T* grad_e, int num_threads) {
  parallel_for<Scratch>(B, num_threads, [&](Scratch& scratch, int64_t img) {
    const int64_t off = img * P * E;
    T* gx = grad_e + off;
    loss_ot[img] = ot_consistency_image(e + off, y + img * P, P, E, opt, static_cast<T>(opt.ot_weight), gx, scratch);
    loss_contrastive[img] = contrastive_image(e + off, partner + img * 2 * P, weight + img * 2 * P, P, E, opt.margin,
                                              opt.pair_eps, gx);
  });
}


#define TOPOOT_INSTANTIATE(T)                                                                                    \
  template void head_loss<T>(const T*, const uint8_t*, const int64_t*, const T*, int64_t, int64_t, int64_t, \
                             const HeadLossOptions&, double*, double*, T*, int);
TOPOOT_INSTANTIATE(float)
TOPOOT_INSTANTIATE(double)
#undef TOPOOT_INSTANTIATE

}  // namespace topoot
