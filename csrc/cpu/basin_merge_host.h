// The sequential step of the GPU persistence backends (SPEC 2): the elder rule on the small
// graph of basins. The GPU gives every pixel its basin (the local minimum its steepest-descent
// path reaches), finds the neighbour pairs that cross two basins with their saddle (the later
// of the two pixels in the pass order) and keeps the lowest saddle of each pair of basins; the
// components of the sublevel filtration merge exactly along these edges taken in saddle order
// (the minimax path between two minima crosses basins only at such pairs), so Kruskal with the
// elder rule on them gives the union-find's pairs. The device sorts the edges; this is the
// union-find over them, linear in the edges.
#pragma once

#include <cstdint>
#include <vector>

#include "persistence_cpu.h"

namespace topoot {

struct BasinEdges {
  // Per edge, grouped by image (offsets [B + 1]) and, within an image, in Kruskal's order (saddles
  // in the pass order (w_saddle, saddle); edges sharing a saddle in any order, since all but the
  // oldest component die there whatever the order): saddle pixel, the two basin roots (flat pixel
  // indices, or P for the outside node) and the pass-order values w = sign * value of the three.
  const int64_t* offsets;
  const int64_t* saddle;
  const int64_t* root_a;
  const int64_t* root_b;
  const double* w_saddle;
  const double* w_a;
  const double* w_b;
};

// Pairs of every image, appended to out[b]. Pass order: (w, index), the outside node (index P,
// only with `outside`) first. H0 pass (!outside): birth = young root, death = saddle. Dual pass
// (outside): birth = saddle, death = young root, dimension 1. Values reported as sign * w;
// zero-length pairs dropped.
void basin_merge(const BasinEdges& edges, int64_t B, int64_t P, bool outside, int64_t dim, double sign,
                 int num_threads, std::vector<ImagePairs>& out);

}  // namespace topoot
