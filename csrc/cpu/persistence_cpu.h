// Exact cubical persistence of 2-D maps by union-find (SPEC section 2).
//
// H0 is a union-find over the pixels in increasing (value, flat index) order
// with the elder rule. H1 is obtained by duality (Garin, Heiss, Maggs, Bleile,
// Robins, "Duality in persistent homology of images", 2020): the sublevel H1
// of `a` is the sublevel H0 of `-a` on the dual connectivity (4 for
// construction T, 8 for V) with one virtual outside node, born at -inf, joined
// to every border pixel. So every diagram is a union-find pass.
#pragma once

#include <cstdint>
#include <vector>

namespace topoot {

enum class Construction { T, V };

// Pairs of one image, in the map's units. `death_pixel == -1` marks the
// essential H0 class (death +inf for sublevel, -inf for superlevel).
struct ImagePairs {
  std::vector<int64_t> dim;
  std::vector<double> birth, death;
  std::vector<int64_t> birth_pixel, death_pixel;
  void clear();
};

struct PersistenceOptions {
  bool superlevel = false;
  Construction construction = Construction::T;
  bool dim0 = true;
  bool dim1 = true;
};

// Diagrams of B maps (contiguous row-major [B, H, W]), `num_threads` workers
// over the batch (<= 0: hardware concurrency). out[b] receives image b's
// pairs. T is float or double. Returns false, the pairs then meaningless, when
// a map holds a NaN or an infinity (checked as the map is read, not in a pass
// of its own). (H + 2) * (W + 2) must be at most 2**30.
template <typename T>
bool batch_persistence(const T* maps, int64_t B, int64_t H, int64_t W,
                       const PersistenceOptions& opt, int num_threads,
                       std::vector<ImagePairs>& out);

}  // namespace topoot
