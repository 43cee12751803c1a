// km.assign(..., metric="cosine") on CUDA (issue 12; docs/ops.md "Cosine"), and its backward.
//
// labels[i] = argmax_k cos(x_i, c_k), the float64 reference's label; dist2 = 2 - 2 cos there,
// clamped at 0. The plan of assign_cosine_cpu.cpp:
//  * a prep kernel forms the unit centers u_k = c_k / ||c_k|| in float32 (K x d workspace; a
//    zero center stays zero, a NaN/Inf one gives NaN); x is never normalised or copied.
//  * one warp per row, lanes over the centers: s_k = x . u_k in float32 (fmaf in index
//    order). |computed s_k - ||x|| cos_k| <= err = (2 (d + 6) 2^-24) ||x|| + d 2^-126 (the
//    float32 dot over sum |x_j u_j| <= ||x||, the rounding of u and of float64 x to float32,
//    the reference's own misplacement of its key, products flushed or underflowed). Each lane
//    keeps its best and a count of its scores within 4 err of that best (an upper bound, reset
//    once the best leaves the window); merged over the warp, one candidate decides the row.
//  * every other row (two or more candidates, a zero or tiny row, NaN/Inf anywhere, ||x||^2
//    past float32) is re-scored on the reference's float64 key cos |cos| = dot |dot| /
//    (||x||^2 ||c||^2), every sum in index order with each product and sum rounded on its own
//    (__dmul_rn / __dadd_rn: nvcc would contract them into FMAs): the reference's roundings,
//    so its label; ties to the lowest k, NaN as torch.argmin reads -key.
// One warp per row and scalar loads: simple and correct. Tuning left for a GPU session (shared
// memory tiles of x and u as assign_cuda.cu, tensor cores under the same window).
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    unit_centers_kernel(const T* __restrict__ centers, int64_t k, int64_t d,
                        float* __restrict__ unit) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= k) return;
  const T* c = centers + q * d;
  const double norm = sqrt(canonical_dot(c, c, d));
  // A NaN/Inf center, or one whose norm overflows double (float64 inputs past 1e154): NaN, so
  // that every score against it is NaN and each row takes the exact scan.
  const bool finite = isfinite(norm);
  for (int64_t j = 0; j < d; ++j) {
    unit[q * d + j] = norm == 0.0 ? 0.0f
                      : finite    ? static_cast<float>(static_cast<double>(to_acc(c[j])) / norm)
                                  : NAN;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    assign_cosine_kernel(const T* __restrict__ x, const float* __restrict__ unit,
                         const T* __restrict__ centers, int64_t n, int k, int64_t d, float rel_err,
                         float abs_err, int64_t* __restrict__ labels,
                         acc_t<T>* __restrict__ dist2) {
  using A = acc_t<T>;
  // Batched problems: blockIdx.y is the problem, every pointer below its own slice (unit is
  // the (B*K, d) flat view's).
  const int64_t problem = blockIdx.y;
  x += problem * n * d;
  unit += problem * k * d;
  centers += problem * k * d;
  labels += problem * n;
  dist2 += problem * n;
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const T* xr = x + i * d;
    double part = 0.0;
    for (int64_t j = lane; j < d; j += 32) {
      const double v = static_cast<double>(static_cast<float>(to_acc(xr[j])));
      part += v * v;
    }
    const double xsq = warp_sum(part);  // of x as float32: what the scores multiply
    const float win = 4.0f * (rel_err * 1.001f * static_cast<float>(sqrt(xsq)) + abs_err);
    bool special = !(xsq < 3.0e38) || xsq < 1e-30;  // NaN/Inf, past float32, zero or tiny

    // Per lane over its centers (increasing k): the best score, its k, and a count of the
    // scores within `win` of the running best.
    float best = -INFINITY;
    int best_k = INT32_MAX;
    int near = 0;
    for (int kk = lane; kk < k; kk += 32) {
      const float* u = unit + static_cast<int64_t>(kk) * d;
      float s = 0.0f;
      for (int64_t j = 0; j < d; ++j) s = fmaf(static_cast<float>(to_acc(xr[j])), u[j], s);
      if (!isfinite(s)) {
        special = true;
        continue;
      }
      if (s > best) {
        near = best >= s - win ? near + 1 : 1;
        best = s;
        best_k = kk;
      } else if (s >= best - win) {
        ++near;
      }
    }
    // Merge over the warp: the top score (lowest k on ties); the lanes whose best lies in
    // the top's window bring their counts (upper bounds of their scores within it).
    float top = best;
    int top_k = best_k;
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float ob = __shfl_xor_sync(kFullMask, top, offset);
      const int ok = __shfl_xor_sync(kFullMask, top_k, offset);
      if (ok != INT32_MAX && (top_k == INT32_MAX || ob > top || (ob == top && ok < top_k))) {
        top = ob;
        top_k = ok;
      }
    }
    const int candidates = warp_sum(best_k != INT32_MAX && best >= top - win ? near : 0);
    special = __ballot_sync(kFullMask, special) != 0u;

    int label = top_k;
    if (special || candidates != 1) {
      const double nx2 = canonical_dot(xr, xr, d);
      double kbest = 0.0;
      int kidx = INT32_MAX;
      for (int kk = lane; kk < k; kk += 32) {
        const double key = cosine_key(xr, nx2, centers + static_cast<int64_t>(kk) * d, d);
        if (kidx == INT32_MAX || key_before(key, kk, kbest, kidx)) {
          kbest = key;
          kidx = kk;
        }
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        const double ob = __shfl_xor_sync(kFullMask, kbest, offset);
        const int ok = __shfl_xor_sync(kFullMask, kidx, offset);
        if (ok != INT32_MAX && (kidx == INT32_MAX || key_before(ob, ok, kbest, kidx))) {
          kbest = ob;
          kidx = ok;
        }
      }
      label = kidx;
    }
    if (lane == 0) {
      labels[i] = label;
      dist2[i] = static_cast<A>(cosine_dist2(xr, centers + static_cast<int64_t>(label) * d, d));
    }
  }
}

// dist2 = 2 - 2 cos: grad_x = -2 g (c / (|x||c|) - cos x / |x|^2), grad_c[l] += -2 g (x /
// (|x||c|) - cos c / |c|^2), both 0 where |x||c| = 0. One warp per row; double throughout,
// double atomics for the centers (contract 3).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    assign_cosine_backward_kernel(const acc_t<T>* __restrict__ grad_dist2,
                                  const T* __restrict__ x, const T* __restrict__ centers,
                                  const int64_t* __restrict__ labels, int64_t n, int64_t k,
                                  int64_t d, T* __restrict__ grad_x, double* __restrict__ grad_c) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    const bool label_ok = l >= 0 && l < k;
    double dot = 0.0, nx2 = 0.0, nc2 = 0.0;
    for (int64_t j = lane; j < d; j += 32) {
      const double xv = to_acc(x[i * d + j]);
      const double cv = label_ok ? static_cast<double>(to_acc(centers[l * d + j])) : 0.0;
      dot += xv * cv;
      nx2 += xv * xv;
      nc2 += cv * cv;
    }
    dot = warp_sum(dot);
    nx2 = warp_sum(nx2);
    nc2 = warp_sum(nc2);
    const double nx = sqrt(nx2), nc = sqrt(nc2), den = nx * nc;
    const bool zero = den == 0.0;
    const double cs = zero ? 0.0 : dot / den;
    const double g = zero ? 0.0 : -2.0 * static_cast<double>(grad_dist2[i]);
    const double a = zero ? 0.0 : g / den;
    const double bx = zero ? 0.0 : g * cs / (nx * nx);
    const double bc = zero ? 0.0 : g * cs / (nc * nc);
    for (int64_t j = lane; j < d; j += 32) {
      const double xv = to_acc(x[i * d + j]);
      const double cv = label_ok ? static_cast<double>(to_acc(centers[l * d + j])) : 0.0;
      grad_x[i * d + j] = from_acc<T>(static_cast<acc_t<T>>(a * cv - bx * xv));
      if (grad_c != nullptr && label_ok) atomicAdd(&grad_c[l * d + j], a * xv - bc * cv);
    }
  }
}

}  // namespace

cudaError_t assign_cosine_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                                 int64_t k, int64_t d, float* unit, int64_t* labels, void* dist2,
                                 cudaStream_t stream, int64_t batch) {
  if (n == 0 || batch == 0) return cudaSuccess;
  if (batch < 0 || k <= 0 || k > INT32_MAX - 32) return cudaErrorInvalidValue;
  const double u = 5.9604644775390625e-8;  // 2^-24
  const float rel = static_cast<float>(2.0 * (static_cast<double>(d) + 6.0) * u);
  const float absolute = static_cast<float>(static_cast<double>(d) * 1.1754943508222875e-38);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // The unit centers of all problems at once: the (batch*k, d) flat view.
    KMGAN_LAUNCH(static_cast<unsigned>(ceil_div(batch * k, kThreads)), kThreads, 0, stream,
                 unit_centers_kernel<T>)(static_cast<const T*>(centers), batch * k, d, unit);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    // Problems on grid y, at most kMaxGridY a launch (one launch up to that many problems);
    // grid x shares the grid-stride budget among them (at least one block per problem).
    constexpr int64_t kMaxGridY = 65535;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const int64_t nb = batch - b0 < kMaxGridY ? batch - b0 : kMaxGridY;
      const dim3 grid(static_cast<unsigned>(ceil_div(grid_for(n * nb, kWarps), nb)),
                      static_cast<unsigned>(nb));
      KMGAN_LAUNCH(grid, kThreads, 0, stream, assign_cosine_kernel<T>)(
          static_cast<const T*>(x) + b0 * n * d, unit + b0 * k * d,
          static_cast<const T*>(centers) + b0 * k * d, n, static_cast<int>(k), d, rel, absolute,
          labels + b0 * n, static_cast<acc_t<T>*>(dist2) + b0 * n);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

cudaError_t unit_centers_launch(Dtype dtype, const void* centers, int64_t k, int64_t d,
                                float* unit, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    KMGAN_LAUNCH(static_cast<unsigned>(ceil_div(k, kThreads)), kThreads, 0, stream,
                 unit_centers_kernel<T>)(static_cast<const T*>(centers), k, d, unit);
    return cudaGetLastError();
  });
}

cudaError_t assign_cosine_backward_launch(Dtype dtype, const void* grad_dist2, const void* x,
                                          const void* centers, const int64_t* labels, int64_t n,
                                          int64_t k, int64_t d, void* grad_x,
                                          void* grad_centers_acc, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (grad_centers_acc != nullptr && k * d > 0) {
      const cudaError_t err = cudaMemsetAsync(grad_centers_acc, 0, sizeof(double) * k * d, stream);
      if (err != cudaSuccess) return err;
    }
    if (n == 0 || d == 0) return cudaSuccess;
    KMGAN_LAUNCH(grid_for(n, kWarps), kThreads, 0, stream, assign_cosine_backward_kernel<T>)(
        static_cast<const A*>(grad_dist2), static_cast<const T*>(x),
        static_cast<const T*>(centers), labels, n, k, d, static_cast<T*>(grad_x),
        static_cast<double*>(grad_centers_acc));
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
