// Union-find over critical pixels only.
//
// In a sublevel filtration visited in a strict total order, a pixel whose
// lower neighbours form one connected set inside its 3x3 ring joins that
// component and changes no pair; only a pixel with no lower neighbour (a
// birth) or with two or more local lower components (a possible merge) does.
// So one local scan gives every pixel a parent, its steepest lower neighbour
// (itself for a minimum), and lists the possible merges ("saddles"). Only the
// saddles are sorted and visited in order; each one finds the roots of its
// lower neighbours through the parent forest (path halving) and merges them
// with the elder rule. The forest's roots are the minima, so a component's
// root is its birth pixel and the elder is the root that comes first in the
// order. This is exact: every merge of the full union-find happens at a
// listed saddle, and a regular pixel is in the component of any of its lower
// neighbours at every later time.
#include "persistence_cpu.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "buffer.h"
#include "parallel.h"
#include "simd.h"

namespace topoot {

void ImagePairs::clear() {
  dim.clear();
  birth.clear();
  death.clear();
  birth_pixel.clear();
  death_pixel.clear();
}

namespace {

// The 3x3 ring, in cyclic order: NW, N, NE, E, SE, S, SW, W. Consecutive
// entries are 4-adjacent; the odd entries are p's 4-neighbours.
constexpr int kRing = 8;

// count[conn8][mask]: number of connected components, inside the
// ring, of the lower neighbours `mask` that touch p. 8-connectivity: ring
// neighbours and the four 4-neighbour pairs N-E, E-S, S-W, W-N (diagonal) are
// adjacent. 4-connectivity: ring neighbours are adjacent and only components
// holding a 4-neighbour of p count.
// first[conn8][mask]: the ring entry that becomes p's parent, the first admissible lower
// neighbour in ring order (kRing when no lower neighbour is adjacent to p: p is a minimum). Any
// lower neighbour is exact: it is in p's component at every later time, and the pairs depend
// only on the order, not on the forest's shape.
// reps[conn8][mask]: one ring entry per such component (a bit each), the
// only neighbours a merge needs to look up.
struct LocalTables {
  std::array<std::array<uint8_t, 256>, 2> count{}, first{}, reps{};
  LocalTables() {
    for (int conn8 = 0; conn8 < 2; ++conn8) {
      for (int mask = 0; mask < 256; ++mask) {
        int parent[kRing];
        for (int k = 0; k < kRing; ++k) parent[k] = k;
        auto root = [&](int k) {
          while (parent[k] != k) k = parent[k];
          return k;
        };
        auto join = [&](int x, int y) {
          if ((mask >> x & 1) && (mask >> y & 1)) parent[root(x)] = root(y);
        };
        for (int k = 0; k < kRing; ++k) join(k, (k + 1) % kRing);
        if (conn8) {
          join(1, 3);
          join(3, 5);
          join(5, 7);
          join(7, 1);
        }
        bool counted[kRing] = {};
        int c = 0;
        for (int k = 0; k < kRing; ++k) {
          if (!(mask >> k & 1) || (!conn8 && k % 2 == 0)) continue;
          const int r = root(k);
          if (!counted[r]) {
            counted[r] = true;
            reps[conn8][mask] = static_cast<uint8_t>(reps[conn8][mask] | 1u << k);
            ++c;
          }
        }
        count[conn8][mask] = static_cast<uint8_t>(c);
        first[conn8][mask] = kRing;
        for (int k = kRing - 1; k >= 0; --k) {
          if ((mask >> k & 1) && (conn8 || k % 2 == 1)) first[conn8][mask] = static_cast<uint8_t>(k);
        }
      }
    }
  }
};
const LocalTables kTables;

// Order-preserving unsigned key of a float (-0.0 folded onto +0.0, as the
// comparisons treat them as equal).
inline uint64_t sort_key(float x) {
  x += 0.0f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t sort_key(double x) {
  x += 0.0;
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Stable LSD radix sort of (key, index) pairs by key, 11-bit digits; digits on
// which every key agrees are skipped. Stability keeps the incoming order of
// ties.
template <int KeyBits>
void radix_sort(std::vector<uint64_t>& keys, std::vector<int32_t>& idx, std::vector<uint64_t>& ktmp,
                std::vector<int32_t>& itmp, std::vector<uint32_t>& hist) {
  constexpr int kRadix = 11;
  constexpr int kBuckets = 1 << kRadix;
  constexpr int kPasses = (KeyBits + kRadix - 1) / kRadix;
  const size_t n = keys.size();
  if (n < 2) return;
  ktmp.resize(n);
  itmp.resize(n);
  hist.assign(static_cast<size_t>(kPasses) * kBuckets, 0);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t k = keys[i];
    for (int p = 0; p < kPasses; ++p) ++hist[p * kBuckets + ((k >> (p * kRadix)) & (kBuckets - 1))];
  }
  uint64_t* ks = keys.data();
  int32_t* is = idx.data();
  uint64_t* kd = ktmp.data();
  int32_t* id = itmp.data();
  for (int p = 0; p < kPasses; ++p) {
    poll();  // a pass over a large image's saddles takes a while
    uint32_t* h = &hist[p * kBuckets];
    const int shift = p * kRadix;
    if (h[(ks[0] >> shift) & (kBuckets - 1)] == n) continue;
    uint32_t sum = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const uint32_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint32_t pos = h[(ks[i] >> shift) & (kBuckets - 1)]++;
      kd[pos] = ks[i];
      id[pos] = is[i];
    }
    std::swap(ks, kd);
    std::swap(is, id);
  }
  if (ks != keys.data()) {
    std::memcpy(keys.data(), ks, n * sizeof(uint64_t));
    std::memcpy(idx.data(), is, n * sizeof(int32_t));
  }
}

// Per-thread scratch, reused across images.
template <typename T>
struct Workspace {
  Buffer<T> padded;  // the map on an (H+2) x (W+2) grid
  Buffer<int32_t> parent;
  std::vector<int32_t> saddles, idx_tmp;
  // The saddles the dual pass must visit, in the primal order (see image_persistence); bit
  // kSameValue marks an entry whose value equals the previous entry's.
  std::vector<int32_t> dual_saddles;
  int64_t last_root = -1;  // after a pass: the root of pixel (0, 0), as a flat index
  // Lower neighbours of every pixel (a bit per ring entry) in the ascending
  // and the descending order of the values, at padded indices.
  Buffer<uint8_t> rel, lower_up, lower_down;
  // Bit 0 (ascending) / bit 1 (descending): the lower neighbours form two or
  // more runs around the ring, a necessary condition for a merge. Bit 2
  // (kTieFlag): the pixel's value equals that of a later neighbour (E, SE, S,
  // SW), so some flag has it iff two adjacent pixels tie. Zero on the padding.
  Buffer<uint8_t> flags;
  std::vector<uint64_t> keys, keys_tmp;
  std::vector<uint32_t> hist;
};

constexpr uint8_t kTieFlag = 4;
constexpr int32_t kSameValue = int32_t{1} << 30;  // padded indices are below 2**30 (module.cpp)

// A root's parent entry holds its code: INT32_MIN plus the top 31 bits of its sort key in the
// pass's order, so the codes of two roots order them as their values do unless they are
// equal (then the values and indices decide). Merges then compare two parent entries they
// have already loaded instead of two values at random places. Codes are <= -2, never the
// lazy "not set" -1 (the largest finite key's top bits are below 2**31 - 1).
template <typename T, bool Desc>
inline int32_t root_code(T x) {
  constexpr int kBits = sizeof(T) * 8;
  uint64_t k = sort_key(x);
  if (Desc) k = ~k;
  if (kBits < 64) k &= (uint64_t{1} << kBits) - 1;
  return std::numeric_limits<int32_t>::min() + static_cast<int32_t>(k >> (kBits - 31));
}

// Lists the saddle candidates of a pass (flag bit `flag_bit` and two or more local components
// for connectivity `conn8`) in increasing index, eight flags at a time; returns whether a
// pixel ties an adjacent one (flag bit kTieFlag).
template <typename T>
bool list_saddles(Workspace<T>& ws, const uint8_t* lower_mask, uint8_t flag_bit, bool conn8, int64_t H,
                  int64_t W) {
  const int64_t Wp = W + 2;
  const auto& table = kTables.count[conn8 ? 1 : 0];
  const uint64_t flag_word = 0x0101010101010101ull * flag_bit;
  const uint8_t* flags = ws.flags.data();
  uint64_t seen = 0;
  ws.saddles.clear();
  const int32_t end = static_cast<int32_t>((H + 1) * Wp);
  int32_t p = static_cast<int32_t>(Wp);
  for (; p + 8 <= end; p += 8) {
    uint64_t word;
    std::memcpy(&word, flags + p, sizeof word);
    seen |= word;
    if (!(word & flag_word)) continue;
    for (int32_t q = p; q < p + 8; ++q) {
      if ((flags[q] & flag_bit) && table[lower_mask[q]] >= 2) ws.saddles.push_back(q);
    }
  }
  for (; p < end; ++p) {
    seen |= flags[p];
    if ((flags[p] & flag_bit) && table[lower_mask[p]] >= 2) ws.saddles.push_back(p);
  }
  return (seen & 0x0101010101010101ull * kTieFlag) != 0;
}

// Sorts ws.saddles (listed in increasing index) into the order of a pass: value (negated for
// Desc), then index; the radix sort is stable, so ties stay in index order. The sorted keys
// stay in ws.keys.
template <typename T, bool Desc>
void sort_saddles(Workspace<T>& ws) {
  const T* v = ws.padded.data();
  const size_t n = ws.saddles.size();
  ws.keys.resize(n);
  for (size_t s = 0; s < n; ++s) {
    const uint64_t k = sort_key(v[ws.saddles[s]]);
    ws.keys[s] = Desc ? ~k : k;
  }
  radix_sort<sizeof(T) * 8>(ws.keys, ws.saddles, ws.keys_tmp, ws.idx_tmp, ws.hist);
}

// One union-find pass on the padded map `v` (row stride Wp), visiting the saddles
// `saddle[0..n)` (already in the pass's order). `Desc` orders pixels by increasing
// (-value, index) instead of (value, index). `Outside`: the padding is the outside node,
// older than every pixel, and every padding cell's parent is cell 0; otherwise the padding is
// never lower than a pixel. The caller picks the padding value that makes both true.
// Emits H0 pairs (birth = young root, death = saddle) or, with `Outside`, the dual H1 pairs
// (birth = saddle, death = young root), zero-length ones dropped; their values are read from
// the map `a` at the end, in one pass of independent loads.
// `record`: when set (the primal pass of both dimensions), the saddles at which some local
// component did not merge (the pass made a cycle there) or whose value ties another saddle's
// (sorted keys `keys`) are appended to ws.dual_saddles, in this pass's order.
// How many saddles ahead union_find_pass prefetches.
constexpr size_t kPrefetch = 8;

template <typename T, bool Desc, bool Conn8, bool Outside>
void union_find_pass(Workspace<T>& ws, const T* a, const uint8_t* lower_mask, const int32_t* saddle, size_t n,
                     const uint64_t* record, int64_t H, int64_t W, int64_t dim, ImagePairs& out) {
  const int64_t Wp = W + 2, Np = (H + 2) * Wp;
  const T* v = ws.padded.data();
  // Strict total order of the pass: value (negated for Desc), then index.
  auto lower = [v](int32_t q, int32_t p) {
    return Desc ? (v[q] > v[p] || (v[q] == v[p] && q < p)) : (v[q] < v[p] || (v[q] == v[p] && q < p));
  };
  const int32_t w = static_cast<int32_t>(Wp);
  const int32_t off[kRing] = {-w - 1, -w, -w + 1, 1, w + 1, w, w - 1, -1};

  ws.parent.resize(Np);
  int32_t* parent = ws.parent.data();
  if (Outside) {
    for (int64_t P = 0; P < Wp; ++P) parent[P] = parent[Np - 1 - P] = 0;
    for (int64_t i = 1; i <= H; ++i) parent[i * Wp] = parent[i * Wp + W + 1] = 0;
    parent[0] = root_code<T, Desc>(v[0]);
  }
  // Parents are set lazily (-1 = not yet), only on the chains that finds
  // walk, by one table lookup (LocalTables::first); measured faster than the
  // steepest lower neighbour, whose search is branchy. A minimum gets its root code.
  for (int64_t i = 1; i <= H; ++i) std::fill(parent + i * Wp + 1, parent + i * Wp + 1 + W, -1);
  int32_t step[256];  // offset from p to its parent, 0 for a minimum
  for (int m = 0; m < 256; ++m) {
    const int f = kTables.first[Conn8 ? 1 : 0][m];
    step[m] = f == kRing ? 0 : off[f];
  }
  auto parent_of = [&](int32_t x) {
    int32_t px = parent[x];
    if (px == -1) {
      const int32_t s = step[lower_mask[x]];
      parent[x] = px = s ? x + s : root_code<T, Desc>(v[x]);
    }
    return px;
  };
  // The root of x (path halving) and, in `code`, its root code.
  auto find = [&](int32_t x, int32_t& code) {
    int32_t px = parent_of(x);
    while (px >= 0) {
      const int32_t ppx = parent_of(px);
      if (ppx < 0) {
        code = ppx;
        return px;
      }
      parent[x] = ppx;
      x = ppx;
      px = parent_of(x);
    }
    code = px;
    return x;
  };

  const int64_t Wo = W;
  auto original = [Wp, Wo](int32_t P) { return static_cast<int64_t>(P / Wp - 1) * Wo + (P % Wp - 1); };
  const auto& reps = kTables.reps[Conn8 ? 1 : 0];
  const size_t first_pair = out.dim.size();
  for (size_t k = 0; k < n; ++k) {
    const int32_t p = saddle[k];
    if (((k + 1) & 0xFFFF) == 0) poll();
    // Saddles come in value order, so at random places: fetch a later saddle's neighbourhood (its
    // first find's parent entries, lower mask and values) while this one is merged.
    if (k + kPrefetch < n) {
      const int32_t q = saddle[k + kPrefetch];
      __builtin_prefetch(parent + q - w);
      __builtin_prefetch(parent + q + w);
      __builtin_prefetch(lower_mask + q);
      __builtin_prefetch(v + q - w);
      __builtin_prefetch(v + q);
      __builtin_prefetch(v + q + w);
    }
    const int32_t code_p = root_code<T, Desc>(v[p]);
    // One root lookup per local component of p's lower neighbours.
    unsigned m = reps[lower_mask[p]];
    int32_t code_cur;
    int32_t cur = find(p + off[__builtin_ctz(m)], code_cur);
    bool cycle = false;
    for (m &= m - 1; m; m &= m - 1) {
      int32_t code_rq;
      const int32_t rq = find(p + off[__builtin_ctz(m)], code_rq);
      if (rq == cur) {
        cycle = true;
        continue;
      }
      int32_t young = cur, elder = rq, code_young = code_cur, code_elder = code_rq;
      if (code_cur != code_rq ? code_cur < code_rq : lower(cur, rq)) {
        std::swap(young, elder);
        std::swap(code_young, code_elder);
      }
      parent[young] = elder;
      cur = elder;
      code_cur = code_elder;
      if (code_young == code_p && v[young] == v[p]) continue;  // zero-length pair
      const int64_t py = original(young), pp = original(p);
      out.dim.push_back(dim);
      out.birth_pixel.push_back(Outside ? pp : py);
      out.death_pixel.push_back(Outside ? py : pp);
    }
    parent[p] = cur;
    if (record) {
      const bool same_prev = k > 0 && record[k] == record[k - 1];
      const bool same_next = k + 1 < n && record[k] == record[k + 1];
      if (cycle || same_prev || same_next) ws.dual_saddles.push_back(same_prev ? p | kSameValue : p);
    }
  }
  int32_t code;
  ws.last_root = original(find(static_cast<int32_t>(Wp + 1), code));
  // The pairs' values, gathered from the map by pixel: independent loads, unlike the merges'.
  const size_t total = out.dim.size();
  out.birth.resize(total);
  out.death.resize(total);
  for (size_t i = first_pair; i < total; ++i) {
    out.birth[i] = static_cast<double>(a[out.birth_pixel[i]]);
    out.death[i] = static_cast<double>(a[out.death_pixel[i]]);
  }
}

template <typename T, bool Desc, bool Outside>
void dispatch_pass(bool conn8, Workspace<T>& ws, const T* a, const int32_t* saddle, size_t n,
                   const uint64_t* record, int64_t H, int64_t W, int64_t dim, ImagePairs& out) {
  const uint8_t* lower_mask = Desc ? ws.lower_down.data() : ws.lower_up.data();
  if (conn8) {
    union_find_pass<T, Desc, true, Outside>(ws, a, lower_mask, saddle, n, record, H, W, dim, out);
  } else {
    union_find_pass<T, Desc, false, Outside>(ws, a, lower_mask, saddle, n, record, H, W, dim, out);
  }
}

// Both orders' lower-neighbour masks from one set of comparisons. Each
// neighbour pair is compared once, from its earlier pixel: `rel[P]` holds
// bits 0-3 = (v[n] < v[P]) and bits 4-7 = (v[n] > v[P]) for n = E, SE, S, SW
// of P, the later neighbours. Then for pixel p, a later neighbour n is lower
// in the ascending order iff v[n] < v[p] (a tie goes to the earlier index),
// and an earlier neighbour q is lower iff not v[p] < v[q]; the descending
// order is the same with > for <. The loops are branch-free (comparisons are
// coin flips on smooth maps) and simple enough to vectorise.
//
// Compiled twice where the compiler can: an AVX2 clone and the baseline.
template <typename T>
TOPOOT_INLINE void lower_masks_impl(const T* __restrict v, int64_t H, int64_t W, uint8_t* __restrict rel,
                             uint8_t* __restrict up, uint8_t* __restrict down, uint8_t* __restrict flags) {
  const int64_t Wp = W + 2, Np = (H + 2) * Wp, w = Wp;
  for (int64_t P = 0; P < Np - w - 1; ++P) {
    const T c = v[P], e = v[P + 1], se = v[P + w + 1], s = v[P + w], sw = v[P + w - 1];
    rel[P] = static_cast<uint8_t>((e < c) | (se < c) << 1 | (s < c) << 2 | (sw < c) << 3 | (e > c) << 4 |
                                  (se > c) << 5 | (s > c) << 6 | (sw > c) << 7);
  }
  // Ring bits: NW 0, N 1, NE 2, E 3, SE 4, S 5, SW 6, W 7.
  for (int64_t P = w + 1; P < Np - w - 1; ++P) {
    const unsigned r = rel[P], nw = ~rel[P - w - 1], n = ~rel[P - w], ne = ~rel[P - w + 1], wst = ~rel[P - 1];
    up[P] = static_cast<uint8_t>((nw >> 1 & 1) | (n >> 2 & 1) << 1 | (ne >> 3 & 1) << 2 | (r & 15) << 3 |
                                 (wst & 1) << 7);
    const unsigned d = (nw >> 5 & 1) | (n >> 6 & 1) << 1 | (ne >> 7 & 1) << 2 | (r >> 4) << 3 | (wst >> 4 & 1) << 7;
    down[P] = static_cast<uint8_t>(d);
    // Runs start where a set bit follows a clear one around the ring.
    const unsigned u = up[P], su = u & ~((u << 1 | u >> 7) & 0xFFu), sd = d & ~((d << 1 | d >> 7) & 0xFFu);
    flags[P] = static_cast<uint8_t>(((su & (su - 1)) != 0) | ((sd & (sd - 1)) != 0) << 1 |
                                    (((r | r >> 4) & 15) != 15) << 2);
  }
  // Padding columns inside the range above are not pixels.
  for (int64_t i = 1; i <= H; ++i) flags[i * Wp] = flags[i * Wp + W + 1] = 0;
}

TOPOOT_TARGET_CLONES_EXACT void lower_masks_f32(const float* v, int64_t H, int64_t W, uint8_t* rel, uint8_t* up,
                                          uint8_t* down, uint8_t* flags) {
  lower_masks_impl(v, H, W, rel, up, down, flags);
}
TOPOOT_TARGET_CLONES_EXACT void lower_masks_f64(const double* v, int64_t H, int64_t W, uint8_t* rel, uint8_t* up,
                                          uint8_t* down, uint8_t* flags) {
  lower_masks_impl(v, H, W, rel, up, down, flags);
}

template <typename T>
void lower_masks(Workspace<T>& ws, int64_t H, int64_t W) {
  const int64_t Np = (H + 2) * (W + 2);
  ws.rel.resize(Np);
  ws.lower_up.resize(Np);
  ws.lower_down.resize(Np);
  ws.flags.resize(Np);
  if constexpr (sizeof(T) == 4) {
    lower_masks_f32(ws.padded.data(), H, W, ws.rel.data(), ws.lower_up.data(), ws.lower_down.data(),
                    ws.flags.data());
  } else {
    lower_masks_f64(ws.padded.data(), H, W, ws.rel.data(), ws.lower_up.data(), ws.lower_down.data(),
                    ws.flags.data());
  }
}

// The dual pass's visiting order from ws.dual_saddles (primal order): reversed, except that
// saddles of equal value keep increasing index, as the dual order ((-value, index) for the
// sublevel dual) asks. Written into ws.saddles.
template <typename T>
void dual_order(Workspace<T>& ws) {
  const std::vector<int32_t>& list = ws.dual_saddles;
  ws.saddles.clear();
  size_t j = list.size();
  while (j > 0) {
    const size_t end = j--;
    while (j > 0 && (list[j] & kSameValue)) --j;  // list[j] ties list[j - 1]: the run goes on
    for (size_t i = j; i < end; ++i) ws.saddles.push_back(list[i] & ~kSameValue);
  }
}

template <typename T>
void image_persistence(const T* a, int64_t H, int64_t W, const PersistenceOptions& opt, Workspace<T>& ws,
                       ImagePairs& out) {
  out.clear();
  const int64_t Wp = W + 2;
  const bool sup = opt.superlevel;
  // Padding value: never lower in the ordinary (H0) pass, always lower in the
  // dual (H1) pass. Sublevel: H0 ascends, H1 descends, so +inf does both;
  // superlevel: the reverse, so -inf.
  const T pad = sup ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  ws.padded.resize((H + 2) * Wp);
  T* v = ws.padded.data();
  std::fill(v, v + Wp + 1, pad);
  for (int64_t i = 0; i < H; ++i) {
    std::copy(a + i * W, a + (i + 1) * W, v + (i + 1) * Wp + 1);
    v[(i + 1) * Wp + W + 1] = v[(i + 2) * Wp] = pad;
  }
  std::fill(v + (H + 1) * Wp, v + (H + 2) * Wp, pad);

  poll();
  lower_masks(ws, H, W);
  poll();
  // Primal pass (H0): ascending for sublevel, with the construction's connectivity (8 for T);
  // dual pass (H1): the opposite order and connectivity, with the outside node.
  const bool conn8_primal = opt.construction == Construction::T;
  const uint8_t primal_flag = sup ? 2 : 1, dual_flag = sup ? 1 : 2;
  const uint8_t* primal_mask = sup ? ws.lower_down.data() : ws.lower_up.data();
  const uint8_t* dual_mask = sup ? ws.lower_up.data() : ws.lower_down.data();
  auto dual_saddles = [&] {
    list_saddles(ws, dual_mask, dual_flag, !conn8_primal, H, W);
    if (sup) {
      sort_saddles<T, false>(ws);
    } else {
      sort_saddles<T, true>(ws);
    }
  };
  auto dual_pass = [&] {
    poll();
    if (sup) {
      dispatch_pass<T, false, true>(!conn8_primal, ws, a, ws.saddles.data(), ws.saddles.size(), nullptr, H, W, 1, out);
    } else {
      dispatch_pass<T, true, true>(!conn8_primal, ws, a, ws.saddles.data(), ws.saddles.size(), nullptr, H, W, 1, out);
    }
  };
  if (!opt.dim0) {
    if (opt.dim1) {
      dual_saddles();
      dual_pass();
    }
    return;
  }
  const bool ties = list_saddles(ws, primal_mask, primal_flag, conn8_primal, H, W);
  if (sup) {
    sort_saddles<T, true>(ws);
  } else {
    sort_saddles<T, false>(ws);
  }
  // One sorted list for both passes when no two adjacent pixels tie. Then every pixel's lower
  // neighbours in the dual order are the complement of those in the primal order, the two
  // passes have the same saddles, and the dual pass merges at a saddle exactly as many times as
  // the primal pass made cycles there (the H1 births there, by the duality the dual pass
  // computes), except where the two orders differ: among saddles of equal value, which the
  // primal pass therefore keeps as well. So the dual pass needs only the saddles the primal
  // pass records, in reverse order with ties in index order; a saddle it skips has all its
  // lower neighbours in one component and gets its lazy parent like a regular pixel. With
  // adjacent ties the two orders' lower neighbours differ, and the dual pass lists its own.
  const bool share = opt.dim1 && !ties;
  ws.dual_saddles.clear();
  const uint64_t* record = share ? ws.keys.data() : nullptr;
  if (sup) {
    dispatch_pass<T, true, false>(conn8_primal, ws, a, ws.saddles.data(), ws.saddles.size(), record, H, W, 0, out);
  } else {
    dispatch_pass<T, false, false>(conn8_primal, ws, a, ws.saddles.data(), ws.saddles.size(), record, H, W, 0,
                                   out);
  }
  // The essential class: the root left when every merge is done, the first
  // pixel of the order (the grid is connected).
  const int64_t first = ws.last_root;
  out.dim.push_back(0);
  out.birth.push_back(static_cast<double>(a[first]));
  out.death.push_back(sup ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity());
  out.birth_pixel.push_back(first);
  out.death_pixel.push_back(-1);
  if (!opt.dim1) return;
  if (share) {
    dual_order(ws);
  } else {
    dual_saddles();
  }
  dual_pass();
}

}  // namespace

template <typename T>
void batch_persistence(const T* maps, int64_t B, int64_t H, int64_t W, const PersistenceOptions& opt,
                       int num_threads, std::vector<ImagePairs>& out) {
  out.assign(B, ImagePairs{});
  parallel_for<Workspace<T>>(B, num_threads, [&](Workspace<T>& ws, int64_t b) {
    image_persistence(maps + b * H * W, H, W, opt, ws, out[b]);
  });
}

template void batch_persistence<float>(const float*, int64_t, int64_t, int64_t, const PersistenceOptions&,
                                       int, std::vector<ImagePairs>&);
template void batch_persistence<double>(const double*, int64_t, int64_t, int64_t, const PersistenceOptions&,
                                        int, std::vector<ImagePairs>&);

}  // namespace topoot
