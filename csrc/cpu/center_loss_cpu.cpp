// KM-GAN's center loss (Eq. 4) on CPU (docs/ops.md, KM-GAN losses).
//
// One side's u = sum_m (c_m + S_m) / (1 + n_m) is rewritten as
//   u = sum_m w_m c_m + sum_i w_{l_i} x_i,   w_m = 1 / (1 + n_m),
// so a pass over the labels (counts) and one pass over the rows form it with d accumulators
// instead of a (K, d) table of sums, in a fixed order: the same bits for any thread count.
#include "common.h"

#include <cmath>

namespace kmgan_ext {
namespace cpu {
namespace {

// u (d,) for one side, in double (a WideSum: the error does not grow with the rows);
// counts (K,) int64 given as n.
//
// float32/float16/bfloat16 (plain double sums): one pass over x (issue 15). Rows go in fixed
// chunks of kRowChunk, each summed in index order into its own d doubles, and the chunks are
// added in chunk order after the centers' term: the same bits for any thread count. float64
// (compensated sums) keeps the column split, rows in index order.
template <typename scalar_t, typename index_t>
std::vector<double> side_mean(const scalar_t* x, const index_t* labels, int64_t rows,
                              const scalar_t* c, int64_t k, int64_t d,
                              const std::vector<int64_t>& n) {
  std::vector<double> w(k);
  for (int64_t q = 0; q < k; ++q) w[q] = 1.0 / (1.0 + static_cast<double>(n[q]));
  WideSum<scalar_t> u(d);
  if constexpr (!WideSum<scalar_t>::compensated) {
    constexpr int64_t kRowChunk = 1024;
    const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;
    std::vector<double> partial(static_cast<size_t>(chunks * d), 0.0);
    const int64_t grain = std::max<int64_t>(1, kParallelElems / (kRowChunk * std::max<int64_t>(1, d)));
    at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        double* __restrict__ acc = partial.data() + ch * d;
        const int64_t i0 = ch * kRowChunk, e = std::min(rows, (ch + 1) * kRowChunk);
        if constexpr (std::is_same<scalar_t, float>::value) {
          if (use_avx2()) {
            center_loss_rows_f32_avx2(x, labels, w.data(), i0, e, d, acc);
            continue;
          }
        }
        for (int64_t i = i0; i < e; ++i) {
          const double wi = w[labels[i]];
          const scalar_t* __restrict__ xi = x + i * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) acc[j] += wi * static_cast<double>(xi[j]);
        }
      }
    });
    double* __restrict__ up = u.sum.data();
    for (int64_t q = 0; q < k; ++q)
      for (int64_t j = 0; j < d; ++j) up[j] += w[q] * static_cast<double>(c[q * d + j]);
    for (int64_t ch = 0; ch < chunks; ++ch)
      for (int64_t j = 0; j < d; ++j) up[j] += partial[ch * d + j];
  } else {
    // u as a (1, d) array: each thread adds into a private copy of its columns
    for_accumulator_blocks(rows + k, d, 1, u.sum.data(), u.comp.data(),
                           [&](int64_t j0, int64_t j1, double* s, double* e, int64_t) {
      using Sum = WideSum<scalar_t>;
      for (int64_t q = 0; q < k; ++q)
        for (int64_t j = j0; j < j1; ++j) Sum::add_to(s[j - j0], e[j - j0], w[q] * static_cast<double>(c[q * d + j]));
      for (int64_t i = 0; i < rows; ++i) {
        const double wi = w[labels[i]];
        for (int64_t j = j0; j < j1; ++j) Sum::add_to(s[j - j0], e[j - j0], wi * static_cast<double>(x[i * d + j]));
      }
    });
  }
  std::vector<double> out(d);
  for (int64_t j = 0; j < d; ++j) out[j] = u.value(j);
  return out;
}

Tensor counts_tensor(const std::vector<int64_t>& n) {
  Tensor t = at::empty({static_cast<int64_t>(n.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(n.begin(), n.end(), t.data_ptr<int64_t>());
  return t;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> center_loss_native(
    const Tensor& x_real_in, const Tensor& labels_real_in, const Tensor& centers_real_in,
    const Tensor& x_fake_in, const Tensor& labels_fake_in, const Tensor& centers_fake_in) {
  check_features("x_real", x_real_in);
  check_like("x_fake", x_fake_in, "x_real", x_real_in);
  check_centers("centers_real", centers_real_in, "x_real", x_real_in);
  check_centers("centers_fake", centers_fake_in, "x_real", x_real_in);
  check_labels("labels_real", labels_real_in, x_real_in.size(0));
  check_labels("labels_fake", labels_fake_in, x_fake_in.size(0));
  const Tensor xr = x_real_in.contiguous(), xf = x_fake_in.contiguous();
  const Tensor lr = labels_real_in.contiguous(), lf = labels_fake_in.contiguous();
  const Tensor cr = centers_real_in.contiguous(), cf = centers_fake_in.contiguous();
  const int64_t d = xr.size(1), kr = cr.size(0), kf = cf.size(0);
  const std::vector<int64_t> nr = label_counts("labels_real", lr, kr);
  const std::vector<int64_t> nf = label_counts("labels_fake", lf, kf);
  Tensor loss = at::empty({}, xr.options().dtype(out_dtype(xr)));
  Tensor diff = at::empty({d}, xr.options().dtype(out_dtype(xr)));
  KMGAN_DISPATCH_FLOATING(xr.scalar_type(), "center_loss_native", [&] {
    using acc = acc_t<scalar_t>;
    // Each side's labels in their own dtype (int64 or int32, read as they are).
    std::vector<double> ur, uf;
    KMGAN_DISPATCH_LABELS(lr.scalar_type(), "center_loss_native", [&] {
      ur = side_mean(xr.data_ptr<scalar_t>(), lr.data_ptr<index_t>(), xr.size(0),
                     cr.data_ptr<scalar_t>(), kr, d, nr);
    });
    KMGAN_DISPATCH_LABELS(lf.scalar_type(), "center_loss_native", [&] {
      uf = side_mean(xf.data_ptr<scalar_t>(), lf.data_ptr<index_t>(), xf.size(0),
                     cf.data_ptr<scalar_t>(), kf, d, nf);
    });
    acc* dp = diff.data_ptr<acc>();
    double total = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double dj = ur[j] - uf[j];
      dp[j] = static_cast<acc>(dj);
      total += std::abs(dj);
    }
    loss.fill_(round_to(total, loss.scalar_type()));
  });
  return {loss, diff, counts_tensor(nr), counts_tensor(nf)};
}

// grad_i = sign * g s_j / (1 + n[l_i]) for one side (sign -1 on the fake side); sign(0) = 0.
// Large float32 gradients with AVX2: center_loss_grad_rows_f32_avx2, the same bits.
template <typename scalar_t, typename index_t>
void side_grad(scalar_t* out, const index_t* labels, int64_t rows, const int64_t* n,
               const std::vector<double>& sgn, int64_t d, double g) {
  const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d));
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (use_avx2() && rows * d * static_cast<int64_t>(sizeof(float)) >= kStreamOutputBytes &&
        d % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 32 == 0) {
      at::parallel_for(0, rows, grain, [&](int64_t i0, int64_t i1) {
        center_loss_grad_rows_f32_avx2(out, labels, n, sgn.data(), d, g, i0, i1);
      });
      return;
    }
  }
  at::parallel_for(0, rows, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double w = g / (1.0 + static_cast<double>(n[labels[i]]));
      scalar_t* __restrict__ oi = out + i * d;
      const double* __restrict__ sg = sgn.data();
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) oi[j] = static_cast<scalar_t>(sg[j] * w);
    }
  });
}

std::tuple<Tensor, Tensor> center_loss_backward_native(
    const Tensor& grad, const Tensor& u_diff_in, const Tensor& x_real, const Tensor& labels_real_in,
    const Tensor& counts_real_in, const Tensor& x_fake, const Tensor& labels_fake_in,
    const Tensor& counts_fake_in) {
  check_features("x_real", x_real);
  check_like("x_fake", x_fake, "x_real", x_real);
  const int64_t d = x_real.size(1);
  check_cpu("u_diff", u_diff_in);
  TORCH_CHECK(u_diff_in.dim() == 1 && u_diff_in.size(0) == d, "u_diff must have shape (", d,
              ",), got ", u_diff_in.sizes());
  check_labels("labels_real", labels_real_in, x_real.size(0));
  check_labels("labels_fake", labels_fake_in, x_fake.size(0));
  check_cpu("counts_real", counts_real_in);
  check_cpu("counts_fake", counts_fake_in);
  TORCH_CHECK(counts_real_in.dim() == 1 && counts_real_in.scalar_type() == at::kLong,
              "counts_real must be a 1-D int64 tensor, got ", counts_real_in.scalar_type(), " of shape ",
              counts_real_in.sizes());
  TORCH_CHECK(counts_fake_in.dim() == 1 && counts_fake_in.scalar_type() == at::kLong,
              "counts_fake must be a 1-D int64 tensor, got ", counts_fake_in.scalar_type(), " of shape ",
              counts_fake_in.sizes());
  const double g = scalar_grad("grad", grad);
  const Tensor lr = labels_real_in.contiguous(), lf = labels_fake_in.contiguous();
  const Tensor nr = counts_real_in.contiguous(), nf = counts_fake_in.contiguous();
  check_label_values("labels_real", lr, nr.size(0));
  check_label_values("labels_fake", lf, nf.size(0));
  const Tensor u = u_diff_in.to(at::kDouble).contiguous();
  std::vector<double> sgn(d);
  for (int64_t j = 0; j < d; ++j) {
    const double v = u.data_ptr<double>()[j];
    sgn[j] = v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0);
  }
  Tensor gr = empty_output(x_real.sizes(), x_real.options());
  Tensor gf = empty_output(x_fake.sizes(), x_fake.options());
  KMGAN_DISPATCH_FLOATING(x_real.scalar_type(), "center_loss_backward_native", [&] {
    KMGAN_DISPATCH_LABELS(lr.scalar_type(), "center_loss_backward_native", [&] {
      side_grad(gr.data_ptr<scalar_t>(), lr.data_ptr<index_t>(), lr.size(0),
                nr.data_ptr<int64_t>(), sgn, d, g);
    });
    KMGAN_DISPATCH_LABELS(lf.scalar_type(), "center_loss_backward_native", [&] {
      side_grad(gf.data_ptr<scalar_t>(), lf.data_ptr<index_t>(), lf.size(0),
                nf.data_ptr<int64_t>(), sgn, d, -g);
    });
  });
  return {gr, gf};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("center_loss_native", &center_loss_native);
  m.impl("center_loss_backward_native", &center_loss_backward_native);
}

}  // namespace cpu
}  // namespace kmgan_ext
