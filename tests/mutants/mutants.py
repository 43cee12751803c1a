"""The curated mutants of `make mutants` (tests/mutants/run.py): deliberately broken copies
of the library that the named tests must catch.

Each mutant replaces one exact snippet (`old`, which must occur exactly once in `file`) by
`new`; lists of olds and news give the same mutant for successive forms of the code (the
first old found is used), so an entry survives a rewrite merged from another branch. `kind` says what has to happen before the tests run: "python" and "triton" need
nothing, "cpp" rebuilds kmgan_ext._C in the scratch tree (CPU kernels only). `tests` are the
pytest arguments that must fail on the mutant (the relevant part of the suite; the runner
first checks they pass on the unmutated tree). `why` names the defect it stands for.

To add one: copy an entry, point it at the code, list the tests that should catch it, and run
`python tests/mutants/run.py --only NAME`. A mutant whose `old` no longer matches is reported
"stale" (the code moved: update the snippet), never skipped silently.
CUDA-on-CPU mutants (csrc/cuda, run by the CPU harness of issue 11) take kind "cuda-emulated"
once that harness exists: the runner then rebuilds nothing and the harness's tests compile the
edited .cu files themselves.
"""
from __future__ import annotations

MUTANTS = [
    # ---- the routing: a backend silently served by the reference (issue 19, missed before)
    dict(
        name="cpu-backend-runs-reference",
        kind="python",
        file="kmgan_ext/_dispatch.py",
        old='    if backend == "reference":\n        from . import reference',
        new='    if backend in ("reference", "cpu"):\n        from . import reference',
        tests=["tests/test_backend_runs_its_own_code.py"],
        why="_dispatch.implementation returns the reference for backend='cpu'",
    ),
    dict(
        name="triton-backend-runs-reference",
        kind="python",
        file="kmgan_ext/_dispatch.py",
        old='    if backend == "triton":\n        from . import kernels\n\n        return kernels',
        new='    if backend == "triton":\n        from . import reference\n\n        return reference',
        tests=["tests/test_backend_runs_its_own_code.py"],
        why="backend='triton' silently served by the reference",
    ),
    # ---- exactness of labels (near ties): the exact float64 re-check disabled
    dict(
        name="cpu-assign-no-exact-recheck",
        kind="cpp",
        file="csrc/cpu/assign_cpu.cpp",
        old="  if (st.count == 1) return st.k[0];",
        new="  if (st.count >= 1) return st.k[0];",
        tests=["tests/test_assign.py", "-k", "near_ties and cpu-cpu"],
        why="CPU assign keeps the GEMM's ranking of near-tied centers (no exact re-check)",
    ),
    dict(
        name="triton-assign-no-exact-recheck",
        kind="triton",
        file="kernels/assign.py",
        old="    pick2 = pair & ((e2 < e1) | ((e2 == e1) & (i2 < i1)))",
        new="    pick2 = pair & False",
        tests=["tests/test_assign.py", "-k", "near_ties and triton"],
        why="Triton assign keeps the tensor-core ranking of two near-tied centers",
    ),
    # ---- tie rules (caught before this issue)
    dict(
        name="cpu-assign-tie-to-highest",
        kind="cpp",
        file="csrc/cpu/assign_cpu.cpp",
        old=["    if (t < best) {", "    if (t < best || label < 0) {"],
        new=["    if (t <= best) {", "    if (t <= best || label < 0) {"],
        tests=["tests/test_assign.py", "-k", "ties and cpu-cpu"],
        why="CPU exact ties go to the highest index instead of the lowest",
    ),
    dict(
        name="triton-assign-tie-to-highest",
        kind="triton",
        file="kernels/assign.py",
        old="    pick2 = pair & ((e2 < e1) | ((e2 == e1) & (i2 < i1)))",
        new="    pick2 = pair & ((e2 < e1) | ((e2 == e1) & (i2 > i1)))",
        tests=["tests/test_assign.py", "-k", "ties and triton"],
        why="Triton exact ties go to the highest index",
    ),
    # ---- empty clusters in the updates
    dict(
        name="triton-update-no-empty-cluster-guard",
        kind="triton",
        file="kernels/minibatch_update.py",
        old=["    hit = kmask & (m > 0)\n    m_f = tl.where(hit, m.to(ACC_T), 1.0)",
             "    hit = kmask & (m > 0)\n    m_f = tl.where(hit, m.to(tl.float64), 1.0)"],
        new=["    hit = kmask\n    m_f = tl.where(hit, m.to(ACC_T), 1.0)",
             "    hit = kmask\n    m_f = tl.where(hit, m.to(tl.float64), 1.0)"],
        tests=["tests/test_minibatch_update.py", "-k", "triton"],
        why="Triton Sculley/EMA updates write clusters without rows (0/0 = NaN)",
    ),
    dict(
        name="reference-ema-no-empty-cluster-guard",
        kind="python",
        file="kmgan_ext/reference.py",
        # the per-call rule, then the VQ-VAE EMA of contract 4 (guard: N'_k == 0)
        old=["    centers.copy_(torch.where((m > 0)[:, None], upd, c).to(centers.dtype))",
             "    centers.copy_(torch.where(keep, c, new).to(centers.dtype))"],
        new=["    centers.copy_(upd.to(centers.dtype))", "    centers.copy_(new.to(centers.dtype))"],
        tests=["tests/test_minibatch_update.py", "-k", "ema"],
        why="the EMA update without its empty-cluster guard (issue 19, missed before)",
    ),
    dict(
        name="cpu-ema-no-empty-cluster-guard",
        kind="cpp",
        file="csrc/cpu/minibatch_update_cpu.cpp",
        old=["      if (m[q] == 0) continue;\n      const acc mq = static_cast<acc>(m[q]);",
             "    if (smoothed == 0.0) continue;"],
        new=["      const acc mq = static_cast<acc>(m[q]);", ""],
        tests=["tests/test_minibatch_update.py", "-k", "ema and cpu-cpu"],
        why="the CPU EMA update writes clusters that have no rows (no N'_k) as 0/0",
    ),
    dict(
        name="cpu-sculley-no-empty-cluster-guard",
        kind="cpp",
        file="csrc/cpu/minibatch_update_cpu.cpp",
        old="    if (m[q] == 0) continue;\n    counts[q] += m[q];",
        new="    counts[q] += m[q];",
        tests=["tests/test_minibatch_update.py", "-k", "cpu-cpu"],
        why="CPU Sculley update touches clusters without rows",
    ),
    # ---- determinism
    dict(
        name="triton-deterministic-takes-atomic-path",
        kind="triton",
        file="kernels/minibatch_update.py",
        old=["        if deterministic:\n            slab, order = torch.sort(labels, stable=True)",
             "        if deterministic:\n            slab, order = torch.sort(labels, dim=-1, stable=True)"],
        new=["        if deterministic and False:\n            slab, order = torch.sort(labels, stable=True)",
             "        if deterministic and False:\n            slab, order = torch.sort(labels, dim=-1, stable=True)"],
        tests=["tests/test_triton_emulation.py", "-k", "deterministic_updates_use_no_float_atomics"],
        why="Triton deterministic=True routed to the float-atomic path (issue 19, missed before: with"
        " float64 block totals the atomic path can give the same bits, so the test counts float atomics)",
    ),
    # ---- the fused KM-GAN loss block: signs and per-loss gradients
    dict(
        name="reference-loss-d-sign",
        kind="python",
        file="kmgan_ext/reference.py",
        old="    return ((pr - pf).to(dt), pf.to(dt), loss_c,",
        new="    return ((pf - pr).to(dt), pf.to(dt), loss_c,",
        tests=["tests/test_kmgan_losses.py", "-k", "reference"],
        why="L_D = pull_fake - pull_real (the sign of Eq. 5 flipped)",
    ),
    dict(
        name="reference-drop-fake-pull-grad",
        kind="python",
        file="kmgan_ext/reference.py",
        old="    gf = side(f_fake, labels_fake, p[1], gg - gd, labels_fake_hat, counts_fake, -gc)",
        new="    gf = side(f_fake, labels_fake, p[1], 0 * (gg - gd), labels_fake_hat, counts_fake, -gc)",
        tests=["tests/test_kmgan_losses.py", "-k", "reference"],
        why="the fake pull's gradient dropped (cancels in L_D + L_G)",
    ),
    dict(
        name="cpu-drop-fake-pull-grad",
        kind="cpp",
        file="csrc/cpu/kmgan_losses_cpu.cpp",
        old="nf, d, red, gg - gd, pf, -gc,",
        new="nf, d, red, 0.0 * (gg - gd), pf, -gc,",
        tests=["tests/test_kmgan_losses.py", "-k", "cpu"],
        why="the fake pull's gradient dropped in the C++ loss block",
    ),
    dict(
        name="triton-drop-fake-pull-grad",
        kind="triton",
        file="kernels/kmgan_losses.py",
        old="        _bwd_side(gg - gd, tl.load(pulls_ptr + 1)",
        new="        _bwd_side(0.0 * (gg - gd), tl.load(pulls_ptr + 1)",
        tests=["tests/test_kmgan_losses.py", "-k", "triton"],
        why="the fake pull's gradient dropped in the Triton loss block",
    ),
    dict(
        name="triton-low-precision-grad-values",
        kind="triton",
        file="kernels/kmgan_losses.py",
        old="            BLOCK_N=bn, BLOCK_D=bd, **opts,\n        )\n    return gr, gf",
        new="            BLOCK_N=bn, BLOCK_D=bd, **opts,\n        )\n"
            "    return (gr, gf) if f_real.element_size() >= 4 else (2 * gr, 2 * gf)",
        tests=["tests/test_kmgan_losses.py", "-k", "low_precision and triton"],
        why="16-bit loss-block gradients of the right dtype but wrong values (the test checked dtype only)",
    ),
    dict(
        name="reference-pull-grad-16bit-values",
        kind="python",
        file="kmgan_ext/reference.py",
        old="    gx = _pull_grad(diff, _acc(out), _acc(grad), reduction)\n",
        new="    gx = _pull_grad(diff, _acc(out), _acc(grad), reduction) * (1.0 if x.element_size() >= 4 else 0.5)\n",
        tests=["tests/test_assigned_distance.py", "-k", "dtypes and reference"],
        why="16-bit assigned_distance gradients of the right dtype but wrong values",
    ),
    dict(
        name="reference-center-grad-16bit-values",
        kind="python",
        file="kmgan_ext/reference.py",
        old="    return gr.to(x_real.dtype), gf.to(x_fake.dtype)",
        new="    return (gr if x_real.element_size() >= 4 else -gr).to(x_real.dtype), gf.to(x_fake.dtype)",
        tests=["tests/test_center_loss.py", "-k", "dtypes and reference"],
        why="16-bit center-loss gradients of the right dtype but wrong values",
    ),
    dict(
        name="cpu-center-grad-stream-wrong-columns",
        kind="cpp",
        file="csrc/cpu/center_loss_avx2.cpp",
        old="_mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(sgn + j + 4), w))",
        new="_mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(sgn + j), w))",
        tests=["tests/test_center_loss.py", "-k", "gradient_bits"],
        why="the streaming-store gradient loop (large float32 outputs) writes columns 4..7 of each 8 from the wrong signs",
    ),
    # ---- km.kmeans' Elkan bounds (csrc/cpu/lloyd_elkan.cpp): the masked last lanes of a group
    dict(
        name="cpu-elkan-needed-drops-last-lane",
        kind="cpp",
        file="csrc/cpu/lloyd_elkan.cpp",
        old="lv = _mm256_blendv_ps(nan, _mm256_maskload_ps(L + j, mask), _mm256_castsi256_ps(mask));",
        new="lv = _mm256_blendv_ps(nan, _mm256_maskload_ps(L + j, mask), _mm256_castsi256_ps(tail_mask(k - j - 1)));",
        tests=["tests/test_lloyd_cpu.py"],
        why="the per-center test never lists the last center of a group whose size is not a multiple of 8 (a nearer center is missed)",
    ),
    dict(
        name="cpu-elkan-group-min-ignores-tail",
        kind="cpp",
        file="csrc/cpu/lloyd_elkan.cpp",
        old="own = _mm256_or_si256(own, _mm256_xor_si256(mask, _mm256_set1_epi32(-1)));",
        new="own = _mm256_set1_epi32(-1);",
        tests=["tests/test_lloyd_cpu.py"],
        why="a group's bound leaves out its last size % 8 centers, so it is no lower bound and the group is skipped wrongly",
    ),
    # ---- km.kmeans' cluster-local labels (csrc/cpu/lloyd_local.cpp)
    dict(
        name="cpu-local-reach-ignores-drift",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="const double reach = (radius_[a] + drift_[a]) * kLloydUp;",
        new="const double reach = radius_[a] * kLloydUp;",
        tests=["tests/test_lloyd_cpu.py"],
        why="a cluster's reach leaves out its center's drift, so C_a can miss the center a row moves to",
    ),
    dict(
        name="cpu-local-hamerly-ignores-drift",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="const double un = (u_[i] + drift_[a]) * kLloydUp;",
        new="const double un = u_[i] * kLloydUp;",
        tests=["tests/test_lloyd_cpu.py"],
        why="Hamerly's test uses the distance to the center before it moved: rows keep a label another center now wins",
    ),
    dict(
        name="cpu-local-tile-drops-cluster-remainder",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="e = t + 1 == nt ? na : 12 * (blocks * (t + 1) / nt);",
        new="e = 12 * (blocks * (t + 1) / nt);",
        tests=["tests/test_lloyd_cpu.py"],
        why="a cluster's last na % 12 rows are in no tile: they keep their old labels",
    ),
    dict(
        name="cpu-local-candidates-first-panel-only",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="for (int64_t p = 0; p < panels && ncand <= kMaxCandidates; ++p) {",
        new="for (int64_t p = 0; p < 1 && ncand <= kMaxCandidates; ++p) {",
        tests=["tests/test_lloyd_cpu.py"],
        why="candidates come from the first 16 centers of C_a only (the whole passes and wide C_a lose the others)",
    ),
    dict(
        name="cpu-local-radius-without-row-norm",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="dist = (static_cast<double>(xn2[r]) * (1.0 + 2.0 * lo) + static_cast<double>(e[r * kw + q]) + b) *",
        new="dist = (static_cast<double>(e[r * kw + q]) + b) *",
        tests=["tests/test_lloyd_cpu.py"],
        why="the bound on a row's distance to its center leaves out ||x - s||^2: radii, and so C_a and Hamerly's test, are too small",
    ),
    dict(
        name="cpu-local-center-bounds-without-error-term",
        kind="cpp",
        file="csrc/cpu/lloyd_local.cpp",
        old="std::max(0.0, (xs2 + static_cast<double>(e[a * kw + j])) - sub)",
        new="std::max(0.0, (xs2 + static_cast<double>(e[a * kw + j])))",
        tests=["tests/test_lloyd_cpu.py"],
        why="the centers' half distances from the tile without its rounding bound: far from the origin they exceed the true ones, and C_a or Hamerly's test leaves out a nearer center",
    ),
    # ---- assign's AVX-512 tile (csrc/cpu/assign_avx512.cpp): the AVX2 tile's bits
    dict(
        name="cpu-avx512-tile-second-panel-min-misplaced",
        kind="cpp",
        file="csrc/cpu/assign_avx512.cpp",
        old="finish_row16(a##i##h, bh, e + (i) * lde + kPanel, pmin + (i) * ldm + 1);",
        new="finish_row16(a##i##h, bh, e + (i) * lde + kPanel, pmin + (i) * ldm);",
        tests=["tests/test_assign_avx512.py"],
        why="the second panel's minimum overwrites the first's (a panel holding the nearest center can be passed over)",
    ),
    dict(
        name="cpu-avx512-tile-drops-last-column",
        kind="cpp",
        file="csrc/cpu/assign_avx512.cpp",
        old="  for (int64_t j = 0; j < d; ++j) {\n    const __m512 bl = _mm512_loadu_ps(panel + j * kPanel);",
        new="  for (int64_t j = 0; j + 1 < d; ++j) {\n    const __m512 bl = _mm512_loadu_ps(panel + j * kPanel);",
        tests=["tests/test_assign_avx512.py"],
        why="the panel-pair kernel leaves the last feature out of every dot product",
    ),
    # ---- pairwise L1: the tie convention of the gradient
    dict(
        name="reference-pairwise-ties-not-zero",
        kind="python",
        file="kmgan_ext/reference.py",
        old="    above = w.shape[0] - torch.searchsorted(wt, vt, right=True)",
        new="    above = w.shape[0] - torch.searchsorted(wt, vt, right=False)",
        tests=["tests/test_pairwise_l1.py", "-k", "reference"],
        why="pairwise L1 gradient counts equal values as above (sign(0) != 0)",
    ),
    # ---- errors: the message names the argument
    dict(
        name="checks-wrong-argument-named",
        kind="python",
        file="kmgan_ext/_checks.py",
        old=['raise TypeError(f"{name} must have dtype {dtype} (as x)',
             'raise TypeError(f"{name} must have dtype {dtype}{as_ref}'],
        new=['raise TypeError(f"x must have dtype {dtype} (as x)',
             'raise TypeError(f"x must have dtype {dtype}{as_ref}'],
        tests=["tests/test_validation.py"],
        why="validation errors that name the wrong argument",
    ),
]
