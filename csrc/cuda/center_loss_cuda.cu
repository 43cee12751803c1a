// km.center_loss on CUDA (KM-GAN Eq. 4, docs/ops.md, KM-GAN losses).
//
// u = sum_m (c_m + S_m) / (1 + n_m) is computed as sum_m c_m / (1 + n_m) + sum_i x_i / (1 +
// n_{l_i}): no (K, d) workspace, and the counts are the only dependency between rows.
// Forward, three launches for both sides together: label counts (integer atomics, exact), u_real
// - u_fake per feature (one block per 32 features walks all rows and centers of both sides;
// fixed-order sums), then ||u_diff||_1 in one block. Backward, one launch: the gradient of a row
// depends only on its label's count and sign(u_diff), not on x.
//
// Tuning left for a GPU session: the u kernel walks all N rows per 32 features, fine at GAN
// batch sizes (N = 64) but serial for large N; split rows across blocks with a fixed-order
// second pass if that matters.
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kCountThreads = 256;

// LR, LF: each side's label type (int64_t or int32_t, launchers.h).
template <typename LR, typename LF>
__global__ void __launch_bounds__(kCountThreads)
    count_labels_kernel(const LR* __restrict__ labels_real, int64_t n_real, int64_t k_real,
                        int64_t* __restrict__ counts_real,
                        const LF* __restrict__ labels_fake, int64_t n_fake, int64_t k_fake,
                        int64_t* __restrict__ counts_fake) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < n_real + n_fake; t += stride) {
    const bool real = t < n_real;
    const int64_t l = real ? static_cast<int64_t>(labels_real[t])
                           : static_cast<int64_t>(labels_fake[t - n_real]);
    const int64_t k = real ? k_real : k_fake;
    int64_t* counts = real ? counts_real : counts_fake;
    if (l >= 0 && l < k) atomicAdd(reinterpret_cast<unsigned long long*>(&counts[l]), 1ull);
  }
}

constexpr int kColsPerBlock = 32;  // one warp's width: lanes read consecutive features
constexpr int kRowLanes = 8;       // warps per block, each a lane over rows
constexpr int kUThreads = kColsPerBlock * kRowLanes;

// This thread's share (rows ty, ty + 8, ...; centers likewise) of u_j for one side, in
// double: the sum's error does not grow with N (contract 3).
template <typename T, typename L>
__device__ __forceinline__ double side_partial(const T* __restrict__ x,
                                                 const L* __restrict__ labels,
                                                 const T* __restrict__ centers,
                                                 const int64_t* __restrict__ counts, int64_t n,
                                                 int64_t k, int64_t d, int64_t j, int ty) {
  double s = 0;
  for (int64_t i = ty; i < n; i += kRowLanes) {
    const int64_t l = labels[i];
    if (l >= 0 && l < k)
      s += static_cast<double>(to_acc(x[i * d + j])) / (1.0 + static_cast<double>(counts[l]));
  }
  for (int64_t m = ty; m < k; m += kRowLanes)
    s += static_cast<double>(to_acc(centers[m * d + j])) / (1.0 + static_cast<double>(counts[m]));
  return s;
}

template <typename T, typename LR, typename LF>
__global__ void __launch_bounds__(kUThreads)
    center_loss_u_kernel(const T* __restrict__ x_real, const LR* __restrict__ labels_real,
                         const T* __restrict__ centers_real,
                         const int64_t* __restrict__ counts_real, int64_t n_real, int64_t k_real,
                         const T* __restrict__ x_fake, const LF* __restrict__ labels_fake,
                         const T* __restrict__ centers_fake,
                         const int64_t* __restrict__ counts_fake, int64_t n_fake, int64_t k_fake,
                         int64_t d, acc_t<T>* __restrict__ u_diff) {
  using A = acc_t<T>;
  __shared__ double part_real[kRowLanes][kColsPerBlock];
  __shared__ double part_fake[kRowLanes][kColsPerBlock];
  const int tx = threadIdx.x % kColsPerBlock, ty = threadIdx.x / kColsPerBlock;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + tx;
  double sr = 0, sf = 0;
  if (j < d) {
    sr = side_partial(x_real, labels_real, centers_real, counts_real, n_real, k_real, d, j, ty);
    sf = side_partial(x_fake, labels_fake, centers_fake, counts_fake, n_fake, k_fake, d, j, ty);
  }
  part_real[ty][tx] = sr;
  part_fake[ty][tx] = sf;
  __syncthreads();
  if (ty == 0 && j < d) {
    double ur = 0, uf = 0;
#pragma unroll
    for (int t = 0; t < kRowLanes; ++t) {
      ur += part_real[t][tx];
      uf += part_fake[t][tx];
    }
    u_diff[j] = static_cast<A>(ur - uf);
  }
}

template <typename A>
__global__ void __launch_bounds__(kFinishThreads)
    l1_norm_kernel(const A* __restrict__ v, int64_t n, A* __restrict__ out) {
  A s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += fabs(v[i]);
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

constexpr int kBackwardThreads = 256;
constexpr int kWarpsPerBlock = kBackwardThreads / 32;

// Rows [0, n_real) are the real side, [n_real, n_real + n_fake) the fake side; one warp per row.
template <typename T, typename LR, typename LF>
__global__ void __launch_bounds__(kBackwardThreads)
    center_loss_backward_kernel(const acc_t<T>* __restrict__ grad,
                                const acc_t<T>* __restrict__ u_diff,
                                const LR* __restrict__ labels_real,
                                const int64_t* __restrict__ counts_real, int64_t n_real,
                                int64_t k_real, const LF* __restrict__ labels_fake,
                                const int64_t* __restrict__ counts_fake, int64_t n_fake,
                                int64_t k_fake, int64_t d, T* __restrict__ grad_real,
                                T* __restrict__ grad_fake) {
  using A = acc_t<T>;
  const A g = grad[0];
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = warp; r < n_real + n_fake; r += warp_stride) {
    const bool real = r < n_real;
    const int64_t i = real ? r : r - n_real;
    const int64_t l = real ? static_cast<int64_t>(labels_real[i])
                           : static_cast<int64_t>(labels_fake[i]);
    const int64_t* counts = real ? counts_real : counts_fake;
    // l was validated upstream; an invalid one would count 0 rows, never read out of bounds.
    const bool label_ok = l >= 0 && l < (real ? k_real : k_fake);
    const A denom = A(1) + static_cast<A>(label_ok ? counts[l] : 0);
    T* out = real ? grad_real : grad_fake;
    for (int64_t j = lane; j < d; j += 32) {
      const A u = u_diff[j];
      const A sign = static_cast<A>((u > A(0)) - (u < A(0)));  // sign(0) = 0
      const A gj = (g * sign) / denom;
      out[i * d + j] = from_acc<T>(real ? gj : -gj);
    }
  }
}

}  // namespace

template <typename LR, typename LF>
cudaError_t center_loss_launch(Dtype dtype, const void* x_real, const LR* labels_real,
                               const void* centers_real, int64_t n_real, int64_t k_real,
                               const void* x_fake, const LF* labels_fake,
                               const void* centers_fake, int64_t n_fake, int64_t k_fake, int64_t d,
                               void* loss, void* u_diff, int64_t* counts_real,
                               int64_t* counts_fake, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    cudaError_t err;
    if ((err = cudaMemsetAsync(counts_real, 0, sizeof(int64_t) * k_real, stream)) != cudaSuccess)
      return err;
    if ((err = cudaMemsetAsync(counts_fake, 0, sizeof(int64_t) * k_fake, stream)) != cudaSuccess)
      return err;
    if (n_real + n_fake > 0) {
      KMGAN_LAUNCH(grid_for(n_real + n_fake, kCountThreads), kCountThreads, 0, stream,
          count_labels_kernel<LR, LF>)(
          labels_real, n_real, k_real, counts_real, labels_fake, n_fake, k_fake, counts_fake);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (d > 0) {
      const int64_t blocks = ceil_div(d, kColsPerBlock);
      if (blocks > INT32_MAX) return cudaErrorInvalidValue;
      KMGAN_LAUNCH(static_cast<unsigned>(blocks), kUThreads, 0, stream, center_loss_u_kernel<T, LR, LF>)(
          static_cast<const T*>(x_real), labels_real, static_cast<const T*>(centers_real),
          counts_real, n_real, k_real, static_cast<const T*>(x_fake), labels_fake,
          static_cast<const T*>(centers_fake), counts_fake, n_fake, k_fake, d,
          static_cast<A*>(u_diff));
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    KMGAN_LAUNCH(1, kFinishThreads, 0, stream, l1_norm_kernel<A>)(
        static_cast<const A*>(u_diff), d, static_cast<A*>(loss));
    return cudaGetLastError();
  });
}

template <typename LR, typename LF>
cudaError_t center_loss_backward_launch(Dtype dtype, const void* grad, const void* u_diff,
                                        const LR* labels_real, const int64_t* counts_real,
                                        int64_t n_real, int64_t k_real,
                                        const LF* labels_fake, const int64_t* counts_fake,
                                        int64_t n_fake, int64_t k_fake, int64_t d, void* grad_real,
                                        void* grad_fake, cudaStream_t stream) {
  if (n_real + n_fake == 0 || d == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    KMGAN_LAUNCH(grid_for(n_real + n_fake, kWarpsPerBlock), kBackwardThreads, 0, stream,
        center_loss_backward_kernel<T, LR, LF>)(
            static_cast<const A*>(grad), static_cast<const A*>(u_diff), labels_real, counts_real,
            n_real, k_real, labels_fake, counts_fake, n_fake, k_fake, d, static_cast<T*>(grad_real),
            static_cast<T*>(grad_fake));
    return cudaGetLastError();
  });
}

// Each side's labels int64 or int32 (launchers.h).
#define KMGAN_INSTANTIATE(LR, LF)                                                             \
  template cudaError_t center_loss_launch<LR, LF>(                                            \
      Dtype, const void*, const LR*, const void*, int64_t, int64_t, const void*, const LF*,   \
      const void*, int64_t, int64_t, int64_t, void*, void*, int64_t*, int64_t*, cudaStream_t); \
  template cudaError_t center_loss_backward_launch<LR, LF>(                                   \
      Dtype, const void*, const void*, const LR*, const int64_t*, int64_t, int64_t, const LF*, \
      const int64_t*, int64_t, int64_t, int64_t, void*, void*, cudaStream_t);
KMGAN_INSTANTIATE(int64_t, int64_t)
KMGAN_INSTANTIATE(int64_t, int32_t)
KMGAN_INSTANTIATE(int32_t, int64_t)
KMGAN_INSTANTIATE(int32_t, int32_t)
#undef KMGAN_INSTANTIATE

}  // namespace kmgan_cuda
