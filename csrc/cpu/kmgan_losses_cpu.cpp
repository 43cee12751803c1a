// The KM-GAN loss block on CPU (kmgan_ext::kmgan_losses_native, docs/ops.md; REPRODUCTION.md).
//
// Forward: a composition of the CPU kernels of the single ops, called through the dispatcher
// from C++ (no Python in between): three assignments (assign_into, the exact argmin of
// assign_cpu.cpp), two assigned_distance_native and one center_loss_native. Reusing them
// keeps the block bitwise equal to the single ops on CPU (km.KMGANLosses.center_loss and
// generator_loss recompute terms with them), and the CPU kernels are already one pass each.
//
// Backward: one pass over the rows of both batches,
//   grad_real_i = g_d s_r(i) (x_i - c_{l_i}) + g_c sign(u_diff) / (1 + n_real[l_i])
//   grad_fake_i = (g_g - g_d) s_f(i) (x_i - c_{l_i}) - g_c sign(u_diff) / (1 + n_fake[l^_i])
// with s(i) the pull's scale (1 / pull for "fro", 1 / (N r_i) for "mean", 1 for "sq_sum"; 0
// where the distance is 0) and a missing upstream gradient counted as 0.
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>

#include "assign_cpu.h"

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

Tensor assigned_distance(const Tensor& x, const Tensor& labels, const Tensor& centers,
                         c10::string_view reduction) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("kmgan_ext::assigned_distance_native", "")
                             .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, c10::string_view)>();
  return op.call(x, labels, centers, reduction);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> center_loss(const Tensor& xr, const Tensor& lr,
                                                       const Tensor& cr, const Tensor& xf,
                                                       const Tensor& lf, const Tensor& cf) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("kmgan_ext::center_loss_native", "")
          .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                            const Tensor&, const Tensor&, const Tensor&)>();
  return op.call(xr, lr, cr, xf, lf, cf);
}

Tensor labels_of(const Tensor& x, const Tensor& centers) {
  Tensor labels = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  assign_into(x, centers, labels, Tensor());
  return labels;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
kmgan_losses_native(const Tensor& f_real_in, const Tensor& f_fake_in, const Tensor& centers_real_in,
                    const Tensor& centers_fake_in, c10::string_view reduction) {
  parse_reduction(reduction);
  check_features("f_real", f_real_in);
  check_like("f_fake", f_fake_in, "f_real", f_real_in);
  check_centers("centers_real", centers_real_in, "f_real", f_real_in);
  check_centers("centers_fake", centers_fake_in, "f_real", f_real_in);
  const Tensor fr = f_real_in.contiguous(), ff = f_fake_in.contiguous();
  const Tensor cr = centers_real_in.contiguous(), cf = centers_fake_in.contiguous();

  Tensor lr = labels_of(fr, cr), lf = labels_of(ff, cr), lh = labels_of(ff, cf);
  const Tensor pull_r = assigned_distance(fr, lr, cr, reduction);
  const Tensor pull_f = assigned_distance(ff, lf, cr, reduction);
  auto [loss_c, u_diff, n_r, n_h] = center_loss(fr, lr, cr, ff, lh, cf);
  const double pr = pull_r.item<double>(), pf = pull_f.item<double>();
  const auto acc = fr.options().dtype(out_dtype(fr));
  Tensor pulls = at::empty({2}, acc);
  pulls[0].fill_(round_to(pr, pulls.scalar_type()));
  pulls[1].fill_(round_to(pf, pulls.scalar_type()));
  // In double, then rounded once: the same value as subtracting the float64 reference pulls.
  Tensor loss_d = scalar_result(pr - pf, acc);
  Tensor loss_g = scalar_result(pf, acc);
  return {loss_d, loss_g, loss_c, lr, lf, lh, pulls, u_diff, n_r, n_h};
}

// One side's rows: out_i = scale_i (x_i - c_{l_i}) + w[lc_i] sgn, in double, rounded once.
template <typename scalar_t>
void side_grad(const scalar_t* x, const scalar_t* c, const int64_t* l, const int64_t* lc,
               const int64_t* counts, int64_t n, int64_t d, Reduction red, double g_pull,
               double pull, double g_center, const std::vector<double>& sgn, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const double fro_scale = pull > 0.0 ? g_pull / pull : 0.0;
  const double mean_g = g_pull / static_cast<double>(std::max<int64_t>(1, n));
  const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d));
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t* xi = x + i * d;
      const scalar_t* ci = c + l[i] * d;
      double scale = red == Reduction::kSqSum ? g_pull : fro_scale;
      if (red == Reduction::kMean) {
        double r2 = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          const double t = static_cast<double>(xi[j]) - static_cast<double>(ci[j]);
          r2 += t * t;
        }
        scale = r2 > 0.0 ? mean_g / std::sqrt(r2) : 0.0;
      }
      // In double, rounded once: a float32 difference near float32 max overflows, and a
      // "mean" scale past 1e38 is subnormal in float32 (contract 2).
      const double w = g_center / (1.0 + static_cast<double>(counts[lc[i]]));
      for (int64_t j = 0; j < d; ++j) {
        const double diff = static_cast<double>(xi[j]) - static_cast<double>(ci[j]);
        out[i * d + j] = static_cast<scalar_t>(static_cast<acc>(scale * diff + w * sgn[j]));
      }
    }
  });
}

double optional_grad(const char* name, const c10::optional<Tensor>& g) {
  return g.has_value() && g->defined() ? scalar_grad(name, *g) : 0.0;
}

void check_counts(const char* name, const Tensor& t) {
  check_cpu(name, t);
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == at::kLong && t.size(0) >= 1, name,
              " must be a non-empty 1-D int64 tensor, got ", t.scalar_type(), " of shape ", t.sizes());
}

std::tuple<Tensor, Tensor> kmgan_losses_backward_native(
    const c10::optional<Tensor>& grad_d, const c10::optional<Tensor>& grad_g,
    const c10::optional<Tensor>& grad_center, const Tensor& f_real_in, const Tensor& f_fake_in,
    const Tensor& centers_real_in, const Tensor& labels_real_in, const Tensor& labels_fake_in,
    const Tensor& labels_fake_hat_in, const Tensor& pulls_in, const Tensor& u_diff_in,
    const Tensor& counts_real_in, const Tensor& counts_fake_in, c10::string_view reduction) {
  const Reduction red = parse_reduction(reduction);
  check_features("f_real", f_real_in);
  check_like("f_fake", f_fake_in, "f_real", f_real_in);
  check_centers("centers_real", centers_real_in, "f_real", f_real_in);
  const int64_t nr = f_real_in.size(0), nf = f_fake_in.size(0), d = f_real_in.size(1);
  const int64_t k = centers_real_in.size(0);
  check_index("labels_real", labels_real_in, nr);
  check_index("labels_fake", labels_fake_in, nf);
  check_index("labels_fake_hat", labels_fake_hat_in, nf);
  check_counts("counts_real", counts_real_in);
  check_counts("counts_fake", counts_fake_in);
  TORCH_CHECK(counts_real_in.size(0) == k, "counts_real must have shape (", k, ",) (K), got ",
              counts_real_in.sizes());
  check_cpu("pulls", pulls_in);
  TORCH_CHECK(pulls_in.numel() == 2, "pulls must hold 2 values, got shape ", pulls_in.sizes());
  check_cpu("u_diff", u_diff_in);
  TORCH_CHECK(u_diff_in.dim() == 1 && u_diff_in.size(0) == d, "u_diff must have shape (", d,
              ",), got ", u_diff_in.sizes());
  const double gd = optional_grad("grad_d", grad_d), gg = optional_grad("grad_g", grad_g);
  const double gc = optional_grad("grad_center", grad_center);

  const Tensor fr = f_real_in.contiguous(), ff = f_fake_in.contiguous();
  const Tensor cr = centers_real_in.contiguous();
  const Tensor lr = labels_real_in.contiguous(), lf = labels_fake_in.contiguous();
  const Tensor lh = labels_fake_hat_in.contiguous();
  const Tensor n_r = counts_real_in.contiguous(), n_h = counts_fake_in.contiguous();
  check_label_values("labels_real", lr.data_ptr<int64_t>(), nr, k);
  check_label_values("labels_fake", lf.data_ptr<int64_t>(), nf, k);
  check_label_values("labels_fake_hat", lh.data_ptr<int64_t>(), nf, n_h.size(0));
  const Tensor pulls = pulls_in.to(at::kDouble).contiguous();
  const Tensor u = u_diff_in.to(at::kDouble).contiguous();
  std::vector<double> sgn(d);
  for (int64_t j = 0; j < d; ++j) {
    const double v = u.data_ptr<double>()[j];
    sgn[j] = v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0);
  }
  const double pr = pulls.data_ptr<double>()[0], pf = pulls.data_ptr<double>()[1];
  Tensor gr = at::empty({nr, d}, fr.options());
  Tensor gf = at::empty({nf, d}, ff.options());
  KMGAN_DISPATCH_FLOATING(fr.scalar_type(), "kmgan_losses_backward_native", [&] {
    const scalar_t* c = cr.data_ptr<scalar_t>();
    side_grad(fr.data_ptr<scalar_t>(), c, lr.data_ptr<int64_t>(), lr.data_ptr<int64_t>(),
              n_r.data_ptr<int64_t>(), nr, d, red, gd, pr, gc, sgn, gr.data_ptr<scalar_t>());
    side_grad(ff.data_ptr<scalar_t>(), c, lf.data_ptr<int64_t>(), lh.data_ptr<int64_t>(),
              n_h.data_ptr<int64_t>(), nf, d, red, gg - gd, pf, -gc, sgn, gf.data_ptr<scalar_t>());
  });
  return {gr, gf};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("kmgan_losses_native", &kmgan_losses_native);
  m.impl("kmgan_losses_backward_native", &kmgan_losses_backward_native);
}

}  // namespace cpu
}  // namespace kmgan_ext
