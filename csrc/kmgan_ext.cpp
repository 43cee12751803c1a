// The one place where the op schemas of kmgan_ext are defined.
//
// Two families, same op names:
//   kmgan_ext::<op>(..., str backend)  the public ops. Python registers their fake kernels,
//                                      autograd and a CPU/CUDA kernel that routes to the
//                                      backend named by the last argument (kmgan_ext/_ops.py).
//   kmgan_ext::<op>_native(...)        the C++ kernels: csrc/cpu/<op>_cpu.cpp for the CPU
//                                      key, csrc/cuda/<op>_cuda.cu (bound in
//                                      csrc/cuda/<op>_cuda_binding.cpp: a .cpp of the same
//                                      stem would collide in ninja's object names) for CUDA.
// Mutated arguments are declared (Tensor(a!)) so that torch.compile and opcheck know.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import kmgan_ext._C` loads this shared object, which runs the registrations below.
// The module itself carries no Python functions: every op is reached via torch.ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// One list, expanded twice: with a trailing `str backend` for the public op and without it
// for the native kernel.
#define KMGAN_EXT_OPS(X)                                                                      \
  X("assign", "Tensor x, Tensor centers", "(Tensor, Tensor)")                                 \
  X("assign_backward",                                                                        \
    "Tensor grad_dist2, Tensor x, Tensor centers, Tensor labels, bool centers_grad",          \
    "(Tensor, Tensor)")                                                                       \
  /* km.assign(x, centers, k=k): (N, k) labels and dist2, ascending. */                      \
  X("assign_topk", "Tensor x, Tensor centers, int k", "(Tensor, Tensor)")                     \
  /* km.soft_assign: (N, K) responsibilities q; kind is "student_t" or "softmax". */          \
  X("soft_assign", "Tensor x, Tensor centers, str kind, float alpha, float temperature",      \
    "Tensor")                                                                                 \
  X("soft_assign_backward",                                                                   \
    "Tensor grad_q, Tensor q, Tensor x, Tensor centers, str kind, float alpha, "              \
    "float temperature, bool centers_grad",                                                   \
    "(Tensor, Tensor)")                                                                       \
  X("minibatch_update_",                                                                      \
    "Tensor(a!) centers, Tensor(b!) counts, Tensor x, Tensor labels, bool deterministic",     \
    "()")                                                                                     \
  X("minibatch_step_", "Tensor(a!) centers, Tensor(b!) counts, Tensor x, bool deterministic", \
    "Tensor")                                                                                 \
  /* VQ-VAE EMA (docs/ops.md): cluster_size (K,) and embed_sum (K, d) are the EMA state. */ \
  X("ema_update_",                                                                            \
    "Tensor(a!) centers, Tensor(b!) cluster_size, Tensor(c!) embed_sum, Tensor x, "           \
    "Tensor labels, float decay, float eps, bool deterministic",                              \
    "()")                                                                                     \
  X("center_loss",                                                                            \
    "Tensor x_real, Tensor labels_real, Tensor centers_real, Tensor x_fake, "                 \
    "Tensor labels_fake, Tensor centers_fake",                                                \
    "(Tensor, Tensor, Tensor, Tensor)")                                                       \
  X("center_loss_backward",                                                                   \
    "Tensor grad, Tensor u_diff, Tensor x_real, Tensor labels_real, Tensor counts_real, "     \
    "Tensor x_fake, Tensor labels_fake, Tensor counts_fake",                                  \
    "(Tensor, Tensor)")                                                                       \
  X("assigned_distance", "Tensor x, Tensor labels, Tensor centers, str reduction", "Tensor")  \
  X("assigned_distance_backward",                                                             \
    "Tensor grad, Tensor out, Tensor x, Tensor labels, Tensor centers, str reduction, "       \
    "bool centers_grad",                                                                      \
    "(Tensor, Tensor)")                                                                       \
  X("pairwise_l1", "Tensor a, Tensor? b", "Tensor")                                           \
  X("pairwise_l1_backward", "Tensor grad, Tensor a, Tensor? b", "(Tensor, Tensor)")         \
  /* The KM-GAN loss block (kmgan_ext/kmgan_losses_op.py): labels, L_D, L_G, L_center, and  \
     what the backward needs: pulls = (pull_real, pull_fake), u_diff, counts. */              \
  X("kmgan_losses",                                                                           \
    "Tensor f_real, Tensor f_fake, Tensor centers_real, Tensor centers_fake, str reduction",  \
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")       \
  /* A missing upstream gradient (None) counts as 0. */                                       \
  X("kmgan_losses_backward",                                                                  \
    "Tensor? grad_d, Tensor? grad_g, Tensor? grad_center, Tensor f_real, Tensor f_fake, "     \
    "Tensor centers_real, Tensor labels_real, Tensor labels_fake, Tensor labels_fake_hat, "   \
    "Tensor pulls, Tensor u_diff, Tensor counts_real, Tensor counts_fake, str reduction",     \
    "(Tensor, Tensor)")

static std::string native_name(const char* name) {
  // minibatch_update_ -> minibatch_update_native_ : keep the in-place underscore last.
  std::string s(name);
  if (!s.empty() && s.back() == '_') return s.substr(0, s.size() - 1) + "_native_";
  return s + "_native";
}

// metric="cosine" (issue 12): these ops' schemas end in `bool cosine=False`, after `backend`
// in the public op, so that every call without it (a positional backend included) keeps its
// meaning. The update ops then take `Tensor? sample_weight=None` (issue 12: weighted sums and
// counts, scikit-learn's _mini_batch_step), last for the same reason.
static std::string metric_flag(const char* name) {
  static const char* const ops[] = {"assign", "assign_backward", "assign_topk"};
  static const char* const updates[] = {"minibatch_update_", "minibatch_step_", "ema_update_"};
  for (const char* op : ops)
    if (std::string(name) == op) return ", bool cosine=False";
  for (const char* op : updates)
    if (std::string(name) == op) return ", bool cosine=False, Tensor? sample_weight=None";
  return "";
}

TORCH_LIBRARY(kmgan_ext, m) {
#define KMGAN_EXT_DEFINE(name, args, ret)                                  \
  m.def((std::string(name) + "(" args ", str backend" + metric_flag(name) + ") -> " ret).c_str()); \
  m.def((native_name(name) + "(" args + metric_flag(name) + ") -> " ret).c_str());
  KMGAN_EXT_OPS(KMGAN_EXT_DEFINE)
#undef KMGAN_EXT_DEFINE
  // Greedy k-means++ (csrc/cpu/kmeans_plusplus_cpu.cpp), a CPU kernel only: km.kmeans_plusplus
  // picks it by its own `backend` ("cpu"), so there is no routed public op.
  m.def("kmeans_plusplus_native(Tensor x, Tensor? weights, Tensor u, int first, bool skip=True) -> (Tensor, Tensor, Tensor, Tensor)");
  // Lloyd's iterations of km.kmeans with exact labels and bounds that skip most distances
  // (csrc/cpu/lloyd_cpu.cpp), a CPU kernel only, called by km.kmeans on float32 CPU rows;
  // labeler picks how the labels are found ("auto", or "panels", "elkan", "local" for tests).
  m.def("lloyd_native(Tensor x, Tensor centers, int niter, str labeler=\"auto\") -> (Tensor, Tensor, Tensor, int)");
  // assign's GEMM tile alone, for tests/test_assign_avx512.py: (e, panel minima) of rows x'
  // against centers c' and bias, from the AVX-512 kernel (avx512 and the CPU has it) or the AVX2
  // one (csrc/cpu/assign_avx512.cpp); the two must agree bit for bit.
  m.def("dist_tile_native(Tensor x, Tensor centers, Tensor bias, bool avx512) -> (Tensor, Tensor)");
}
