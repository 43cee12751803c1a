// Software prefetch of the bytes [begin, end), for the loops that stream the rows of x
// (segment_sums_avx2.cpp, center_loss_avx2.cpp, assign_small_k.cpp, lloyd_elkan.cpp,
// kmeans_plusplus_cpu.cpp): with the accumulator updates in flight the core issued the loads
// of the next rows too late to keep x streaming (issue 15: 9.7 -> 8.2 ms for 200,000 x 100
// rows on one core, where reading them takes 3.9).
#pragma once

namespace kmgan_ext {
namespace cpu {

// Every 64-byte line of the range, the last one included, with __builtin_prefetch's
// locality (a compile-time constant): 3 is prefetcht0 (into L1), 2 prefetcht1 (into L2).
template <int kLocality>
inline void prefetch_lines(const void* begin, const void* end) {
  const char* p = static_cast<const char*>(begin);
  const char* e = static_cast<const char*>(end);
  for (; p < e; p += 64) __builtin_prefetch(p, 0, kLocality);
  __builtin_prefetch(e - 1, 0, kLocality);
}

// Into L1 (prefetcht0).
inline void prefetch_range(const void* begin, const void* end) { prefetch_lines<3>(begin, end); }

// The same into L2 only (prefetcht1), for a loop that does little work per byte of x, where
// it measured faster than prefetch_range (issue 15: center_loss's forward over two
// 65,536 x 256 sides on 2 cores of a Xeon, 10.0 ms with prefetch_range 4 rows ahead, 7.6 ms
// with this 8 rows ahead; reading them takes 6.6). A request into L1 holds one of the core's
// few line-fill buffers until its line arrives, which the loop's own loads also need.
inline void prefetch_range_l2(const void* begin, const void* end) { prefetch_lines<2>(begin, end); }

}  // namespace cpu
}  // namespace kmgan_ext
