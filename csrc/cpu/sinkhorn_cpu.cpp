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

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "simd.h"

namespace topoot {
namespace {

// dot(c * x, y) of one row in 32 independent partial sums (the compiler may not reorder a
// floating-point reduction itself, and a chain through one register waits out every add's latency:
// four AVX-512 or eight AVX2 registers in flight), then eight for what is left; each c * x[j] is
// rounded first, as a stored row of c * x would be. One object per row (an array of sums per row:
// the compiler keeps each in registers, where one array for two rows stayed in memory).
template <typename T>
struct PartialDot {
  T acc[32] = {};
  TOPOOT_INLINE void add32(T c, const T* x, const T* y) {
    for (int t = 0; t < 32; ++t) acc[t] += (c * x[t]) * y[t];
  }
  // The sum, with entries j .. n - 1 (fewer than 32) added.
  TOPOOT_INLINE T finish(T c, const T* x, const T* y, int64_t j, int64_t n) {
    for (int t = 0; t < 8; ++t) acc[t] = (acc[t] + acc[t + 8]) + (acc[t + 16] + acc[t + 24]);
    for (; j + 8 <= n; j += 8) {
      for (int t = 0; t < 8; ++t) acc[t] += (c * x[j + t]) * y[j + t];
    }
    for (; j < n; ++j) acc[0] += (c * x[j]) * y[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  }
};

// Rows of a kernel, which a large problem streams from memory every iteration, are fetched
// Ahead bytes ahead in software, as the hardware prefetchers do not cross 4 KiB pages (a raw-noise
// map's 800 MB kernel on a 2-core Xeon: 6% less time per map). The 32 entries from x on, in the
// dots' loop of 32; ReadAhead keeps its own cursor for loops that read whole rows. Locality is
// __builtin_prefetch's: 3 into L1, 1 into L2 (x86's prefetcht0 / prefetcht2).
template <int64_t Ahead, int Locality, typename T>
TOPOOT_INLINE void fetch_ahead(const T* x) {
#if defined(__GNUC__)
  constexpr int64_t ahead = Ahead / static_cast<int64_t>(sizeof(T));
  for (int t = 0; t < 32; t += 64 / static_cast<int>(sizeof(T))) __builtin_prefetch(x + t + ahead, 0, Locality);
#else
  (void)x;
#endif
}

template <typename T>
TOPOOT_INLINE T scaled_dot(T c, const T* x, const T* y, int64_t n) {
  PartialDot<T> d;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    fetch_ahead<ReadAhead::kAhead, 3>(x + j);
    d.add32(c, x + j, y + j);
  }
  return d.finish(c, x, y, j, n);
}

// scaled_dot of two rows x0, x1 with one y, the same bits: the rows share every load of y
// (SinkhornOptions::share_dots_bytes). These rows (32 KiB and up) stream from memory: they are
// fetched 8 KiB ahead into L2, not L1, whose few miss buffers a fetch holds until its line comes
// from memory, which capped the pass (a raw-noise map on a 2-core EPYC, Zen 4: 750 vs 804 ms,
// medians of four interleaved rounds; 4 and 16 KiB ahead into L2, or 8 KiB into L1, were slower).
template <typename T>
TOPOOT_INLINE void scaled_dot2(T c0, const T* x0, T c1, const T* x1, const T* y, int64_t n, T& r0, T& r1) {
  PartialDot<T> d0, d1;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    fetch_ahead<2 * ReadAhead::kAhead, 1>(x0 + j);
    fetch_ahead<2 * ReadAhead::kAhead, 1>(x1 + j);
    d0.add32(c0, x0 + j, y + j);
    d1.add32(c1, x1 + j, y + j);
  }
  r0 = d0.finish(c0, x0, y, j, n);
  r1 = d1.finish(c1, x1, y, j, n);
}

// col += x * c: K^T u of the first u, row by row (one expression for both places that sum it).
template <typename T>
TOPOOT_INLINE void add_scaled_row(T* col, const T* x, T c, int64_t n) {
  for (int64_t j = 0; j < n; ++j) col[j] += x[j] * c;
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

// Whether the pass of iteration ii, one that ends in a check, is to be offered to a row sink: the
// column errors of the two iterations before it (e1 the last, e2 the one before; 0 when not known)
// extrapolated geometrically fall below stop_thr * offer_margin. Only a guess: a pass offered that
// does not stop costs the sink's work, one not offered that stops costs the sink a read of the plan.
// (On the raw-noise, random and quantised problems of the tests, at reg 0.3 to 0.02, it was never
// wrong.)
template <typename T>
TOPOOT_INLINE bool offer_pass(int64_t ii, T e1, T e2, const SinkhornOptions& opt) {
  if (ii == 0 || ii % 10 != 0 || !(e1 > 0) || !(e2 > 0)) return false;
  const double next = static_cast<double>(e1 < e2 ? e1 * (e1 / e2) : e1);
  return next < opt.stop_thr * opt.offer_margin;
}

// sink, sunk: see sinkhorn_solve_kernel_f64 (which clears *sunk; set here when the solve stops).
template <bool ShareDots, typename T>
TOPOOT_INLINE void solve_scaling_as(SinkhornScratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt,
                                    int64_t& niter, T& err, const T* ktu0, SinkhornRowSink* sink, bool* sunk) {
  if constexpr (!std::is_same_v<T, double>) sink = nullptr;  // the sink takes double rows
  const T* K = s.K.data();
  T* u = s.u.data();
  T* v = s.v.data();
  const T* a = s.a.data();
  const T* b = s.b.data();
  for (int64_t i = 0; i < nr; ++i) u[i] = T(1) / static_cast<T>(nr);
  for (int64_t j = 0; j < mc; ++j) v[j] = T(1) / static_cast<T>(mc);
  T* ktu = s.col.data();  // K^T u of the current u
  T* next = s.mx.data();  // K^T u of the u being computed
  if (ktu0) {  // K^T u of the first u, summed as K was built (check_and_solve, sinkhorn_kernel_row_f64)
    if (ktu0 != ktu) std::copy(ktu0, ktu0 + mc, ktu);
  } else {
    for (int64_t j = 0; j < mc; ++j) ktu[j] = 0;
    for (int64_t i = 0; i < nr; ++i) add_scaled_row(ktu, K + i * mc, u[i], mc);
  }
  int64_t ii = 0;
  T e1 = 0, e2 = 0;  // with a sink: the column errors of the last two iterations
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
    const bool offer = sink != nullptr && offer_pass(ii, e1, e2, opt);
    if (offer) sink->begin();
    // Row i's plan row to the sink, once its u_i is known (rows in order).
    auto give = [&](int64_t i, T ui, const T* Ki) TOPOOT_ALWAYS_INLINE {
      if constexpr (std::is_same_v<T, double>) {
        if (offer) sink->row(i, ui, Ki, v);
      }
    };
    for (int64_t j = 0; j < mc; ++j) next[j] = 0;
    int64_t i = 0;
    for (; i + 2 <= nr; i += 2) {  // two rows per sweep of v and of next: half their loads and stores
      const T* Ki = K + i * mc;
      const T* Kj = Ki + mc;
      T di, dj;
      if constexpr (ShareDots) {
        scaled_dot2(T(1) / a[i], Ki, T(1) / a[i + 1], Kj, v, mc, di, dj);
      } else {
        di = scaled_dot(T(1) / a[i], Ki, v, mc);
        dj = scaled_dot(T(1) / a[i + 1], Kj, v, mc);
      }
      const T ui = u[i] = T(1) / di;
      const T uj = u[i + 1] = T(1) / dj;
      bad |= !std::isfinite(ui) || !std::isfinite(uj);
      for (int64_t j = 0; j < mc; ++j) next[j] += Ki[j] * ui + Kj[j] * uj;
      give(i, ui, Ki);
      give(i + 1, uj, Kj);
    }
    for (; i < nr; ++i) {
      const T* Ki = K + i * mc;
      const T ui = u[i] = T(1) / scaled_dot(T(1) / a[i], Ki, v, mc);
      bad |= !std::isfinite(ui);
      for (int64_t j = 0; j < mc; ++j) next[j] += Ki[j] * ui;
      give(i, ui, Ki);
    }
    if (bad) {  // machine precision reached: POT keeps the previous scalings
      std::copy(s.u_prev.begin(), s.u_prev.begin() + nr, u);
      std::copy(s.v_prev.begin(), s.v_prev.begin() + mc, v);
      break;
    }
    std::swap(ktu, next);  // the column sums of the new plan, before its v
    if (sink != nullptr || ii % 10 == 0) {
      const T e = column_error(ktu, v, b, mc);
      e2 = e1;
      e1 = e;
      if (ii % 10 == 0) {
        err = e;
        if (err < opt.stop_thr) {
          if (sunk) *sunk = offer;
          break;
        }
      }
    }
  }
  niter = std::min(ii, opt.max_iter - 1);
}

// solve_scaling_as with the rows' dots two at a time (SinkhornOptions::share_dots_bytes): a function
// of its own, called once a problem, as its loop inlined beside the other made small problems 3-5%
// slower.
TOPOOT_TARGET_CLONES_WIDE void solve_scaling_shared_f32(SinkhornScratch<float>& s, int64_t nr, int64_t mc,
                                                        const SinkhornOptions& opt, int64_t& niter, float& err,
                                                        const float* ktu0, SinkhornRowSink* sink, bool* sunk) {
  solve_scaling_as<true>(s, nr, mc, opt, niter, err, ktu0, sink, sunk);
}
TOPOOT_TARGET_CLONES_WIDE void solve_scaling_shared_f64(SinkhornScratch<double>& s, int64_t nr, int64_t mc,
                                                        const SinkhornOptions& opt, int64_t& niter, double& err,
                                                        const double* ktu0, SinkhornRowSink* sink, bool* sunk) {
  solve_scaling_as<true>(s, nr, mc, opt, niter, err, ktu0, sink, sunk);
}

// POT's scaling-domain iterations on a prepared problem (solve_scaling_as).
template <typename T>
TOPOOT_INLINE void solve_scaling(SinkhornScratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt,
                                 int64_t& niter, T& err, const T* ktu0 = nullptr, SinkhornRowSink* sink = nullptr,
                                 bool* sunk = nullptr) {
  if (mc * static_cast<int64_t>(sizeof(T)) < opt.share_dots_bytes) {
    solve_scaling_as<false>(s, nr, mc, opt, niter, err, ktu0, sink, sunk);
  } else if constexpr (sizeof(T) == 4) {
    solve_scaling_shared_f32(s, nr, mc, opt, niter, err, ktu0, sink, sunk);
  } else {
    solve_scaling_shared_f64(s, nr, mc, opt, niter, err, ktu0, sink, sunk);
  }
}

template <typename T>
TOPOOT_INLINE void solve_log(SinkhornScratch<T>& s, int64_t nr, int64_t mc, const SinkhornOptions& opt, int64_t& niter,
                             T& err) {
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

// M / -reg, as POT divides, through Divisor (Fused) or a division: the same bits, except where the
// quotient is subnormal (exp of it is 1 either way) or overflows (a max |M| / reg that overflows is
// refused before any kernel is used).
template <bool Fused, typename T>
TOPOOT_INLINE T over_neg_reg(T x, const Divisor<T>& neg_reg) {
  if constexpr (Fused) {
    return neg_reg.divide(x);
  } else {
    return x / neg_reg.d;
  }
}

// Without Subnormal, every x = M / -reg lies in exp_fast's normal range (|M| <= max |M| with
// sinkhorn_kernel_may_be_subnormal false: |x| <= 708, float 87): the bounded exp.
template <bool Fused, bool Subnormal, typename T>
TOPOOT_INLINE void exp_row(const T* M, int64_t m, const Divisor<T>& neg_reg, T* K) {
  for (int64_t j = 0; j < m; ++j) K[j] = exp_fast<T, Subnormal, !Subnormal>(over_neg_reg<Fused>(M[j], neg_reg));
}

// The solver's matrix entry from a cost, as POT writes it: exp(M / -reg) in the scaling domain,
// -M / reg in the log domain.
template <typename T>
TOPOOT_INLINE void kernel_row(const T* M, int64_t m, T reg, bool log_domain, bool subnormal, T* K) {
  if (log_domain) {
    for (int64_t j = 0; j < m; ++j) K[j] = -M[j] / reg;
    return;
  }
  const Divisor<T> neg_reg(-reg);
  if (neg_reg.fused) {
    subnormal ? exp_row<true, true>(M, m, neg_reg, K) : exp_row<true, false>(M, m, neg_reg, K);
  } else {
    subnormal ? exp_row<false, true>(M, m, neg_reg, K) : exp_row<false, false>(M, m, neg_reg, K);
  }
}

// Row i of the plan from the scalings, compact indices: what the padded plan holds. Returns the
// sum of its entries times 0: 0 unless some entry is NaN or infinite (then NaN).
template <typename T>
TOPOOT_INLINE T plan_row(const SinkhornScratch<T>& s, bool log_domain, int64_t i, T* out) {
  const int64_t mc = static_cast<int64_t>(s.cols.size());
  const T* Ki = s.K.data() + i * mc;
  const T* v = s.v.data();
  const T ui = s.u[i];
  T z = 0;
  if (log_domain) {
#pragma omp simd reduction(+ : z)
    for (int64_t j = 0; j < mc; ++j) {
      out[j] = exp_fast(Ki[j] + ui + v[j]);
      z += out[j] * T(0);
    }
  } else {
#pragma omp simd reduction(+ : z)
    for (int64_t j = 0; j < mc; ++j) {
      out[j] = ui * Ki[j] * v[j];
      z += out[j] * T(0);
    }
  }
  return z;
}

// The plan of a solved problem, every entry of its n x m block, padding included, front to back
// through a StreamWriter (with Bypass: SinkhornOptions::stream_plan). Returns whether every entry
// is finite.
template <bool Bypass, typename T>
TOPOOT_INLINE bool write_plan(SinkhornScratch<T>& s, int64_t n, int64_t m, bool log_domain, T* Pk) {
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / m);
  std::vector<T>& row = s.out_row;
  row.assign(m, T(0));  // its padding columns stay 0
  StreamWriter<T, Bypass> out(Pk);
  T zero = 0;
  // Real columns first: a row is computed in place, its padding columns staying 0. Else gathered
  // through mx.
  const bool columns_first = s.columns_first();
  for (int64_t i = 0, r = 0; i < n; ++i) {  // r: the next real row
    if (i % poll_rows == 0 && interrupted()) break;
    if (r < nr && s.rows[r] == i) {
      if (columns_first) {
        zero += plan_row(s, log_domain, r, row.data());
      } else {
        zero += plan_row(s, log_domain, r, s.mx.data());  // mx is free after the solve
        for (int64_t j = 0; j < mc; ++j) row[s.cols[j]] = s.mx[j];
      }
      ++r;
      out.put(row.data(), m);
    } else {
      out.put_zeros(m);
    }
  }
  out.finish();
  return zero == 0;
}

// A problem's real rows and columns into the scratch (a > 0, b > 0), its padding's log scalings
// written (-inf; solve_built writes the plan, padding included), the scratch sized. Returns false
// when nothing is to be solved (no real row or column: a zero plan, written here).
template <typename T>
TOPOOT_INLINE bool prepare_problem(SinkhornScratch<T>& s, const T* ak, const T* bk, int64_t n, int64_t m, T* Pk,
                                   T* luk, T* lvk) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  s.rows.clear();
  s.cols.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (ak[i] > 0) s.rows.push_back(i);
  }
  for (int64_t j = 0; j < m; ++j) {
    if (bk[j] > 0) s.cols.push_back(j);
  }
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  if (!(nr == n && mc == m && nr > 0 && mc > 0)) {  // padding, or nothing to solve
    std::fill(luk, luk + n, neg_inf);
    std::fill(lvk, lvk + m, neg_inf);
  }
  if (nr == 0 || mc == 0) {  // nothing to transport: a zero plan
    if (Pk != nullptr) std::fill(Pk, Pk + n * m, T(0));
    return false;
  }
  s.a.resize(nr);
  s.b.resize(mc);
  s.K.resize(nr * mc);
  for (auto* x : {&s.u, &s.u_prev}) x->resize(nr);
  for (auto* x : {&s.v, &s.v_prev, &s.col, &s.mx}) x->resize(mc);
  for (int64_t i = 0; i < nr; ++i) s.a[i] = ak[s.rows[i]];
  for (int64_t j = 0; j < mc; ++j) s.b[j] = bk[s.cols[j]];
  return true;
}

// Real row r of a prepared problem's costs Mk [n, m], its real columns only: the row itself where
// they are its first mc, else gathered into out [mc].
template <typename T>
TOPOOT_INLINE const T* real_costs(const SinkhornScratch<T>& s, const T* Mk, int64_t m, int64_t r, T* out) {
  const T* Mi = Mk + s.rows[r] * m;
  const int64_t mc = static_cast<int64_t>(s.cols.size());
  if (s.columns_first()) return Mi;
  for (int64_t j = 0; j < mc; ++j) out[j] = Mi[s.cols[j]];
  return out;
}

// The kernel of a prepared problem from its costs (kernel_row on its real rows and columns).
// Returns false when the call was cancelled.
template <typename T>
TOPOOT_INLINE bool build_kernel(SinkhornScratch<T>& s, const T* Mk, int64_t m, const SinkhornOptions& opt) {
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  const T reg = static_cast<T>(opt.reg);
  const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / mc);
  for (int64_t i = 0; i < nr; ++i) {
    if (i % poll_rows == 0 && interrupted()) return false;  // target_clones: no throw here (parallel.h)
    T* Ki = s.K.data() + i * mc;
    kernel_row(real_costs(s, Mk, m, i, Ki), mc, reg, opt.log_domain, opt.subnormal_kernel, Ki);
  }
  return true;
}

// A prepared problem with its kernel built: iterate, write the plan (when asked for) and the log
// scalings (write_plan). Returns whether every plan entry written is finite.
template <typename T>
TOPOOT_INLINE bool solve_built(SinkhornScratch<T>& s, int64_t n, int64_t m, const SinkhornOptions& opt, T* Pk, T* luk,
                               T* lvk, int64_t& niter, T& errk, const T* ktu0 = nullptr) {
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  if (opt.log_domain) {
    solve_log(s, nr, mc, opt, niter, errk);
  } else {
    solve_scaling(s, nr, mc, opt, niter, errk, ktu0);
  }
  for (int64_t i = 0; i < nr; ++i) luk[s.rows[i]] = opt.log_domain ? s.u[i] : std::log(s.u[i]);
  for (int64_t j = 0; j < mc; ++j) lvk[s.cols[j]] = opt.log_domain ? s.v[j] : std::log(s.v[j]);
  if (Pk == nullptr) return true;
  return opt.stream_plan ? write_plan<true>(s, n, m, opt.log_domain, Pk)
                         : write_plan<false>(s, n, m, opt.log_domain, Pk);
}

// One problem, start to finish, its domain and kernel flavour already decided (opt.log_domain,
// opt.subnormal_kernel). Returns whether every plan entry written is finite.
template <typename T>
TOPOOT_INLINE bool solve_problem(SinkhornScratch<T>& s, const T* ak, const T* bk, const T* Mk, int64_t n, int64_t m,
                                 const SinkhornOptions& opt, T* Pk, T* luk, T* lvk, int64_t& niter, T& errk) {
  niter = 0;
  errk = 1;
  if (!prepare_problem(s, ak, bk, n, m, Pk, luk, lvk) || !build_kernel(s, Mk, m, opt)) return true;
  return solve_built(s, n, m, opt, Pk, luk, lvk, niter, errk);
}

// Whether a problem's check lets it be solved: finite inputs, non-negative weights, max |M| / reg
// within T.
template <typename T>
bool check_passes(const SinkhornInputStats& st, double reg) {
  return st.finite && st.a_ok && st.b_ok && st.worst / reg < static_cast<double>(std::numeric_limits<T>::max());
}

// The domain a problem starts in: with opt.auto_domain the scaling domain while its max |M| / reg is
// at most opt.scaling_limit, else the one asked for.
inline bool starts_in_log(const SinkhornOptions& opt, double worst) {
  return opt.auto_domain ? worst / opt.reg > opt.scaling_limit : opt.log_domain;
}

// The options one problem is solved with: its domain, and its kernel's flavour from its max |M|.
template <typename T>
SinkhornOptions problem_options(const SinkhornOptions& opt, double worst, bool log_domain) {
  SinkhornOptions o = opt;
  o.log_domain = log_domain;
  o.subnormal_kernel = sinkhorn_kernel_may_be_subnormal(worst, opt.reg, sizeof(T) == 4);
  return o;
}

// The weights of one problem, padding included: whether they are finite and non-negative. Returns
// the non-finite flag (1 when some weight is NaN or infinite).
template <typename T>
TOPOOT_INLINE unsigned check_weights(const T* ak, const T* bk, int64_t n, int64_t m, SinkhornInputStats& st) {
  unsigned bad = 0;
  bool a_neg = false, b_neg = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= non_finite(ak[i]);
    a_neg |= ak[i] < 0;
  }
  for (int64_t j = 0; j < m; ++j) {
    bad |= non_finite(bk[j]);
    b_neg |= bk[j] < 0;
  }
  st.a_ok = !a_neg;
  st.b_ok = !b_neg;
  return bad;
}

// The real columns of a problem (b > 0) as a span [lo, hi) of its rows and, where padding columns
// lie inside it, a 1/0 mask over the span: check_problem reads the span's costs only (a batch padded
// to its largest problem holds its real block first; its padding is never read).
template <typename T>
struct RealColumns {
  int64_t lo = 0, hi = 0;
  std::vector<T> mask;  // empty when every column of the span is real
  RealColumns(const T* bk, int64_t m) {
    int64_t count = 0;
    for (int64_t j = 0; j < m; ++j) {
      if (!(bk[j] > 0)) continue;
      if (count++ == 0) lo = j;
      hi = j + 1;
    }
    if (hi - lo != count) {
      mask.resize(hi - lo);
      for (int64_t j = lo; j < hi; ++j) mask[j - lo] = bk[j] > 0 ? T(1) : T(0);
    }
  }
  bool masked() const { return !mask.empty(); }
};

// A scaling-domain kernel row (no subnormal entries) and, in the same loop, the row's max |M| (w)
// and sum of M * 0 (z: 0 unless some M is NaN or infinite). The bounded exp: the kernel is kept
// only when the problem's max |M| / reg puts every M / -reg in its range (else it is built again
// or the problem refused), so an entry out of range or NaN is garbage nothing uses.
// M and K may be one row (a gathered row's kernel built in place): each cost is read before its
// entry is written.
template <bool Fused, typename T>
TOPOOT_INLINE void checked_exp_row(const T* M, int64_t m, const Divisor<T>& neg_reg, T* K, T& w, T& z) {
#pragma omp simd reduction(max : w) reduction(+ : z)
  for (int64_t j = 0; j < m; ++j) {
    const T x = M[j];
    w = std::max(w, std::abs(x));
    z += x * T(0);
    K[j] = exp_fast<T, false, true>(over_neg_reg<Fused>(x, neg_reg));
  }
}

// A problem in the scaling domain or with the domain picked from its costs (opt.auto_domain): its
// input check (check_problem's) made in the same pass that builds its scaling-domain kernel, so
// its real costs are read once and its padding's never (a batch of 64 256 x 256 problems from
// memory, one thread: 347 us a problem against 360 with the check as a pass of its own; a batch
// padded to its largest problem then costs about what the packed one does). The kernel is built
// for the common case (no subnormal entry) and built again when the check rules otherwise (log
// domain, or max |M| / reg allowing subnormal entries): the same kernel the check-first order
// builds. Returns the check; solves only when it passes (then log_domain tells the domain that ran
// and finite whether the plan is).
template <typename T>
TOPOOT_INLINE SinkhornInputStats check_and_solve(SinkhornScratch<T>& s, const T* ak, const T* bk, const T* Mk,
                                                 int64_t n, int64_t m, const SinkhornOptions& opt, T* Pk, T* luk,
                                                 T* lvk, int64_t& niter, T& errk, bool& log_domain, bool& finite) {
  niter = 0;
  errk = 1;
  log_domain = false;
  finite = true;
  SinkhornInputStats st;
  unsigned bad = check_weights(ak, bk, n, m, st);
  if (!prepare_problem(s, ak, bk, n, m, Pk, luk, lvk)) {  // no real row or column: a zero plan
    st.finite = bad == 0;
    return st;
  }
  const int64_t nr = static_cast<int64_t>(s.rows.size()), mc = static_cast<int64_t>(s.cols.size());
  const Divisor<T> neg_reg(-static_cast<T>(opt.reg));
  const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / mc);
  // The solver's first K^T u (u = 1 / nr), summed as the kernel is built, as solve_scaling sums it:
  // one pass less over K, unless the kernel is built again.
  T* ktu = s.col.data();
  std::fill(ktu, ktu + mc, T(0));
  const T u0 = T(1) / static_cast<T>(nr);
  T worst = 0, zero = 0;
  // Whole rows read: one range ahead; padding columns: each real row's span of columns only.
  const int64_t lo = s.cols.front(), span = s.cols.back() + 1 - lo;
  ReadAhead costs(Mk, Mk + n * m);
  PartRowsAhead spans(Mk + lo, m * static_cast<int64_t>(sizeof(T)), s.rows.data(), nr,
                      span * static_cast<int64_t>(sizeof(T)));
  for (int64_t r = 0; r < nr; ++r) {
    if (r % poll_rows == 0 && interrupted()) return st;  // target_clones: no throw here (parallel.h)
    T* Ki = s.K.data() + r * mc;
    T w = 0, z = 0;
    if (span == m) {
      costs.at(Mk + s.rows[r] * m);
    } else {
      spans.at(r);
    }
    const T* Mi = real_costs(s, Mk, m, r, Ki);
    if (neg_reg.fused) {
      checked_exp_row<true>(Mi, mc, neg_reg, Ki, w, z);
    } else {
      checked_exp_row<false>(Mi, mc, neg_reg, Ki, w, z);
    }
    add_scaled_row(ktu, Ki, u0, mc);
    worst = std::max(worst, w);
    zero += z;
  }
  bad |= static_cast<unsigned>(!(zero == 0));
  st.finite = bad == 0;
  st.worst = static_cast<double>(worst);
  if (!check_passes<T>(st, opt.reg)) return st;
  const SinkhornOptions o = problem_options<T>(opt, st.worst, starts_in_log(opt, st.worst));
  const bool rebuilt = o.log_domain || o.subnormal_kernel;
  if (rebuilt && !build_kernel(s, Mk, m, o)) return st;
  log_domain = o.log_domain;
  finite = solve_built(s, n, m, o, Pk, luk, lvk, niter, errk, rebuilt ? nullptr : ktu);
  return st;
}

// Over the real entries of one problem (a > 0 row, b > 0 column): whether they are finite, and max
// |M|. Padding costs are not read (any value, NaN included), except a masked span's. Over its
// weights, padding included: whether they are finite and non-negative. The loop over the costs is
// an `omp simd` reduction, exact in any order: a maximum, and a sum of x * 0, which stays 0 unless
// some x is NaN or infinite (then NaN); a padding entry inside the span is selected out, not
// multiplied (NaN * 0 is NaN). A NaN in a row's maximum is harmless: that row's sum flags it.
template <typename T>
TOPOOT_INLINE SinkhornInputStats check_problem(const T* ak, const T* bk, const T* Mk, int64_t n, int64_t m) {
  SinkhornInputStats st;
  unsigned bad = check_weights(ak, bk, n, m, st);
  const RealColumns<T> span(bk, m);
  const int64_t width = span.hi - span.lo;
  const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / std::max<int64_t>(1, m));
  const T* mask = span.mask.data();
  T worst = 0, zero = 0;
  ReadAhead costs(Mk, Mk + n * m);
  for (int64_t i = 0; i < n && width > 0; ++i) {
    if (i % poll_rows == 0 && interrupted()) break;  // target_clones: no throw here (parallel.h)
    if (!(ak[i] > 0)) continue;  // a padding row: not read
    const T* row = Mk + i * m + span.lo;
    costs.at(row);
    T w = 0, z = 0;
    if (span.masked()) {
#pragma omp simd reduction(max : w) reduction(+ : z)
      for (int64_t j = 0; j < width; ++j) {
        const T x = mask[j] > 0 ? row[j] : T(0);
        w = std::max(w, std::abs(x));
        z += x * T(0);
      }
    } else {
#pragma omp simd reduction(max : w) reduction(+ : z)
      for (int64_t j = 0; j < width; ++j) {
        w = std::max(w, std::abs(row[j]));
        z += row[j] * T(0);
      }
    }
    worst = std::max(worst, w);
    zero += z;
  }
  bad |= static_cast<unsigned>(!(zero == 0));
  st.finite = bad == 0;
  st.worst = static_cast<double>(worst);
  return st;
}

// The AVX-512 clone computes the same bits as the AVX2 one (both contract to the same fused
// multiply-adds; every reduction keeps its order), 8 lanes wide.
TOPOOT_TARGET_CLONES_WIDE bool sinkhorn_problem_f32(SinkhornScratch<float>& s, const float* ak, const float* bk,
                                                   const float* Mk, int64_t n, int64_t m, const SinkhornOptions& opt,
                                                   float* Pk, float* luk, float* lvk, int64_t& niter, float& errk) {
  return solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}
TOPOOT_TARGET_CLONES_WIDE bool sinkhorn_problem_f64(SinkhornScratch<double>& s, const double* ak, const double* bk,
                                                   const double* Mk, int64_t n, int64_t m, const SinkhornOptions& opt,
                                                   double* Pk, double* luk, double* lvk, int64_t& niter,
                                                   double& errk) {
  return solve_problem(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk);
}
TOPOOT_TARGET_CLONES_WIDE SinkhornInputStats check_and_solve_f32(SinkhornScratch<float>& s, const float* ak,
                                                               const float* bk, const float* Mk, int64_t n, int64_t m,
                                                               const SinkhornOptions& opt, float* Pk, float* luk,
                                                               float* lvk, int64_t& niter, float& errk,
                                                               bool& log_domain, bool& finite) {
  return check_and_solve(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk, log_domain, finite);
}
TOPOOT_TARGET_CLONES_WIDE SinkhornInputStats check_and_solve_f64(SinkhornScratch<double>& s, const double* ak,
                                                               const double* bk, const double* Mk, int64_t n,
                                                               int64_t m, const SinkhornOptions& opt, double* Pk,
                                                               double* luk, double* lvk, int64_t& niter, double& errk,
                                                               bool& log_domain, bool& finite) {
  return check_and_solve(s, ak, bk, Mk, n, m, opt, Pk, luk, lvk, niter, errk, log_domain, finite);
}
TOPOOT_TARGET_CLONES_EXACT SinkhornInputStats check_problem_f32(const float* ak, const float* bk, const float* Mk,
                                                                int64_t n, int64_t m) {
  return check_problem(ak, bk, Mk, n, m);
}
TOPOOT_TARGET_CLONES_EXACT SinkhornInputStats check_problem_f64(const double* ak, const double* bk, const double* Mk,
                                                                int64_t n, int64_t m) {
  return check_problem(ak, bk, Mk, n, m);
}

// Largest problems first (n_k * m_k, ties by index), so that no thread is left with a large one
// while the others idle; each problem writes only its own outputs, so the order changes nothing.
std::vector<int64_t> largest_first(const SinkhornLayout& L, int64_t B) {
  std::vector<int64_t> order(B);
  for (int64_t k = 0; k < B; ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return L.n[x] * L.m[x] > L.n[y] * L.m[y]; });
  return order;
}


// Problem k's input check (check_problem's clone for T).
template <typename T>
SinkhornInputStats check_one(const T* a, const T* b, const T* M, const SinkhornLayout& L, int64_t k) {
  if constexpr (sizeof(T) == 4) {
    return check_problem_f32(a + L.a_off[k], b + L.b_off[k], M + L.m_off[k], L.n[k], L.m[k]);
  } else {
    return check_problem_f64(a + L.a_off[k], b + L.b_off[k], M + L.m_off[k], L.n[k], L.m[k]);
  }
}

// The batch's input check from its problems'.
SinkhornInputStats merged(const std::vector<SinkhornInputStats>& per) {
  SinkhornInputStats all;
  for (const auto& st : per) {
    all.finite &= st.finite;
    all.a_ok &= st.a_ok;
    all.b_ok &= st.b_ok;
    all.worst = std::max(all.worst, st.worst);
  }
  return all;
}
}  // namespace

TOPOOT_TARGET_CLONES_WIDE void sinkhorn_kernel_row_f64(const double* M, int64_t m, double reg, bool log_domain,
                                                       bool subnormal, double* K, double* ktu, double u0) {
  kernel_row(M, m, reg, log_domain, subnormal, K);
  if (ktu) add_scaled_row(ktu, K, u0, m);
}

// Every M / -reg >= (worst / -reg), rounded alike (division is monotonic), is then >= the low end
// of exp_fast's normal range.
bool sinkhorn_kernel_may_be_subnormal(double worst, double reg, bool f32) {
  if (f32) return !(static_cast<float>(worst) / -static_cast<float>(reg) >= kExpNormalLow<float>);
  return !(worst / -reg >= kExpNormalLow<double>);
}

TOPOOT_TARGET_CLONES_WIDE void sinkhorn_solve_kernel_f64(SinkhornScratch<double>& s, const double* a, const double* b,
                                                 int64_t n, int64_t m, const SinkhornOptions& opt, int64_t& niter,
                                                 double& err, const double* ktu0, SinkhornRowSink* sink, bool* sunk) {
  if (sunk) *sunk = false;
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
    solve_scaling(s, n, m, opt, niter, err, ktu0, sink, sunk);
  }
}

TOPOOT_TARGET_CLONES_WIDE void sinkhorn_plan_row_f64(const SinkhornScratch<double>& s, bool log_domain, int64_t i,
                                                  double* row) {
  plan_row(s, log_domain, i, row);
}

template <typename T>
SinkhornReport sinkhorn_batch(const T* a, const T* b, const T* M, const SinkhornLayout& L, int64_t B,
                              const SinkhornOptions& options, int num_threads, T* plan, T* log_u, T* log_v,
                              int64_t* n_iter, T* err) {
  SinkhornOptions opt = options;
  int64_t plan_entries = 0;
  for (int64_t k = 0; k < B; ++k) plan_entries += L.n[k] * L.m[k];
  opt.stream_plan = plan != nullptr && plan_entries * static_cast<int64_t>(sizeof(T)) >= opt.stream_plan_bytes;
  std::vector<SinkhornInputStats> stats(B);
  std::vector<uint8_t> log_domain(B, 0), finite(B, 1);
  auto solve = [&](SinkhornScratch<T>& s, int64_t k, bool log) {
    const SinkhornOptions o = problem_options<T>(opt, stats[k].worst, log);
    T* Pk = plan == nullptr ? nullptr : plan + L.m_off[k];
    if constexpr (sizeof(T) == 4) {
      finite[k] = sinkhorn_problem_f32(s, a + L.a_off[k], b + L.b_off[k], M + L.m_off[k], L.n[k], L.m[k], o, Pk,
                                       log_u + L.a_off[k], log_v + L.b_off[k], n_iter[k], err[k]);
    } else {
      finite[k] = sinkhorn_problem_f64(s, a + L.a_off[k], b + L.b_off[k], M + L.m_off[k], L.n[k], L.m[k], o, Pk,
                                       log_u + L.a_off[k], log_v + L.b_off[k], n_iter[k], err[k]);
    }
    log_domain[k] = log;
  };
  const double reg = opt.reg;
  const std::vector<int64_t> order = largest_first(L, B);
  parallel_for<SinkhornScratch<T>>(B, num_threads, [&](SinkhornScratch<T>& s, int64_t rank) {
    const int64_t k = order[rank];
    const int64_t n = L.n[k], m = L.m[k];
    const T* ak = a + L.a_off[k];
    const T* bk = b + L.b_off[k];
    // No log domain asked for: checked while the kernel is built (check_and_solve).
    if (!opt.log_domain) {
      bool log = false, fin = true;
      T* Pk = plan == nullptr ? nullptr : plan + L.m_off[k];
      if constexpr (sizeof(T) == 4) {
        stats[k] = check_and_solve_f32(s, ak, bk, M + L.m_off[k], n, m, opt, Pk, log_u + L.a_off[k],
                                       log_v + L.b_off[k], n_iter[k], err[k], log, fin);
      } else {
        stats[k] = check_and_solve_f64(s, ak, bk, M + L.m_off[k], n, m, opt, Pk, log_u + L.a_off[k],
                                       log_v + L.b_off[k], n_iter[k], err[k], log, fin);
      }
      log_domain[k] = log;
      finite[k] = fin;
      poll();  // throws here, outside the clones, if the call was cancelled
      return;
    }
    stats[k] = check_one(a, b, M, L, k);
    poll();
    if (!check_passes<T>(stats[k], reg)) return;
    solve(s, k, starts_in_log(opt, stats[k].worst));
    poll();  // throws here, outside the clones, if the call was cancelled
  });
  SinkhornReport report;
  report.inputs = merged(stats);
  report.overflow = !(report.inputs.worst / reg < static_cast<double>(std::numeric_limits<T>::max()));
  if (!report.inputs.finite || !report.inputs.a_ok || !report.inputs.b_ok || report.overflow) return report;
  report.log_domain = std::any_of(log_domain.begin(), log_domain.end(), [](uint8_t x) { return x != 0; });
  if (opt.auto_domain && report.log_domain) {  // the batch rule: every problem in the log domain
    std::vector<int64_t> again;
    for (int64_t k : order) {
      if (!log_domain[k]) again.push_back(k);
    }
    parallel_for<SinkhornScratch<T>>(static_cast<int64_t>(again.size()), num_threads,
                                     [&](SinkhornScratch<T>& s, int64_t r) {
                                       solve(s, again[r], true);
                                       poll();
                                     });
  }
  if (!opt.auto_domain) report.log_domain = opt.log_domain;
  report.plan_finite = std::all_of(finite.begin(), finite.end(), [](uint8_t x) { return x != 0; });
  return report;
}

template <typename T>
SinkhornInputStats sinkhorn_check_batch(const T* a, const T* b, const T* M, const SinkhornLayout& L, int64_t B,
                                        int num_threads) {
  std::vector<SinkhornInputStats> per(B);
  const std::vector<int64_t> order = largest_first(L, B);
  parallel_for<int>(B, num_threads, [&](int&, int64_t rank) {
    per[order[rank]] = check_one(a, b, M, L, order[rank]);
    poll();
  });
  return merged(per);
}

#define TOPOOT_SINKHORN_INSTANCES(T)                                                                            \
  template SinkhornReport sinkhorn_batch<T>(const T*, const T*, const T*, const SinkhornLayout&, int64_t,       \
                                            const SinkhornOptions&, int, T*, T*, T*, int64_t*, T*);              \
  template SinkhornInputStats sinkhorn_check_batch<T>(const T*, const T*, const T*, const SinkhornLayout&, int64_t, \
                                                      int);
TOPOOT_SINKHORN_INSTANCES(float)
TOPOOT_SINKHORN_INSTANCES(double)
#undef TOPOOT_SINKHORN_INSTANCES

}  // namespace topoot
