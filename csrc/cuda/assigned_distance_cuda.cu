// km.assigned_distance on CUDA: || x - C[labels] || (KM-GAN Eq. 5/6, docs/ops.md, KM-GAN losses).
//
// Forward, two launches: one warp per row forms r_i = ||x_i - c_{l_i}||^2 (direct differences),
// each block sums its rows' r_i (or sqrt(r_i) for "mean") into one float64 partial; one block
// then sums the partials in float64, finishes (sqrt for "fro", / N for "mean", / 2 for
// "sq_sum") and rounds once (contract 2: a float32 r_i past 3.4e38 is recomputed in float64,
// so the result is finite wherever the float64 reference's is). The block count
// is a function of N alone, so the summation order, hence the result, is the same run to run
// and GPU to GPU. Backward, one launch: one warp per row writes grad_x and, when asked, adds
// -grad_x into the (K, d) centers gradient with float atomics.
#include <type_traits>

#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kMaxPartials = 1024;

// ||x_i - c_l||^2 over the warp's lanes; every lane returns the same value.
template <typename T>
__device__ __forceinline__ acc_t<T> row_sq_dist(const T* __restrict__ x,
                                                const T* __restrict__ centers, int64_t i,
                                                int64_t l, bool label_ok, int64_t d, int lane) {
  using A = acc_t<T>;
  A s = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const A diff = to_acc(x[i * d + j]) - (label_ok ? to_acc(centers[l * d + j]) : A(0));
    s = fma(diff, diff, s);
  }
  return warp_sum(s);
}

// row_sq_dist as double: a float32 r_i that overflowed (squares past 3.4e38 while the norm, or
// the reduction, fits) is recomputed in double; every lane returns the same value, so the
// branch is uniform across the warp.
template <typename T>
__device__ __forceinline__ double row_sq_dist_wide(const T* __restrict__ x,
                                                   const T* __restrict__ centers, int64_t i,
                                                   int64_t l, bool label_ok, int64_t d, int lane) {
  const acc_t<T> r = row_sq_dist(x, centers, i, l, label_ok, d, lane);
  if constexpr (!std::is_same_v<acc_t<T>, double>) {
    if (isinf(r)) {
      double s = 0;
      for (int64_t j = lane; j < d; j += 32) {
        const double diff = static_cast<double>(to_acc(x[i * d + j])) -
                            (label_ok ? static_cast<double>(to_acc(centers[l * d + j])) : 0.0);
        s = fma(diff, diff, s);
      }
      return warp_sum(s);
    }
  }
  return static_cast<double>(r);
}

template <typename T, Reduction kReduction, typename L>
__global__ void __launch_bounds__(kThreads)
    assigned_distance_kernel(const T* __restrict__ x, const L* __restrict__ labels,
                             const T* __restrict__ centers, int64_t n, int64_t k, int64_t d,
                             double* __restrict__ partials) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  double mine = 0;  // this warp's rows, identical on all its lanes
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    const double r = row_sq_dist_wide(x, centers, i, l, l >= 0 && l < k, d, lane);
    mine += kReduction == Reduction::kMean ? sqrt(r) : r;
  }
  const double total = block_sum(lane == 0 ? mine : 0.0);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

template <typename T, Reduction kReduction, typename L>
__global__ void __launch_bounds__(kThreads)
    assigned_distance_backward_kernel(const acc_t<T>* __restrict__ grad,
                                      const acc_t<T>* __restrict__ out, const T* __restrict__ x,
                                      const L* __restrict__ labels,
                                      const T* __restrict__ centers, int64_t n, int64_t k,
                                      int64_t d, T* __restrict__ grad_x,
                                      double* __restrict__ grad_c) {
  using A = acc_t<T>;
  // Scales, differences and products in double, each gradient rounded once (contract 2): a
  // float32 difference near float32 max overflows, and 1 / ||.|| of a row past 1e38 is
  // subnormal in float32 while the product fits.
  const double g = static_cast<double>(grad[0]);
  // "fro": d/dx sqrt(sum r) = diff / out, 0 where out = 0; "sq_sum": d/dx 0.5 sum r = diff.
  double scale_all = g;
  if (kReduction == Reduction::kFro) {
    const double o = static_cast<double>(out[0]);
    scale_all = o > 0.0 ? g / o : 0.0;
  }
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    const bool label_ok = l >= 0 && l < k;
    double scale = scale_all;
    if (kReduction == Reduction::kMean) {
      // d/dx mean_i sqrt(r_i) = diff / (N sqrt(r_i)), 0 where r_i = 0.
      const double norm = sqrt(row_sq_dist_wide(x, centers, i, l, label_ok, d, lane));
      scale = norm > 0.0 ? g / static_cast<double>(n) / norm : 0.0;
    }
    for (int64_t j = lane; j < d; j += 32) {
      const double diff = static_cast<double>(to_acc(x[i * d + j])) -
                          (label_ok ? static_cast<double>(to_acc(centers[l * d + j])) : 0.0);
      const double gx = diff * scale;
      grad_x[i * d + j] = from_acc<T>(static_cast<A>(gx));
      // double: the per-cluster sum's error does not grow with N (contract 3)
      if (grad_c != nullptr && label_ok) atomicAdd(&grad_c[l * d + j], -gx);
    }
  }
}

template <typename F>
cudaError_t dispatch_reduction(Reduction reduction, F&& f) {
  switch (reduction) {
    case Reduction::kFro:
      return f(std::integral_constant<Reduction, Reduction::kFro>{});
    case Reduction::kMean:
      return f(std::integral_constant<Reduction, Reduction::kMean>{});
    case Reduction::kSqSum:
      return f(std::integral_constant<Reduction, Reduction::kSqSum>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int64_t assigned_distance_num_partials(int64_t n) {
  const int64_t blocks = ceil_div(n, kWarpsPerBlock);
  return blocks < kMaxPartials ? blocks : kMaxPartials;
}

template <typename L>
cudaError_t assigned_distance_launch(Dtype dtype, Reduction reduction, const void* x,
                                     const L* labels, const void* centers, int64_t n,
                                     int64_t k, int64_t d, void* partials, void* out,
                                     cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return dispatch_reduction(reduction, [&](auto red) {
      constexpr Reduction kReduction = decltype(red)::value;
      const int64_t blocks = assigned_distance_num_partials(n);
      if (blocks > 0) {
        KMGAN_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream,
                     assigned_distance_kernel<T, kReduction, L>)(
            static_cast<const T*>(x), labels, static_cast<const T*>(centers), n, k, d,
            static_cast<double*>(partials));
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
      }
      // N = 0 sums nothing: 0 for every reduction ("mean" divides by 1, as the reference).
      const double divisor = kReduction == Reduction::kMean ? static_cast<double>(n > 0 ? n : 1)
                             : kReduction == Reduction::kSqSum ? 2.0
                                                               : 1.0;
      KMGAN_LAUNCH(1, kFinishThreads, 0, stream, finish_sum_kernel<double, A>)(
          static_cast<const double*>(partials), blocks, kReduction == Reduction::kFro, divisor,
          static_cast<A*>(out));
      return cudaGetLastError();
    });
  });
}

template <typename L>
cudaError_t assigned_distance_backward_launch(Dtype dtype, Reduction reduction, const void* grad,
                                              const void* out, const void* x,
                                              const L* labels, const void* centers,
                                              int64_t n, int64_t k, int64_t d, void* grad_x,
                                              void* grad_centers_acc, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    return dispatch_reduction(reduction, [&](auto red) {
      constexpr Reduction kReduction = decltype(red)::value;
      if (grad_centers_acc != nullptr && k * d > 0) {
        const cudaError_t err =
            cudaMemsetAsync(grad_centers_acc, 0, sizeof(double) * k * d, stream);
        if (err != cudaSuccess) return err;
      }
      if (n == 0 || d == 0) return cudaSuccess;
      KMGAN_LAUNCH(grid_for(n, kWarpsPerBlock), kThreads, 0, stream,
                   assigned_distance_backward_kernel<T, kReduction, L>)(
              static_cast<const A*>(grad), static_cast<const A*>(out), static_cast<const T*>(x),
              labels, static_cast<const T*>(centers), n, k, d, static_cast<T*>(grad_x),
              static_cast<double*>(grad_centers_acc));
      return cudaGetLastError();
    });
  });
}

// int64 and int32 labels (launchers.h).
#define KMGAN_INSTANTIATE(L)                                                                  \
  template cudaError_t assigned_distance_launch<L>(Dtype, Reduction, const void*, const L*,    \
                                                   const void*, int64_t, int64_t, int64_t,     \
                                                   void*, void*, cudaStream_t);                \
  template cudaError_t assigned_distance_backward_launch<L>(                                   \
      Dtype, Reduction, const void*, const void*, const void*, const L*, const void*, int64_t, \
      int64_t, int64_t, void*, void*, cudaStream_t);
KMGAN_INSTANTIATE(int64_t)
KMGAN_INSTANTIATE(int32_t)
#undef KMGAN_INSTANTIATE

}  // namespace kmgan_cuda
