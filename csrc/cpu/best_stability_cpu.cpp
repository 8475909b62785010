// Every point's best stability in a batch of ragged pairs of diagrams (SPEC 3, 4.3 and 4.5): the
// selection's transport step, one fused pass per problem (costs, plan, stabilities, best match)
// on the solver of sinkhorn_cpu.cpp, so nothing padded to the largest problem is built.
#include "best_stability_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "buffer.h"
#include "parallel.h"
#include "sinkhorn_cpu.h"

namespace topoot {
namespace {

struct StabilityScratch {
  SinkhornScratch<double> solver;
  std::vector<double> wa, wb, plan_row;
  Buffer<double> cost;  // [n(+1), m(+1)]: uninitialised when it grows (buffer.h)
};

}  // namespace

void best_stability_batch(const double* P, const int64_t* p_off, const double* Q, const int64_t* q_off,
                             int64_t B, bool diagonal, const SinkhornOptions& opt, double scaling_limit,
                             int num_threads, double* s_row, double* c_row, double* s_col, double* c_col,
                             int64_t* n_iter) {
  parallel_for<StabilityScratch>(B, num_threads, [&](StabilityScratch& s, int64_t k) {
    const int64_t n = p_off[k + 1] - p_off[k], m = q_off[k + 1] - q_off[k];
    const double* Pk = P + 2 * p_off[k];
    const double* Qk = Q + 2 * q_off[k];
    double* sr = s_row + p_off[k];
    double* cr = c_row + p_off[k];
    double* sc = s_col + q_off[k];
    double* cc = c_col + q_off[k];
    n_iter[k] = 0;
    if (n == 0 || m == 0) {  // never compared: S = 0, C = +inf
      std::fill(sr, sr + n, 0.0);
      std::fill(cr, cr + n, std::numeric_limits<double>::infinity());
      std::fill(sc, sc + m, 0.0);
      std::fill(cc, cc + m, std::numeric_limits<double>::infinity());
      return;
    }
    const int64_t nr = diagonal ? n + 1 : n, mc = diagonal ? m + 1 : m;
    s.wa.assign(nr, 0.0);
    s.wb.assign(mc, 0.0);
    s.cost.resize(nr * mc);
    double* M = s.cost.data();
    // Large problems (10k x 10k points on raw noise) take seconds per pass: poll every few rows.
    const int64_t poll_rows = std::max<int64_t>(1, kPollEntries / std::max<int64_t>(1, m));
    for (int64_t i = 0; i < n; ++i) {
      if (i % poll_rows == 0) poll();
      for (int64_t j = 0; j < m; ++j) {
        const double dl = Pk[2 * i] - Qk[2 * j], dh = Pk[2 * i + 1] - Qk[2 * j + 1];
        M[i * mc + j] = dl * dl + dh * dh;
      }
    }
    if (diagonal) {  // paper text: the diagonal as an extra last row and column
      for (int64_t i = 0; i < n; ++i) M[i * mc + m] = (Pk[2 * i + 1] - Pk[2 * i]) * (Pk[2 * i + 1] - Pk[2 * i]) / 2;
      for (int64_t j = 0; j < m; ++j) M[n * mc + j] = (Qk[2 * j + 1] - Qk[2 * j]) * (Qk[2 * j + 1] - Qk[2 * j]) / 2;
      M[n * mc + m] = 0;  // diagonal to diagonal
      for (int64_t i = 0; i < n; ++i) s.wa[i] = 1.0 / static_cast<double>(n + m);
      for (int64_t j = 0; j < m; ++j) s.wb[j] = 1.0 / static_cast<double>(n + m);
      s.wa[n] = static_cast<double>(m) / static_cast<double>(n + m);
      s.wb[m] = static_cast<double>(n) / static_cast<double>(n + m);
    } else {  // released: squared Euclidean distances over the largest one
      double dmax = 0;
      for (int64_t e = 0; e < n * m; ++e) dmax = std::max(dmax, std::sqrt(M[e]));
      poll();
      for (int64_t e = 0; e < n * m; ++e) {
        const double r = std::sqrt(M[e]) / (dmax + 1e-12);
        M[e] = r * r;
      }
      poll();
      for (int64_t i = 0; i < n; ++i) s.wa[i] = 1.0 / static_cast<double>(n);
      for (int64_t j = 0; j < m; ++j) s.wb[j] = 1.0 / static_cast<double>(m);
    }
    double worst = 0;
    for (int64_t e = 0; e < nr * mc; ++e) worst = std::max(worst, std::abs(M[e]));
    SinkhornOptions o = opt;
    o.log_domain = worst / opt.reg > scaling_limit;
    // Every weight is positive, so the solver's compact problem is this one: the plan is read row
    // by row from its scalings and never stored (a 10k x 10k plan would be 800 MB).
    double err = 0;
    sinkhorn_problem_f64(s.solver, s.wa.data(), s.wb.data(), M, nr, mc, o, nullptr, nullptr, nullptr, n_iter[k], err);
    poll();
    s.plan_row.resize(mc);
    const double* plan = s.plan_row.data();
    for (int64_t i = 0; i < n; ++i) sr[i] = -1;
    for (int64_t j = 0; j < m; ++j) sc[j] = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (i % poll_rows == 0) poll();
      sinkhorn_plan_row_f64(s.solver, o.log_domain, i, s.plan_row.data());
      for (int64_t j = 0; j < m; ++j) {
        const double Sij = plan[j] / (1.0 + std::sqrt(std::max(M[i * mc + j], 0.0)));
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

}  // namespace topoot
