// Helpers for loops the compiler should vectorise.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__APPLE__)
#include <immintrin.h>
#define TOPOOT_STREAM_AVX 1
#endif

// Function multi-versioning (GCC/Clang on x86-64 Linux): an AVX2 clone picked
// at load time on CPUs that have it, and the baseline build.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__APPLE__)
#define TOPOOT_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
// For loops of comparisons, bit operations and correctly rounded arithmetic only (exact whatever
// the instructions, so no floating-point contraction can differ between clones): an AVX-512 clone
// too. x86-64-v3 (AVX2 with FMA, as every AVX2 CPU has) so that Divisor's explicit fused
// multiply-adds are instructions in both vector clones.
#define TOPOOT_TARGET_CLONES_EXACT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Floating-point loops (the solver), AVX-512 and AVX2 (x86-64-v3: with FMA, which plain "avx2" lacks)
// clones. Every reduction keeps its order in every clone (explicit partial sums), but which product
// of a sum of products is fused, and how a loop's tail runs, is each clone's own: a build forced to
// its AVX2 clone differed from the AVX-512 one in the last bits on problems whose sides are not
// multiples of the vector width (and agreed on 64 x 64 and 256 x 256). One machine always runs the
// same clone, so its results are reproducible; across machines they agree to rounding.
#define TOPOOT_TARGET_CLONES_WIDE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TOPOOT_TARGET_CLONES
#define TOPOOT_TARGET_CLONES_EXACT
#define TOPOOT_TARGET_CLONES_WIDE
#endif

// Helpers called from a cloned function must be inlined into it, or the
// clone calls their baseline build.
#if defined(__GNUC__)
#define TOPOOT_INLINE inline __attribute__((always_inline))
// The same for a lambda (after its parameter list): hot helpers of a loop that GCC would
// otherwise call out of line.
#define TOPOOT_ALWAYS_INLINE __attribute__((always_inline))
#else
#define TOPOOT_INLINE inline
#define TOPOOT_ALWAYS_INLINE
#endif

namespace topoot {

// 1 when x is NaN or infinite (its exponent bits are all ones), else 0: an integer test, so that
// loops reducing it vectorise (a floating-point reduction may not).
template <typename T>
TOPOOT_INLINE unsigned non_finite(T x) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kExp = static_cast<Bits>(sizeof(T) == 4 ? 0x7F800000ull : 0x7FF0000000000000ull);
  Bits u;
  std::memcpy(&u, &x, sizeof u);
  return (u & kExp) == kExp;
}

// Whether this CPU has fused multiply-add (the baseline clones run on CPUs without AVX2, some of
// which have it; where it is missing std::fma is a slow library call).
inline bool cpu_has_fma() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("fma");
  return has;
#elif defined(__aarch64__) || defined(__FMA__)
  return true;
#else
  return false;
#endif
}

#if defined(TOPOOT_STREAM_AVX)
// Whether this CPU has AVX (StreamWriter's 32-byte stores).
inline bool cpu_has_avx() {
  static const bool has = __builtin_cpu_supports("avx");
  return has;
}

// count 16-byte units from src (nullptr: zeros) to dst (16-byte aligned) in 32-byte non-temporal
// stores, a 16-byte one first where dst is not 32-byte aligned and last where one is left. Out of
// line for AVX: it is called from every clone, behind cpu_has_avx().
__attribute__((target("avx"))) inline char* stream_avx(char* dst, const char* src, int64_t count) {
  int64_t t = 0;
  auto half = [&](int64_t at) {
    const __m128i x = src ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * at)) : _mm_setzero_si128();
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16 * at), x);
  };
  if (count > 0 && (reinterpret_cast<uintptr_t>(dst) & 31) != 0) half(t++);
  for (; t + 2 <= count; t += 2) {
    const __m256i x =
        src ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * t)) : _mm256_setzero_si256();
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 16 * t), x);
  }
  if (t < count) half(t);
  return dst + 16 * count;
}
#endif

// x / d for a d fixed over a loop, correctly rounded, without a division (a vector division
// issues several times slower than a multiply-add: a third of the time of the cost rows of a
// raw-noise map). Markstein's correction (P. W. Markstein, IBM J. Res. Develop. 34(1), 1990): with
// y = RN(1 / d), q = RN(x y) is within an ulp of x / d, so the residual x - q d is exact in one
// fused multiply-add, and RN(q + (x - q d) y) = RN(x / d). It holds while y is normal and x / d is
// finite and not subnormal; `fused` is false (the caller divides) where y is not normal or there
// is no FMA. Where x / d underflows or overflows, divide() may differ from x / d: callers say why
// that changes nothing they return.
template <typename T>
struct Divisor {
  T d, y;
  bool fused;
  explicit Divisor(T divisor) : d(divisor), y(T(1) / divisor), fused(cpu_has_fma() && std::isnormal(y)) {}
  TOPOOT_INLINE T divide(T x) const {
    const T q = x * y;
    return std::fma(std::fma(-q, d, x), y, q);
  }
};

// From this x up, exp_fast<T, false>(x) and exp_fast<T, true>(x) are the same normal number.
template <typename T>
constexpr T kExpNormalLow = sizeof(T) == 8 ? T(-708.0) : T(-87.0);

// exp(x) without a libm call, so that loops over it vectorise: Cody-Waite
// reduction x = k ln2 + r, |r| <= ln2/2, a Taylor polynomial of r (degree 13
// for double, 7 for float: truncation below half an ulp), times 2^k built in
// the bits. Within a few ulp of std::exp where the result is normal; +inf
// above 709 (float: 88). Where std::exp is subnormal (below -708, float: -87):
// 0, or with Subnormal, 2^k applied in two steps, the last one rounding into
// the subnormal range as std::exp does (0 below -745.2, float: -104). A
// Sinkhorn kernel exp(-M / reg) needs Subnormal: POT keeps such entries, and a
// zero there changes when it stops on numerical errors; in the log domain's
// sums, where the largest term is 1, they change nothing. x must not be NaN.
// Bounded (without Subnormal): for a caller that knows kExpNormalLow <= x <= 709
// (float: 88), or that discards every result when some x is not: the clamps and
// the selects at both ends, no-ops there, are left out (a third of the
// instructions a Sinkhorn kernel's exp takes; the same bits in range).
template <typename T, bool Subnormal = false, bool Bounded = false>
TOPOOT_INLINE T exp_fast(T x) {
  static_assert(!(Subnormal && Bounded), "a bounded exp has no subnormal results");
  using Bits = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  constexpr bool f64 = sizeof(T) == 8;
  constexpr int mant = f64 ? 52 : 23;
  constexpr Bits bias = f64 ? 1023 : 127;
  constexpr T lo = Subnormal ? (f64 ? T(-745.2) : T(-104.0)) : kExpNormalLow<T>;
  constexpr T hi = f64 ? T(709.0) : T(88.0);
  constexpr Bits lowest_normal_k = f64 ? -1022 : -126;
  constexpr T two_m64 = T(5.42101086242752217e-20);  // 2^-64
  constexpr T log2e = T(1.4426950408889634);
  constexpr T ln2_hi = f64 ? T(6.93147180369123816490e-01) : T(0.693145751953125);
  constexpr T ln2_lo = f64 ? T(1.90821492927058770002e-10) : T(1.428606765330187045e-06);
  // t = shifter + k: adding 1.5 * 2^mant rounds x log2(e) to the integer k,
  // which the bits of t then hold as bits(t) - bits(shifter).
  constexpr T shifter = f64 ? T(6755399441055744.0) : T(12582912.0f);
  const T xc = Bounded ? x : (x < lo ? lo : (x > hi ? hi : x));
  const T t = xc * log2e + shifter;
  const T k = t - shifter;
  const T r = (xc - k * ln2_hi) - k * ln2_lo;
  T p;
  if constexpr (f64) {
    p = T(1.0 / 6227020800.0);
    p = p * r + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
  } else {
    p = T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
  }
  p = p * r * r + r + T(1);
  Bits tb, sb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&sb, &shifter, sizeof sb);
  // 2^k, k in [-1075, 1023] (float: [-150, 127]); below the normal range as 2^(k + 64) 2^-64.
  const Bits exponent = tb - sb;
  const bool subnormal = Subnormal && exponent < lowest_normal_k;
  // Shifted unsigned: out of range (Bounded, results discarded) the exponent may be negative.
  using UBits = std::make_unsigned_t<Bits>;
  const Bits scale_bits =
      static_cast<Bits>(static_cast<UBits>((subnormal ? exponent + 64 : exponent) + bias) << mant);
  T scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  T out = p * scale;
  if constexpr (Bounded) return out;
  out = subnormal ? out * two_m64 : out;
  out = x < lo ? T(0) : out;
  out = x > hi ? std::numeric_limits<T>::infinity() : out;
  return out;
}

// Software prefetch for an input read front to back in rows with much work per entry (a kernel
// row's exp): the hardware prefetcher left the loads of the costs waiting (on a 2-core Xeon, a
// seventh of the time of a ragged batch in one of them); fetched kAhead bytes ahead, 12% less time.
class ReadAhead {
 public:
  static constexpr int64_t kAhead = 4096;
  ReadAhead(const void* begin, const void* end)
      : next_(static_cast<const char*>(begin)), end_(static_cast<const char*>(end)) {}
  // The kAhead bytes past p fetched (p: where reading is now; what lies behind it is being read,
  // so a row longer than kAhead is not fetched in one burst).
  TOPOOT_INLINE void at(const void* p) {
    const char* now = static_cast<const char*>(p);
    const char* want = now + kAhead < end_ ? now + kAhead : end_;
    if (next_ < now) next_ = now;
#if defined(__GNUC__)
    for (; next_ < want; next_ += 64) __builtin_prefetch(next_);
#else
    next_ = want;
#endif
  }

 private:
  const char* next_;
  const char* end_;
};

// ReadAhead for rows read in part: the same span of bytes of each row, rows given by their starts
// (a padded problem's real columns in each of its real rows). The rows ahead are fetched, kAhead
// bytes of their spans, and not what lies between the spans, which ReadAhead's one range would
// fetch too: in a batch padded to its largest problem, most of a smaller problem's row.
class PartRowsAhead {
 public:
  // Row r's span starts at base + rows[r] * stride and is part bytes long (part > 0).
  PartRowsAhead(const void* base, int64_t stride, const int64_t* rows, int64_t count, int64_t part)
      : base_(static_cast<const char*>(base)),
        stride_(stride),
        rows_(rows),
        count_(count),
        part_(part),
        ahead_((ReadAhead::kAhead + part - 1) / part) {}
  // Row r is being read: the spans of the rows up to kAhead bytes past it fetched.
  TOPOOT_INLINE void at(int64_t r) {
    const int64_t want = r + 1 + ahead_ < count_ ? r + 1 + ahead_ : count_;
    for (; next_ < want; ++next_) {
      const char* p = base_ + rows_[next_] * stride_;
#if defined(__GNUC__)
      const char* line = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63));
      for (; line < p + part_; line += 64) __builtin_prefetch(line);
#else
      (void)p;
#endif
    }
  }

 private:
  const char* base_;
  int64_t stride_;
  const int64_t* rows_;
  int64_t count_, part_, ahead_;
  int64_t next_ = 0;
};

// An output region written front to back, run after run. With Bypass, stores that bypass the
// caches (non-temporal: 32 bytes wide where the CPU has AVX, else SSE2's 16): a plan of tens of
// megabytes written once and not read back here then costs its writes only, not a read of every
// line first. Entries are held back until a whole aligned 16 bytes can be stored, so that runs of
// any length (a packed problem's rows) make one stream; only the region's first and last few
// entries are plain stores. finish() writes those and orders the stores before what follows (the
// threads' join). Without Bypass, or without SSE2: plain stores, left in the caches for a caller
// who reads them soon.
template <typename T, bool Bypass = true>
class StreamWriter {
 public:
  explicit StreamWriter(T* dst) : dst_(dst) {}
  TOPOOT_INLINE void put(const T* src, int64_t n) {
#if defined(__SSE2__)
    if constexpr (!Bypass) {
      std::memcpy(dst_, src, static_cast<size_t>(n) * sizeof(T));
      dst_ += n;
      return;
    }
    int64_t j = 0;
    while (j < n && held_ == 0 && (reinterpret_cast<uintptr_t>(dst_) & 15) != 0) *dst_++ = src[j++];
    while (j < n && held_ > 0) {
      buf_[held_++] = src[j++];
      if (held_ == kLanes) {
        store(buf_);
        held_ = 0;
      }
    }
    stream(src + j, (n - j) / kLanes);
    j += (n - j) / kLanes * kLanes;
    if (j < n) {  // fewer than kLanes left, and none held (the loops above ran)
      held_ = static_cast<int>(n - j);
      std::memcpy(buf_, src + j, static_cast<size_t>(held_) * sizeof(T));
    }
#else
    std::memcpy(dst_, src, static_cast<size_t>(n) * sizeof(T));
    dst_ += n;
#endif
  }
  TOPOOT_INLINE void put_zeros(int64_t n) {
#if defined(__SSE2__)
    if constexpr (!Bypass) {
      std::memset(dst_, 0, static_cast<size_t>(n) * sizeof(T));
      dst_ += n;
      return;
    }
    const T zeros[kLanes] = {};
    for (; n > 0 && (held_ > 0 || (reinterpret_cast<uintptr_t>(dst_) & 15) != 0); --n) put(zeros, 1);
    stream(nullptr, n / kLanes);
    put(zeros, n % kLanes);
#else
    std::memset(dst_, 0, static_cast<size_t>(n) * sizeof(T));
    dst_ += n;
#endif
  }
  TOPOOT_INLINE void finish() {
#if defined(__SSE2__)
    if constexpr (Bypass) {
      for (int t = 0; t < held_; ++t) *dst_++ = buf_[t];
      held_ = 0;
      _mm_sfence();
    }
#endif
  }

 private:
  static constexpr int kLanes = 16 / static_cast<int>(sizeof(T));
#if defined(__SSE2__)
  static TOPOOT_INLINE void stream_one(T* dst, const T* src) {
    if constexpr (sizeof(T) == 8) {
      _mm_stream_pd(reinterpret_cast<double*>(dst), _mm_loadu_pd(reinterpret_cast<const double*>(src)));
    } else {
      _mm_stream_ps(reinterpret_cast<float*>(dst), _mm_loadu_ps(reinterpret_cast<const float*>(src)));
    }
  }
  TOPOOT_INLINE void store(const T* src) {
    stream_one(dst_, src);
    dst_ += kLanes;
  }
  // count whole 16 bytes from src (nullptr: zeros). With AVX in 32-byte stores: the plan of a batch
  // padded to its largest problem (1024 problems of 5..200 points, 328 MB, three quarters zeros),
  // written row by row in a C loop on a Zen 4, took 14 ms against 18.5 in 16-byte ones. Else
  // through a local pointer: dst_, a member the stores may alias for the compiler, would go through
  // memory on every store (a chain of store-to-load forwarding).
  TOPOOT_INLINE void stream(const T* src, int64_t count) {
#if defined(TOPOOT_STREAM_AVX)
    if (cpu_has_avx()) {
      dst_ = reinterpret_cast<T*>(
          stream_avx(reinterpret_cast<char*>(dst_), reinterpret_cast<const char*>(src), count));
      return;
    }
#endif
    const T zeros[kLanes] = {};
    T* d = dst_;
    for (int64_t t = 0; t < count; ++t, d += kLanes) stream_one(d, src ? src + t * kLanes : zeros);
    dst_ = d;
  }
#endif
  T* dst_;
  T buf_[kLanes] = {};
  int held_ = 0;
};

}  // namespace topoot
