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
#include <atomic>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

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

// Stable LSD radix sort of (key, index) pairs by bits [LowBit, KeyBits) of the
// key, 11-bit digits; digits on which every key agrees are skipped. Stability
// keeps the incoming order of ties.
template <int KeyBits, int LowBit = 0>
void radix_sort(std::vector<uint64_t>& keys, std::vector<int32_t>& idx, std::vector<uint64_t>& ktmp,
                std::vector<int32_t>& itmp, std::vector<uint32_t>& hist) {
  constexpr int kRadix = 11;
  constexpr int kBuckets = 1 << kRadix;
  constexpr int kPasses = (KeyBits - LowBit + kRadix - 1) / kRadix;
  const size_t n = keys.size();
  if (n < 2) return;
  ktmp.resize(n);
  itmp.resize(n);
  hist.assign(static_cast<size_t>(kPasses) * kBuckets, 0);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t k = keys[i];
    for (int p = 0; p < kPasses; ++p) ++hist[p * kBuckets + ((k >> (LowBit + p * kRadix)) & (kBuckets - 1))];
  }
  uint64_t* ks = keys.data();
  int32_t* is = idx.data();
  uint64_t* kd = ktmp.data();
  int32_t* id = itmp.data();
  for (int p = 0; p < kPasses; ++p) {
    poll();  // a pass over a large image's saddles takes a while
    uint32_t* h = &hist[p * kBuckets];
    const int shift = LowBit + p * kRadix;
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

// floor(n / d) for 0 <= n < 2**30 and 1 <= d < 2**30 by one multiplication (Granlund and
// Montgomery, "Division by invariant integers using multiplication", 1994): with 2**l >= d,
// m = ceil(2**(30 + l) / d) < 2**31 + 1 and the error n (m d - 2**(30 + l)) / (d 2**(30 + l)) < 1 / d.
struct DivideBy {
  uint64_t m = 1;
  int shift = 0;
  explicit DivideBy(uint32_t d) {
    int l = 0;
    while ((uint64_t{1} << l) < d) ++l;
    shift = 30 + l;
    m = ((uint64_t{1} << shift) + d - 1) / d;
  }
  uint32_t operator()(uint32_t n) const { return static_cast<uint32_t>((n * m) >> shift); }
};

// The flat index in the map of cell P = (i + 1) Wp + j + 1 of the bordered grid (pixel (i, j)).
struct MapIndex {
  DivideBy row_of;
  int32_t W;
  explicit MapIndex(int64_t W_) : row_of(static_cast<uint32_t>(W_ + 2)), W(static_cast<int32_t>(W_)) {}
  int32_t operator()(int32_t P) const { return P - 2 * static_cast<int32_t>(row_of(P)) - W - 1; }
};

// Per-thread scratch, reused across images. The masks and the parent forest are on the
// (H+2) x (W+2) grid of the map with a one-pixel border; the map itself is not copied there.
template <typename T>
struct Workspace {
  // Three rows of the bordered map, one guard entry each side; two rows of `rel`; one of flags.
  Buffer<T> rows;
  Buffer<uint8_t> rel_rows, flag_row;
  // Lower neighbours of every pixel (a bit per ring entry) in the ascending
  // and the descending order of the values.
  Buffer<uint8_t> lower_up, lower_down;
  // The parent forest. Between passes every entry is -1 ("not set"); a pass logs the entries it
  // sets (while they are few) and resets them at its end, so that an image with few critical
  // pixels never pays for filling a forest the size of the map.
  Buffer<int32_t> parent;
  bool parent_clean = false;
  Buffer<int32_t> touched;
  // Saddle candidates of the first pass and, when both passes run, of the dual pass (each in
  // increasing index); sort scratch.
  std::vector<int32_t> saddles, dual_candidates, idx_tmp;
  // The saddles the dual pass must visit, in the primal order (see image_persistence); bit
  // kSameValue marks an entry whose value equals the previous entry's.
  std::vector<int32_t> dual_saddles;
  std::vector<uint64_t> keys, keys_tmp;
  std::vector<uint32_t> hist;
  std::vector<std::pair<uint64_t, int32_t>> run;
  int64_t last_root = -1;  // after a pass: the root of pixel (0, 0), as a flat index
};

constexpr int32_t kSameValue = int32_t{1} << 30;  // bordered indices are below 2**30 (module.cpp)
constexpr int64_t kDenseSaddles = 16;
constexpr size_t kLongRun = 256;  // sort_saddles

// A root's parent entry holds its code: INT32_MIN plus the top 30 bits of its sort key in the
// pass's order, so the codes of two roots order them as their values do unless they are
// equal (then the values and indices decide). Merges then compare two parent entries they
// have already loaded instead of two values at random places. Codes are below -2**30, apart
// from the "not set" entries -1 .. -256 (not_set), and no finite value's code equals an
// infinity's.
template <typename T, bool Desc>
inline int32_t root_code(T x) {
  constexpr int kBits = sizeof(T) * 8;
  uint64_t k = sort_key(x);
  if (Desc) k = ~k;
  if (kBits < 64) k &= (uint64_t{1} << kBits) - 1;
  return std::numeric_limits<int32_t>::min() + static_cast<int32_t>(k >> (kBits - 30));
}

// A parent entry not set yet: -1 - m, where m is the pixel's lower-neighbour mask in dense
// passes (union_find_pass) and 0 in sparse ones.
constexpr int32_t kNotSetMax = -1, kNotSetMin = -256;
inline bool not_set(int32_t px) { return px >= kNotSetMin && px <= kNotSetMax; }

// The scan's row kernels, branch-free loops that vectorise; compiled as an AVX-512 clone, an
// AVX2 clone and the baseline where the compiler can (comparisons and bit operations only, so
// exact).
//
// Both orders' lower-neighbour masks come from one set of comparisons. Each neighbour pair is
// compared once, from its earlier cell: rel[c] holds bits 0-3 = (v[n] < v[c]) and bits 4-7 =
// (v[n] > v[c]) for n = E, SE, S, SW of cell c, the later neighbours. Then for pixel p, a later
// neighbour n is lower in the ascending order iff v[n] < v[p] (a tie goes to the earlier
// index), and an earlier neighbour q is lower iff not v[p] < v[q]; the descending order is the
// same with > for <.

// One row of the bordered map: the pad, the map's row `src` (if any, else pads), the pad, and a
// guard entry each side; returns whether a value was NaN or infinite.
template <typename T>
TOPOOT_INLINE bool border_row_impl(const T* __restrict src, int64_t W, T pad, T* __restrict dst) {
  dst[-1] = dst[0] = dst[W + 1] = dst[W + 2] = pad;
  if (src == nullptr) {
    std::fill(dst + 1, dst + W + 1, pad);
    return false;
  }
  unsigned bad = 0;
  for (int64_t j = 0; j < W; ++j) {
    bad |= non_finite(src[j]);
    dst[j + 1] = src[j];
  }
  return bad != 0;
}

// rel for the Wp cells of a bordered row `cur` (next: the row below).
template <typename T>
TOPOOT_INLINE void rel_row_impl(const T* __restrict cur, const T* __restrict next, int64_t Wp,
                                uint8_t* __restrict rel) {
  for (int64_t c = 0; c < Wp; ++c) {
    const T x = cur[c], e = cur[c + 1], se = next[c + 1], s = next[c], sw = next[c - 1];
    rel[c] = static_cast<uint8_t>((e < x) | (se < x) << 1 | (s < x) << 2 | (sw < x) << 3 | (e > x) << 4 |
                                  (se > x) << 5 | (s > x) << 6 | (sw > x) << 7);
  }
}

// The masks and flags of the W pixels of a row (bordered columns 1..W) from rel of the row
// above and of the row. Ring bits: NW 0, N 1, NE 2, E 3, SE 4, S 5, SW 6, W 7. Flag bit 0
// (ascending) / bit 1 (descending): the lower neighbours form two or more runs around the ring,
// a necessary condition for a merge; bit 2 (kTieFlag): the pixel's value equals that of a later
// neighbour (E, SE, S, SW), so some pixel has it iff two adjacent pixels tie.
constexpr uint8_t kTieFlag = 4;
TOPOOT_INLINE void mask_row_impl(const uint8_t* __restrict above, const uint8_t* __restrict rel, int64_t W,
                                 uint8_t* __restrict up, uint8_t* __restrict down, uint8_t* __restrict flags) {
  for (int64_t c = 1; c <= W; ++c) {
    const unsigned r = rel[c], nw = ~above[c - 1], n = ~above[c], ne = ~above[c + 1], wst = ~rel[c - 1];
    const unsigned u =
        (nw >> 1 & 1) | (n >> 2 & 1) << 1 | (ne >> 3 & 1) << 2 | (r & 15) << 3 | (wst & 1) << 7;
    const unsigned d = (nw >> 5 & 1) | (n >> 6 & 1) << 1 | (ne >> 7 & 1) << 2 | (r >> 4) << 3 | (wst >> 4 & 1) << 7;
    up[c] = static_cast<uint8_t>(u);
    down[c] = static_cast<uint8_t>(d);
    // Runs start where a set bit follows a clear one around the ring.
    const unsigned su = u & ~((u << 1 | u >> 7) & 0xFFu), sd = d & ~((d << 1 | d >> 7) & 0xFFu);
    flags[c] = static_cast<uint8_t>(((su & (su - 1)) != 0) | ((sd & (sd - 1)) != 0) << 1 |
                                    (((r | r >> 4) & 15) != 15) << 2);
  }
}

TOPOOT_TARGET_CLONES_EXACT bool border_row_f32(const float* src, int64_t W, float pad, float* dst) {
  return border_row_impl(src, W, pad, dst);
}
TOPOOT_TARGET_CLONES_EXACT bool border_row_f64(const double* src, int64_t W, double pad, double* dst) {
  return border_row_impl(src, W, pad, dst);
}
TOPOOT_TARGET_CLONES_EXACT void rel_row_f32(const float* cur, const float* next, int64_t Wp, uint8_t* rel) {
  rel_row_impl(cur, next, Wp, rel);
}
TOPOOT_TARGET_CLONES_EXACT void rel_row_f64(const double* cur, const double* next, int64_t Wp, uint8_t* rel) {
  rel_row_impl(cur, next, Wp, rel);
}
TOPOOT_TARGET_CLONES_EXACT void mask_row(const uint8_t* above, const uint8_t* rel, int64_t W, uint8_t* up,
                                         uint8_t* down, uint8_t* flags) {
  mask_row_impl(above, rel, W, up, down, flags);
}
inline bool border_row(const float* src, int64_t W, float pad, float* dst) { return border_row_f32(src, W, pad, dst); }
inline bool border_row(const double* src, int64_t W, double pad, double* dst) {
  return border_row_f64(src, W, pad, dst);
}
inline void rel_row(const float* cur, const float* next, int64_t Wp, uint8_t* rel) { rel_row_f32(cur, next, Wp, rel); }
inline void rel_row(const double* cur, const double* next, int64_t Wp, uint8_t* rel) {
  rel_row_f64(cur, next, Wp, rel);
}

// Which saddle candidates a scan lists into `out`: pixels whose lower neighbours in the order
// (descending when `desc`) form two or more runs (flag bit 1 or 0) and two or more components
// for the connectivity (LocalTables::count, `conn8`).
struct SaddleTest {
  bool desc = false, conn8 = false;
  std::vector<int32_t>* out = nullptr;
  uint8_t flag() const { return out ? (desc ? 2 : 1) : 0; }
};

// One pass over the map, row by row in cache: masks of both orders, the saddle candidates of
// up to two passes (`second.out` may be null), whether two adjacent pixels tie. Returns false
// when the map holds a NaN or an infinity (then nothing else is meaningful).
template <typename T>
bool scan(const T* a, int64_t H, int64_t W, T pad, Workspace<T>& ws, const SaddleTest& first,
          const SaddleTest& second, bool& ties) {
  const int64_t Wp = W + 2, Np = (H + 2) * Wp, stride = Wp + 2;
  ws.rows.resize(3 * stride);
  ws.rel_rows.resize(2 * Wp);
  ws.flag_row.resize(Wp + 8);
  ws.lower_up.resize(Np);
  ws.lower_down.resize(Np);
  T* row[3] = {ws.rows.data() + 1, ws.rows.data() + 1 + stride, ws.rows.data() + 1 + 2 * stride};
  uint8_t* rel[2] = {ws.rel_rows.data(), ws.rel_rows.data() + Wp};
  uint8_t* flags = ws.flag_row.data();
  std::memset(flags, 0, Wp + 8);
  first.out->clear();
  if (second.out) second.out->clear();
  auto is_saddle = [&](const SaddleTest& t, uint8_t f, int32_t P) {
    const uint8_t* mask = t.desc ? ws.lower_down.data() : ws.lower_up.data();
    return (f & t.flag()) && kTables.count[t.conn8 ? 1 : 0][mask[P]] >= 2;
  };
  bool bad = border_row(static_cast<const T*>(nullptr), W, pad, row[0]);
  bad |= border_row(a, W, pad, row[1]);
  rel_row(row[0], row[1], Wp, rel[0]);
  uint64_t seen = 0;
  for (int64_t i = 1; i <= H; ++i) {
    if ((i & 63) == 0) poll();
    T* cur = row[i % 3];
    T* next = row[(i + 1) % 3];
    bad |= border_row(i < H ? a + i * W : nullptr, W, pad, next);
    rel_row(cur, next, Wp, rel[i & 1]);
    uint8_t* up = ws.lower_up.data() + i * Wp;
    uint8_t* down = ws.lower_down.data() + i * Wp;
    mask_row(rel[(i - 1) & 1], rel[i & 1], W, up, down, flags);
    // The row's candidates, eight flags at a time (flags[W + 1 ..] stay zero).
    const uint64_t want = 0x0101010101010101ull * (first.flag() | second.flag());
    const int32_t base = static_cast<int32_t>(i * Wp);
    for (int64_t c = 1; c <= W; c += 8) {
      uint64_t word;
      std::memcpy(&word, flags + c, sizeof word);
      seen |= word;
      if (!(word & want)) continue;
      for (int32_t P = base + static_cast<int32_t>(c); P <= base + std::min<int64_t>(c + 7, W); ++P) {
        if (is_saddle(first, flags[P - base], P)) first.out->push_back(P);
        if (is_saddle(second, flags[P - base], P)) second.out->push_back(P);
      }
    }
  }
  ties = (seen & 0x0101010101010101ull * kTieFlag) != 0;
  return !bad;
}

// Sorts `saddles` (listed in increasing index) into the order of a pass: value (negated for
// Desc), then index; the radix sort is stable, so ties stay in index order. The sorted keys
// stay in ws.keys.
template <typename T, bool Desc>
void sort_saddles(Workspace<T>& ws, std::vector<int32_t>& saddles, const T* a, int64_t W) {
  const MapIndex original(W);
  const size_t n = saddles.size();
  ws.keys.resize(n);
  for (size_t s = 0; s < n; ++s) {
    const uint64_t k = sort_key(a[original(saddles[s])]);
    ws.keys[s] = Desc ? ~k : k;
  }
  if constexpr (sizeof(T) == 4) {
    radix_sort<32>(ws.keys, saddles, ws.keys_tmp, ws.idx_tmp, ws.hist);
  } else {
    // Three digit passes over the top 32 bits instead of six over all 64; then the rare runs of
    // equal top bits whose low bits differ are put in order by (key, index), which is the stable
    // order since the run is in increasing index. Should a long such run turn up (values that
    // differ only in their last mantissa bits), all 64 bits are sorted instead: equal keys are
    // still in increasing index, so the LSD sort's stability keeps that.
    radix_sort<64, 32>(ws.keys, saddles, ws.keys_tmp, ws.idx_tmp, ws.hist);
    uint64_t* key = ws.keys.data();
    int32_t* idx = saddles.data();
    for (size_t i = 0; i < n;) {
      size_t j = i + 1;
      bool mixed = false;
      for (; j < n && key[j] >> 32 == key[i] >> 32; ++j) mixed |= key[j] != key[i];
      if (mixed && j - i > kLongRun) {
        radix_sort<32>(ws.keys, saddles, ws.keys_tmp, ws.idx_tmp, ws.hist);  // the low 32 bits
        radix_sort<64, 32>(ws.keys, saddles, ws.keys_tmp, ws.idx_tmp, ws.hist);
        break;
      }
      if (mixed) {
        ws.run.clear();
        for (size_t r = i; r < j; ++r) ws.run.emplace_back(key[r], idx[r]);
        std::sort(ws.run.begin(), ws.run.end());
        for (size_t r = i; r < j; ++r) std::tie(key[r], idx[r]) = ws.run[r - i];
      }
      i = j;
    }
  }
}

// One union-find pass over the bordered grid (row stride Wp), visiting the saddles
// `saddle[0..n)` (already in the pass's order). `Desc` orders pixels by increasing
// (-value, index) instead of (value, index). `Outside`: the border is the outside node, older
// than every pixel, and every border cell's parent is cell 0, valued `pad`; otherwise the
// border is never lower than a pixel. The caller picks the pad that makes both true.
// Emits H0 pairs (birth = young root, death = saddle) or, with `Outside`, the dual H1 pairs
// (birth = saddle, death = young root), zero-length ones dropped; their values are read from
// the map `a` at the end, in one pass of independent loads.
// `record`: when set (the primal pass of both dimensions), the saddles at which some local
// component did not merge (the pass made a cycle there) or whose value ties another saddle's
// (sorted keys `record`) are appended to ws.dual_saddles, in this pass's order.
// `Dense` (maps with many saddles, such as raw noise): every pixel's parent entry starts as
// -1 - its lower mask, written in one sequential pass, so that a find reads one array instead
// of two and a saddle's neighbourhood is a third of the cache lines; the forest is left dirty.
// Otherwise (`!Dense`) the entries start as -1 and the masks are read from their own array:
// the forest is kept all -1 between passes (ws.parent_clean), each pass logging what it sets
// and resetting it, so that a map with few saddles never fills a forest the size of the map.
// How many saddles ahead union_find_pass prefetches.
constexpr size_t kPrefetch = 8;

template <typename T, bool Desc, bool Conn8, bool Outside, bool Dense>
void union_find_pass(Workspace<T>& ws, const T* a, T pad, const uint8_t* lower_mask, const int32_t* saddle,
                     size_t n, const uint64_t* record, int64_t H, int64_t W, int64_t dim, ImagePairs& out) {
  const int64_t Wp = W + 2, Np = (H + 2) * Wp;
  const int32_t w = static_cast<int32_t>(Wp);
  const MapIndex original(W);
  auto value = [&](int32_t P) TOPOOT_ALWAYS_INLINE { return a[original(P)]; };  // pixels only
  // Strict total order of the pass on pixels: value (negated for Desc), then index.
  auto lower = [&](int32_t q, int32_t p) {
    const T vq = value(q), vp = value(p);
    return Desc ? (vq > vp || (vq == vp && q < p)) : (vq < vp || (vq == vp && q < p));
  };
  const int32_t off[kRing] = {-w - 1, -w, -w + 1, 1, w + 1, w, w - 1, -1};

  const size_t capacity = ws.parent.capacity();
  ws.parent.resize(Np);
  if (ws.parent.capacity() != capacity) ws.parent_clean = false;  // a fresh block
  int32_t* parent = ws.parent.data();
  if (Dense) {
    for (int64_t i = 1; i <= H; ++i) {
      int32_t* row = parent + i * Wp;
      const uint8_t* masks = lower_mask + i * Wp;
      for (int64_t c = 1; c <= W; ++c) row[c] = -1 - static_cast<int32_t>(masks[c]);
    }
  } else if (!ws.parent_clean) {
    // The whole block: "clean" speaks for all of it, whatever the size of the next map.
    std::fill(parent, parent + ws.parent.capacity(), -1);
  }
  ws.parent_clean = false;  // until the end of a sparse pass (an interrupted one leaves it dirty)
  const size_t log_cap = Dense ? 0 : static_cast<size_t>(Np / 8);
  ws.touched.resize(log_cap);
  int32_t* touched = ws.touched.data();
  size_t n_touched = 0;
  auto touch = [&](int32_t x) TOPOOT_ALWAYS_INLINE {
    if (n_touched < log_cap) touched[n_touched] = x;
    ++n_touched;  // past log_cap: the whole forest is reset at the end
  };
  auto for_each_border_cell = [&](auto&& f) {
    for (int64_t P = 0; P < Wp; ++P) {
      f(P);
      f(Np - 1 - P);
    }
    for (int64_t i = 1; i <= H; ++i) {
      f(i * Wp);
      f(i * Wp + W + 1);
    }
  };
  if (Outside) {
    for_each_border_cell([&](int64_t P) { parent[P] = 0; });
    parent[0] = root_code<T, Desc>(pad);
  }
  // Parents are set lazily, only on the chains that finds walk, by one table lookup
  // (LocalTables::first); measured faster than the steepest lower neighbour, whose search is
  // branchy. A minimum gets its root code.
  int32_t step[256];  // offset from p to its parent, 0 for a minimum
  for (int m = 0; m < 256; ++m) {
    const int f = kTables.first[Conn8 ? 1 : 0][m];
    step[m] = f == kRing ? 0 : off[f];
  }
  auto parent_of = [&](int32_t x) TOPOOT_ALWAYS_INLINE {
    int32_t px = parent[x];
    if (not_set(px)) {
      const int32_t s = step[Dense ? -1 - px : lower_mask[x]];
      parent[x] = px = s ? x + s : root_code<T, Desc>(value(x));
      if (!Dense) touch(x);
    }
    return px;
  };
  // The root of x (path halving) and, in `code`, its root code.
  auto find = [&](int32_t x, int32_t& code) TOPOOT_ALWAYS_INLINE {
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

  const auto& reps = kTables.reps[Conn8 ? 1 : 0];
  const size_t first_pair = out.dim.size();
  for (size_t k = 0; k < n; ++k) {
    const int32_t p = saddle[k];
    if (((k + 1) & 0xFFFF) == 0) poll();
    // Saddles come in value order, so at random places: fetch a later saddle's neighbourhood (its
    // first find's parent entries, lower mask and value) while this one is merged.
    if (k + kPrefetch < n) {
      const int32_t q = saddle[k + kPrefetch];
      __builtin_prefetch(parent + q - w);
      __builtin_prefetch(parent + q);
      __builtin_prefetch(parent + q + w);
      if (!Dense) __builtin_prefetch(lower_mask + q);
      const T* vq = a + original(q);
      __builtin_prefetch(vq - W);
      __builtin_prefetch(vq);
      __builtin_prefetch(vq + W);
    }
    const int32_t code_p = root_code<T, Desc>(value(p));
    // One root lookup per local component of p's lower neighbours. (In a dense pass p's own
    // entry is still not set: no find walks through a pixel that comes later in the order.)
    unsigned m = reps[Dense ? -1 - parent[p] : lower_mask[p]];
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
      // Equal codes belong to two pixels (never the outside), so `lower` may read their values.
      int32_t young = cur, elder = rq, code_young = code_cur, code_elder = code_rq;
      if (code_cur != code_rq ? code_cur < code_rq : lower(cur, rq)) {
        std::swap(young, elder);
        std::swap(code_young, code_elder);
      }
      parent[young] = elder;
      cur = elder;
      code_cur = code_elder;
      if (code_young == code_p && value(young) == value(p)) continue;  // zero-length pair
      const int64_t py = original(young), pp = original(p);
      out.dim.push_back(dim);
      out.birth_pixel.push_back(Outside ? pp : py);
      out.death_pixel.push_back(Outside ? py : pp);
    }
    parent[p] = cur;
    if (!Dense) touch(p);
    if (record) {
      const bool same_prev = k > 0 && record[k] == record[k - 1];
      const bool same_next = k + 1 < n && record[k] == record[k + 1];
      if (cycle || same_prev || same_next) ws.dual_saddles.push_back(same_prev ? p | kSameValue : p);
    }
  }
  int32_t code;
  ws.last_root = original(find(static_cast<int32_t>(Wp + 1), code));
  // A sparse pass leaves the forest all -1 for the next pass.
  if (!Dense) {
    if (n_touched <= log_cap) {
      for (size_t i = 0; i < n_touched; ++i) parent[touched[i]] = -1;
      if (Outside) for_each_border_cell([&](int64_t P) { parent[P] = -1; });
    } else {
      std::fill(parent, parent + Np, -1);
    }
    ws.parent_clean = true;
  }
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
void dispatch_pass(bool conn8, bool dense, Workspace<T>& ws, const T* a, T pad, const std::vector<int32_t>& saddles,
                   const uint64_t* record, int64_t H, int64_t W, int64_t dim, ImagePairs& out) {
  const uint8_t* lower_mask = Desc ? ws.lower_down.data() : ws.lower_up.data();
  auto run = [&](auto conn8_t, auto dense_t) {
    union_find_pass<T, Desc, decltype(conn8_t)::value, Outside, decltype(dense_t)::value>(
        ws, a, pad, lower_mask, saddles.data(), saddles.size(), record, H, W, dim, out);
  };
  using Yes = std::true_type;
  using No = std::false_type;
  if (conn8) {
    dense ? run(Yes{}, Yes{}) : run(Yes{}, No{});
  } else {
    dense ? run(No{}, Yes{}) : run(No{}, No{});
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

// The pairs of one map; false (and no pairs) when it holds a NaN or an infinity.
template <typename T>
bool image_persistence(const T* a, int64_t H, int64_t W, const PersistenceOptions& opt, Workspace<T>& ws,
                       ImagePairs& out) {
  out.clear();
  const bool sup = opt.superlevel;
  // Border value: never lower in the ordinary (H0) pass, always lower in the dual (H1) pass.
  // Sublevel: H0 ascends, H1 descends, so +inf does both; superlevel: the reverse, so -inf.
  const T pad = sup ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  // Primal pass (H0): ascending for sublevel, with the construction's connectivity (8 for T);
  // dual pass (H1): the opposite order and connectivity, with the outside node.
  const bool conn8_primal = opt.construction == Construction::T;
  const SaddleTest primal{sup, conn8_primal, &ws.saddles};
  const SaddleTest dual{!sup, !conn8_primal, opt.dim0 ? &ws.dual_candidates : &ws.saddles};
  const SaddleTest first = opt.dim0 ? primal : dual;
  const SaddleTest second = opt.dim0 && opt.dim1 ? dual : SaddleTest{};
  bool ties = false;
  if (!scan(a, H, W, pad, ws, first, second, ties)) return false;
  poll();
  // Dense passes (union_find_pass) when the map has at least one saddle in kDenseSaddles pixels.
  const bool dense = static_cast<int64_t>(ws.saddles.size()) * kDenseSaddles >= H * W;
  auto dual_pass = [&](const std::vector<int32_t>& saddles) {
    poll();
    if (sup) {
      dispatch_pass<T, false, true>(!conn8_primal, dense, ws, a, pad, saddles, nullptr, H, W, 1, out);
    } else {
      dispatch_pass<T, true, true>(!conn8_primal, dense, ws, a, pad, saddles, nullptr, H, W, 1, out);
    }
  };
  // Sorts a list into the primal order (descending for superlevel) or the dual one.
  auto sort_for = [&](bool primal_order, std::vector<int32_t>& list) {
    if (primal_order == sup) {
      sort_saddles<T, true>(ws, list, a, W);
    } else {
      sort_saddles<T, false>(ws, list, a, W);
    }
  };
  if (!opt.dim0) {
    if (opt.dim1) {
      sort_for(false, ws.saddles);
      dual_pass(ws.saddles);
    }
    return true;
  }
  sort_for(true, ws.saddles);
  // One sorted list for both passes when no two adjacent pixels tie. Then every pixel's lower
  // neighbours in the dual order are the complement of those in the primal order, the two
  // passes have the same saddles, and the dual pass merges at a saddle exactly as many times as
  // the primal pass made cycles there (the H1 births there, by the duality the dual pass
  // computes), except where the two orders differ: among saddles of equal value, which the
  // primal pass therefore keeps as well. So the dual pass needs only the saddles the primal
  // pass records, in reverse order with ties in index order; a saddle it skips has all its
  // lower neighbours in one component and gets its lazy parent like a regular pixel. With
  // adjacent ties the two orders' lower neighbours differ, and the dual pass sorts its own.
  const bool share = opt.dim1 && !ties;
  ws.dual_saddles.clear();
  const uint64_t* record = share ? ws.keys.data() : nullptr;
  if (sup) {
    dispatch_pass<T, true, false>(conn8_primal, dense, ws, a, pad, ws.saddles, record, H, W, 0, out);
  } else {
    dispatch_pass<T, false, false>(conn8_primal, dense, ws, a, pad, ws.saddles, record, H, W, 0, out);
  }
  // The essential class: the root left when every merge is done, the first
  // pixel of the order (the grid is connected).
  const int64_t first_pixel = ws.last_root;
  out.dim.push_back(0);
  out.birth.push_back(static_cast<double>(a[first_pixel]));
  out.death.push_back(sup ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity());
  out.birth_pixel.push_back(first_pixel);
  out.death_pixel.push_back(-1);
  if (!opt.dim1) return true;
  if (share) {
    dual_order(ws);
    dual_pass(ws.saddles);
  } else {
    sort_for(false, ws.dual_candidates);
    dual_pass(ws.dual_candidates);
  }
  return true;
}

}  // namespace

template <typename T>
bool batch_persistence(const T* maps, int64_t B, int64_t H, int64_t W, const PersistenceOptions& opt,
                       int num_threads, std::vector<ImagePairs>& out) {
  out.assign(B, ImagePairs{});
  std::atomic<bool> finite{true};
  parallel_for<Workspace<T>>(B, num_threads, [&](Workspace<T>& ws, int64_t b) {
    if (!finite.load(std::memory_order_relaxed)) return;  // the call fails anyway
    if (!image_persistence(maps + b * H * W, H, W, opt, ws, out[b])) finite = false;
  });
  return finite;
}

template bool batch_persistence<float>(const float*, int64_t, int64_t, int64_t, const PersistenceOptions&, int,
                                       std::vector<ImagePairs>&);
template bool batch_persistence<double>(const double*, int64_t, int64_t, int64_t, const PersistenceOptions&, int,
                                        std::vector<ImagePairs>&);

}  // namespace topoot
