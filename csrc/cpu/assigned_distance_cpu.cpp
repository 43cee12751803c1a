// ||x - C[labels]|| on CPU (docs/ops.md): the pull term of KM-GAN Eq. 5/6 ("fro", "mean")
// and Wen et al.'s center loss ("sq_sum").
//
// Forward: per-row squared distances in acc, reduced over rows in double through fixed
// chunks (common.h ordered_row_sum), so the same bits for any thread count. Backward:
// gx_i = scale_i (x_i - c_{l_i}) with scale_i = g / out ("fro"), g / (N r_i) ("mean"),
// g ("sq_sum"), and 0 where the distance is 0; the center gradient is the negated segment sum.
#include "common.h"

#include <cmath>
#include <string>

namespace kmgan_ext {
namespace cpu {
namespace {

enum class Reduction { kFro, kMean, kSqSum };

Reduction parse_reduction(c10::string_view r) {
  if (r == "fro") return Reduction::kFro;
  if (r == "mean") return Reduction::kMean;
  if (r == "sq_sum") return Reduction::kSqSum;
  TORCH_CHECK(false, "reduction must be one of ('fro', 'mean', 'sq_sum'), got '", std::string(r), "'");
}

// ||x_i - c||^2 in double: float32 squares overflow past ~1.8e19 while the norm itself fits.
// Column j goes into partial sum j % 16 and the partials are added by row_sq_combine: an
// order written out here (compiled with -ffp-contract=off, so no multiply-add is fused) that
// the float32 AVX2 loop (row_sq_f32_avx2) follows exactly, so both give the same bits.
template <typename scalar_t>
double row_sq(const scalar_t* xi, const scalar_t* ci, int64_t d) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (use_avx2()) return row_sq_f32_avx2(xi, ci, d);
  }
  double s[16] = {};
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    for (int q = 0; q < 16; ++q) {
      const double t = static_cast<double>(xi[j + q]) - static_cast<double>(ci[j + q]);
      s[q] += t * t;
    }
  }
  for (; j < d; ++j) {
    const double t = static_cast<double>(xi[j]) - static_cast<double>(ci[j]);
    s[j % 16] += t * t;
  }
  return row_sq_combine(s);
}

// Row i's squared distance to its center (row_sq).
template <typename scalar_t, typename index_t>
struct RowSq {
  const scalar_t* x;
  const scalar_t* c;
  const index_t* l;
  int64_t d;
  double operator()(int64_t i) const { return row_sq(x + i * d, c + l[i] * d, d); }
};

struct Args {
  Tensor x, labels, centers;
  int64_t n, d, k;
};

Args checked_args(const Tensor& x, const Tensor& labels, const Tensor& centers) {
  check_features("x", x);
  check_centers("centers", centers, "x", x);
  check_labels("labels", labels, x.size(0));
  Args a{x.contiguous(), labels.contiguous(), centers.contiguous(), x.size(0), x.size(1), centers.size(0)};
  check_label_values("labels", a.labels, a.k);
  return a;
}

Tensor assigned_distance_native(const Tensor& x_in, const Tensor& labels_in, const Tensor& centers_in,
                                c10::string_view reduction) {
  const Reduction red = parse_reduction(reduction);
  const Args a = checked_args(x_in, labels_in, centers_in);
  double total = 0.0;
  KMGAN_DISPATCH_FLOATING(a.x.scalar_type(), "assigned_distance_native", [&] {
  KMGAN_DISPATCH_LABELS(a.labels.scalar_type(), "assigned_distance_native", [&] {
    const scalar_t* x = a.x.data_ptr<scalar_t>();
    const scalar_t* c = a.centers.data_ptr<scalar_t>();
    const index_t* l = a.labels.data_ptr<index_t>();
    const int64_t d = a.d;
    const RowSq<scalar_t, index_t> sq{x, c, l, d};
    if (red == Reduction::kMean) {
      total = ordered_row_sum(a.n, d, [&](int64_t i) { return std::sqrt(sq(i)); });
    } else {
      total = ordered_row_sum(a.n, d, [&](int64_t i) { return sq(i); });
    }
  });
  });
  double out = 0.0;
  switch (red) {
    case Reduction::kFro: out = std::sqrt(total); break;
    case Reduction::kMean: out = a.n > 0 ? total / static_cast<double>(a.n) : 0.0; break;
    case Reduction::kSqSum: out = 0.5 * total; break;
  }
  return scalar_result(out, a.x.options().dtype(out_dtype(a.x)));
}

std::tuple<Tensor, Tensor> assigned_distance_backward_native(
    const Tensor& grad, const Tensor& out_in, const Tensor& x_in, const Tensor& labels_in,
    const Tensor& centers_in, c10::string_view reduction, bool centers_grad) {
  const Reduction red = parse_reduction(reduction);
  const Args a = checked_args(x_in, labels_in, centers_in);
  const double g = scalar_grad("grad", grad);
  const double out = scalar_grad("out", out_in);
  Tensor gx = empty_output({a.n, a.d}, a.x.options());
  Tensor gc = centers_grad ? at::empty({a.k, a.d}, a.centers.options()) : at::empty({0}, a.centers.options());
  KMGAN_DISPATCH_FLOATING(a.x.scalar_type(), "assigned_distance_backward_native", [&] {
  KMGAN_DISPATCH_LABELS(a.labels.scalar_type(), "assigned_distance_backward_native", [&] {
    const scalar_t* x = a.x.data_ptr<scalar_t>();
    const scalar_t* c = a.centers.data_ptr<scalar_t>();
    const index_t* l = a.labels.data_ptr<index_t>();
    const int64_t d = a.d;
    std::vector<double> scale(a.n);
    if (red == Reduction::kMean) {
      const double gn = g / static_cast<double>(std::max<int64_t>(1, a.n));
      const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d));
      const RowSq<scalar_t, index_t> sq{x, c, l, d};
      at::parallel_for(0, a.n, grain, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const double r = std::sqrt(sq(i));
          scale[i] = r > 0.0 ? gn / r : 0.0;
        }
      });
    } else {
      const double s = red == Reduction::kSqSum ? g : (out > 0.0 ? g / out : 0.0);
      std::fill(scale.begin(), scale.end(), s);
    }
    scaled_diff_grad<scalar_t>(x, c, l, a.n, d, a.k, scale.data(), gx.data_ptr<scalar_t>(),
                               centers_grad ? gc.data_ptr<scalar_t>() : nullptr);
  });
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("assigned_distance_native", &assigned_distance_native);
  m.impl("assigned_distance_backward_native", &assigned_distance_backward_native);
}

}  // namespace cpu
}  // namespace kmgan_ext
