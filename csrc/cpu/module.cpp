// pybind11 bindings of the C++ kernels: numpy buffers in and out, no torch ABI,
// the GIL released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <string>

#include "parallel.h"
#include "best_stability_cpu.h"
#include "head_cpu.h"
#include "persistence_cpu.h"
#include "sinkhorn_cpu.h"

namespace py = pybind11;

namespace {

// NaN and +-inf are the values whose exponent bits are all ones. An integer
// test, so that the loop vectorises (a floating-point reduction may not).
template <typename T>
bool all_finite(const T* x, int64_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kExp = static_cast<Bits>(sizeof(T) == 4 ? 0x7F800000ull : 0x7FF0000000000000ull);
  Bits bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    Bits u;
    std::memcpy(&u, x + i, sizeof u);
    bad |= static_cast<Bits>((u & kExp) == kExp);
  }
  return bad == 0;
}

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

// Pairs of every image as flat arrays (image, dim, birth, death, birth_pixel, death_pixel).
py::tuple pack_pairs(const std::vector<topoot::ImagePairs>& pairs) {
  size_t total = 0;
  for (const auto& p : pairs) total += p.dim.size();
  const auto n = static_cast<py::ssize_t>(total);
  py::array_t<int64_t> image(n), dim(n), birth_pixel(n), death_pixel(n);
  py::array_t<double> birth(n), death(n);
  int64_t* im = image.mutable_data();
  int64_t* dm = dim.mutable_data();
  int64_t* bp = birth_pixel.mutable_data();
  int64_t* dp = death_pixel.mutable_data();
  double* bv = birth.mutable_data();
  double* dv = death.mutable_data();
  size_t k = 0;
  for (size_t b = 0; b < pairs.size(); ++b) {
    const auto& p = pairs[b];
    const size_t m = p.dim.size();
    std::fill(im + k, im + k + m, static_cast<int64_t>(b));
    std::copy(p.dim.begin(), p.dim.end(), dm + k);
    std::copy(p.birth.begin(), p.birth.end(), bv + k);
    std::copy(p.death.begin(), p.death.end(), dv + k);
    std::copy(p.birth_pixel.begin(), p.birth_pixel.end(), bp + k);
    std::copy(p.death_pixel.begin(), p.death_pixel.end(), dp + k);
    k += m;
  }
  return py::make_tuple(image, dim, birth, death, birth_pixel, death_pixel);
}

template <typename T>
py::tuple persistence_impl(const py::array_t<T, py::array::c_style>& maps, bool superlevel,
                           const std::string& construction, bool dim0, bool dim1, int num_threads) {
  if (maps.ndim() != 3) throw std::invalid_argument("maps: expected a [B, H, W] array");
  const int64_t B = maps.shape(0), H = maps.shape(1), W = maps.shape(2);
  if (H < 1 || W < 1) throw std::invalid_argument("maps: empty spatial dimension");
  if ((H + 2) * (W + 2) > (int64_t{1} << 30)) {
    throw std::invalid_argument("maps: a " + std::to_string(H) + " x " + std::to_string(W) +
                                " map is too large for the C++ core ((H + 2) * (W + 2) must be at most 2**30)");
  }
  topoot::PersistenceOptions opt;
  opt.superlevel = superlevel;
  if (construction == "T") {
    opt.construction = topoot::Construction::T;
  } else if (construction == "V") {
    opt.construction = topoot::Construction::V;
  } else {
    throw std::invalid_argument("construction: expected 'T' or 'V'");
  }
  opt.dim0 = dim0;
  opt.dim1 = dim1;

  std::vector<topoot::ImagePairs> pairs;
  bool finite = true;
  {
    py::gil_scoped_release release;
    const T* x = maps.data();
    finite = all_finite(x, B * H * W);
    if (finite) topoot::batch_persistence<T>(x, B, H, W, opt, num_threads, pairs);
  }
  if (!finite) throw std::invalid_argument("maps: contains NaN or infinite values");
  return pack_pairs(pairs);
}

template <typename T>
py::tuple sinkhorn_impl(const py::array_t<T, py::array::c_style>& a, const py::array_t<T, py::array::c_style>& b,
                        const py::array_t<T, py::array::c_style>& M, double reg, int64_t max_iter, double stop_thr,
                        bool log_domain, int num_threads) {
  if (M.ndim() != 3 || a.ndim() != 2 || b.ndim() != 2) throw std::invalid_argument("M: expected [B, n, m]");
  const int64_t B = M.shape(0), n = M.shape(1), m = M.shape(2);
  if (a.shape(0) != B || a.shape(1) != n) throw std::invalid_argument("a: shape does not match M");
  if (b.shape(0) != B || b.shape(1) != m) throw std::invalid_argument("b: shape does not match M");
  if (!(reg > 0)) throw std::invalid_argument("reg: expected > 0");
  if (max_iter < 1) throw std::invalid_argument("max_iter: expected >= 1");
  topoot::SinkhornOptions opt;
  opt.reg = reg;
  opt.max_iter = max_iter;
  opt.stop_thr = stop_thr;
  opt.log_domain = log_domain;
  py::array_t<T> plan({B, n, m}), log_u({B, n}), log_v({B, m}), err(B);
  py::array_t<int64_t> n_iter(B);
  {
    py::gil_scoped_release release;
    topoot::sinkhorn_batch<T>(a.data(), b.data(), M.data(), B, n, m, opt, num_threads, plan.mutable_data(),
                              log_u.mutable_data(), log_v.mutable_data(), n_iter.mutable_data(), err.mutable_data());
  }
  return py::make_tuple(plan, log_u, log_v, n_iter, err);
}

// The selection's transport step (best_stability_cpu.h): ragged points and offsets in.
py::tuple best_stability(const Array<double>& P, const Array<int64_t>& p_off, const Array<double>& Q,
                         const Array<int64_t>& q_off, bool diagonal, double reg, int64_t max_iter, double stop_thr,
                         double scaling_limit, int num_threads) {
  const int64_t B = p_off.shape(0) - 1;
  if (B < 0 || q_off.shape(0) != B + 1) throw std::invalid_argument("p_off, q_off: expected B + 1 offsets each");
  const int64_t np_ = p_off.data()[B], nq = q_off.data()[B];
  if (P.ndim() != 2 || P.shape(0) != np_ || P.shape(1) != 2) throw std::invalid_argument("P: expected [p_off[-1], 2]");
  if (Q.ndim() != 2 || Q.shape(0) != nq || Q.shape(1) != 2) throw std::invalid_argument("Q: expected [q_off[-1], 2]");
  if (!(reg > 0)) throw std::invalid_argument("reg: expected > 0");
  topoot::SinkhornOptions opt;
  opt.reg = reg;
  opt.max_iter = max_iter;
  opt.stop_thr = stop_thr;
  py::array_t<double> s_row(np_), c_row(np_), s_col(nq), c_col(nq);
  py::array_t<int64_t> n_iter(B);
  {
    py::gil_scoped_release release;
    topoot::best_stability_batch(P.data(), p_off.data(), Q.data(), q_off.data(), B, diagonal, opt, scaling_limit,
                                 num_threads, s_row.mutable_data(), c_row.mutable_data(), s_col.mutable_data(),
                                 c_col.mutable_data(), n_iter.mutable_data());
  }
  return py::make_tuple(s_row, c_row, s_col, c_col, n_iter);
}

// One pass over a padded batch of problems for the checks and the domain
// choice: (a, b, M all finite, a >= 0, b >= 0, max |M| over real entries).
// Whether every entry of an array is finite: one pass, the GIL released (a plan's check).
template <typename T>
bool all_finite_impl(const py::array_t<T, py::array::c_style>& x) {
  py::gil_scoped_release release;
  return all_finite(x.data(), static_cast<int64_t>(x.size()));
}

template <typename T>
py::tuple sinkhorn_stats_impl(const py::array_t<T, py::array::c_style>& a, const py::array_t<T, py::array::c_style>& b,
                              const py::array_t<T, py::array::c_style>& M) {
  const int64_t B = M.shape(0), n = M.shape(1), m = M.shape(2);
  bool finite = true, a_ok = true, b_ok = true;
  double worst = 0;
  {
    py::gil_scoped_release release;
    const T* pa = a.data();
    const T* pb = b.data();
    const T* pM = M.data();
    finite = all_finite(pa, B * n) && all_finite(pb, B * m) && all_finite(pM, B * n * m);
    for (int64_t i = 0; i < B * n; ++i) a_ok &= !(pa[i] < 0);
    for (int64_t j = 0; j < B * m; ++j) b_ok &= !(pb[j] < 0);
    if (finite) {
      for (int64_t k = 0; k < B; ++k) {
        for (int64_t i = 0; i < n; ++i) {
          if (!(pa[k * n + i] > 0)) continue;
          const T* row = pM + (k * n + i) * m;
          const T* bk = pb + k * m;
          T w = 0;
          for (int64_t j = 0; j < m; ++j) w = std::max(w, bk[j] > 0 ? std::abs(row[j]) : T(0));
          worst = std::max(worst, static_cast<double>(w));
        }
      }
    }
  }
  return py::make_tuple(finite, a_ok, b_ok, worst);
}

// The head's loss without its products: e [B, P, E], y [B, P] uint8, partner and weight [B, 2P]
// -> (loss_ot [B], loss_contrastive [B], grad_e [B, P, E]); see head_cpu.h.
template <typename T>
py::tuple head_loss_impl(const Array<T>& e, const Array<uint8_t>& y, const Array<int64_t>& partner,
                         const Array<T>& weight, double reg, int iters, double eps, double entropy_base,
                         double ot_weight, double margin, double pair_eps, int num_threads) {
  if (e.ndim() != 3) throw std::invalid_argument("e: expected [B, P, E]");
  const int64_t B = e.shape(0), P = e.shape(1), E = e.shape(2);
  if (y.ndim() != 2 || y.shape(0) != B || y.shape(1) != P) throw std::invalid_argument("y: expected [B, P]");
  if (partner.ndim() != 2 || partner.shape(0) != B || partner.shape(1) != 2 * P)
    throw std::invalid_argument("partner: expected [B, 2P]");
  if (weight.ndim() != 2 || weight.shape(0) != B || weight.shape(1) != 2 * P)
    throw std::invalid_argument("weight: expected [B, 2P]");
  if (iters < 1) throw std::invalid_argument("iters: expected >= 1");
  if (!(reg > 0)) throw std::invalid_argument("reg: expected > 0");
  if (!(entropy_base > 1)) throw std::invalid_argument("entropy_base: expected > 1");
  const int64_t* pp = partner.data();
  for (int64_t k = 0; k < B * 2 * P; ++k)
    if (pp[k] < 0 || pp[k] >= P) throw std::invalid_argument("partner: index out of range");
  const uint8_t* py_ = y.data();
  for (int64_t b = 0; b < B; ++b) {
    int64_t fg = 0;
    for (int64_t i = 0; i < P; ++i) fg += py_[b * P + i] != 0;
    if (fg == 0 || fg == P) throw std::invalid_argument("y: every image needs both labels");
  }
  topoot::HeadLossOptions opt;
  opt.reg = reg;
  opt.iters = iters;
  opt.eps = eps;
  opt.entropy_base = entropy_base;
  opt.ot_weight = ot_weight;
  opt.margin = margin;
  opt.pair_eps = pair_eps;
  Array<double> loss_ot(B), loss_con(B);
  Array<T> grad_e({B, P, E});
  {
    py::gil_scoped_release release;
    topoot::head_loss<T>(e.data(), py_, pp, weight.data(), B, P, E, opt, loss_ot.mutable_data(),
                         loss_con.mutable_data(), grad_e.mutable_data(), num_threads);
  }
  return py::make_tuple(loss_ot, loss_con, grad_e);
}

}  // namespace

// Ctrl-C: the kernels poll (parallel.h); on the calling thread a poll takes the GIL back for a
// moment and runs Python's signal handlers. A handler that raised (KeyboardInterrupt) leaves its
// error set and the kernel unwinds with topoot::Interrupted, which becomes that error here.
bool python_signal_pending() {
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "topoot_gpu C++ kernels (CPU)";
  topoot::signal_pending() = &python_signal_pending;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const topoot::Interrupted&) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyboardInterrupt, "interrupted");
    }
  });
  m.def("head_loss_f32", &head_loss_impl<float>, py::arg("e"), py::arg("y"), py::arg("partner"), py::arg("weight"),
        py::arg("reg"), py::arg("iters"), py::arg("eps"), py::arg("entropy_base"), py::arg("ot_weight"),
        py::arg("margin"), py::arg("pair_eps"), py::arg("num_threads"));
  m.def("head_loss_f64", &head_loss_impl<double>, py::arg("e"), py::arg("y"), py::arg("partner"), py::arg("weight"),
        py::arg("reg"), py::arg("iters"), py::arg("eps"), py::arg("entropy_base"), py::arg("ot_weight"),
        py::arg("margin"), py::arg("pair_eps"), py::arg("num_threads"));
  m.def("cubical_persistence_f32", &persistence_impl<float>, py::arg("maps"), py::arg("superlevel"),
        py::arg("construction"), py::arg("dim0"), py::arg("dim1"), py::arg("num_threads"));
  m.def("cubical_persistence_f64", &persistence_impl<double>, py::arg("maps"), py::arg("superlevel"),
        py::arg("construction"), py::arg("dim0"), py::arg("dim1"), py::arg("num_threads"));
  m.def("all_finite_f32", &all_finite_impl<float>, py::arg("x"));
  m.def("all_finite_f64", &all_finite_impl<double>, py::arg("x"));
  m.def("sinkhorn_stats_f32", &sinkhorn_stats_impl<float>, py::arg("a"), py::arg("b"), py::arg("M"));
  m.def("sinkhorn_stats_f64", &sinkhorn_stats_impl<double>, py::arg("a"), py::arg("b"), py::arg("M"));
  m.def("best_stability", &best_stability, py::arg("P"), py::arg("p_off"), py::arg("Q"), py::arg("q_off"),
        py::arg("diagonal"), py::arg("reg"), py::arg("max_iter"), py::arg("stop_thr"), py::arg("scaling_limit"),
        py::arg("num_threads"));
  m.def("sinkhorn_f32", &sinkhorn_impl<float>, py::arg("a"), py::arg("b"), py::arg("M"), py::arg("reg"),
        py::arg("max_iter"), py::arg("stop_thr"), py::arg("log_domain"), py::arg("num_threads"));
  m.def("sinkhorn_f64", &sinkhorn_impl<double>, py::arg("a"), py::arg("b"), py::arg("M"), py::arg("reg"),
        py::arg("max_iter"), py::arg("stop_thr"), py::arg("log_domain"), py::arg("num_threads"));
}
