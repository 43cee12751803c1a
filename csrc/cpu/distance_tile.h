// Squared distances of a tile of rows to a block of centers through a GEMM, for the CPU ops
// that need each distance (assign_topk_cpu.cpp, soft_assign_cpu.cpp) but never the (N, K)
// matrix: a tile of rows x a block of centers at a time, in a per-thread buffer.
//
// As in assign_cpu.cpp, x and the centers are shifted by the mean of the centers (x' = x - s,
// c' = c - s) so that the expansion D = ||x'||^2 + ||c'||^2 - 2 x'.c' does not cancel when all
// points sit far from the origin. Every term is bounded by (||x'|| + ||c'||)^2, so the
// computed D is within bound(||x'||) of the exact one whatever order the GEMM sums in:
// (2d + 8) u of that square covers the dot product (gamma_d), the norms and the roundings of
// x - s, c - s and of the sum; a factor 2 of margin, plus (d + 2) 2^-53 of it for the
// rounding of the float64 reference's own distances (canonical_dist2).
#pragma once

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace kmgan_ext {
namespace cpu {

// ||a - b||^2 as the float64 reference forms it (reference.squared_distances): columns in
// index order, every step rounded to double (-ffp-contract=off: no FMA). Where two centers'
// float64 distances tie only after rounding (a subnormal center next to normal rows), any
// other order could pick another label than the reference (assign_cpu.cpp decides labels by it).
template <typename scalar_t>
inline double canonical_dist2(const scalar_t* a, const scalar_t* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s += t * t;
  }
  return s;
}

template <typename scalar_t>
struct DistanceTiles {
  using acc = acc_t<scalar_t>;
  int64_t k, d;
  std::vector<acc> s;    // (d,) the shift: the mean of the centers, rounded to acc
  Tensor cs;             // (K, d) acc: fl(c_k - s)
  std::vector<acc> cn2;  // (K,) ||c'_k||^2
  double cmax = 0.0;     // max_k ||c'_k||
  bool finite = true;    // every center finite
  double tau;            // relative size of bound() against (||x'|| + cmax)^2

  DistanceTiles(const scalar_t* c, int64_t k_, int64_t d_) : k(k_), d(d_), s(d_), cn2(k_) {
    std::vector<double> mean(d, 0.0);
    for (int64_t q = 0; q < k; ++q)
      for (int64_t j = 0; j < d; ++j) mean[j] += static_cast<double>(c[q * d + j]);
    for (int64_t j = 0; j < d; ++j) s[j] = static_cast<acc>(mean[j] / static_cast<double>(k));
    cs = at::empty({k, d}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value));
    acc* cp = cs.template data_ptr<acc>();
    for (int64_t q = 0; q < k; ++q) {
      double n2 = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        cp[q * d + j] = static_cast<acc>(c[q * d + j]) - s[j];
        n2 += static_cast<double>(cp[q * d + j]) * static_cast<double>(cp[q * d + j]);
      }
      cn2[q] = static_cast<acc>(n2);
      finite = finite && std::isfinite(n2);
      if (finite) cmax = std::max(cmax, std::sqrt(n2));
    }
    const double u = std::numeric_limits<acc>::epsilon() / 2;
    tau = 2.0 * (2.0 * static_cast<double>(d) + 8.0) * u +
          (static_cast<double>(d) + 2.0) * std::ldexp(1.0, -53);
  }

  // x' = x - s for nr rows into xt (nr, d), ||x'||^2 into xn2; returns nothing.
  void shift_rows(const scalar_t* x, int64_t nr, acc* xt, acc* xn2) const {
    for (int64_t r = 0; r < nr; ++r) {
      const scalar_t* xr = x + r * d;
      acc* xs = xt + r * d;
      acc n2 = 0;
      for (int64_t j = 0; j < d; ++j) {
        xs[j] = static_cast<acc>(xr[j]) - s[j];
        n2 += xs[j] * xs[j];
      }
      xn2[r] = n2;
    }
  }

  // The absolute error bound of a computed D for a row with ||x'||^2 = xn2.
  double bound(acc xn2) const {
    const double t = std::sqrt(static_cast<double>(xn2)) + cmax;
    return tau * t * t;
  }

  // False where the expansion may overflow acc or an input is not finite: such a row takes
  // a float64 path from the inputs' own values.
  bool safe(acc xn2) const {
    const double t = std::sqrt(static_cast<double>(xn2)) + cmax;
    return finite && t * t < static_cast<double>(std::numeric_limits<acc>::max()) / 16.0;
  }

  // out (nr, kb) = D of the nr rows of xt to centers [k0, k0 + kb) (not clamped at 0).
  void block(const acc* xt, const acc* xn2, int64_t nr, int64_t k0, int64_t kb, acc* out) const {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value);
    const Tensor xt_t = at::from_blob(const_cast<acc*>(xt), {nr, d}, opts);
    Tensor out_t = at::from_blob(out, {nr, kb}, opts);
    if (d == 0) {
      out_t.zero_();
    } else {
      at::mm_out(out_t, xt_t, cs.narrow(0, k0, kb).t());
    }
    for (int64_t r = 0; r < nr; ++r) {
      acc* o = out + r * kb;
      const acc xr = xn2[r];
      const acc* cb = cn2.data() + k0;
      for (int64_t q = 0; q < kb; ++q) o[q] = (xr + cb[q]) - acc(2) * o[q];
    }
  }
};

// Rows per tile and centers per block: a (rows x block) acc buffer of 256 KiB at most.
constexpr int64_t kTileCenterBlock = 256;
inline int64_t tile_rows_for(int64_t k) {
  const int64_t kb = std::min<int64_t>(std::max<int64_t>(k, 1), kTileCenterBlock);
  return std::min<int64_t>(std::max<int64_t>((int64_t(1) << 16) / kb, 16), 512);
}

}  // namespace cpu
}  // namespace kmgan_ext
