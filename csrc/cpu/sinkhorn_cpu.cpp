// One problem at a time, start to finish, on a compact copy of its real rows
// and columns: a 64 x 64 problem stays in L1/L2 for all its iterations, where
// a batch-vectorised solver streams the whole batch through memory twice per
// iteration. Threads take whole problems.
//
// Scaling domain = POT sinkhorn_knopp: u = 1/n, K = exp(-M/reg),
// Kp = (1/a) K; per iteration v = b / K^T u, u = 1 / (Kp v); a zero K^T u or a
// non-finite scaling reverts to the previous scalings and stops.
// Log domain = POT sinkhorn_log: u = v = 0; v = log b - LSE_i(Mr + u),
// u = log a - LSE_j(Mr + v), Mr = -M/reg.
// Both check ||colsum(plan) - b||_2 < stop_thr at iterations 0, 10, 20, ...
#include "sinkhorn_cpu.h"

#include <cmath>
#include <limits>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace topoot {
namespace {

template <typename T>
struct Scratch {
  std::vector<int64_t> rows, cols;
  std::vector<T> a, b, K, Kp, u, v, u_prev, v_prev, col, mx;
  // diagram_stability_batch's own problem, solved through solve_problem.
  std::vector<T> wa, wb, cost, plan, lu, lv;
};

// Dot product with eight independent partial sums: the compiler may not
// reorder a floating-point reduction itself, and a single accumulator chains
// every add on the previous one.
template <typename T>
TOPOOT_INLINE T dot(const T* x, const T* y, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int t = 0; t < 8; ++t) acc[t] += x[j + t] * y[j + t];
  }
  for (; j < n; ++j) acc[0] += x[j] * y[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <typename T>
TOPOOT_INLINE T column_error(const T* K, const T* u, const T* v, const T* b, int64_t nr, int64_t mc, T* col) {
  for (int64_t j = 0; j < mc; ++j) col[j] = 0;
  for (int64_t i = 0; i < nr; ++i) {
    const T* Ki = K + i * mc;
    for (int64_t j = 0; j < mc; ++j) col[j] += u[i] * Ki[j];
  }
  T s = 0;
  for (int64_t j = 0; j < mc; ++j) {
    const T d = col[j] * v[j] - b[j];
    s += d * d;
  }
  return std::sqrt(s);
}

template <typename T>
TOPOOT_INLINE void solve_scaling(Scratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt, int64_t& niter, T& err) {
  T* K = s.K.data();
  T* Kp = s.Kp.data();
  T* u = s.u.data();
  T* v = s.v.data();
  const T* a = s.a.data();
  const T* b = s.b.data();
  for (int64_t i = 0; i < nr; ++i) {
    const T inv_a = T(1) / a[i];
    for (int64_t j = 0; j < mc; ++j) Kp[i * mc + j] = inv_a * K[i * mc + j];
  }
  for (int64_t i = 0; i < nr; ++i) u[i] = T(1) / static_cast<T>(nr);
  for (int64_t j = 0; j < mc; ++j) v[j] = T(1) / static_cast<T>(mc);
  T* ktu = s.col.data();
  int64_t ii = 0;
  for (; ii < opt.max_iter; ++ii) {
    std::copy(u, u + nr, s.u_prev.begin());
    std::copy(v, v + mc, s.v_prev.begin());
    for (int64_t j = 0; j < mc; ++j) ktu[j] = 0;
    for (int64_t i = 0; i < nr; ++i) {
      const T* Ki = K + i * mc;
      for (int64_t j = 0; j < mc; ++j) ktu[j] += Ki[j] * u[i];
    }
    bool bad = false;
    for (int64_t j = 0; j < mc; ++j) {
      bad |= ktu[j] == 0;
      v[j] = b[j] / ktu[j];
      bad |= !std::isfinite(v[j]);
    }
    for (int64_t i = 0; i < nr; ++i) {
      u[i] = T(1) / dot(Kp + i * mc, v, mc);
      bad |= !std::isfinite(u[i]);
    }
    if (bad) {  // machine precision reached: POT keeps the previous scalings
      std::copy(s.u_prev.begin(), s.u_prev.begin() + nr, u);
      std::copy(s.v_prev.begin(), s.v_prev.begin() + mc, v);
      break;
    }
    if (ii % 10 == 0) {
      err = column_error(K, u, v, b, nr, mc, s.mx.data());
      if (err < opt.stop_thr) break;
    }
  }
  niter = std::min(ii, opt.max_iter - 1);
}

template <typename T>
TOPOOT_INLINE void solve_log(Scratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt, int64_t& niter, T& err) {
  const T* Mr = s.K.data();  // holds -M / reg in the log domain
  T* u = s.u.data();
  T* v = s.v.data();
  T* mx = s.mx.data();
  T* acc = s.col.data();
  std::vector<T> loga(nr), logb(mc);
  for (int64_t i = 0; i < nr; ++i) loga[i] = std::log(s.a[i]);
  for (int64_t j = 0; j < mc; ++j) logb[j] = std::log(s.b[j]);
  for (int64_t i = 0; i < nr; ++i) u[i] = 0;
  for (int64_t j = 0; j < mc; ++j) v[j] = 0;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  int64_t ii = 0;
  for (; ii < opt.max_iter; ++ii) {
    // v_j = log b_j - LSE_i(Mr_ij + u_i)
    for (int64_t j = 0; j < mc; ++j) mx[j] = neg_inf;
    for (int64_t i = 0; i < nr; ++i) {
      const T* Mi = Mr + i * mc;
      for (int64_t j = 0; j < mc; ++j) mx[j] = std::max(mx[j], Mi[j] + u[i]);
    }
    for (int64_t j = 0; j < mc; ++j) acc[j] = 0;
    for (int64_t i = 0; i < nr; ++i) {
      const T* Mi = Mr + i * mc;
      for (int64_t j = 0; j < mc; ++j) acc[j] += exp_fast(Mi[j] + u[i] - mx[j]);
    }
    for (int64_t j = 0; j < mc; ++j) v[j] = logb[j] - (mx[j] + std::log(acc[j]));
    // u_i = log a_i - LSE_j(Mr_ij + v_j)
    for (int64_t i = 0; i < nr; ++i) {
      const T* Mi = Mr + i * mc;
      T m = neg_inf;
      for (int64_t j = 0; j < mc; ++j) m = std::max(m, Mi[j] + v[j]);
      T sum = 0;
      for (int64_t j = 0; j < mc; ++j) sum += exp_fast(Mi[j] + v[j] - m);
      u[i] = loga[i] - (m + std::log(sum));
    }
    if (ii % 10 == 0) {
      for (int64_t j = 0; j < mc; ++j) acc[j] = 0;
      for (int64_t i = 0; i < nr; ++i) {
        const T* Mi = Mr + i * mc;
        for (int64_t j = 0; j < mc; ++j) acc[j] += exp_fast(Mi[j] + u[i] + v[j]);
      }
      T e = 0;
      for (int64_t j = 0; j < mc; ++j) e += (acc[j] - s.b[j]) * (acc[j] - s.b[j]);
      err = std::sqrt(e);
      if (err < opt.stop_thr) break;
    }
  }
  niter = std::min(ii, opt.max_iter - 1);
}

// One problem, start to finish: gather its real rows and columns, iterate,
// scatter the plan and scalings back into the padded outputs.
template <typename T>
TOPOOT_INLINE void solve_problem(Scratch<T>& s, const T* ak, const T* bk, const T* Mk, int64_t n, int64_t m,
                          const SinkhornOptions& opt, T* Pk, T* luk, T* lvk, int64_t& niter, T& errk) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::fill(Pk, Pk + n * m, T(0));
  std::fill(luk, luk + n, neg_inf);
  std::fill(lvk, lvk + m, neg_inf);
  niter = 0;
  errk = 1;
  s.rows.clear();
  s.cols.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (ak[i] > 0) s.rows.push_back(i);
  }
  for (int64_t j = 0; j < m; ++j) {
    if (bk[j] > 0) s.cols.push_back(j);
  }
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  if (nr == 0 || mc == 0) return;  // nothing to transport: a zero plan
  s.a.resize(nr);
  s.b.resize(mc);
  s.K.resize(nr * mc);
  s.Kp.resize(nr * mc);
  for (auto* x : {&s.u, &s.u_prev}) x->resize(nr);
  for (auto* x : {&s.v, &s.v_prev, &s.col, &s.mx}) x->resize(mc);
  for (int64_t i = 0; i < nr; ++i) s.a[i] = ak[s.rows[i]];
  for (int64_t j = 0; j < mc; ++j) s.b[j] = bk[s.cols[j]];
  const T reg = static_cast<T>(opt.reg);
  for (int64_t i = 0; i < nr; ++i) {
    const T* Mi = Mk + s.rows[i] * m;
    T* Ki = s.K.data() + i * mc;
    for (int64_t j = 0; j < mc; ++j) Ki[j] = Mi[s.cols[j]];
    // As POT writes them: exp(M / -reg) in the scaling domain, -M / reg in the log domain.
    if (opt.log_domain) {
      for (int64_t j = 0; j < mc; ++j) Ki[j] = -Ki[j] / reg;
    } else {
      for (int64_t j = 0; j < mc; ++j) Ki[j] = exp_fast(Ki[j] / -reg);
    }
  }
  if (opt.log_domain) {
    solve_log(s, nr, mc, opt, niter, errk);
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < mc; ++j) Pk[s.rows[i] * m + s.cols[j]] = exp_fast(s.K[i * mc + j] + s.u[i] + s.v[j]);
    }
    for (int64_t i = 0; i < nr; ++i) luk[s.rows[i]] = s.u[i];
    for (int64_t j = 0; j < mc; ++j) lvk[s.cols[j]] = s.v[j];
  } else {
    solve_scaling(s, nr, mc, opt, niter, errk);
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < mc; ++j) Pk[s.rows[i] * m + s.cols[j]] = s.u[i] * s.K[i * mc + j] * s.v[j];
    }
    for (int64_t i = 0; i < nr; ++i) luk[s.rows[i]] = std::log(s.u[i]);
    for (int64_t j = 0; j < mc; ++j) lvk[s.cols[j]] = std::log(s.v[j]);
  }
}

TOPOOT_TARGET_CLONES void solve_problem_f32(Scratch<float>& s, const float* ak, const float* bk, const float* Mk,
                                            int64_t n, int64_t m, const SinkhornOptions& opt, float* Pk, float* luk,
                                            float* lvk, int64_t& niter, float& errk) {
  solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}
TOPOOT_TARGET_CLONES void solve_problem_f64(Scratch<double>& s, const double* ak, const double* bk, const double* Mk,
                                            int64_t n, int64_t m, const SinkhornOptions& opt, double* Pk,
                                            double* luk, double* lvk, int64_t& niter, double& errk) {
  solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}

}  // namespace

template <typename T>
void sinkhorn_batch(const T* a, const T* b, const T* M, int64_t B, int64_t n, int64_t m,
                    const SinkhornOptions& opt, int num_threads, T* plan, T* log_u, T* log_v,
                    int64_t* n_iter, T* err) {
  parallel_for<Scratch<T>>(B, num_threads, [&](Scratch<T>& s, int64_t k) {
    if constexpr (sizeof(T) == 4) {
      solve_problem_f32(s, a + k * n, b + k * m, M + k * n * m, n, m, opt, plan + k * n * m, log_u + k * n,
                        log_v + k * m, n_iter[k], err[k]);
    } else {
      solve_problem_f64(s, a + k * n, b + k * m, M + k * n * m, n, m, opt, plan + k * n * m, log_u + k * n,
                        log_v + k * m, n_iter[k], err[k]);
    }
  });
}

void diagram_stability_batch(const double* P, const int64_t* p_off, const double* Q, const int64_t* q_off,
                             int64_t B, bool diagonal, const SinkhornOptions& opt, double scaling_limit,
                             int num_threads, double* s_row, double* c_row, double* s_col, double* c_col,
                             int64_t* n_iter) {
  parallel_for<Scratch<double>>(B, num_threads, [&](Scratch<double>& s, int64_t k) {
    const int64_t n = p_off[k + 1] - p_off[k], m = q_off[k + 1] - q_off[k];
    const double* Pk = P + 2 * p_off[k];
    const double* Qk = Q + 2 * q_off[k];
    n_iter[k] = 0;
    if (n == 0 || m == 0) return;
    const int64_t nr = diagonal ? n + 1 : n, mc = diagonal ? m + 1 : m;
    s.wa.assign(nr, 0.0);
    s.wb.assign(mc, 0.0);
    s.cost.assign(nr * mc, 0.0);
    double* M = s.cost.data();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const double dl = Pk[2 * i] - Qk[2 * j], dh = Pk[2 * i + 1] - Qk[2 * j + 1];
        M[i * mc + j] = dl * dl + dh * dh;
      }
    }
    if (diagonal) {  // paper text: the diagonal as an extra last row and column
      for (int64_t i = 0; i < n; ++i) M[i * mc + m] = (Pk[2 * i + 1] - Pk[2 * i]) * (Pk[2 * i + 1] - Pk[2 * i]) / 2;
      for (int64_t j = 0; j < m; ++j) M[n * mc + j] = (Qk[2 * j + 1] - Qk[2 * j]) * (Qk[2 * j + 1] - Qk[2 * j]) / 2;
      for (int64_t i = 0; i < n; ++i) s.wa[i] = 1.0 / static_cast<double>(n + m);
      for (int64_t j = 0; j < m; ++j) s.wb[j] = 1.0 / static_cast<double>(n + m);
      s.wa[n] = static_cast<double>(m) / static_cast<double>(n + m);
      s.wb[m] = static_cast<double>(n) / static_cast<double>(n + m);
    } else {  // released: squared Euclidean distances over the largest one
      double dmax = 0;
      for (int64_t e = 0; e < n * m; ++e) dmax = std::max(dmax, std::sqrt(M[e]));
      for (int64_t e = 0; e < n * m; ++e) {
        const double r = std::sqrt(M[e]) / (dmax + 1e-12);
        M[e] = r * r;
      }
      for (int64_t i = 0; i < n; ++i) s.wa[i] = 1.0 / static_cast<double>(n);
      for (int64_t j = 0; j < m; ++j) s.wb[j] = 1.0 / static_cast<double>(m);
    }
    double worst = 0;
    for (int64_t e = 0; e < nr * mc; ++e) worst = std::max(worst, std::abs(M[e]));
    SinkhornOptions o = opt;
    o.log_domain = worst / opt.reg > scaling_limit;
    s.plan.resize(nr * mc);
    s.lu.resize(nr);
    s.lv.resize(mc);
    double err = 0;
    solve_problem_f64(s, s.wa.data(), s.wb.data(), M, nr, mc, o, s.plan.data(), s.lu.data(), s.lv.data(), n_iter[k],
                      err);
    const double* plan = s.plan.data();
    double* sr = s_row + p_off[k];
    double* cr = c_row + p_off[k];
    double* sc = s_col + q_off[k];
    double* cc = c_col + q_off[k];
    for (int64_t i = 0; i < n; ++i) sr[i] = -1;
    for (int64_t j = 0; j < m; ++j) sc[j] = -1;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < m; ++j) {
        const double Sij = plan[i * mc + j] / (1.0 + std::sqrt(std::max(M[i * mc + j], 0.0)));
        if (Sij > sr[i]) {  // strict: the first maximum wins, as argmax
          sr[i] = Sij;
          cr[i] = M[i * mc + j];
        }
        if (Sij > sc[j]) {
          sc[j] = Sij;
          cc[j] = M[i * mc + j];
        }
      }
    }
  });
}

template void sinkhorn_batch<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                    const SinkhornOptions&, int, float*, float*, float*, int64_t*, float*);
template void sinkhorn_batch<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                     const SinkhornOptions&, int, double*, double*, double*, int64_t*, double*);

}  // namespace topoot
