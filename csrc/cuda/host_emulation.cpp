// The CUDA persistence kernels (csrc/cuda/persistence_cuda.cu, as shipped in the package) compiled
// for the host, so that CI tests their logic without a GPU (topoot_gpu.testing.cuda_host_kernels).
// A launch runs every thread of the grid one after another in a shuffled order (a seeded
// permutation): the kernels must not depend on the order threads run in. This checks indexing,
// bounds and results; it does not model concurrency (the GPU tests do).
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
static Dim3 blockIdx, blockDim, threadIdx;

#include "persistence_cuda.cu"

namespace {

template <typename... Args>
void run(void (*kernel)(Args...), unsigned grid, unsigned block, uint64_t seed, Args... args) {
  std::vector<uint64_t> order(static_cast<size_t>(grid) * block);
  std::iota(order.begin(), order.end(), uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  blockDim.x = block;
  for (const uint64_t t : order) {
    blockIdx.x = static_cast<unsigned>(t / block);
    threadIdx.x = static_cast<unsigned>(t % block);
    kernel(args...);
  }
}

}  // namespace

extern "C" {

void run_descent_f32(unsigned g, unsigned b, uint64_t seed, const float* w, i64* parent, int H, int W, i64 n,
                     int conn8, int outside) {
  run(descent_f32, g, b, seed, w, parent, H, W, n, conn8, outside);
}

void run_descent_f64(unsigned g, unsigned b, uint64_t seed, const double* w, i64* parent, int H, int W, i64 n,
                     int conn8, int outside) {
  run(descent_f64, g, b, seed, w, parent, H, W, n, conn8, outside);
}

void run_jump(unsigned g, unsigned b, uint64_t seed, i64* parent, i64 stride, i64 n, int* changed) {
  run(jump, g, b, seed, parent, stride, n, changed);
}

void run_boundary_f32(unsigned g, unsigned b, uint64_t seed, const float* w, const i64* root, i64* saddle, int H,
                      int W, i64 n, int conn8) {
  run(boundary_f32, g, b, seed, w, root, saddle, H, W, n, conn8);
}

void run_boundary_f64(unsigned g, unsigned b, uint64_t seed, const double* w, const i64* root, i64* saddle, int H,
                      int W, i64 n, int conn8) {
  run(boundary_f64, g, b, seed, w, root, saddle, H, W, n, conn8);
}

}  // extern "C"
