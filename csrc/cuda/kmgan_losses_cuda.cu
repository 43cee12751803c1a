// The KM-GAN loss block on CUDA (kmgan_ext::kmgan_losses_native): the two kernels the single
// ops do not already provide.
//
// The forward is composed in kmgan_losses_cuda_binding.cpp: assign x3 (labels and each row's
// squared distance), kmgan_pulls_kernel (both pulls, L_D and L_G from those distances: one
// launch instead of assigned_distance's two per side), center_loss (Eq. 4). The backward is one
// launch for both batches and all three upstream gradients.
#include "common.cuh"
#include "kmgan_losses_cuda.h"

namespace kmgan_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

// ||x - c||^2 of one row over the warp's lanes, every lane the same value, as double: float32
// first, recomputed in double where the float32 squares overflowed (uniform over the warp).
template <typename T>
__device__ __forceinline__ double row_sq_dist_wide(const T* __restrict__ x,
                                                   const T* __restrict__ c, int64_t d, int lane) {
  using A = acc_t<T>;
  A s = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const A diff = to_acc(x[j]) - to_acc(c[j]);
    s = fma(diff, diff, s);
  }
  s = warp_sum(s);
  if (!isinf(s)) return static_cast<double>(s);
  double w = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const double diff = static_cast<double>(to_acc(x[j])) - static_cast<double>(to_acc(c[j]));
    w = fma(diff, diff, w);
  }
  return warp_sum(w);
}

template <typename A>
__device__ __forceinline__ A finish_pull(A total, int64_t n, Reduction reduction) {
  switch (reduction) {
    case Reduction::kFro:
      return sqrt(total);
    case Reduction::kMean:
      return total / static_cast<A>(n > 0 ? n : 1);
    case Reduction::kSqSum:
      return A(0.5) * total;
  }
  return total;
}

// One side's pull term of row i in double: from assign's dist2, except where that overflowed
// the float32 range (inf) while the inputs are finite: then ||x_i - c_{l_i}||^2 is recomputed
// in double here (contract 2; rare, one thread walks the row), as assigned_distance does.
template <typename T>
__device__ __forceinline__ double pull_term(const acc_t<T>* __restrict__ dist2, const T* __restrict__ x,
                                            const int64_t* __restrict__ labels,
                                            const T* __restrict__ centers, int64_t k, int64_t d,
                                            int64_t i, Reduction reduction) {
  double r = static_cast<double>(dist2[i]);
  if (isinf(r)) {
    const int64_t l = labels[i];
    if (l >= 0 && l < k) {
      r = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double diff = static_cast<double>(to_acc(x[i * d + j])) -
                            static_cast<double>(to_acc(centers[l * d + j]));
        r = fma(diff, diff, r);
      }
    }
  }
  return reduction == Reduction::kMean ? sqrt(r) : r;
}

// Both pulls summed and finished in double, each rounded once to acc; L_D is the difference
// of the rounded pulls in double, rounded once (as the reference and the CPU kernel).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    kmgan_pulls_kernel(Reduction reduction, const T* __restrict__ f_real,
                       const int64_t* __restrict__ labels_real,
                       const acc_t<T>* __restrict__ dist2_real, int64_t n_real,
                       const T* __restrict__ f_fake, const int64_t* __restrict__ labels_fake,
                       const acc_t<T>* __restrict__ dist2_fake, int64_t n_fake,
                       const T* __restrict__ centers_real, int64_t k_real, int64_t d,
                       acc_t<T>* __restrict__ pulls, acc_t<T>* __restrict__ loss_d,
                       acc_t<T>* __restrict__ loss_g) {
  using A = acc_t<T>;
  double s_real = 0, s_fake = 0;
  for (int64_t i = threadIdx.x; i < n_real; i += blockDim.x)
    s_real += pull_term(dist2_real, f_real, labels_real, centers_real, k_real, d, i, reduction);
  for (int64_t i = threadIdx.x; i < n_fake; i += blockDim.x)
    s_fake += pull_term(dist2_fake, f_fake, labels_fake, centers_real, k_real, d, i, reduction);
  s_real = block_sum(s_real);
  s_fake = block_sum(s_fake);
  if (threadIdx.x == 0) {
    const A pr = static_cast<A>(finish_pull(s_real, n_real, reduction));
    const A pf = static_cast<A>(finish_pull(s_fake, n_fake, reduction));
    pulls[0] = pr;
    pulls[1] = pf;
    *loss_d = static_cast<A>(static_cast<double>(pr) - static_cast<double>(pf));
    *loss_g = pf;
  }
}

// Rows [0, n_real) are the real batch, [n_real, n_real + n_fake) the generated one; one warp
// per row (grid-stride), lanes over features.
template <typename T>
__global__ void __launch_bounds__(kThreads) kmgan_losses_backward_kernel(
    Reduction reduction, const acc_t<T>* __restrict__ grad_d, const acc_t<T>* __restrict__ grad_g,
    const acc_t<T>* __restrict__ grad_center, const T* __restrict__ f_real,
    const T* __restrict__ f_fake, const T* __restrict__ centers, int64_t k_real,
    const int64_t* __restrict__ labels_real, const int64_t* __restrict__ labels_fake,
    const int64_t* __restrict__ labels_fake_hat, const acc_t<T>* __restrict__ pulls,
    const acc_t<T>* __restrict__ u_diff, const int64_t* __restrict__ counts_real,
    const int64_t* __restrict__ counts_fake, int64_t k_fake, int64_t n_real, int64_t n_fake,
    int64_t d, T* __restrict__ grad_real, T* __restrict__ grad_fake) {
  using A = acc_t<T>;
  const A gd = grad_d != nullptr ? grad_d[0] : A(0);
  const A gg = grad_g != nullptr ? grad_g[0] : A(0);
  const A gc = grad_center != nullptr ? grad_center[0] : A(0);
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = warp; r < n_real + n_fake; r += warp_stride) {
    const bool real = r < n_real;
    const int64_t i = real ? r : r - n_real;
    const T* x = (real ? f_real : f_fake) + i * d;
    const int64_t l = real ? labels_real[i] : labels_fake[i];
    const int64_t lc = real ? l : labels_fake_hat[i];
    // Labels come from the forward; an invalid one (a misuse of the public native op) would
    // read out of bounds: leave that row's gradient at 0 from the center-side terms only.
    const bool l_ok = l >= 0 && l < k_real;
    const bool lc_ok = lc >= 0 && lc < (real ? k_real : k_fake);
    const T* c = centers + (l_ok ? l : 0) * d;
    // In double, each gradient rounded once (contract 2): a float32 difference near float32
    // max overflows, and a "mean" scale 1 / (N r_i) past 1e38 is subnormal in float32.
    const double g_pull = real ? static_cast<double>(gd)
                               : static_cast<double>(gg) - static_cast<double>(gd);
    const double pull = static_cast<double>(pulls[real ? 0 : 1]);
    const double n_side = static_cast<double>(real ? n_real : n_fake);
    const double count = static_cast<double>(lc_ok ? (real ? counts_real : counts_fake)[lc] : 0);
    const double w = static_cast<double>(real ? gc : -gc) / (1.0 + count);
    double scale = 0;
    if (reduction == Reduction::kFro) {
      scale = pull > 0.0 ? g_pull / pull : 0.0;
    } else if (reduction == Reduction::kMean) {
      const double rr = sqrt(row_sq_dist_wide(x, c, d, lane));
      scale = rr > 0.0 ? g_pull / n_side / rr : 0.0;
    } else {
      scale = g_pull;
    }
    if (!l_ok) scale = 0;
    T* out = (real ? grad_real : grad_fake) + i * d;
    for (int64_t j = lane; j < d; j += 32) {
      const double diff = static_cast<double>(to_acc(x[j])) - static_cast<double>(to_acc(c[j]));
      const A u = u_diff[j];
      const double sign = static_cast<double>((u > A(0)) - (u < A(0)));  // sign(0) = 0
      out[j] = from_acc<T>(static_cast<A>(scale * diff + w * sign));
    }
  }
}

}  // namespace

cudaError_t kmgan_pulls_launch(Dtype dtype, Reduction reduction, const void* f_real,
                               const int64_t* labels_real, const void* dist2_real, int64_t n_real,
                               const void* f_fake, const int64_t* labels_fake,
                               const void* dist2_fake, int64_t n_fake, const void* centers_real,
                               int64_t k_real, int64_t d, void* pulls, void* loss_d, void* loss_g,
                               cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    KMGAN_LAUNCH(1, kThreads, 0, stream, kmgan_pulls_kernel<T>)(
        reduction, static_cast<const T*>(f_real), labels_real, static_cast<const A*>(dist2_real),
        n_real, static_cast<const T*>(f_fake), labels_fake, static_cast<const A*>(dist2_fake),
        n_fake, static_cast<const T*>(centers_real), k_real, d, static_cast<A*>(pulls),
        static_cast<A*>(loss_d), static_cast<A*>(loss_g));
    return cudaGetLastError();
  });
}

cudaError_t kmgan_losses_backward_launch(
    Dtype dtype, Reduction reduction, const void* grad_d, const void* grad_g,
    const void* grad_center, const void* f_real, const void* f_fake, const void* centers_real,
    int64_t k_real, const int64_t* labels_real, const int64_t* labels_fake,
    const int64_t* labels_fake_hat, const void* pulls, const void* u_diff,
    const int64_t* counts_real, const int64_t* counts_fake, int64_t k_fake, int64_t n_real,
    int64_t n_fake, int64_t d, void* grad_real, void* grad_fake, cudaStream_t stream) {
  if (n_real + n_fake == 0 || d == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    KMGAN_LAUNCH(grid_for(n_real + n_fake, kWarpsPerBlock), kThreads, 0, stream,
        kmgan_losses_backward_kernel<T>)(
            reduction, static_cast<const A*>(grad_d), static_cast<const A*>(grad_g),
            static_cast<const A*>(grad_center), static_cast<const T*>(f_real),
            static_cast<const T*>(f_fake), static_cast<const T*>(centers_real), k_real,
            labels_real, labels_fake, labels_fake_hat, static_cast<const A*>(pulls),
            static_cast<const A*>(u_diff), counts_real, counts_fake, k_fake, n_real, n_fake, d,
            static_cast<T*>(grad_real), static_cast<T*>(grad_fake));
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
