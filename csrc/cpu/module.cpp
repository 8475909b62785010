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
#include "simd.h"
#include "sinkhorn_cpu.h"

namespace py = pybind11;

namespace {

// Whether no entry is NaN or infinite (simd.h's non_finite).
template <typename T>
bool all_finite(const T* x, int64_t n) {
  unsigned bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= topoot::non_finite(x[i]);
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
    finite = topoot::batch_persistence<T>(maps.data(), B, H, W, opt, num_threads, pairs);
  }
  if (!finite) throw std::invalid_argument("maps: contains NaN or infinite values");
  return pack_pairs(pairs);
}

// A batch of problems as flat buffers and their sizes (sinkhorn_cpu.h): the offsets of each
// problem's a, b and M, after checking that the sizes account for every entry.
struct Layout {
  std::vector<int64_t> a_off, b_off, m_off;
  topoot::SinkhornLayout view;
  int64_t B = 0;
};

Layout make_layout(const Array<int64_t>& n_sizes, const Array<int64_t>& m_sizes, int64_t a_size, int64_t b_size,
                   int64_t M_size) {
  if (n_sizes.ndim() != 1 || m_sizes.ndim() != 1 || n_sizes.shape(0) != m_sizes.shape(0))
    throw std::invalid_argument("sizes: expected two [B] arrays");
  Layout L;
  L.B = n_sizes.shape(0);
  const int64_t* n = n_sizes.data();
  const int64_t* m = m_sizes.data();
  int64_t sa = 0, sb = 0, sm = 0;
  for (int64_t k = 0; k < L.B; ++k) {
    if (n[k] < 0 || m[k] < 0) throw std::invalid_argument("sizes: expected non-negative sizes");
    L.a_off.push_back(sa);
    L.b_off.push_back(sb);
    L.m_off.push_back(sm);
    sa += n[k];
    sb += m[k];
    sm += n[k] * m[k];
  }
  if (sa != a_size || sb != b_size || sm != M_size)
    throw std::invalid_argument("sizes: do not match the lengths of a, b and M");
  L.view = topoot::SinkhornLayout{n, m, L.a_off.data(), L.b_off.data(), L.m_off.data()};
  return L;
}

// The report's input check as a tuple (finite, a_ok, b_ok, worst), as sinkhorn_check returns it.
py::tuple input_stats(const topoot::SinkhornInputStats& st) {
  return py::make_tuple(st.finite, st.a_ok, st.b_ok, st.worst);
}

// domain: 0 scaling, 1 log, 2 auto (scaling_limit). stream_plan_bytes, share_dots_bytes:
// SinkhornOptions' (tests set them to reach both ways of writing the plan and of taking the dot
// products on small batches). Returns (plan or None, log_u, log_v, n_iter, err, (finite, a_ok, b_ok,
// worst), overflow, log_domain, plan_finite); with bad inputs (the fourth to sixth entries say
// which) the arrays are undefined.
template <typename T>
py::tuple sinkhorn_impl(const Array<T>& a, const Array<T>& b, const Array<T>& M, const Array<int64_t>& n_sizes,
                        const Array<int64_t>& m_sizes, double reg, int64_t max_iter, double stop_thr, int domain,
                        double scaling_limit, bool want_plan, int num_threads, int64_t stream_plan_bytes,
                        int64_t share_dots_bytes) {
  const Layout L = make_layout(n_sizes, m_sizes, a.size(), b.size(), M.size());
  if (!(reg > 0)) throw std::invalid_argument("reg: expected > 0");
  if (max_iter < 1) throw std::invalid_argument("max_iter: expected >= 1");
  if (domain < 0 || domain > 2) throw std::invalid_argument("domain: expected 0, 1 or 2");
  topoot::SinkhornOptions opt;
  opt.reg = reg;
  opt.max_iter = max_iter;
  opt.stop_thr = stop_thr;
  opt.log_domain = domain == 1;
  opt.auto_domain = domain == 2;
  opt.scaling_limit = scaling_limit;
  opt.stream_plan_bytes = stream_plan_bytes;
  opt.share_dots_bytes = share_dots_bytes;
  Array<T> plan(want_plan ? M.size() : 0), log_u(a.size()), log_v(b.size()), err(L.B);
  Array<int64_t> n_iter(L.B);
  topoot::SinkhornReport report;
  {
    py::gil_scoped_release release;
    report = topoot::sinkhorn_batch<T>(a.data(), b.data(), M.data(), L.view, L.B, opt, num_threads,
                                       want_plan ? plan.mutable_data() : nullptr, log_u.mutable_data(),
                                       log_v.mutable_data(), n_iter.mutable_data(), err.mutable_data());
  }
  return py::make_tuple(want_plan ? py::object(plan) : py::object(py::none()), log_u, log_v, n_iter, err,
                        input_stats(report.inputs), report.overflow, report.log_domain, report.plan_finite);
}

// The selection's transport step (best_stability_cpu.h): ragged points and offsets in. offer_margin,
// share_dots_bytes (SinkhornOptions') and screen are for tests.
py::tuple best_stability(const Array<double>& P, const Array<int64_t>& p_off, const Array<double>& Q,
                         const Array<int64_t>& q_off, bool diagonal, double reg, int64_t max_iter, double stop_thr,
                         double scaling_limit, int num_threads, double offer_margin, int64_t share_dots_bytes,
                         bool screen) {
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
  opt.offer_margin = offer_margin;
  opt.share_dots_bytes = share_dots_bytes;
  py::array_t<double> s_row(np_), c_row(np_), s_col(nq), c_col(nq);
  py::array_t<int64_t> n_iter(B);
  {
    py::gil_scoped_release release;
    topoot::best_stability_batch(P.data(), p_off.data(), Q.data(), q_off.data(), B, diagonal, opt, scaling_limit,
                                 num_threads, s_row.mutable_data(), c_row.mutable_data(), s_col.mutable_data(),
                                 c_col.mutable_data(), n_iter.mutable_data(), screen);
  }
  return py::make_tuple(s_row, c_row, s_col, c_col, n_iter);
}

template <typename T>
bool all_finite_impl(const py::array_t<T, py::array::c_style>& x) {
  py::gil_scoped_release release;
  return all_finite(x.data(), static_cast<int64_t>(x.size()));
}

template <typename T>
py::tuple sinkhorn_check_impl(const Array<T>& a, const Array<T>& b, const Array<T>& M, const Array<int64_t>& n_sizes,
                              const Array<int64_t>& m_sizes, int num_threads) {
  const Layout L = make_layout(n_sizes, m_sizes, a.size(), b.size(), M.size());
  topoot::SinkhornInputStats st;
  {
    py::gil_scoped_release release;
    st = topoot::sinkhorn_check_batch<T>(a.data(), b.data(), M.data(), L.view, L.B, num_threads);
  }
  return input_stats(st);
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
  m.def("sinkhorn_check_f32", &sinkhorn_check_impl<float>, py::arg("a"), py::arg("b"), py::arg("M"),
        py::arg("n_sizes"), py::arg("m_sizes"), py::arg("num_threads"));
  m.def("sinkhorn_check_f64", &sinkhorn_check_impl<double>, py::arg("a"), py::arg("b"), py::arg("M"),
        py::arg("n_sizes"), py::arg("m_sizes"), py::arg("num_threads"));
  m.def("best_stability", &best_stability, py::arg("P"), py::arg("p_off"), py::arg("Q"), py::arg("q_off"),
        py::arg("diagonal"), py::arg("reg"), py::arg("max_iter"), py::arg("stop_thr"), py::arg("scaling_limit"),
        py::arg("num_threads"), py::arg("offer_margin") = 1.0,
        py::arg("share_dots_bytes") = topoot::SinkhornOptions{}.share_dots_bytes, py::arg("screen") = true);
  m.def("sinkhorn_f32", &sinkhorn_impl<float>, py::arg("a"), py::arg("b"), py::arg("M"), py::arg("n_sizes"),
        py::arg("m_sizes"), py::arg("reg"), py::arg("max_iter"), py::arg("stop_thr"), py::arg("domain"),
        py::arg("scaling_limit"), py::arg("want_plan"), py::arg("num_threads"),
        py::arg("stream_plan_bytes") = topoot::SinkhornOptions{}.stream_plan_bytes,
        py::arg("share_dots_bytes") = topoot::SinkhornOptions{}.share_dots_bytes);
  m.def(
      "release_scratch",
      [] {
        py::gil_scoped_release release;
        return topoot::release_scratch();
      },
      "Frees the kernels' cached scratch that no call is using; returns how many states.");
  m.def("sinkhorn_f64", &sinkhorn_impl<double>, py::arg("a"), py::arg("b"), py::arg("M"), py::arg("n_sizes"),
        py::arg("m_sizes"), py::arg("reg"), py::arg("max_iter"), py::arg("stop_thr"), py::arg("domain"),
        py::arg("scaling_limit"), py::arg("want_plan"), py::arg("num_threads"),
        py::arg("stream_plan_bytes") = topoot::SinkhornOptions{}.stream_plan_bytes,
        py::arg("share_dots_bytes") = topoot::SinkhornOptions{}.share_dots_bytes);
}
