#include "basin_merge_cpu.h"

#include <utility>

#include "parallel.h"

namespace topoot {
namespace {

// Union-find over node ids [0, P] with values; entries are reset through `touched` so that a
// worker's arrays of size P + 1 are filled once.
struct MergeState {
  std::vector<int64_t> parent;
  std::vector<double> w;
  std::vector<int64_t> touched;
};

}  // namespace

void basin_merge(const BasinEdges& edges, int64_t B, int64_t P, bool outside, int64_t dim, double sign,
                 int num_threads, std::vector<ImagePairs>& out) {
  out.assign(B, ImagePairs{});
  parallel_for<MergeState>(B, num_threads, [&](MergeState& st, int64_t b) {
    if (static_cast<int64_t>(st.parent.size()) < P + 1) {
      st.parent.assign(P + 1, -1);
      st.w.assign(P + 1, 0.0);
    }
    const int64_t lo = edges.offsets[b], hi = edges.offsets[b + 1];
    auto touch = [&](int64_t node, double w) {
      if (st.parent[node] < 0) {
        st.parent[node] = node;
        st.w[node] = w;
        st.touched.push_back(node);
      }
    };
    auto find = [&](int64_t x) {
      while (st.parent[x] != x) {
        st.parent[x] = st.parent[st.parent[x]];
        x = st.parent[x];
      }
      return x;
    };
    auto older = [&](int64_t x, int64_t y) {
      if (outside && (x == P || y == P)) return x == P;
      return st.w[x] < st.w[y] || (st.w[x] == st.w[y] && x < y);
    };
    ImagePairs& res = out[b];
    for (int64_t e = lo; e < hi; ++e) {
      touch(edges.root_a[e], edges.w_a[e]);
      touch(edges.root_b[e], edges.w_b[e]);
      int64_t ra = find(edges.root_a[e]), rb = find(edges.root_b[e]);
      if (ra == rb) continue;
      if (older(ra, rb)) std::swap(ra, rb);  // ra: the young root
      st.parent[ra] = rb;
      const double ws = edges.w_saddle[e];
      if (st.w[ra] == ws) continue;  // zero-length pair
      const int64_t s = edges.saddle[e];
      res.dim.push_back(dim);
      res.birth.push_back(sign * (outside ? ws : st.w[ra]));
      res.death.push_back(sign * (outside ? st.w[ra] : ws));
      res.birth_pixel.push_back(outside ? s : ra);
      res.death_pixel.push_back(outside ? ra : s);
    }
    for (const int64_t node : st.touched) st.parent[node] = -1;
    st.touched.clear();
  });
}

}  // namespace topoot
