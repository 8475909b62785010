// The CUDA persistence kernels (csrc/cuda/persistence_cuda.cu, as shipped in the package) compiled
// for the host, so that CI tests their logic without a GPU (topoot_gpu.testing.cuda_host_kernels).
// A launch runs every thread of the grid one after another in a shuffled order (a seeded
// permutation): the kernels must not depend on the order threads run in. This checks indexing,
// bounds and results; it does not model concurrency (the GPU tests do).
// The float32 kernels run as NVRTC compiles them through CuPy, which adds -ftz=true: float32
// subnormals flushed to zero in arithmetic and comparisons. On x86 the MXCSR flags FTZ and DAZ do
// the same to the host's SSE code, so they are set around each float32 launch.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define TOPOOT_FLUSH_SUBNORMALS 1
#else
#define TOPOOT_FLUSH_SUBNORMALS 0
#endif

#define __global__
#define __device__
#define __forceinline__ inline

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
static Dim3 blockIdx, blockDim, threadIdx;

// The warp intrinsics, for threads run one at a time: each thread is a warp of its own (its own lane
// active and first), so the flag store of jump happens where its thread moved, as on the GPU where
// a warp stores when any of its lanes moved.
inline unsigned __activemask() { return 1u << (threadIdx.x & 31u); }
inline unsigned __ballot_sync(unsigned mask, bool predicate) { return predicate ? mask : 0u; }
inline int __ffs(unsigned x) { return x == 0 ? 0 : __builtin_ctz(x) + 1; }

// The CUDA bit-cast intrinsics.
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline long long __double_as_longlong(double x) {
  long long u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

#include "persistence_cuda.cu"

namespace {

// FTZ (bit 15) and DAZ (bit 6) of MXCSR while alive, when `on` (and the host is x86).
struct FlushSubnormals {
  explicit FlushSubnormals(bool on) {
#if TOPOOT_FLUSH_SUBNORMALS
    saved_ = _mm_getcsr();
    if (on) _mm_setcsr(saved_ | 0x8040u);
#else
    (void)on;
#endif
  }
  ~FlushSubnormals() {
#if TOPOOT_FLUSH_SUBNORMALS
    _mm_setcsr(saved_);
#endif
  }
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned saved_ = 0;
};

template <typename... Args>
void run(void (*kernel)(Args...), unsigned grid, unsigned block, uint64_t seed, Args... args) {
  std::vector<uint64_t> order(static_cast<size_t>(grid) * block);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  blockDim.x = block;
  // Called through a volatile pointer, so the compiler can neither inline the kernel nor move its
  // floating-point work across the MXCSR writes (it does not see them as a dependency).
  void (*volatile launch)(Args...) = kernel;
  constexpr bool f32 = (std::is_same_v<Args, const float*> || ...);
  const FlushSubnormals flush(f32);
  for (const uint64_t t : order) {
    blockIdx.x = static_cast<unsigned>(t / block);
    threadIdx.x = static_cast<unsigned>(t % block);
    launch(args...);
  }
}

int less_than(float a, float b) { return a < b; }

}  // namespace

extern "C" {

// Whether float32 launches flush subnormals here, and a float32 comparison made the way the
// float32 kernels make theirs (for the tests that check the mode is live).
int flushes_subnormals() { return TOPOOT_FLUSH_SUBNORMALS; }

int flushed_less(float a, float b) {
  int (*volatile compare)(float, float) = less_than;  // opaque: not moved across the MXCSR writes
  const FlushSubnormals flush(true);
  return compare(a, b);
}

void run_descent_f32(unsigned g, unsigned b, uint64_t seed, const float* w, i64* parent, int H, int W, i64 n,
                     int conn8, int outside) {
  run(descent_f32, g, b, seed, w, parent, H, W, n, conn8, outside);
}

void run_descent_f64(unsigned g, unsigned b, uint64_t seed, const double* w, i64* parent, int H, int W, i64 n,
                     int conn8, int outside) {
  run(descent_f64, g, b, seed, w, parent, H, W, n, conn8, outside);
}

void run_jump(unsigned g, unsigned b, uint64_t seed, i64* parent, i64 stride, i64 n, int* flags) {
  run(jump, g, b, seed, parent, stride, n, flags);
}

// jump with stale reads. On the GPU, jump rewrites parent in place while other threads read it, so a
// thread may read a parent from before the launch although another thread has rewritten it (the
// kernel's plain loads and stores: a benign race, since any ancestor is a valid parent). Here each
// thread reads the pre-launch parents with probability p_stale (its two loads together), else the
// current ones; p_stale = 1 is synchronous pointer doubling. Thread x writes parent[x] only.
void run_jump_stale(unsigned g, unsigned b, uint64_t seed, double p_stale, i64* parent, i64 stride, i64 n,
                    int* flags) {
  const std::vector<i64> before(parent, parent + n);
  std::vector<i64> view(before);  // what a stale thread reads (and writes, copied back at once)
  std::vector<uint64_t> order(static_cast<size_t>(g) * b);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  std::bernoulli_distribution stale(p_stale);
  blockDim.x = b;
  void (*volatile launch)(i64*, i64, i64, int*) = jump;
  for (const uint64_t t : order) {
    blockIdx.x = static_cast<unsigned>(t / b);
    threadIdx.x = static_cast<unsigned>(t % b);
    const i64 x = static_cast<i64>(t);
    if (x < n && stale(rng)) {
      launch(view.data(), stride, n, flags);
      parent[x] = view[x];
      view[x] = before[x];
    } else {
      launch(parent, stride, n, flags);
    }
  }
}

void run_boundary_f32(unsigned g, unsigned b, uint64_t seed, const float* w, const i64* root, i64* saddle, int H,
                      int W, i64 n, int conn8) {
  run(boundary_f32, g, b, seed, w, root, saddle, H, W, n, conn8);
}

void run_boundary_f64(unsigned g, unsigned b, uint64_t seed, const double* w, const i64* root, i64* saddle, int H,
                      int W, i64 n, int conn8) {
  run(boundary_f64, g, b, seed, w, root, saddle, H, W, n, conn8);
}

void run_merge_f32(unsigned g, unsigned b, uint64_t seed, const float* w, const i64* offsets, const i64* saddle,
                   const i64* lo, const i64* hi, i64* uf, i64* young, i64 B, i64 P, int outside) {
  run(merge_f32, g, b, seed, w, offsets, saddle, lo, hi, uf, young, B, P, outside);
}

void run_merge_f64(unsigned g, unsigned b, uint64_t seed, const double* w, const i64* offsets, const i64* saddle,
                   const i64* lo, const i64* hi, i64* uf, i64* young, i64 B, i64 P, int outside) {
  run(merge_f64, g, b, seed, w, offsets, saddle, lo, hi, uf, young, B, P, outside);
}

}  // extern "C"
