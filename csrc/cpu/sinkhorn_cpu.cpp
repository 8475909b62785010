// One problem at a time, start to finish, on a compact copy of its real rows
// and columns: a 64 x 64 problem stays in L1/L2 for all its iterations, where
// a batch-vectorised solver streams the whole batch through memory twice per
// iteration. Threads take whole problems.
//
// Scaling domain = POT sinkhorn_knopp: u = 1/n, K = exp(-M/reg),
// Kp = (1/a) K; per iteration v = b / K^T u, u = 1 / (Kp v); a zero K^T u or a
// non-finite scaling reverts to the previous scalings and stops. One pass over K
// per iteration: row i gives u_i = 1 / (Kp_i . v) and at once adds K_i u_i to the
// next K^T u, which is also the column sum the convergence check needs. Kp_ij is
// formed on the fly (the same product, so the same bits) instead of stored.
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

// dot(c * x, y) with eight independent partial sums (the compiler may not reorder a
// floating-point reduction itself, and one accumulator chains every add on the previous one);
// each c * x[j] is rounded first, as a stored row of c * x would be.
template <typename T>
TOPOOT_INLINE T scaled_dot(T c, const T* x, const T* y, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int t = 0; t < 8; ++t) acc[t] += (c * x[j + t]) * y[j + t];
  }
  for (; j < n; ++j) acc[0] += (c * x[j]) * y[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// ||col * v - b||_2 with col = K^T u: POT's check on the plan's column sums.
template <typename T>
TOPOOT_INLINE T column_error(const T* col, const T* v, const T* b, int64_t mc) {
  T s = 0;
  for (int64_t j = 0; j < mc; ++j) {
    const T d = col[j] * v[j] - b[j];
    s += d * d;
  }
  return std::sqrt(s);
}

template <typename T>
TOPOOT_INLINE void solve_scaling(SinkhornScratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt, int64_t& niter, T& err) {
  const T* K = s.K.data();
  T* u = s.u.data();
  T* v = s.v.data();
  const T* a = s.a.data();
  const T* b = s.b.data();
  for (int64_t i = 0; i < nr; ++i) u[i] = T(1) / static_cast<T>(nr);
  for (int64_t j = 0; j < mc; ++j) v[j] = T(1) / static_cast<T>(mc);
  T* ktu = s.col.data();  // K^T u of the current u
  T* next = s.mx.data();  // K^T u of the u being computed
  for (int64_t j = 0; j < mc; ++j) ktu[j] = 0;
  for (int64_t i = 0; i < nr; ++i) {
    const T* Ki = K + i * mc;
    for (int64_t j = 0; j < mc; ++j) ktu[j] += Ki[j] * u[i];
  }
  int64_t ii = 0;
  for (int64_t work = 0; ii < opt.max_iter; ++ii) {
    if ((work += nr * mc) >= kPollEntries) {
      work = 0;
      if (interrupted()) break;  // inside target_clones: no throw here (parallel.h)
    }
    std::copy(u, u + nr, s.u_prev.begin());
    std::copy(v, v + mc, s.v_prev.begin());
    bool bad = false;
    for (int64_t j = 0; j < mc; ++j) {
      bad |= ktu[j] == 0;
      v[j] = b[j] / ktu[j];
      bad |= !std::isfinite(v[j]);
    }
    for (int64_t j = 0; j < mc; ++j) next[j] = 0;
    for (int64_t i = 0; i < nr; ++i) {
      const T* Ki = K + i * mc;
      u[i] = T(1) / scaled_dot(T(1) / a[i], Ki, v, mc);
      bad |= !std::isfinite(u[i]);
      const T ui = u[i];
      for (int64_t j = 0; j < mc; ++j) next[j] += Ki[j] * ui;
    }
    if (bad) {  // machine precision reached: POT keeps the previous scalings
      std::copy(s.u_prev.begin(), s.u_prev.begin() + nr, u);
      std::copy(s.v_prev.begin(), s.v_prev.begin() + mc, v);
      break;
    }
    std::swap(ktu, next);  // the column sums of the new plan, before its v
    if (ii % 10 == 0) {
      err = column_error(ktu, v, b, mc);
      if (err < opt.stop_thr) break;
    }
  }
  niter = std::min(ii, opt.max_iter - 1);
}

template <typename T>
TOPOOT_INLINE void solve_log(SinkhornScratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt, int64_t& niter, T& err) {
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
  for (int64_t work = 0; ii < opt.max_iter; ++ii) {
    if ((work += nr * mc) >= kPollEntries) {
      work = 0;
      if (interrupted()) break;  // inside target_clones: no throw here (parallel.h)
    }
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

// The solver's matrix entry from a cost, as POT writes it: exp(M / -reg) in the scaling domain,
// -M / reg in the log domain.
template <typename T>
TOPOOT_INLINE void kernel_row(const T* M, int64_t m, T reg, bool log_domain, T* K) {
  if (log_domain) {
    for (int64_t j = 0; j < m; ++j) K[j] = -M[j] / reg;
  } else {
    for (int64_t j = 0; j < m; ++j) K[j] = exp_fast<T, true>(M[j] / -reg);
  }
}

// Entry (i, j) of the plan from the scalings, compact indices: what the padded plan holds.
template <typename T>
TOPOOT_INLINE T plan_entry(const SinkhornScratch<T>& s, bool log_domain, int64_t i, int64_t j, int64_t mc) {
  return log_domain ? exp_fast(s.K[i * mc + j] + s.u[i] + s.v[j]) : s.u[i] * s.K[i * mc + j] * s.v[j];
}

// One problem, start to finish: gather its real rows and columns, iterate,
// scatter the plan and scalings back into the padded outputs (none with a null plan: the
// scalings stay in the scratch for sinkhorn_plan_row).
template <typename T>
TOPOOT_INLINE void solve_problem(SinkhornScratch<T>& s, const T* ak, const T* bk, const T* Mk, int64_t n, int64_t m,
                          const SinkhornOptions& opt, T* Pk, T* luk, T* lvk, int64_t& niter, T& errk) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t poll_fill = std::max<int64_t>(1, kPollEntries / std::max<int64_t>(1, m));
  if (Pk != nullptr) {
    for (int64_t i = 0; i < n; ++i) {  // row by row: a large plan's first touch takes a while
      if (i % poll_fill == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
      std::fill(Pk + i * m, Pk + (i + 1) * m, T(0));
    }
    std::fill(luk, luk + n, neg_inf);
    std::fill(lvk, lvk + m, neg_inf);
  }
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
  for (auto* x : {&s.u, &s.u_prev}) x->resize(nr);
  for (auto* x : {&s.v, &s.v_prev, &s.col, &s.mx}) x->resize(mc);
  for (int64_t i = 0; i < nr; ++i) s.a[i] = ak[s.rows[i]];
  for (int64_t j = 0; j < mc; ++j) s.b[j] = bk[s.cols[j]];
  const T reg = static_cast<T>(opt.reg);
  const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / mc);
  for (int64_t i = 0; i < nr; ++i) {
    if (i % poll_rows == 0 && interrupted()) return;  // target_clones: no throw here (parallel.h)
    const T* Mi = Mk + s.rows[i] * m;
    T* Ki = s.K.data() + i * mc;
    for (int64_t j = 0; j < mc; ++j) Ki[j] = Mi[s.cols[j]];
    kernel_row(Ki, mc, reg, opt.log_domain, Ki);
  }
  if (opt.log_domain) {
    solve_log(s, nr, mc, opt, niter, errk);
    if (Pk == nullptr) return;
    for (int64_t i = 0; i < nr; ++i) {
      if (i % poll_rows == 0 && interrupted()) return;
      for (int64_t j = 0; j < mc; ++j) Pk[s.rows[i] * m + s.cols[j]] = plan_entry(s, true, i, j, mc);
    }
    for (int64_t i = 0; i < nr; ++i) luk[s.rows[i]] = s.u[i];
    for (int64_t j = 0; j < mc; ++j) lvk[s.cols[j]] = s.v[j];
  } else {
    solve_scaling(s, nr, mc, opt, niter, errk);
    if (Pk == nullptr) return;
    for (int64_t i = 0; i < nr; ++i) {
      if (i % poll_rows == 0 && interrupted()) return;
      for (int64_t j = 0; j < mc; ++j) Pk[s.rows[i] * m + s.cols[j]] = plan_entry(s, false, i, j, mc);
    }
    for (int64_t i = 0; i < nr; ++i) luk[s.rows[i]] = std::log(s.u[i]);
    for (int64_t j = 0; j < mc; ++j) lvk[s.cols[j]] = std::log(s.v[j]);
  }
}

}  // namespace

TOPOOT_TARGET_CLONES void sinkhorn_problem_f32(SinkhornScratch<float>& s, const float* ak, const float* bk, const float* Mk,
                                            int64_t n, int64_t m, const SinkhornOptions& opt, float* Pk, float* luk,
                                            float* lvk, int64_t& niter, float& errk) {
  solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}
TOPOOT_TARGET_CLONES void sinkhorn_problem_f64(SinkhornScratch<double>& s, const double* ak, const double* bk, const double* Mk,
                                            int64_t n, int64_t m, const SinkhornOptions& opt, double* Pk,
                                            double* luk, double* lvk, int64_t& niter, double& errk) {
  solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}

TOPOOT_TARGET_CLONES void sinkhorn_kernel_row_f64(const double* M, int64_t m, double reg, bool log_domain,
                                               double* K) {
  kernel_row(M, m, reg, log_domain, K);
}

TOPOOT_TARGET_CLONES void sinkhorn_solve_kernel_f64(SinkhornScratch<double>& s, const double* a, const double* b,
                                                 int64_t n, int64_t m, const SinkhornOptions& opt, int64_t& niter,
                                                 double& err) {
  s.rows.resize(n);
  s.cols.resize(m);
  for (int64_t i = 0; i < n; ++i) s.rows[i] = i;
  for (int64_t j = 0; j < m; ++j) s.cols[j] = j;
  s.a.assign(a, a + n);
  s.b.assign(b, b + m);
  for (auto* x : {&s.u, &s.u_prev}) x->resize(n);
  for (auto* x : {&s.v, &s.v_prev, &s.col, &s.mx}) x->resize(m);
  niter = 0;
  err = 1;
  if (opt.log_domain) {
    solve_log(s, n, m, opt, niter, err);
  } else {
    solve_scaling(s, n, m, opt, niter, err);
  }
}

TOPOOT_TARGET_CLONES void sinkhorn_plan_row_f64(const SinkhornScratch<double>& s, bool log_domain, int64_t i,
                                             double* row) {
  const int64_t mc = static_cast<int64_t>(s.cols.size());
  for (int64_t j = 0; j < mc; ++j) row[j] = plan_entry(s, log_domain, i, j, mc);
}

template <typename T>
void sinkhorn_batch(const T* a, const T* b, const T* M, int64_t B, int64_t n, int64_t m,
                    const SinkhornOptions& opt, int num_threads, T* plan, T* log_u, T* log_v,
                    int64_t* n_iter, T* err) {
  parallel_for<SinkhornScratch<T>>(B, num_threads, [&](SinkhornScratch<T>& s, int64_t k) {
    if constexpr (sizeof(T) == 4) {
      sinkhorn_problem_f32(s, a + k * n, b + k * m, M + k * n * m, n, m, opt, plan + k * n * m, log_u + k * n,
                           log_v + k * m, n_iter[k], err[k]);
    } else {
      sinkhorn_problem_f64(s, a + k * n, b + k * m, M + k * n * m, n, m, opt, plan + k * n * m, log_u + k * n,
                           log_v + k * m, n_iter[k], err[k]);
    }
  });
}

template void sinkhorn_batch<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                    const SinkhornOptions&, int, float*, float*, float*, int64_t*, float*);
template void sinkhorn_batch<double>(const double*, const double*, const double*, int64_t, int64_t, int64_t,
                                     const SinkhornOptions&, int, double*, double*, double*, int64_t*, double*);

}  // namespace topoot
