// km.assign on CPU (docs/ops.md, Assignment): blocked GEMM + fused argmin, with an exactness guard.
//
// Each thread takes tiles of rows; per tile and block of 256 centers, a GEMM forms x . c'_k
// into a per-thread buffer, and the argmin runs over that buffer while it is hot. The (N, K)
// matrix never exists beyond one tile. The GEMM is dist_tile (assign_avx2.cpp, or its AVX-512
// twin with the same bits, assign_avx512.cpp; it also writes e_k and each 16-center chunk's
// minimum) for float accumulation on AVX2 CPUs,
// else at::mm_out (MKL/OpenBLAS, single-threaded inside the parallel region) followed by a
// vectorised pass; float16/bfloat16 rows are converted to float per tile.
//
// The expansion ||x - c_k||^2 = ||x'||^2 + e_k, e_k = ||c'_k||^2 - 2 x'.c'_k, with x' = x - s,
// c'_k = c_k - s and s the mean of the centers, ranks centers without the row constant.
// Shifting both keeps the products small when all points sit far from the origin
// (|x| ~ 1e4 around a common offset), where the unshifted expansion cancels catastrophically.
// Rounding can still reorder near-ties, so every row keeps all centers whose computed e_k is
// within 2 B_i of its minimum, B_i a bound on the rounding error of e_k (below); when more
// than one survives, their exact distances sum((x - c)^2) in double decide (lowest k on an
// exact tie). The result is the exact argmin for any rounding of the GEMM, and dist2 is
// computed directly from the differences, never from the expansion.
//
// Overflow and non-finite values (docs/ops.md, Bad input, contracts 1 and 2): every term of the
// expansion is bounded by (||x'|| + cmax)^2. A row where that bound is not safely below the
// largest acc value (large finite inputs: float32 squares overflow past ~1.8e19), or where x
// or any center holds NaN/Inf, skips the candidates and takes the exact path over all K:
// distances in double, the label the float64 argmin with torch.argmin's NaN rule (the lowest
// k whose distance is NaN, else the lowest k among the minima), dist2 that distance rounded
// (inf where it exceeds float32, NaN where it is NaN).
#include "assign_cpu.h"
#include "distance_tile.h"  // canonical_dist2: the label-deciding float64 distance

#include <cmath>
#include <cstdlib>
#include <limits>

namespace kmgan_ext {
namespace cpu {

// assign_cpu.h; also used by the bounded Lloyd labelers (lloyd_cpu.cpp, lloyd_elkan.cpp).
std::vector<float> pack_panels(const float* cs, int64_t k, int64_t d) {
  const int64_t panels = (k + kPanel - 1) / kPanel;
  std::vector<float> packed(static_cast<size_t>(panels * d * kPanel), 0.0f);
  for (int64_t q = 0; q < k; ++q) {
    float* dst = packed.data() + (q / kPanel) * d * kPanel + q % kPanel;
    for (int64_t j = 0; j < d; ++j) dst[j * kPanel] = cs[q * d + j];
  }
  return packed;
}

namespace {

// kMaxCandidates (assign_cpu.h): a row with more near-tied candidates than this falls back to
// exact distances to all K.
// Columns of centers per GEMM, and elements of the per-thread dot-product tile (256 KiB of
// float): tile and x rows stay in L2.
constexpr int64_t kCenterBlock = 256;
constexpr int64_t kTileElems = 1 << 16;
// The argmin scan keeps the minimum of every chunk of kPanel (16) centers, so the search
// for candidates only revisits chunks whose minimum is within the bound (usually one).
constexpr int64_t kChunks = kCenterBlock / kPanel;

// ||a - b||^2 in double, from the inputs' own values.
template <typename scalar_t>
double exact_dist2(const scalar_t* a, const scalar_t* b, int64_t d, bool avx2) {
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (avx2) return exact_dist2_avx2(a, b, d);
  }
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    s += t * t;
  }
  return s;
}

template <typename acc>
struct ShiftedCenters {
  std::vector<acc> s;     // (d,) the shift: the mean of the centers, rounded to acc
  Tensor cs;              // (K, d) in acc: fl(c_k - s)
  std::vector<acc> bias;  // ||c_k - s||^2 formed in double; +inf past K (panel padding)
  double cmax = 0.0;      // max_k ||c_k - s||
  bool finite = true;     // every center finite (and ||c_k - s||^2 finite in double)
};

template <typename scalar_t>
ShiftedCenters<acc_t<scalar_t>> shift_centers(const scalar_t* c, int64_t k, int64_t d) {
  using acc = acc_t<scalar_t>;
  ShiftedCenters<acc> p;
  std::vector<double> mean(d, 0.0);
  for (int64_t q = 0; q < k; ++q)
    for (int64_t j = 0; j < d; ++j) mean[j] += static_cast<double>(c[q * d + j]);
  p.s.resize(d);
  for (int64_t j = 0; j < d; ++j) p.s[j] = static_cast<acc>(mean[j] / static_cast<double>(k));

  p.cs = at::empty({k, d}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value));
  acc* cs = p.cs.template data_ptr<acc>();
  p.bias.assign(((k + kPanel - 1) / kPanel) * kPanel, std::numeric_limits<acc>::infinity());
  for (int64_t q = 0; q < k; ++q) {
    double n2 = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const acc a = static_cast<acc>(c[q * d + j]);
      cs[q * d + j] = a - p.s[j];
      // exact in double for float/float16/bfloat16 inputs
      const double t = static_cast<double>(a) - static_cast<double>(p.s[j]);
      n2 += t * t;
    }
    p.bias[q] = static_cast<acc>(n2);
    p.finite = p.finite && std::isfinite(n2);
    if (p.finite) p.cmax = std::max(p.cmax, std::sqrt(n2));
  }
  return p;
}

// Candidates of one row while the center blocks go by: the running minimum of e and the
// centers within 2 B of it, in increasing k. count > kMaxCandidates means "too many, or the
// row takes the exact path over all K".
template <typename acc>
struct RowState {
  acc best;
  acc bound2;
  int count;
  int64_t k[kMaxCandidates];
  acc e[kMaxCandidates];
};

// Portable path: e[q] = bias[q] - 2 dot[q] in place over one block of kb (a multiple of
// kPanel or the last, shorter block) and the minimum of each chunk of kPanel.
template <typename acc>
void form_block(acc* dot, const acc* bias, int64_t kb, acc* chunk_min) {
  for (int64_t q0 = 0, ch = 0; q0 < kb; q0 += kPanel, ++ch) {
    const int64_t q1 = std::min(kb, q0 + kPanel);
    acc cm = std::numeric_limits<acc>::infinity();
#pragma omp simd reduction(min : cm)
    for (int64_t q = q0; q < q1; ++q) {
      const acc v = bias[q] - acc(2) * dot[q];
      dot[q] = v;
      cm = v < cm ? v : cm;
    }
    chunk_min[ch] = cm;
  }
}

// Folds one block of e (kb entries, of which the first kv are real centers: the rest is
// panel padding) into the row's candidates.
template <typename acc>
void fold_block(const acc* e, const acc* chunk_min, int64_t kb, int64_t kv, int64_t k0,
                RowState<acc>& st) {
  const int64_t chunks = (kb + kPanel - 1) / kPanel;
  acc m = std::numeric_limits<acc>::infinity();
  for (int64_t ch = 0; ch < chunks; ++ch) m = chunk_min[ch] < m ? chunk_min[ch] : m;
  if (!(m <= st.best + st.bound2)) return;  // nothing here can be the argmin (or all NaN)
  if (m < st.best) {
    st.best = m;
    if (st.count <= kMaxCandidates) {  // drop the candidates the new minimum rules out
      int kept = 0;
      for (int c = 0; c < st.count; ++c) {
        if (st.e[c] <= m + st.bound2) {
          st.k[kept] = st.k[c];
          st.e[kept] = st.e[c];
          ++kept;
        }
      }
      st.count = kept;
    }
  }
  const acc thr = st.best + st.bound2;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    if (!(chunk_min[ch] <= thr)) continue;
    for (int64_t q = ch * kPanel, q1 = std::min(kv, (ch + 1) * kPanel); q < q1; ++q) {
      if (e[q] <= thr) {
        if (st.count < kMaxCandidates) {
          st.k[st.count] = k0 + q;
          st.e[st.count] = e[q];
          ++st.count;
        } else {
          st.count = kMaxCandidates + 1;
        }
      }
    }
  }
}

// The label of one row from its candidates, and its exact distance when one was computed
// (negative otherwise).
template <typename scalar_t, typename acc>
int64_t resolve_row(const RowState<acc>& st, const scalar_t* xi, const scalar_t* c, int64_t k,
                    int64_t d, bool avx2, double& dist) {
  dist = -1.0;
  if (st.count == 1) return st.k[0];
  // Several near-tied candidates, too many of them, none, or a row on the exact path: exact
  // distances decide, in increasing k, with torch.argmin's rule: the first NaN wins (NaN
  // propagates), else the first minimum (strict <; an all-inf row gets its first k).
  const bool listed = st.count >= 2 && st.count <= kMaxCandidates;
  const int64_t m = listed ? st.count : k;
  int64_t label = -1;
  double best = std::numeric_limits<double>::infinity();
  for (int64_t c_i = 0; c_i < m; ++c_i) {
    const int64_t q = listed ? st.k[c_i] : c_i;
    const double t = canonical_dist2(xi, c + q * d, d);
    if (std::isnan(t)) {
      dist = t;
      return q;
    }
    if (t < best || label < 0) {
      best = t;
      label = q;
    }
  }
  dist = best;
  return label;
}

// |computed e_k - exact e_k| <= (2 gamma_d + 6u) ||x'|| ||c'_k|| + 2u ||c'_k||^2: the dot
// products carry gamma_d = d u / (1 - d u) of sum |x'_j c'_j| <= ||x'|| ||c'|| whatever the
// summation order (FMA included); the rest is the rounding of x - s, c - s, of the bias
// and of the subtraction. B_i = tau (||x'_i|| cmax + 2 cmax^2) with tau = 2 (2d + 8) u
// bounds that with a factor 2 of margin (||x'|| itself is computed in acc). Plus the rounding
// of the reference's own float64 distances, (d + 2) 2^-53 of their size at most: centers whose
// float64 distances tie only after that rounding stay candidates, and canonical_dist2 then
// decides as the reference does. Returns 2 B_i.
template <typename acc>
double candidate_bound2(double xn, double cmax, int64_t d) {
  const double u = std::numeric_limits<acc>::epsilon() / 2;
  const double tau = 2.0 * (2.0 * static_cast<double>(d) + 8.0) * u;
  const double ref_tau = (static_cast<double>(d) + 2.0) * std::ldexp(1.0, -53);
  return 2.0 * (tau * (xn * cmax + 2.0 * cmax * cmax) + ref_tau * (xn + cmax) * (xn + cmax));
}

template <typename scalar_t>
void assign_kernel(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t k,
                   int64_t* labels, acc_t<scalar_t>* dist2) {
  using acc = acc_t<scalar_t>;
  const auto sc = shift_centers(c, k, d);
  // Rows whose expansion terms, bounded by (||x'|| + cmax)^2, stay below this cannot overflow.
  const double safe_square = static_cast<double>(std::numeric_limits<acc>::max()) / 16.0;
  const acc* bias = sc.bias.data();

  // The AVX2 kernel works on whole panels of 16 centers; at::mm on any width.
  constexpr bool float_acc = std::is_same<acc, float>::value;
  const bool avx2 = use_avx2();
  const bool avx2_tile = float_acc && avx2;
  std::vector<float> packed;
  if constexpr (float_acc) {
    if (avx2_tile) packed = pack_panels(sc.cs.template data_ptr<float>(), k, d);
  }
  const int64_t kw = avx2_tile ? ((k + kPanel - 1) / kPanel) * kPanel : k;  // width of the dot rows
  const int64_t kb_max = std::min(kw, kCenterBlock);
  const int64_t tile_rows = std::min(std::max<int64_t>(kTileElems / kb_max, 16), int64_t(512));
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  // At least ~4M multiply-adds per task: smaller problems stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, tile_rows * k * d));
  const auto acc_type = c10::CppTypeToScalarType<acc>::value;

  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    c10::InferenceMode no_autograd;
    std::vector<acc> xbuf(tile_rows * d);
    std::vector<acc> dots(tile_rows * kb_max);
    std::vector<acc> chunk_min(tile_rows * kChunks);
    std::vector<RowState<acc>> rows(tile_rows);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile_rows;
      const int64_t nr = std::min(tile_rows, n - r0);
      // x' = x - s in acc (float16/bfloat16 converted on the way), and ||x'|| for the bound.
      acc* xt = xbuf.data();
      const acc* sp = sc.s.data();
      for (int64_t r = 0; r < nr; ++r) {
        const scalar_t* xr = x + (r0 + r) * d;
        acc* xs = xt + r * d;
        acc n2 = 0;
#pragma omp simd reduction(+ : n2)
        for (int64_t j = 0; j < d; ++j) {
          xs[j] = static_cast<acc>(xr[j]) - sp[j];
          n2 += xs[j] * xs[j];
        }
        const double xn = std::sqrt(static_cast<double>(n2));
        rows[r].best = std::numeric_limits<acc>::infinity();
        rows[r].bound2 = static_cast<acc>(candidate_bound2<acc>(xn, sc.cmax, d));
        // NaN-safe: a NaN/Inf row or center fails the comparison and takes the exact path.
        const bool safe = sc.finite && (xn + sc.cmax) * (xn + sc.cmax) < safe_square;
        rows[r].count = safe ? 0 : kMaxCandidates + 1;
      }
      for (int64_t k0 = 0; k0 < kw; k0 += kb_max) {
        const int64_t kb = std::min(kb_max, kw - k0);
        if constexpr (float_acc) {
          if (avx2_tile) {
            dist_tile(xt, nr, d, packed.data() + k0 * d, bias + k0, kb / kPanel, dots.data(), kb,
                           chunk_min.data(), kChunks);
          }
        }
        if (!avx2_tile) {
          const Tensor xt_t = at::from_blob(xt, {nr, d}, at::TensorOptions().dtype(acc_type));
          Tensor out = at::from_blob(dots.data(), {nr, kb}, at::TensorOptions().dtype(acc_type));
          at::mm_out(out, xt_t, sc.cs.narrow(0, k0, kb).t());
          for (int64_t r = 0; r < nr; ++r) {
            form_block(dots.data() + r * kb, bias + k0, kb, chunk_min.data() + r * kChunks);
          }
        }
        const int64_t kv = std::min(kb, k - k0);
        for (int64_t r = 0; r < nr; ++r) {
          fold_block(dots.data() + r * kb, chunk_min.data() + r * kChunks, kb, kv, k0, rows[r]);
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        const scalar_t* xi = x + i * d;
        double dist;
        const int64_t label = resolve_row(rows[r], xi, c, k, d, avx2, dist);
        labels[i] = label;
        if (dist2 != nullptr) {
          if (dist < 0.0) dist = exact_dist2(xi, c + label * d, d, avx2);
          dist2[i] = static_cast<acc>(dist > 0.0 ? dist : (dist == dist ? 0.0 : dist));
        }
      }
    }
  });
}

// One center: every label is 0, only the distances are work.
template <typename scalar_t>
void assign_single(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t* labels,
                   acc_t<scalar_t>* dist2) {
  const int64_t grain = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d));
  const bool avx2 = use_avx2();
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      labels[i] = 0;
      if (dist2 != nullptr) dist2[i] = static_cast<acc_t<scalar_t>>(exact_dist2(x + i * d, c, d, avx2));
    }
  });
}

// B independent problems, x (B, N, d) with centers (B, K, d) -> (B, N) outputs, each problem
// exactly as assign_native computes it alone. With at least as many problems as threads, one
// parallel region takes the problems (a problem's own row tiles then run inline on the thread
// that took it: at::parallel_for does not nest); with fewer, each problem's row tiles are
// spread over every thread in turn, so a few large problems still use the whole CPU.
std::tuple<Tensor, Tensor> assign_batched_native(const Tensor& x_in, const Tensor& centers_in,
                                                 bool cosine) {
  check_cpu("x", x_in);
  check_cpu("centers", centers_in);
  TORCH_CHECK_VALUE(x_in.dim() == 3 && centers_in.dim() == 3 && x_in.size(0) == centers_in.size(0),
                    "batched problems need x (B, N, d) and centers (B, K, d) with the same B, got ",
                    x_in.sizes(), " and ", centers_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1), k = centers_in.size(1), d = x_in.size(2);
  Tensor labels = at::empty({b, n}, x_in.options().dtype(at::kLong));
  Tensor dist2 = at::empty({b, n}, x_in.options().dtype(out_dtype(x_in)));
  if (b == 0) return {labels, dist2};
  check_centers("centers", centers_in[0], "x", x_in[0]);
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  auto one = [&](int64_t p) {
    if (cosine) {
      assign_cosine_into(x[p], centers[p], labels[p], dist2[p]);
    } else {
      assign_into(x[p], centers[p], labels[p], dist2[p]);
    }
  };
  if (b >= at::get_num_threads()) {
    const int64_t work = std::max<int64_t>(1, n * k * std::max<int64_t>(d, 1));
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / work);
    at::parallel_for(0, b, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) one(p);
    });
  } else {
    for (int64_t p = 0; p < b; ++p) one(p);
  }
  return {labels, dist2};
}

std::tuple<Tensor, Tensor> assign_native(const Tensor& x_in, const Tensor& centers_in, bool cosine) {
  if (x_in.dim() == 3) return assign_batched_native(x_in, centers_in, cosine);
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  const Tensor x = x_in.contiguous();
  const Tensor centers = centers_in.contiguous();
  Tensor labels = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  Tensor dist2 = at::empty({x.size(0)}, x.options().dtype(out_dtype(x)));
  if (cosine) {
    assign_cosine_into(x, centers, labels, dist2);
  } else {
    assign_into(x, centers, labels, dist2);
  }
  return {labels, dist2};
}

std::tuple<Tensor, Tensor> assign_backward_native(const Tensor& grad_dist2, const Tensor& x_in,
                                                  const Tensor& centers_in, const Tensor& labels_in,
                                                  bool centers_grad, bool cosine) {
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  const int64_t n = x_in.size(0), d = x_in.size(1), k = centers_in.size(0);
  check_index("labels", labels_in, n);
  check_cpu("grad_dist2", grad_dist2);
  TORCH_CHECK(grad_dist2.dim() == 1 && grad_dist2.size(0) == n, "grad_dist2 must have shape (", n,
              ",), got ", grad_dist2.sizes());
  TORCH_CHECK(grad_dist2.is_floating_point(), "grad_dist2 must be floating, got ",
              grad_dist2.scalar_type());
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const Tensor labels = labels_in.contiguous();
  check_label_values("labels", labels.data_ptr<int64_t>(), n, k);
  Tensor gx = at::empty_like(x);
  Tensor gc = centers_grad ? at::empty_like(centers) : at::empty({0}, centers.options());
  if (cosine) {
    assign_cosine_backward_into(grad_dist2, x, centers, labels, gx, centers_grad ? gc : Tensor());
    return {gx, gc};
  }
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_backward_native", [&] {
    // d dist2_i / d x_i = 2 (x_i - c_{l_i}).
    const Tensor g = grad_dist2.to(at::kDouble).contiguous();
    std::vector<double> scale(n);
    const double* gp = g.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) scale[i] = 2.0 * gp[i];
    scaled_diff_grad<scalar_t>(x.data_ptr<scalar_t>(), centers.data_ptr<scalar_t>(),
                               labels.data_ptr<int64_t>(), n, d, k, scale.data(),
                               gx.data_ptr<scalar_t>(),
                               centers_grad ? gc.data_ptr<scalar_t>() : nullptr);
  });
  return {gx, gc};
}

}  // namespace

// The AVX2 kernels run on CPUs that have them, unless KMGAN_EXT_CPU_NO_AVX2=1 asks for the
// portable path (to test that path on such CPUs). One choice per process.
bool use_avx2() {
  static const bool use = avx2_kernels_available() && not_switched_off("KMGAN_EXT_CPU_NO_AVX2");
  return use;
}

void assign_into(const Tensor& x, const Tensor& centers, const Tensor& labels, const Tensor& dist2) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  if (n == 0) return;
  // A few float32 centers: one sweep over x (assign_small_k.cpp).
  if (x.scalar_type() == at::kFloat && use_avx2() &&
      assign_small_k_f32(x.data_ptr<float>(), n, d, centers.data_ptr<float>(), k,
                         labels.data_ptr<int64_t>(), dist2.defined() ? dist2.data_ptr<float>() : nullptr)) {
    return;
  }
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_native", [&] {
    using acc = acc_t<scalar_t>;
    acc* dp = dist2.defined() ? dist2.data_ptr<acc>() : nullptr;
    if (k == 1) {
      assign_single(x.data_ptr<scalar_t>(), n, d, centers.data_ptr<scalar_t>(),
                    labels.data_ptr<int64_t>(), dp);
    } else {
      assign_kernel(x.data_ptr<scalar_t>(), n, d, centers.data_ptr<scalar_t>(), k,
                    labels.data_ptr<int64_t>(), dp);
    }
  });
}

double candidate_bound2_f32(double xn, double cmax, int64_t d) {
  return candidate_bound2<float>(xn, cmax, d);
}

bool shifted_centers_f32(const float* c, int64_t k, int64_t d, std::vector<float>& s,
                         std::vector<float>& cs, std::vector<float>& bias, double& cmax) {
  const auto sc = shift_centers(c, k, d);
  if (!sc.finite) return false;
  s = sc.s;
  const float* p = sc.cs.template data_ptr<float>();
  cs.assign(p, p + k * d);
  bias.assign(sc.bias.begin(), sc.bias.begin() + k);
  cmax = sc.cmax;
  return true;
}

int64_t resolve_candidates_f32(const float* xi, const float* c, int64_t k, int64_t d,
                               const int64_t* cand, int count, double& dist) {
  RowState<float> st;
  st.count = count;
  for (int q = 0; q < count && q < kMaxCandidates; ++q) st.k[q] = cand[q];
  return resolve_row(st, xi, c, k, d, use_avx2(), dist);
}

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("assign_native", &assign_native);
  m.impl("assign_backward_native", &assign_backward_native);
}

}  // namespace cpu
}  // namespace kmgan_ext
