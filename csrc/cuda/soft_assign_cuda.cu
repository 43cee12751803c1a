// km.soft_assign on CUDA: (N, K) responsibilities q (DEC's Student-t, softmax of -D / T) and
// the fused backward.
//
// Forward: one thread per row. A block of kRows threads streams tiles of kCenters centers
// through shared memory (kDims features a stage); each thread forms its row's distances to the
// tile (direct differences, float32; float64 for float64 inputs), writes the scores
// s = -(alpha+1)/2 log1p(D/alpha) (log space: no underflow to 0/0 for large D) or -D/T into
// its q row, and keeps the running max m and sum z = sum exp(s - m) (online softmax). A second
// sweep over its own row (no other thread touched it) writes exp(s - m) / z. Only q holds
// (N, K) values. A row of equal scores gets exp(0) / K: uniform. A row with a score that is
// not finite in float32 (its distance overflowed) is redone in double from the inputs.
//
// Backward: W = dL/dD = q (G - r) s'(D) with r = rowsum(G q), s' = -1/T or
// -(alpha+1)/(2(alpha+D)). Rows kernel (a thread per row): r, then grad_x = 2 (rowsum(W) x -
// W C), with W C accumulated in a double workspace row. Centers kernel (a thread per center):
// every row in index order, grad_c = 2 (colsum(W) c - W^T X) in double (deterministic, no
// atomics). D is recomputed from x and the centers (in double past 2^64); W is formed in
// double and never stored.
//
// Correctness first: thread-per-row / thread-per-center has little reuse; tuning (tiles of
// rows x centers per block, tensor cores under a bound) is left for a GPU session.
#include <type_traits>

#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kRows = 128;
constexpr int kCenters = 32;
constexpr int kDims = 32;

template <typename A>
__device__ __forceinline__ A soft_score(A dist, bool student_t, A alpha, A temperature) {
  const A dd = dist > A(0) ? dist : (dist == dist ? A(0) : dist);
  return student_t ? A(-0.5) * (alpha + A(1)) * log1p(dd / alpha) : -dd / temperature;
}

template <typename A>
__device__ __forceinline__ A soft_slope(A dist, bool student_t, A alpha, A temperature) {
  const A dd = dist > A(0) ? dist : A(0);
  return student_t ? A(-0.5) * (alpha + A(1)) / (alpha + dd) : A(-1) / temperature;
}

// ||a - b||^2 by direct differences in A (acc_t<T>, or double for the float64 redo).
template <typename A, typename T>
__device__ A row_dist(const T* __restrict__ a, const T* __restrict__ b, int64_t d) {
  A s = 0;
  for (int64_t j = 0; j < d; ++j) {
    const A t = static_cast<A>(to_acc(a[j])) - static_cast<A>(to_acc(b[j]));
    s = fma(t, t, s);
  }
  return s;
}

// The row's responsibilities in double from the inputs' own values, for a row whose float32
// scores are not all finite (its distances overflowed: |x|, |c| past ~1e19, or a NaN/Inf):
// the float64 reference may be finite there (contract 2). Two sweeps: max and sum, then q.
template <typename T>
__device__ void soft_row_double(const T* __restrict__ xr, const T* __restrict__ centers,
                                int64_t kc, int64_t d, bool student_t, double alpha,
                                double temperature, acc_t<T>* __restrict__ qr) {
  double m = -static_cast<double>(INFINITY), z = 0;
  for (int64_t c = 0; c < kc; ++c) {
    const double s = soft_score(row_dist<double>(xr, centers + c * d, d), student_t, alpha, temperature);
    const double nm = s > m ? s : m;
    const double base = nm == -static_cast<double>(INFINITY) ? 0.0 : nm;
    z = z * exp(m - base) + exp(s - base);
    m = nm;
  }
  for (int64_t c = 0; c < kc; ++c) {
    const double s = soft_score(row_dist<double>(xr, centers + c * d, d), student_t, alpha, temperature);
    qr[c] = static_cast<acc_t<T>>(exp(s - m) / z);
  }
}

template <typename T>
__global__ void __launch_bounds__(kRows)
    soft_assign_kernel(const T* __restrict__ x, const T* __restrict__ centers, int64_t n,
                       int64_t kc, int64_t d, bool student_t, double alpha,
                       double temperature, acc_t<T>* __restrict__ q) {
  using A = acc_t<T>;
  __shared__ A cs[kCenters][kDims];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  const bool active = row < n;
  A* qr = q + (active ? row : 0) * kc;
  A m = -static_cast<A>(INFINITY), z = 0;
  bool finite = true;  // every score so far finite (scores are <= 0: -inf or NaN are not)
  for (int64_t k0 = 0; k0 < kc; k0 += kCenters) {
    A acc[kCenters];
#pragma unroll
    for (int c = 0; c < kCenters; ++c) acc[c] = A(0);
    for (int64_t d0 = 0; d0 < d; d0 += kDims) {
      __syncthreads();
      for (int e = threadIdx.x; e < kCenters * kDims; e += kRows) {
        const int c = e / kDims, j = e % kDims;
        const int64_t cc = k0 + c, jj = d0 + j;
        cs[c][j] = (cc < kc && jj < d) ? to_acc(centers[cc * d + jj]) : A(0);
      }
      __syncthreads();
      if (active) {
        const int64_t dn = d - d0 < kDims ? d - d0 : kDims;
        for (int64_t j = 0; j < dn; ++j) {
          const A xv = to_acc(x[row * d + d0 + j]);
#pragma unroll
          for (int c = 0; c < kCenters; ++c) {
            const A t = xv - cs[c][j];
            acc[c] = fma(t, t, acc[c]);
          }
        }
      }
    }
    if (!active) continue;
    A bm = -static_cast<A>(INFINITY);
    const int cn = kc - k0 < kCenters ? static_cast<int>(kc - k0) : kCenters;
    for (int c = 0; c < cn; ++c) {
      acc[c] = soft_score(acc[c], student_t, static_cast<A>(alpha), static_cast<A>(temperature));
      finite = finite && acc[c] > -static_cast<A>(INFINITY);  // false for NaN too
      qr[k0 + c] = acc[c];
      bm = acc[c] > bm ? acc[c] : bm;
    }
    const A nm = bm > m ? bm : m;
    // nm stays -inf only while every score so far is -inf: z stays 0 (no -inf - -inf)
    const A base = nm == -static_cast<A>(INFINITY) ? A(0) : nm;
    A s = 0;
    for (int c = 0; c < cn; ++c) s += exp(acc[c] - base);
    z = z * exp(m - base) + s;
    m = nm;
  }
  if (!active) return;
  if constexpr (!std::is_same_v<A, double>) {
    if (!finite) {
      soft_row_double(x + row * d, centers, kc, d, student_t, alpha, temperature, qr);
      return;
    }
  }
  for (int64_t c = 0; c < kc; ++c) qr[c] = exp(qr[c] - m) / z;
}

// W_ij = q (G - r) s'(D) in double. D in A, redone in double past 2^64 or when not finite:
// there Student-t's s' ~ 1 / D reaches float32's subnormals (or 0 past its range) where the
// float64 reference's W is a normal double.
template <typename T>
__device__ __forceinline__ double soft_w(acc_t<T> q, acc_t<T> g, acc_t<T> r, const T* __restrict__ xr,
                                         const T* __restrict__ cr, int64_t d, bool student_t,
                                         double alpha, double temperature) {
  double dist = 0.0;
  if (student_t) {
    dist = static_cast<double>(row_dist<acc_t<T>>(xr, cr, d));
    if (!(dist <= 0x1p64)) dist = row_dist<double>(xr, cr, d);
  }
  return static_cast<double>(q) * (static_cast<double>(g) - static_cast<double>(r)) *
         soft_slope(dist, student_t, alpha, temperature);
}

template <typename T>
__global__ void __launch_bounds__(kRows)
    soft_assign_bwd_rows_kernel(const acc_t<T>* __restrict__ g, const acc_t<T>* __restrict__ q,
                                const T* __restrict__ x, const T* __restrict__ centers,
                                int64_t n, int64_t kc, int64_t d, bool student_t,
                                double alpha, double temperature,
                                acc_t<T>* __restrict__ r_out, double* __restrict__ wc,
                                T* __restrict__ grad_x) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  if (row >= n) return;
  const A* gr = g + row * kc;
  const A* qr = q + row * kc;
  const T* xr = x + row * d;
  double* w_c = wc + row * d;
  A r = 0;
  for (int64_t c = 0; c < kc; ++c) r += gr[c] * qr[c];
  r_out[row] = r;
  for (int64_t j = 0; j < d; ++j) w_c[j] = 0.0;
  double rw = 0.0;
  for (int64_t c = 0; c < kc; ++c) {
    const T* cr = centers + c * d;
    const double w = soft_w(qr[c], gr[c], r, xr, cr, d, student_t, alpha, temperature);
    rw += w;
    for (int64_t j = 0; j < d; ++j) w_c[j] += w * static_cast<double>(to_acc(cr[j]));
  }
  for (int64_t j = 0; j < d; ++j) {
    const double v = 2.0 * (rw * static_cast<double>(to_acc(xr[j])) - w_c[j]);
    grad_x[row * d + j] = from_acc<T>(static_cast<A>(v));
  }
}

template <typename T>
__global__ void __launch_bounds__(kRows)
    soft_assign_bwd_centers_kernel(const acc_t<T>* __restrict__ g, const acc_t<T>* __restrict__ q,
                                   const acc_t<T>* __restrict__ r, const T* __restrict__ x,
                                   const T* __restrict__ centers, int64_t n, int64_t kc,
                                   int64_t d, bool student_t, double alpha,
                                   double temperature, double* __restrict__ grad_c) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x;
  if (c >= kc) return;
  const T* cr = centers + c * d;
  double* gc = grad_c + c * d;
  for (int64_t j = 0; j < d; ++j) gc[j] = 0.0;
  double cw = 0.0;
  for (int64_t i = 0; i < n; ++i) {  // rows in index order: deterministic
    const T* xr = x + i * d;
    const double w = soft_w(q[i * kc + c], g[i * kc + c], r[i], xr, cr, d, student_t, alpha, temperature);
    cw += w;
    for (int64_t j = 0; j < d; ++j) gc[j] += w * static_cast<double>(to_acc(xr[j]));
  }
  for (int64_t j = 0; j < d; ++j) gc[j] = 2.0 * (cw * static_cast<double>(to_acc(cr[j])) - gc[j]);
}

}  // namespace

cudaError_t soft_assign_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                               int64_t kc, int64_t d, bool student_t, double alpha,
                               double temperature, void* q, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (kc < 1 || ceil_div(n, kRows) > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    KMGAN_LAUNCH(static_cast<unsigned>(ceil_div(n, kRows)), kRows, 0, stream, soft_assign_kernel<T>)(
        static_cast<const T*>(x), static_cast<const T*>(centers), n, kc, d, student_t, alpha,
        temperature, static_cast<A*>(q));
    return cudaGetLastError();
  });
}

cudaError_t soft_assign_backward_launch(Dtype dtype, const void* grad_q, const void* q,
                                        const void* x, const void* centers, int64_t n,
                                        int64_t kc, int64_t d, bool student_t, double alpha,
                                        double temperature, void* r_work, double* row_work,
                                        void* grad_x, double* grad_centers_acc,
                                        cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (n > 0) {
      KMGAN_LAUNCH(static_cast<unsigned>(ceil_div(n, kRows)), kRows, 0, stream,
                   soft_assign_bwd_rows_kernel<T>)(
          static_cast<const A*>(grad_q), static_cast<const A*>(q), static_cast<const T*>(x),
          static_cast<const T*>(centers), n, kc, d, student_t, alpha, temperature,
          static_cast<A*>(r_work), row_work, static_cast<T*>(grad_x));
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (grad_centers_acc == nullptr || kc == 0) return cudaSuccess;
    KMGAN_LAUNCH(static_cast<unsigned>(ceil_div(kc, kRows)), kRows, 0, stream,
                 soft_assign_bwd_centers_kernel<T>)(
        static_cast<const A*>(grad_q), static_cast<const A*>(q), static_cast<const A*>(r_work),
        static_cast<const T*>(x), static_cast<const T*>(centers), n, kc, d, student_t, alpha,
        temperature, grad_centers_acc);
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
