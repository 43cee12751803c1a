// km.assign(x, centers, k=k) on CUDA: the k nearest centers of every row, ascending, exact.
//
// One thread per row. A block of kRows threads streams tiles of kCenters centers through
// shared memory, kDims features at a time; each thread sums (x - c)^2 for its row against the
// tile's centers in registers (direct differences, float32; float64 for float64 inputs) and
// folds them into its row's running list of the L = min(K, k + kSlack) smallest (value, index)
// pairs, kept sorted in a global workspace (N, L) that only its own thread touches. The (N, K)
// matrix is never written.
//
// Exactness (as csrc/cpu/assign_topk_cpu.cpp and kernels/assign_topk.py): a computed distance
// is within a relative (d + 2) u of the exact one (+ d 2^-149 for subnormal terms). With v_k the
// k-th smallest computed distance and T = v_k (1 + 4 rel) + abs, no center above T is in the
// top k; when the list holds every center <= T, those are re-scored in double from the inputs
// and sorted by (distance, index). Otherwise (more than kSlack near-ties at the k-th place, a
// non-finite distance in the row), the thread rescans all K in double with the exact order:
// NaN first (lowest index first: torch.argmin's rule for column 0), then ascending, ties to the
// lowest index.
//
// metric="cosine" (kCosine): the tiles hold the unit centers u_k = c_k / ||c_k|| (float32,
// unit_centers_launch) and the list ranks -s_k, s_k = x . u_k summed with fmaf in index order:
// |computed s_k - ||x|| cos_k| <= E = 2 (d + 6) 2^-24 ||x|| + d 2^-126 (assign_cosine_cuda.cu's
// bound). With T = (k-th smallest -s) + 4 E (2 E, doubled as assign_cosine's window), no center
// above T is in the top k; the prefix within T is re-keyed with the reference's float64 key
// cos |cos| (cosine_key, common.cuh) and sorted by -key, then index (NaN first as -inf). Rows
// that are zero, tiny, non-finite or past float32 (||x||^2), or with more than kSlack
// near-ties, are keyed over all K. dist2 = 2 - 2 cos at each label (cosine_dist2).
//
// Correctness first: one thread per row has no data reuse across rows beyond the shared tile
// and diverges on the insertions. Tuning left for a GPU session: a warp per row-tile with the
// assign kernel's 4x4 register tiling and a threshold test before the insertion.
#include <type_traits>

#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kRows = 128;    // threads (rows) per block
constexpr int kCenters = 32;  // centers per tile
constexpr int kDims = 32;     // features per shared-memory stage
constexpr int64_t kSlack = 8;

template <typename A>
__device__ __forceinline__ A unit_roundoff();
template <>
__device__ __forceinline__ float unit_roundoff<float>() { return 5.9604645e-8f; }
template <>
__device__ __forceinline__ double unit_roundoff<double>() { return 1.1102230246251565e-16; }

// Inserts (v, idx) into the sorted list (vals, idxs) of *count entries, at most cap; keys
// compare by value, then index (callers pass increasing idx, so a strict < on v suffices).
__device__ __forceinline__ void list_insert(double* vals, int64_t* idxs, int64_t* count,
                                            int64_t cap, double v, int64_t idx) {
  int64_t m = *count;
  if (m == cap && !(v < vals[cap - 1])) return;
  int64_t p = m < cap ? m++ : cap - 1;
  while (p > 0 && v < vals[p - 1]) {
    vals[p] = vals[p - 1];
    idxs[p] = idxs[p - 1];
    --p;
  }
  vals[p] = v;
  idxs[p] = idx;
  *count = m;
}

template <typename T>
__device__ double exact_dist(const T* __restrict__ a, const T* __restrict__ b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(to_acc(a[j])) - static_cast<double>(to_acc(b[j]));
    s += t * t;
  }
  return s;
}

// The value a center is ranked by on the exact paths: the distance (NaN first as -1), or with
// kCosine the negated key (NaN first as -inf).
template <bool kCosine, typename T>
__device__ double exact_value(const T* __restrict__ xr, double nx2, const T* __restrict__ c,
                              int64_t d) {
  if (kCosine) {
    const double key = cosine_key(xr, nx2, c, d);
    return isnan(key) ? -INFINITY : -key;
  }
  const double v = exact_dist(xr, c, d);
  return isnan(v) ? -1.0 : v;
}

// kCosine: `unit` holds the unit centers (float32); otherwise it is unread (null).
// Batched problems: blockIdx.y is the problem, every pointer below its own slice (the unit
// centers and the lists are the flat (B*K, d) and (B*N, cap) views').
template <typename T, bool kCosine>
__global__ void __launch_bounds__(kRows)
    assign_topk_kernel(const T* __restrict__ x, const T* __restrict__ centers,
                       const float* __restrict__ unit, int64_t n, int64_t kc, int64_t d,
                       int64_t k, int64_t cap, double* __restrict__ lv_all,
                       int64_t* __restrict__ li_all, int64_t* __restrict__ labels,
                       acc_t<T>* __restrict__ dist2) {
  using A = std::conditional_t<kCosine, float, acc_t<T>>;  // the streamed values' type
  __shared__ A cs[kCenters][kDims];
  const int64_t pb = blockIdx.y;
  x += pb * n * d;
  centers += pb * kc * d;
  if (kCosine) unit += pb * kc * d;
  lv_all += pb * n * cap;
  li_all += pb * n * cap;
  labels += pb * n * k;
  dist2 += pb * n * k;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool active = row < n;
  double* lv = lv_all + (active ? row : 0) * cap;
  int64_t* li = li_all + (active ? row : 0) * cap;
  int64_t count = 0;
  bool special = false;
  for (int64_t k0 = 0; k0 < kc; k0 += kCenters) {
    A acc[kCenters];
#pragma unroll
    for (int c = 0; c < kCenters; ++c) acc[c] = A(0);
    for (int64_t d0 = 0; d0 < d; d0 += kDims) {
      __syncthreads();  // the previous stage's reads are done
      for (int e = threadIdx.x; e < kCenters * kDims; e += kRows) {
        const int c = e / kDims, j = e % kDims;
        const int64_t cc = k0 + c, jj = d0 + j;
        if (kCosine) {
          cs[c][j] = (cc < kc && jj < d) ? static_cast<A>(unit[cc * d + jj]) : A(0);
        } else {
          cs[c][j] = (cc < kc && jj < d) ? static_cast<A>(to_acc(centers[cc * d + jj])) : A(0);
        }
      }
      __syncthreads();
      if (active) {
        const int64_t dn = d - d0 < kDims ? d - d0 : kDims;
        for (int64_t j = 0; j < dn; ++j) {
          const A xv = static_cast<A>(to_acc(x[row * d + d0 + j]));
#pragma unroll
          for (int c = 0; c < kCenters; ++c) {
            if (kCosine) {
              acc[c] = fma(xv, cs[c][j], acc[c]);  // s_k; ranked by -s_k below
            } else {
              const A t = xv - cs[c][j];
              acc[c] = fma(t, t, acc[c]);
            }
          }
        }
      }
    }
    if (active) {
      for (int c = 0; c < kCenters && k0 + c < kc; ++c) {
        if (!isfinite(acc[c])) {
          special = true;
          continue;
        }
        list_insert(lv, li, &count, cap, static_cast<double>(kCosine ? -acc[c] : acc[c]), k0 + c);
      }
    }
  }
  if (!active) return;
  const T* xr = x + row * d;
  // T = scale v_k + offset, v_k the k-th smallest computed value
  double scale, offset;
  double nx2 = 0.0;  // kCosine: ||x||^2 as the reference forms it (the exact keys')
  if (kCosine) {
    double xsq = 0.0;  // of x as float32: what the scores multiply
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(static_cast<float>(to_acc(xr[j])));
      xsq += v * v;
    }
    special = special || !(xsq < 3.0e38) || xsq < 1e-30;  // NaN/Inf, past float32, zero or tiny
    const double rel = 2.0 * (static_cast<double>(d) + 6.0) * 5.9604644775390625e-8;
    const double abs_err = static_cast<double>(d) * 1.1754943508222875e-38;
    scale = 1.0;
    offset = 4.0 * (rel * 1.001 * sqrt(xsq) + abs_err);
    nx2 = canonical_dot(xr, xr, d);
  } else {
    const double rel = static_cast<double>(d + 2) * (static_cast<double>(unit_roundoff<A>()) + 1.1102230246251565e-16);
    scale = 1.0 + 4.0 * rel;
    offset = static_cast<double>(d + 1) * (sizeof(A) == 8 ? 4.9406564584124654e-324 : 1.4e-45);
  }
  int64_t m = 0;  // candidates: the list's prefix within T
  if (!special && count >= k) {
    const double thr = lv[k - 1] * scale + offset;
    if (count < cap || cap == kc || lv[cap - 1] > thr) {
      while (m < count && lv[m] <= thr) ++m;
    }
  }
  if (m > 0) {
    // re-score the prefix in double and insertion-sort it by (value, index)
    for (int64_t j = 0; j < m; ++j) lv[j] = exact_value<kCosine>(xr, nx2, centers + li[j] * d, d);
    for (int64_t j = 1; j < m; ++j) {
      const double v = lv[j];
      const int64_t ix = li[j];
      int64_t p = j;
      while (p > 0 && (v < lv[p - 1] || (v == lv[p - 1] && ix < li[p - 1]))) {
        lv[p] = lv[p - 1];
        li[p] = li[p - 1];
        --p;
      }
      lv[p] = v;
      li[p] = ix;
    }
  } else {
    // every center in double; NaN first (lowest index first)
    count = 0;
    for (int64_t c = 0; c < kc; ++c) {
      list_insert(lv, li, &count, cap, exact_value<kCosine>(xr, nx2, centers + c * d, d), c);
    }
  }
  using Out = acc_t<T>;
  for (int64_t j = 0; j < k; ++j) {
    const double v = lv[j];
    labels[row * k + j] = li[j];
    if (kCosine) {
      dist2[row * k + j] = static_cast<Out>(cosine_dist2(xr, centers + li[j] * d, d));
    } else {
      dist2[row * k + j] = static_cast<Out>(v < 0.0 ? NAN : v);  // past float32's range: inf
    }
  }
}

}  // namespace

int64_t assign_topk_list_len(int64_t k, int64_t kc) { return kc < k + kSlack ? kc : k + kSlack; }

cudaError_t assign_topk_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                               int64_t kc, int64_t d, int64_t k, double* list_val,
                               int64_t* list_idx, int64_t* labels, void* dist2,
                               cudaStream_t stream, float* unit, int64_t batch) {
  if (n == 0 || batch == 0) return cudaSuccess;
  if (batch < 0 || k < 1 || k > kc || ceil_div(n, kRows) > INT32_MAX) return cudaErrorInvalidValue;
  if (unit != nullptr) {  // metric="cosine": the unit centers of every problem, one pass
    const cudaError_t err = unit_centers_launch(dtype, centers, batch * kc, d, unit, stream);
    if (err != cudaSuccess) return err;
  }
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cap = assign_topk_list_len(k, kc);
    const unsigned blocks = static_cast<unsigned>(ceil_div(n, kRows));
    // Problems on grid y, at most kMaxGridY a launch (one launch up to that many problems).
    constexpr int64_t kMaxGridY = 65535;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(blocks, static_cast<unsigned>(batch - b0 < kMaxGridY ? batch - b0 : kMaxGridY));
      const T* xb = static_cast<const T*>(x) + b0 * n * d;
      const T* cb = static_cast<const T*>(centers) + b0 * kc * d;
      double* lvb = list_val + b0 * n * cap;
      int64_t* lib = list_idx + b0 * n * cap;
      int64_t* labb = labels + b0 * n * k;
      acc_t<T>* d2b = static_cast<acc_t<T>*>(dist2) + b0 * n * k;
      if (unit != nullptr) {
        KMGAN_LAUNCH(grid, kRows, 0, stream, assign_topk_kernel<T, true>)(
            xb, cb, unit + b0 * kc * d, n, kc, d, k, cap, lvb, lib, labb, d2b);
      } else {
        KMGAN_LAUNCH(grid, kRows, 0, stream, assign_topk_kernel<T, false>)(
            xb, cb, nullptr, n, kc, d, k, cap, lvb, lib, labb, d2b);
      }
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

}  // namespace kmgan_cuda
