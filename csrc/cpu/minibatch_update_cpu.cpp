// Center updates on CPU (DESIGN.md 4.2): minibatch_update_, minibatch_step_, ema_update_.
//
// All three form the per-cluster sums S_k and counts m_k with segment_sums (common.h), whose
// order is fixed (rows in index order for every (k, column), columns split across threads),
// so the CPU result is bitwise identical run to run and for any thread count: the
// `deterministic` flag asks for nothing more here. Labels are range-checked before anything
// is written, so a failed call leaves centers and counts unchanged.
#include "assign_cpu.h"

namespace kmgan_ext {
namespace cpu {
namespace {

void check_update_args(const Tensor& centers, const Tensor& x) {
  check_features("x", x);
  check_centers("centers", centers, "x", x);
}

// In-place arguments may be non-contiguous when an op is called directly: work on a
// contiguous copy and write it back.
Tensor contiguous_work(const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }
void write_back(const Tensor& work, const Tensor& t) {
  if (!work.is_same(t)) t.copy_(work);
}

// Sculley / scikit-learn: counts_k += m_k; c_k += (S_k - m_k c_k) / counts_k for m_k > 0.
template <typename scalar_t>
void sculley_update(scalar_t* c, int64_t* counts, const scalar_t* x, const int64_t* labels,
                    int64_t n, int64_t d, int64_t k, const std::vector<int64_t>& m) {
  using acc = acc_t<scalar_t>;
  std::vector<acc> sums(static_cast<size_t>(k * d), acc(0));
  segment_sums(x, n, d, labels, sums.data());
  for (int64_t q = 0; q < k; ++q) {
    if (m[q] == 0) continue;
    counts[q] += m[q];
    const acc mq = static_cast<acc>(m[q]);
    const acc total = static_cast<acc>(counts[q]);
    scalar_t* cq = c + q * d;
    const acc* sq = sums.data() + q * d;
    for (int64_t j = 0; j < d; ++j) {
      const acc cj = static_cast<acc>(cq[j]);
      cq[j] = static_cast<scalar_t>(cj + (sq[j] - mq * cj) / total);
    }
  }
}

void update_contiguous(const Tensor& centers, const Tensor& counts, const Tensor& x,
                       const Tensor& labels) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  const int64_t* lp = labels.data_ptr<int64_t>();
  const std::vector<int64_t> m = label_counts("labels", lp, n, k);
  if (n == 0) return;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "minibatch_update_native_", [&] {
    sculley_update(centers.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(),
                   x.data_ptr<scalar_t>(), lp, n, d, k, m);
  });
}

void minibatch_update_native_(Tensor& centers, Tensor& counts, const Tensor& x_in,
                              const Tensor& labels_in, bool /*deterministic: always*/) {
  check_update_args(centers, x_in);
  check_index("counts", counts, centers.size(0));
  check_index("labels", labels_in, x_in.size(0));
  const Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const Tensor c = contiguous_work(centers), cnt = contiguous_work(counts);
  update_contiguous(c, cnt, x, labels);
  write_back(c, centers);
  write_back(cnt, counts);
}

Tensor minibatch_step_native_(Tensor& centers, Tensor& counts, const Tensor& x_in,
                              bool /*deterministic: always*/) {
  check_update_args(centers, x_in);
  check_index("counts", counts, centers.size(0));
  const Tensor x = x_in.contiguous();
  const Tensor c = contiguous_work(centers), cnt = contiguous_work(counts);
  Tensor labels = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  // Labels against the centers before the update; no distances needed.
  assign_into(x, c, labels, Tensor());
  update_contiguous(c, cnt, x, labels);
  write_back(c, centers);
  write_back(cnt, counts);
  return labels;
}

void ema_update_native_(Tensor& centers, const Tensor& x_in, const Tensor& labels_in,
                        double decay, bool /*deterministic: always*/) {
  check_update_args(centers, x_in);
  check_index("labels", labels_in, x_in.size(0));
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, "decay must lie in [0, 1], got ", decay);
  const Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  const int64_t* lp = labels.data_ptr<int64_t>();
  const std::vector<int64_t> m = label_counts("labels", lp, n, k);
  if (n == 0) return;
  const Tensor c = contiguous_work(centers);
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "ema_update_native_", [&] {
    using acc = acc_t<scalar_t>;
    std::vector<acc> sums(static_cast<size_t>(k * d), acc(0));
    segment_sums(x.data_ptr<scalar_t>(), n, d, lp, sums.data());
    const acc keep = static_cast<acc>(decay), take = static_cast<acc>(1.0 - decay);
    scalar_t* cp = c.data_ptr<scalar_t>();
    // c_k = decay c_k + (1 - decay) S_k / m_k for the clusters that have rows.
    for (int64_t q = 0; q < k; ++q) {
      if (m[q] == 0) continue;
      const acc mq = static_cast<acc>(m[q]);
      for (int64_t j = 0; j < d; ++j) {
        const acc mean = sums[q * d + j] / mq;
        cp[q * d + j] = static_cast<scalar_t>(keep * static_cast<acc>(cp[q * d + j]) + take * mean);
      }
    }
  });
  write_back(c, centers);
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("minibatch_update_native_", &minibatch_update_native_);
  m.impl("minibatch_step_native_", &minibatch_step_native_);
  m.impl("ema_update_native_", &ema_update_native_);
}

}  // namespace cpu
}  // namespace kmgan_ext
