// ThreadSanitizer run of every CUDA launcher on small grids (tests/test_cuda_emulated.py builds
// it with KMGAN_EMU_TSAN=1): the kernels and the harness compiled with -fsanitize=thread into
// one executable, no Python or torch, so TSan sees every access of the kernels. Each launch
// runs under forward, reverse and random block/thread order with 3 blocks in flight; a race
// on shared or global memory (between GPU threads of a block, or between blocks) is reported
// by TSan, which then exits with its error code. Results are checked by the pytest matrix, not
// here. Argument: the number of repetitions per order (default 1).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

extern "C" {
void kmgan_emu_configure(int order, uint64_t seed, int in_flight, int sms);
int kmgan_emu_assign_launch(int, const void*, const void*, int64_t, int64_t, int64_t, int64_t*,
                            void*, int64_t);
int kmgan_emu_assign_backward_launch(int, const void*, const void*, const void*, const int64_t*,
                                     int64_t, int64_t, int64_t, void*, void*);
int kmgan_emu_assign_cosine_launch(int, const void*, const void*, int64_t, int64_t, int64_t,
                                   float*, int64_t*, void*, int64_t);
int kmgan_emu_assign_cosine_backward_launch(int, const void*, const void*, const void*,
                                            const int64_t*, int64_t, int64_t, int64_t, void*,
                                            void*);
int64_t kmgan_emu_assign_topk_list_len(int64_t, int64_t);
int kmgan_emu_assign_topk_launch(int, const void*, const void*, int64_t, int64_t, int64_t, int64_t,
                                 double*, int64_t*, int64_t*, void*, float*, int64_t);
int kmgan_emu_soft_assign_launch(int, const void*, const void*, int64_t, int64_t, int64_t, int,
                                 double, double, void*);
int kmgan_emu_soft_assign_backward_launch(int, const void*, const void*, const void*, const void*,
                                          int64_t, int64_t, int64_t, int, double, double, void*,
                                          double*, void*, double*);
int kmgan_emu_minibatch_update_launch(int, void*, void*, const void*, const int64_t*,
                                      const int64_t*, const int64_t*, int64_t, int64_t, int64_t,
                                      double*, int64_t*, double*, double*, const double*,
                                      double*);
int kmgan_emu_ema_update_launch(int, void*, void*, void*, double, double, const void*,
                                const int64_t*, const int64_t*, const int64_t*, int64_t, int64_t,
                                int64_t, double*, int64_t*, double*, double*, double*,
                                const double*, double*, int64_t);
int64_t kmgan_emu_cluster_pieces_elems(int64_t, int64_t);
int kmgan_emu_center_loss_launch(int, const void*, const int64_t*, const void*, int64_t, int64_t,
                                 const void*, const int64_t*, const void*, int64_t, int64_t,
                                 int64_t, void*, void*, int64_t*, int64_t*);
int kmgan_emu_center_loss_backward_launch(int, const void*, const void*, const int64_t*,
                                          const int64_t*, int64_t, int64_t, const int64_t*,
                                          const int64_t*, int64_t, int64_t, int64_t, void*,
                                          void*);
int64_t kmgan_emu_assigned_distance_num_partials(int64_t);
int kmgan_emu_assigned_distance_launch(int, int, const void*, const int64_t*, const void*,
                                       int64_t, int64_t, int64_t, void*, void*);
int kmgan_emu_assigned_distance_backward_launch(int, int, const void*, const void*, const void*,
                                                const int64_t*, const void*, int64_t, int64_t,
                                                int64_t, void*, void*);
// The int32-label entries (capi.cpp): the same kernels instantiated for int32 labels.
int kmgan_emu_minibatch_update_launch_i32(int, void*, void*, const void*, const int32_t*,
                                          const int32_t*, const int64_t*, int64_t, int64_t,
                                          int64_t, double*, int64_t*, double*, double*,
                                          const double*, double*);
int kmgan_emu_ema_update_launch_i32(int, void*, void*, void*, double, double, const void*,
                                    const int32_t*, const int32_t*, const int64_t*, int64_t,
                                    int64_t, int64_t, double*, int64_t*, double*, double*,
                                    double*, const double*, double*, int64_t);
int kmgan_emu_center_loss_launch_i32(int, const void*, const void*, const void*, int64_t, int64_t,
                                     const void*, const void*, const void*, int64_t, int64_t,
                                     int64_t, void*, void*, int64_t*, int64_t*, int, int);
int kmgan_emu_center_loss_backward_launch_i32(int, const void*, const void*, const void*,
                                              const int64_t*, int64_t, int64_t, const void*,
                                              const int64_t*, int64_t, int64_t, int64_t, void*,
                                              void*, int, int);
int kmgan_emu_assigned_distance_launch_i32(int, int, const void*, const int32_t*, const void*,
                                           int64_t, int64_t, int64_t, void*, void*);
int kmgan_emu_assigned_distance_backward_launch_i32(int, int, const void*, const void*,
                                                    const void*, const int32_t*, const void*,
                                                    int64_t, int64_t, int64_t, void*, void*);
int kmgan_emu_pairwise_l1_launch(int, const void*, const int64_t*, int64_t, int64_t, int64_t,
                                 void*, void*);
int kmgan_emu_pairwise_l1_rank_grad_launch(int, const void*, double, const void*, int64_t,
                                           int64_t, const void*, int64_t, void*);
int kmgan_emu_kmgan_pulls_launch(int, int, const void*, const int64_t*, const void*, int64_t,
                                 const void*, const int64_t*, const void*, int64_t, const void*,
                                 int64_t, int64_t, void*, void*, void*);
int kmgan_emu_kmgan_losses_backward_launch(int, int, const void*, const void*, const void*,
                                           const void*, const void*, const void*, int64_t,
                                           const int64_t*, const int64_t*, const int64_t*,
                                           const void*, const void*, const int64_t*,
                                           const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                           void*, void*);
}

namespace {

constexpr int kF32 = 0;
int failures = 0;

void check(int err, const char* what) {
  if (err != 0) {
    std::fprintf(stderr, "tsan_driver: %s returned cudaError %d\n", what, err);
    ++failures;
  }
}

// (d, n) columns of the (n, d) matrix x, each sorted ascending; and each value's row index.
void sorted_columns(const std::vector<float>& x, int64_t n, int64_t d, std::vector<float>* out,
                    std::vector<int64_t>* source) {
  out->assign(n * d, 0.f);
  source->assign(n * d, 0);
  std::vector<int64_t> idx(n);
  for (int64_t j = 0; j < d; ++j) {
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int64_t a, int64_t b) { return x[a * d + j] < x[b * d + j]; });
    for (int64_t t = 0; t < n; ++t) {
      (*out)[j * n + t] = x[idx[t] * d + j];
      (*source)[j * n + t] = idx[t];
    }
  }
}

// Top-k (euclidean and cosine; k = 1, 3 and K - 2, where the list holds every center) and soft
// assign with its backward (Student-t and softmax). These kernels give a thread per row
// (128-thread blocks), so n = 300 rows make 3 blocks, K = 150 centers 5 tiles of 32 (and 2
// blocks of the backward's thread-per-center kernel), d = 33 two feature stages.
template <typename Randn>
void run_topk_and_soft(Randn randn) {
  const int64_t n = 300, kc = 150, d = 33;
  std::vector<float> x = randn(n * d), c = randn(kc * d);
  // The paths in double besides the float32 one: a NaN row, a row whose distances overflow
  // float32 (top-k's full rescan, soft assign's row redone in double), and (tied) every center
  // the same, more than kSlack near-ties at the k-th place in every row.
  x[5 * d + 7] = std::nanf("");
  std::fill(x.begin() + 9 * d, x.begin() + 10 * d, 3e19f);
  std::vector<float> tied = c;
  for (int64_t j = 0; j < kc; ++j)
    std::copy(c.begin(), c.begin() + d, tied.begin() + j * d);
  std::vector<float> unit(kc * d);
  for (int64_t k : {int64_t{1}, int64_t{3}, kc - 2}) {
    const int64_t len = kmgan_emu_assign_topk_list_len(k, kc);
    std::vector<double> list_val(n * len);
    std::vector<int64_t> list_idx(n * len), labels(n * k);
    std::vector<float> dist2(n * k);
    for (int cosine = 0; cosine < 2; ++cosine) {
      for (const std::vector<float>* centers : {&c, &tied}) {
        check(kmgan_emu_assign_topk_launch(kF32, x.data(), centers->data(), n, kc, d, k,
                                           list_val.data(), list_idx.data(), labels.data(),
                                           dist2.data(), cosine ? unit.data() : nullptr, 1),
              cosine ? "assign_topk cosine" : "assign_topk");
      }
    }
  }
  {  // batched top-k (issue 12): two problems on blockIdx.y in one launch, both metrics
    const int64_t b = 2, k = 3, len = kmgan_emu_assign_topk_list_len(k, kc);
    std::vector<float> xb = randn(b * n * d), cb = randn(b * kc * d), ub(b * kc * d), d2(b * n * k);
    std::vector<double> lv(b * n * len);
    std::vector<int64_t> li(b * n * len), lab(b * n * k);
    for (int cosine = 0; cosine < 2; ++cosine) {
      check(kmgan_emu_assign_topk_launch(kF32, xb.data(), cb.data(), n, kc, d, k, lv.data(),
                                         li.data(), lab.data(), d2.data(),
                                         cosine ? ub.data() : nullptr, b),
            cosine ? "assign_topk batched cosine" : "assign_topk batched");
    }
  }
  std::vector<float> q(n * kc), grad_q = randn(n * kc), r_work(n), grad_x(n * d);
  std::vector<double> row_work(n * d), grad_c(kc * d);
  for (int student_t = 0; student_t < 2; ++student_t) {
    check(kmgan_emu_soft_assign_launch(kF32, x.data(), c.data(), n, kc, d, student_t, 1.0, 0.5,
                                       q.data()),
          "soft_assign");
    check(kmgan_emu_soft_assign_backward_launch(kF32, grad_q.data(), q.data(), x.data(),
                                                c.data(), n, kc, d, student_t, 1.0, 0.5,
                                                r_work.data(), row_work.data(), grad_x.data(),
                                                grad_c.data()),
          "soft_assign_backward");
  }
}

void run_all(std::mt19937& rng) {
  const int64_t n = 100, m = 40, k = 70, d = 33;  // 2 assign blocks, 2 center tiles, 2 d stages
  std::normal_distribution<float> normal;
  auto randn = [&](int64_t count) {
    std::vector<float> v(count);
    for (auto& e : v) e = normal(rng);
    return v;
  };
  std::vector<float> x = randn(n * d), y = randn(m * d), c = randn(k * d);
  std::vector<int64_t> labels(n), labels_y(m);
  std::vector<float> dist2(n), dist2_y(m);
  check(kmgan_emu_assign_launch(kF32, x.data(), c.data(), n, k, d, labels.data(), dist2.data(), 1),
        "assign");
  check(kmgan_emu_assign_launch(kF32, y.data(), c.data(), m, k, d, labels_y.data(),
                                dist2_y.data(), 1),
        "assign");
  std::vector<float> ones(n, 1.f), grad_x(n * d);
  std::vector<double> grad_c(k * d);
  check(kmgan_emu_assign_backward_launch(kF32, ones.data(), x.data(), c.data(), labels.data(), n,
                                         k, d, grad_x.data(), grad_c.data()),
        "assign_backward");
  std::vector<float> unit(k * d);
  std::vector<int64_t> labels_cos(n);
  check(kmgan_emu_assign_cosine_launch(kF32, x.data(), c.data(), n, k, d, unit.data(),
                                       labels_cos.data(), dist2.data(), 1),
        "assign_cosine");
  check(kmgan_emu_assign_cosine_backward_launch(kF32, ones.data(), x.data(), c.data(),
                                                labels_cos.data(), n, k, d, grad_x.data(),
                                                grad_c.data()),
        "assign_cosine_backward");

  // Batched (3 independent problems in one launch: blockIdx.y), cosine and euclidean.
  const int64_t batch = 3;
  std::vector<float> xb = randn(batch * n * d), cb = randn(batch * k * d);
  std::vector<float> unit_b(batch * k * d), dist2_b(batch * n);
  std::vector<int64_t> labels_b(batch * n);
  check(kmgan_emu_assign_cosine_launch(kF32, xb.data(), cb.data(), n, k, d, unit_b.data(),
                                       labels_b.data(), dist2_b.data(), batch),
        "assign_cosine batched");
  check(kmgan_emu_assign_launch(kF32, xb.data(), cb.data(), n, k, d, labels_b.data(),
                                dist2_b.data(), batch),
        "assign batched");

  run_topk_and_soft(randn);

  // Updates, fast and deterministic.
  std::vector<double> sums(k * d), total(1);
  std::vector<int64_t> batch_counts(k), counts(k, 3), order(n), sorted(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  for (int64_t i = 0; i < n; ++i) sorted[i] = labels[order[i]];
  std::vector<double> pieces(kmgan_emu_cluster_pieces_elems(n, d));
  std::vector<float> centers = c;
  std::vector<double> norms(n);  // metric="cosine" on the deterministic calls
  check(kmgan_emu_minibatch_update_launch(kF32, centers.data(), counts.data(), x.data(),
                                          labels.data(), nullptr, nullptr, n, k, d, sums.data(),
                                          batch_counts.data(), nullptr, nullptr, nullptr, nullptr),
        "minibatch_update fast");
  check(kmgan_emu_minibatch_update_launch(kF32, centers.data(), counts.data(), x.data(),
                                          labels.data(), sorted.data(), order.data(), n, k, d,
                                          sums.data(), batch_counts.data(), pieces.data(),
                                          norms.data(), nullptr, nullptr),
        "minibatch_update deterministic");
  // sample_weight: double atomics (fast) and the block-summed cluster weights (deterministic).
  std::vector<double> weights(n, 0.5), batch_weights(k), wcounts(k, 1.0);
  check(kmgan_emu_minibatch_update_launch(kF32, centers.data(), wcounts.data(), x.data(),
                                          labels.data(), nullptr, nullptr, n, k, d, sums.data(),
                                          batch_counts.data(), nullptr, nullptr, weights.data(),
                                          batch_weights.data()),
        "minibatch_update weighted fast");
  check(kmgan_emu_minibatch_update_launch(kF32, centers.data(), wcounts.data(), x.data(),
                                          labels.data(), sorted.data(), order.data(), n, k, d,
                                          sums.data(), batch_counts.data(), pieces.data(),
                                          nullptr, weights.data(), nullptr),
        "minibatch_update weighted deterministic");
  std::vector<float> size(k, 1.f), embed = c;
  check(kmgan_emu_ema_update_launch(kF32, centers.data(), size.data(), embed.data(), 0.9, 1e-5,
                                    x.data(), labels.data(), nullptr, nullptr, n, k, d,
                                    sums.data(), batch_counts.data(), nullptr, total.data(),
                                    nullptr, nullptr, nullptr, 1),
        "ema_update fast");
  check(kmgan_emu_ema_update_launch(kF32, centers.data(), size.data(), embed.data(), 0.9, 1e-5,
                                    x.data(), labels.data(), sorted.data(), order.data(), n, k,
                                    d, sums.data(), batch_counts.data(), pieces.data(),
                                    total.data(), norms.data(), nullptr, nullptr, 1),
        "ema_update deterministic");
  // Batched EMA: 3 problems in one launch sequence (the batched assign's rows and labels),
  // fast with weights and deterministic with cosine (each problem's own stable sort).
  std::vector<double> sums_b(batch * k * d), total_b(batch), weights_b(batch * n, 0.5),
      batch_weights_b(batch * k), norms_b(batch * n),
      pieces_b(batch * kmgan_emu_cluster_pieces_elems(n, d));
  std::vector<int64_t> counts_b(batch * k), order_b(batch * n), sorted_b(batch * n);
  for (int64_t p = 0; p < batch; ++p) {
    int64_t* o = order_b.data() + p * n;
    const int64_t* l = labels_b.data() + p * n;
    std::iota(o, o + n, 0);
    std::stable_sort(o, o + n, [&](int64_t a, int64_t b) { return l[a] < l[b]; });
    for (int64_t i = 0; i < n; ++i) sorted_b[p * n + i] = l[o[i]];
  }
  std::vector<float> size_b(batch * k, 1.f), embed_b = cb, centers_b = cb;
  check(kmgan_emu_ema_update_launch(kF32, centers_b.data(), size_b.data(), embed_b.data(), 0.9,
                                    1e-5, xb.data(), labels_b.data(), nullptr, nullptr, n, k, d,
                                    sums_b.data(), counts_b.data(), nullptr, total_b.data(),
                                    nullptr, weights_b.data(), batch_weights_b.data(), batch),
        "ema_update batched fast weighted");
  check(kmgan_emu_ema_update_launch(kF32, centers_b.data(), size_b.data(), embed_b.data(), 0.9,
                                    1e-5, xb.data(), labels_b.data(), sorted_b.data(),
                                    order_b.data(), n, k, d, sums_b.data(), counts_b.data(),
                                    pieces_b.data(), total_b.data(), norms_b.data(), nullptr,
                                    nullptr, batch),
        "ema_update batched deterministic");

  // Center loss and the KM-GAN loss block.
  std::vector<float> loss(1), u_diff(d), grad_y(m * d), g1(1, 1.f);
  std::vector<int64_t> counts_x(k), counts_y(k);
  check(kmgan_emu_center_loss_launch(kF32, x.data(), labels.data(), c.data(), n, k, y.data(),
                                     labels_y.data(), c.data(), m, k, d, loss.data(),
                                     u_diff.data(), counts_x.data(), counts_y.data()),
        "center_loss");
  check(kmgan_emu_center_loss_backward_launch(kF32, g1.data(), u_diff.data(), labels.data(),
                                              counts_x.data(), n, k, labels_y.data(),
                                              counts_y.data(), m, k, d, grad_x.data(),
                                              grad_y.data()),
        "center_loss_backward");
  std::vector<float> pulls(2), loss_d(1), loss_g(1);
  for (int reduction = 0; reduction < 3; ++reduction) {
    std::vector<double> partials(kmgan_emu_assigned_distance_num_partials(n));
    std::vector<float> out(1);
    check(kmgan_emu_assigned_distance_launch(kF32, reduction, x.data(), labels.data(), c.data(),
                                             n, k, d, partials.data(), out.data()),
          "assigned_distance");
    check(kmgan_emu_assigned_distance_backward_launch(kF32, reduction, g1.data(), out.data(),
                                                      x.data(), labels.data(), c.data(), n, k,
                                                      d, grad_x.data(), grad_c.data()),
          "assigned_distance_backward");
    check(kmgan_emu_kmgan_pulls_launch(kF32, reduction, x.data(), labels.data(), dist2.data(), n,
                                       y.data(), labels_y.data(), dist2_y.data(), m, c.data(), k,
                                       d, pulls.data(), loss_d.data(), loss_g.data()),
          "kmgan_pulls");
    check(kmgan_emu_kmgan_losses_backward_launch(
              kF32, reduction, g1.data(), g1.data(), g1.data(), x.data(), y.data(), c.data(), k,
              labels.data(), labels_y.data(), labels_y.data(), pulls.data(), u_diff.data(),
              counts_x.data(), counts_y.data(), k, n, m, d, grad_x.data(), grad_y.data()),
          "kmgan_losses_backward");
  }

  // int32 labels (read as they are, docs/ops.md): the updates fast and deterministic, the
  // center loss with one int32 and one int64 side, assigned_distance at every reduction.
  const std::vector<int32_t> labels32(labels.begin(), labels.end()),
      sorted32(sorted.begin(), sorted.end()), labels_y32(labels_y.begin(), labels_y.end());
  check(kmgan_emu_minibatch_update_launch_i32(kF32, centers.data(), counts.data(), x.data(),
                                              labels32.data(), nullptr, nullptr, n, k, d,
                                              sums.data(), batch_counts.data(), nullptr, nullptr,
                                              nullptr, nullptr),
        "minibatch_update int32 fast");
  check(kmgan_emu_minibatch_update_launch_i32(kF32, centers.data(), counts.data(), x.data(),
                                              labels32.data(), sorted32.data(), order.data(), n,
                                              k, d, sums.data(), batch_counts.data(),
                                              pieces.data(), norms.data(), nullptr, nullptr),
        "minibatch_update int32 deterministic");
  check(kmgan_emu_ema_update_launch_i32(kF32, centers.data(), size.data(), embed.data(), 0.9,
                                        1e-5, x.data(), labels32.data(), nullptr, nullptr, n, k,
                                        d, sums.data(), batch_counts.data(), nullptr,
                                        total.data(), nullptr, weights.data(),
                                        batch_weights.data(), 1),
        "ema_update int32 fast weighted");
  check(kmgan_emu_ema_update_launch_i32(kF32, centers.data(), size.data(), embed.data(), 0.9,
                                        1e-5, x.data(), labels32.data(), sorted32.data(),
                                        order.data(), n, k, d, sums.data(), batch_counts.data(),
                                        pieces.data(), total.data(), norms.data(), nullptr,
                                        nullptr, 1),
        "ema_update int32 deterministic");
  check(kmgan_emu_center_loss_launch_i32(kF32, x.data(), labels32.data(), c.data(), n, k,
                                         y.data(), labels_y.data(), c.data(), m, k, d,
                                         loss.data(), u_diff.data(), counts_x.data(),
                                         counts_y.data(), 1, 0),
        "center_loss int32 real");
  check(kmgan_emu_center_loss_backward_launch_i32(kF32, g1.data(), u_diff.data(),
                                                  labels.data(), counts_x.data(), n, k,
                                                  labels_y32.data(), counts_y.data(), m, k, d,
                                                  grad_x.data(), grad_y.data(), 0, 1),
        "center_loss_backward int32 fake");
  for (int reduction = 0; reduction < 3; ++reduction) {
    std::vector<double> partials(kmgan_emu_assigned_distance_num_partials(n));
    std::vector<float> out(1);
    check(kmgan_emu_assigned_distance_launch_i32(kF32, reduction, x.data(), labels32.data(),
                                                 c.data(), n, k, d, partials.data(),
                                                 out.data()),
          "assigned_distance int32");
    check(kmgan_emu_assigned_distance_backward_launch_i32(kF32, reduction, g1.data(), out.data(),
                                                          x.data(), labels32.data(), c.data(),
                                                          n, k, d, grad_x.data(),
                                                          grad_c.data()),
          "assigned_distance_backward int32");
  }

  // Pairwise L1: within x, and between x and y (sorted together).
  std::vector<float> sorted_x, col_sums(d), out(1);
  std::vector<int64_t> source;
  sorted_columns(x, n, d, &sorted_x, &source);
  check(kmgan_emu_pairwise_l1_launch(kF32, sorted_x.data(), nullptr, n, 0, d, col_sums.data(),
                                     out.data()),
        "pairwise_l1");
  std::vector<float> xy(x);
  xy.insert(xy.end(), y.begin(), y.end());
  std::vector<float> sorted_xy;
  sorted_columns(xy, n + m, d, &sorted_xy, &source);
  check(kmgan_emu_pairwise_l1_launch(kF32, sorted_xy.data(), source.data(), n, m, d,
                                     col_sums.data(), out.data()),
        "pairwise_l1 cross");
  check(kmgan_emu_pairwise_l1_rank_grad_launch(kF32, g1.data(), 2.0, x.data(), n, d,
                                               sorted_x.data(), n, grad_x.data()),
        "pairwise_l1 rank grad");
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 1;
  std::mt19937 rng(1234);
  for (int order = 0; order < 3; ++order) {
    for (int r = 0; r < reps; ++r) {
      kmgan_emu_configure(order, 17 + r, 3, 2);
      run_all(rng);
    }
  }
  std::printf("tsan_driver: %d launch errors\n", failures);
  return failures == 0 ? 0 : 1;
}
