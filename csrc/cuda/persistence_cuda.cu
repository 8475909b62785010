// The data-parallel passes of the GPU persistence backend (topoot_gpu/persistence/_basins.py), one
// thread per pixel of a batch [B, H, W] stored as w [B, P] (P = H * W) in the pass order's units
// (w = value, negated for a descending pass). The same passes as topoot_gpu/persistence/_triton.py:
//   descent:  parent[b, p] = the earliest of p and its neighbours in the order (w, index); in the
//             dual pass (outside != 0) border pixels point at the outside node P;
//   jump:     parent[x] = parent[parent[x]] in place, one launch per round, a fixed number of
//             rounds launched back to back (topoot_gpu/persistence/_basins.py: jump_rounds); any
//             ancestor is a valid value to read, so in-place updates only speed it up;
//   boundary: for each neighbour pair counted once (E, S and, 8-connected, SE, SW), the later pixel
//             of the pair when its two pixels lie in different basins, else -1;
//   merge:    the elder rule along each image's basin graph (Kruskal's order), one thread per image.
// Compiled at run time by NVRTC (CuPy RawModule) and, in CI, by nvcc (CMake target cuda_check).
// No includes: NVRTC has no standard headers.

typedef long long i64;
typedef unsigned long long u64;

// Order-preserving unsigned keys of the values, compared instead of the values: CuPy has NVRTC
// compile with -ftz=true, under which float32 comparisons flush subnormals to zero, and the CPU
// core orders subnormals exactly. -0.0 is folded onto +0.0, which compare equal as values.
__device__ __forceinline__ unsigned order_key(float x) {
  unsigned u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ u64 order_key(double x) {
  u64 u = static_cast<u64>(__double_as_longlong(x));
  if (u == 0x8000000000000000ull) u = 0;
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Whether node q (key kq) comes before node p (key kp) in the order (value, index).
template <typename K>
__device__ __forceinline__ bool earlier(K kq, i64 q, K kp, i64 p) {
  return kq < kp || (kq == kp && q < p);
}

template <typename T>
__device__ void descent(const T* w, i64* parent, int H, int W, i64 n_pixels, int conn8, int outside) {
  const i64 x = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= n_pixels) return;
  const i64 P = static_cast<i64>(H) * W;
  const i64 b = x / P, p = x % P;
  const int i = static_cast<int>(p / W), j = static_cast<int>(p % W);
  i64 best = p;
  auto best_k = order_key(w[x]);
  for (int di = -1; di <= 1; ++di) {
    for (int dj = -1; dj <= 1; ++dj) {
      if ((di == 0 && dj == 0) || (!conn8 && di != 0 && dj != 0)) continue;
      const int ii = i + di, jj = j + dj;
      if (ii < 0 || ii >= H || jj < 0 || jj >= W) continue;
      const i64 q = p + static_cast<i64>(di) * W + dj;
      const auto kq = order_key(w[b * P + q]);
      if (earlier(kq, q, best_k, best)) {
        best = q;
        best_k = kq;
      }
    }
  }
  if (outside && (i == 0 || i == H - 1 || j == 0 || j == W - 1)) best = P;
  parent[b * (P + 1) + p] = best;
}

template <typename T>
__device__ void boundary(const T* w, const i64* root, i64* saddle, int H, int W, i64 n_pixels, int conn8) {
  const i64 x = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= n_pixels) return;
  const i64 P = static_cast<i64>(H) * W;
  const i64 b = x / P, p = x % P;
  const int i = static_cast<int>(p / W), j = static_cast<int>(p % W);
  const int nd = conn8 ? 4 : 2;
  const int dis[4] = {0, 1, 1, 1}, djs[4] = {1, 0, 1, -1};
  const auto kp = order_key(w[x]);
  const i64 rp = root[b * (P + 1) + p];
  for (int d = 0; d < nd; ++d) {
    const int ii = i + dis[d], jj = j + djs[d];
    i64 s = -1;
    if (ii < H && jj >= 0 && jj < W) {
      const i64 q = p + static_cast<i64>(dis[d]) * W + djs[d];
      if (root[b * (P + 1) + q] != rp) s = earlier(kp, p, order_key(w[b * P + q]), q) ? q : p;
    }
    saddle[x * nd + d] = s;
  }
}

// The root of x with path halving (every node on the path then points two steps up).
__device__ __forceinline__ i64 find(i64* uf, i64 x) {
  while (uf[x] != x) {
    uf[x] = uf[uf[x]];
    x = uf[x];
  }
  return x;
}

// One image's union-find along its basin-graph edges [offsets[b], offsets[b + 1]) in Kruskal's
// order (lo, hi: two basins' roots, P the outside node; s: their lowest saddle). uf [B, P + 1]
// holds each edge node at itself on entry. young[e]: the root that dies at edge e by the elder rule
// (the later root in the order (w, index), the outside node being the earliest), or -1 when the
// edge joins one component or the pair has zero length. Sequential within an image (the elder rule
// is an ordered scan), parallel over the batch; the graph is far smaller than the image.
template <typename T>
__device__ void merge(const T* w, const i64* offsets, const i64* saddle, const i64* lo, const i64* hi, i64* uf,
                      i64* young, i64 B, i64 P, int outside) {
  const i64 b = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const T* wb = w + b * P;
  i64* u = uf + b * (P + 1);
  for (i64 e = offsets[b]; e < offsets[b + 1]; ++e) {
    i64 ra = find(u, lo[e]), rb = find(u, hi[e]), dies = -1;
    if (ra != rb) {
      const bool a_older = (outside && (ra == P || rb == P))
                               ? ra == P
                               : earlier(order_key(wb[ra]), ra, order_key(wb[rb]), rb);
      if (a_older) {
        const i64 t = ra;
        ra = rb;
        rb = t;
      }
      u[ra] = rb;  // ra, the young root, is never the outside node
      if (order_key(wb[ra]) != order_key(wb[saddle[e]])) dies = ra;
    }
    young[e] = dies;
  }
}

extern "C" {

__global__ void descent_f32(const float* w, i64* parent, int H, int W, i64 n_pixels, int conn8, int outside) {
  descent<float>(w, parent, H, W, n_pixels, conn8, outside);
}

__global__ void descent_f64(const double* w, i64* parent, int H, int W, i64 n_pixels, int conn8, int outside) {
  descent<double>(w, parent, H, W, n_pixels, conn8, outside);
}

// flags[0]: whether the round before changed a parent (set for the first round); a round after one
// that changed nothing returns at once. flags[1]: set when this round changes one.
__global__ void jump(i64* parent, i64 stride, i64 n_nodes, int* flags) {
  const i64 x = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (x >= n_nodes || flags[0] == 0) return;
  const i64 base = (x / stride) * stride;
  const i64 par = parent[x];
  const i64 grand = parent[base + par];
  const bool moved = grand != par;
  if (moved) parent[x] = grand;
  // One store to the flag per warp that moved anything, from its first active lane (not one per
  // thread: every such store contends for one address).
  const unsigned active = __activemask();
  if (__ballot_sync(active, moved) != 0u && (threadIdx.x & 31u) == static_cast<unsigned>(__ffs(active) - 1)) {
    flags[1] = 1;
  }
}

__global__ void boundary_f32(const float* w, const i64* root, i64* saddle, int H, int W, i64 n_pixels, int conn8) {
  boundary<float>(w, root, saddle, H, W, n_pixels, conn8);
}

__global__ void boundary_f64(const double* w, const i64* root, i64* saddle, int H, int W, i64 n_pixels, int conn8) {
  boundary<double>(w, root, saddle, H, W, n_pixels, conn8);
}

__global__ void merge_f32(const float* w, const i64* offsets, const i64* saddle, const i64* lo, const i64* hi,
                          i64* uf, i64* young, i64 B, i64 P, int outside) {
  merge<float>(w, offsets, saddle, lo, hi, uf, young, B, P, outside);
}

__global__ void merge_f64(const double* w, const i64* offsets, const i64* saddle, const i64* lo, const i64* hi,
                          i64* uf, i64* young, i64 B, i64 P, int outside) {
  merge<double>(w, offsets, saddle, lo, hi, uf, young, B, P, outside);
}

}  // extern "C"
