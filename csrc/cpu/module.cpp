// pybind11 bindings of the C++ kernels: numpy buffers in and out, no torch ABI,
// the GIL released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <string>

#include "persistence_cpu.h"

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
py::tuple persistence_impl(const py::array_t<T, py::array::c_style>& maps, bool superlevel,
                           const std::string& construction, bool dim0, bool dim1, int num_threads) {
  if (maps.ndim() != 3) throw std::invalid_argument("maps: expected a [B, H, W] array");
  const int64_t B = maps.shape(0), H = maps.shape(1), W = maps.shape(2);
  if (H < 1 || W < 1) throw std::invalid_argument("maps: empty spatial dimension");
  if ((H + 2) * (W + 2) > (int64_t{1} << 30)) throw std::invalid_argument("maps: map too large");
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
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = pairs[b];
    const size_t m = p.dim.size();
    std::fill(im + k, im + k + m, b);
    std::copy(p.dim.begin(), p.dim.end(), dm + k);
    std::copy(p.birth.begin(), p.birth.end(), bv + k);
    std::copy(p.death.begin(), p.death.end(), dv + k);
    std::copy(p.birth_pixel.begin(), p.birth_pixel.end(), bp + k);
    std::copy(p.death_pixel.begin(), p.death_pixel.end(), dp + k);
    k += m;
  }
  return py::make_tuple(image, dim, birth, death, birth_pixel, death_pixel);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "topoot_gpu C++ kernels (CPU)";
  m.def("cubical_persistence_f32", &persistence_impl<float>, py::arg("maps"), py::arg("superlevel"),
        py::arg("construction"), py::arg("dim0"), py::arg("dim1"), py::arg("num_threads"));
  m.def("cubical_persistence_f64", &persistence_impl<double>, py::arg("maps"), py::arg("superlevel"),
        py::arg("construction"), py::arg("dim0"), py::arg("dim1"), py::arg("num_threads"));
}
