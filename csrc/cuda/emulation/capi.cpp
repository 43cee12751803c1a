// C entry points of the CPU harness: each launcher of launchers.h / kmgan_losses_cuda.h under
// a plain C name (kmgan_emu_<launcher>), enums as int, so kmgan_ext/_cuda_emulated.py calls them
// through ctypes with the data pointers of CPU tensors. The stream is always null (the harness
// runs every launch to completion before returning).
#include "../kmgan_losses_cuda.h"
#include "../launchers.h"

#define EMU_API extern "C" __attribute__((visibility("default"))) int
#define EMU_API_SIZE extern "C" __attribute__((visibility("default"))) int64_t

using namespace kmgan_cuda;

namespace {
Dtype dt(int d) { return static_cast<Dtype>(d); }
Reduction red(int r) { return static_cast<Reduction>(r); }

// int32 labels (docs/ops.md: read as they are, never copied to int64): an entry taking labels
// takes them as void* with a flag (1 = int32), and f gets the pointer in its type; the
// launchers are templates on the label type (launchers.h).
template <typename F>
int with_labels(const void* labels, int labels_i32, F&& f) {
  return labels_i32 ? static_cast<int>(f(static_cast<const int32_t*>(labels)))
                    : static_cast<int>(f(static_cast<const int64_t*>(labels)));
}

// f(real, fake) with each side's labels pointer in its type (the center loss's two sides).
template <typename F>
int with_side_labels(const void* real, int real_i32, const void* fake, int fake_i32, F&& f) {
  return with_labels(real, real_i32, [&](auto r) {
    return with_labels(fake, fake_i32, [&](auto lf) { return f(r, lf); });
  });
}

// The pointer p in the type of the labels pointer like (a second labels array, e.g. sorted).
template <typename L>
const L* same_type(const L*, const void* p) {
  return static_cast<const L*>(p);
}
}  // namespace

EMU_API kmgan_emu_assign_launch(int dtype, const void* x, const void* centers, int64_t n,
                                int64_t k, int64_t d, int64_t* labels, void* dist2,
                                int64_t batch) {
  return assign_launch(dt(dtype), x, centers, n, k, d, labels, dist2, nullptr, batch);
}

EMU_API kmgan_emu_assign_backward_launch(int dtype, const void* grad_dist2, const void* x,
                                         const void* centers, const int64_t* labels, int64_t n,
                                         int64_t k, int64_t d, void* grad_x,
                                         void* grad_centers_acc) {
  return assign_backward_launch(dt(dtype), grad_dist2, x, centers, labels, n, k, d, grad_x,
                                grad_centers_acc, nullptr);
}

EMU_API_SIZE kmgan_emu_assign_topk_list_len(int64_t k, int64_t kc) {
  return assign_topk_list_len(k, kc);
}

EMU_API kmgan_emu_assign_topk_launch(int dtype, const void* x, const void* centers, int64_t n,
                                     int64_t kc, int64_t d, int64_t k, double* list_val,
                                     int64_t* list_idx, int64_t* labels, void* dist2,
                                     float* unit, int64_t batch) {
  return assign_topk_launch(dt(dtype), x, centers, n, kc, d, k, list_val, list_idx, labels, dist2,
                            nullptr, unit, batch);
}

EMU_API kmgan_emu_soft_assign_launch(int dtype, const void* x, const void* centers, int64_t n,
                                     int64_t kc, int64_t d, int student_t, double alpha,
                                     double temperature, void* q) {
  return soft_assign_launch(dt(dtype), x, centers, n, kc, d, student_t != 0, alpha, temperature, q,
                            nullptr);
}

EMU_API kmgan_emu_soft_assign_backward_launch(int dtype, const void* grad_q, const void* q,
                                              const void* x, const void* centers, int64_t n,
                                              int64_t kc, int64_t d, int student_t, double alpha,
                                              double temperature, void* r_work, double* row_work,
                                              void* grad_x, double* grad_centers_acc) {
  return soft_assign_backward_launch(dt(dtype), grad_q, q, x, centers, n, kc, d, student_t != 0,
                                     alpha, temperature, r_work, row_work, grad_x,
                                     grad_centers_acc, nullptr);
}

EMU_API kmgan_emu_assign_cosine_launch(int dtype, const void* x, const void* centers, int64_t n,
                                       int64_t k, int64_t d, float* unit, int64_t* labels,
                                       void* dist2, int64_t batch) {
  return assign_cosine_launch(dt(dtype), x, centers, n, k, d, unit, labels, dist2, nullptr,
                              batch);
}

EMU_API kmgan_emu_assign_cosine_backward_launch(int dtype, const void* grad_dist2, const void* x,
                                                const void* centers, const int64_t* labels,
                                                int64_t n, int64_t k, int64_t d, void* grad_x,
                                                void* grad_centers_acc) {
  return assign_cosine_backward_launch(dt(dtype), grad_dist2, x, centers, labels, n, k, d, grad_x,
                                       grad_centers_acc, nullptr);
}

EMU_API kmgan_emu_minibatch_update_launch(int dtype, void* centers, void* counts,
                                          const void* x, const void* labels,
                                          const void* sorted_labels, const int64_t* perm,
                                          int64_t n, int64_t k, int64_t d, double* sums,
                                          int64_t* batch_counts, double* pieces,
                                          double* row_norms, const double* weights,
                                          double* batch_weights, int labels_i32) {
  return with_labels(labels, labels_i32, [&](auto lab) {
    return minibatch_update_launch(dt(dtype), centers, counts, x, lab, same_type(lab, sorted_labels),
                                   perm, n, k, d, sums, batch_counts, pieces, row_norms, weights,
                                   batch_weights, nullptr);
  });
}

EMU_API kmgan_emu_ema_update_launch(int dtype, void* centers, void* cluster_size,
                                    void* embed_sum, double decay, double eps, const void* x,
                                    const void* labels, const void* sorted_labels,
                                    const int64_t* perm, int64_t n, int64_t k, int64_t d,
                                    double* sums, int64_t* batch_counts, double* pieces,
                                    double* total, double* row_norms, const double* weights,
                                    double* batch_weights, int64_t problems, int labels_i32) {
  return with_labels(labels, labels_i32, [&](auto lab) {
    return ema_update_launch(dt(dtype), centers, cluster_size, embed_sum, decay, eps, x, lab,
                             same_type(lab, sorted_labels), perm, n, k, d, sums, batch_counts,
                             pieces, total, row_norms, weights, batch_weights, nullptr, problems);
  });
}

EMU_API_SIZE kmgan_emu_cluster_pieces_elems(int64_t n, int64_t d) {
  return cluster_pieces_elems(n, d);
}

EMU_API kmgan_emu_center_loss_launch(int dtype, const void* x_real, const void* labels_real,
                                     const void* centers_real, int64_t n_real, int64_t k_real,
                                     const void* x_fake, const void* labels_fake,
                                     const void* centers_fake, int64_t n_fake, int64_t k_fake,
                                     int64_t d, void* loss, void* u_diff, int64_t* counts_real,
                                     int64_t* counts_fake, int real_i32, int fake_i32) {
  return with_side_labels(labels_real, real_i32, labels_fake, fake_i32, [&](auto lr, auto lf) {
    return center_loss_launch(dt(dtype), x_real, lr, centers_real, n_real, k_real, x_fake, lf,
                              centers_fake, n_fake, k_fake, d, loss, u_diff, counts_real,
                              counts_fake, nullptr);
  });
}

EMU_API kmgan_emu_center_loss_backward_launch(int dtype, const void* grad, const void* u_diff,
                                              const void* labels_real,
                                              const int64_t* counts_real, int64_t n_real,
                                              int64_t k_real, const void* labels_fake,
                                              const int64_t* counts_fake, int64_t n_fake,
                                              int64_t k_fake, int64_t d, void* grad_real,
                                              void* grad_fake, int real_i32, int fake_i32) {
  return with_side_labels(labels_real, real_i32, labels_fake, fake_i32, [&](auto lr, auto lf) {
    return center_loss_backward_launch(dt(dtype), grad, u_diff, lr, counts_real, n_real, k_real,
                                       lf, counts_fake, n_fake, k_fake, d, grad_real, grad_fake,
                                       nullptr);
  });
}

EMU_API_SIZE kmgan_emu_assigned_distance_num_partials(int64_t n) {
  return assigned_distance_num_partials(n);
}

EMU_API kmgan_emu_assigned_distance_launch(int dtype, int reduction, const void* x,
                                           const void* labels, const void* centers, int64_t n,
                                           int64_t k, int64_t d, void* partials, void* out,
                                           int labels_i32) {
  return with_labels(labels, labels_i32, [&](auto lab) {
    return assigned_distance_launch(dt(dtype), red(reduction), x, lab, centers, n, k, d, partials,
                                    out, nullptr);
  });
}

EMU_API kmgan_emu_assigned_distance_backward_launch(int dtype, int reduction, const void* grad,
                                                    const void* out, const void* x,
                                                    const void* labels, const void* centers,
                                                    int64_t n, int64_t k, int64_t d,
                                                    void* grad_x, void* grad_centers_acc,
                                                    int labels_i32) {
  return with_labels(labels, labels_i32, [&](auto lab) {
    return assigned_distance_backward_launch(dt(dtype), red(reduction), grad, out, x, lab, centers,
                                             n, k, d, grad_x, grad_centers_acc, nullptr);
  });
}

EMU_API kmgan_emu_pairwise_l1_launch(int dtype, const void* sorted, const int64_t* source,
                                     int64_t n_a, int64_t n_b, int64_t d, void* col_sums,
                                     void* out) {
  return pairwise_l1_launch(dt(dtype), sorted, source, n_a, n_b, d, col_sums, out, nullptr);
}

EMU_API kmgan_emu_pairwise_l1_rank_grad_launch(int dtype, const void* grad, double factor,
                                               const void* values, int64_t n, int64_t d,
                                               const void* sorted, int64_t m, void* out) {
  return pairwise_l1_rank_grad_launch(dt(dtype), grad, factor, values, n, d, sorted, m, out,
                                      nullptr);
}

EMU_API kmgan_emu_kmgan_pulls_launch(int dtype, int reduction, const void* f_real,
                                     const int64_t* labels_real, const void* dist2_real,
                                     int64_t n_real, const void* f_fake,
                                     const int64_t* labels_fake, const void* dist2_fake,
                                     int64_t n_fake, const void* centers_real, int64_t k_real,
                                     int64_t d, void* pulls, void* loss_d, void* loss_g) {
  return kmgan_pulls_launch(dt(dtype), red(reduction), f_real, labels_real, dist2_real, n_real,
                            f_fake, labels_fake, dist2_fake, n_fake, centers_real, k_real, d,
                            pulls, loss_d, loss_g, nullptr);
}

EMU_API kmgan_emu_kmgan_losses_backward_launch(
    int dtype, int reduction, const void* grad_d, const void* grad_g, const void* grad_center,
    const void* f_real, const void* f_fake, const void* centers_real, int64_t k_real,
    const int64_t* labels_real, const int64_t* labels_fake, const int64_t* labels_fake_hat,
    const void* pulls, const void* u_diff, const int64_t* counts_real, const int64_t* counts_fake,
    int64_t k_fake, int64_t n_real, int64_t n_fake, int64_t d, void* grad_real,
    void* grad_fake) {
  return kmgan_losses_backward_launch(dt(dtype), red(reduction), grad_d, grad_g, grad_center,
                                      f_real, f_fake, centers_real, k_real, labels_real,
                                      labels_fake, labels_fake_hat, pulls, u_diff, counts_real,
                                      counts_fake, k_fake, n_real, n_fake, d, grad_real,
                                      grad_fake, nullptr);
}
