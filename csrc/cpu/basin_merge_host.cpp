#include "basin_merge_host.h"

#include <utility>

#include "parallel.h"

namespace topoot {
namespace {

// Union-find over node ids [0, P] with values; entries are reset through `touched` so that a
// worker's array of size P + 1 is filled once. A node's parent and value share a cache line:
// the merge is bound by random accesses to nodes.
struct Node {
  int64_t parent;
  double w;
};

struct MergeState {
  std::vector<Node> node;
  std::vector<int64_t> touched;
};

}  // namespace

void basin_merge(const BasinEdges& edges, int64_t B, int64_t P, bool outside, int64_t dim, double sign,
                 int num_threads, std::vector<ImagePairs>& out) {
  out.assign(B, ImagePairs{});
  parallel_for<MergeState>(B, num_threads, [&](MergeState& st, int64_t b) {
    if (static_cast<int64_t>(st.node.size()) < P + 1) st.node.assign(P + 1, Node{-1, 0.0});
    Node* node = st.node.data();
    const int64_t lo = edges.offsets[b], hi = edges.offsets[b + 1];
    auto touch = [&](int64_t x, double w) {
      if (node[x].parent < 0) {
        node[x] = Node{x, w};
        st.touched.push_back(x);
      }
    };
    auto find = [&](int64_t x) {
      while (node[x].parent != x) {
        node[x].parent = node[node[x].parent].parent;
        x = node[x].parent;
      }
      return x;
    };
    auto older = [&](int64_t x, int64_t y) {
      if (outside && (x == P || y == P)) return x == P;
      return node[x].w < node[y].w || (node[x].w == node[y].w && x < y);
    };
    ImagePairs& res = out[b];
    for (int64_t e = lo; e < hi; ++e) {
      touch(edges.root_a[e], edges.w_a[e]);
      touch(edges.root_b[e], edges.w_b[e]);
      int64_t ra = find(edges.root_a[e]), rb = find(edges.root_b[e]);
      if (ra == rb) continue;
      if (older(ra, rb)) std::swap(ra, rb);  // ra: the young root
      node[ra].parent = rb;
      const double ws = edges.w_saddle[e], wa = node[ra].w;
      if (wa == ws) continue;  // zero-length pair
      const int64_t s = edges.saddle[e];
      res.dim.push_back(dim);
      res.birth.push_back(sign * (outside ? ws : wa));
      res.death.push_back(sign * (outside ? wa : ws));
      res.birth_pixel.push_back(outside ? s : ra);
      res.death_pixel.push_back(outside ? ra : s);
    }
    for (const int64_t x : st.touched) node[x].parent = -1;
    st.touched.clear();
  });
}

}  // namespace topoot
