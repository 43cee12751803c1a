"""KM-GAN center loss (Eq. 4), Triton (docs/ops.md, KM-GAN losses).

Per side ``u = sum_m (c_m + S_m) / (1 + n_m) = sum_m c_m / (1 + n_m) + sum_i x_i / (1 + n_{l_i})``
and ``L = ||u_real - u_fake||_1``. Written the second way, u is a weighted column sum of the
rows and the centers once the counts are known, so no per-cluster sums are stored.

Forward:
* K <= 64 on both sides (KM-GAN uses K = 10): ONE launch. Each program owns a block of
  columns and recomputes the counts itself (a one-hot compare per row block, O(N K)), reads
  ``1/(1 + n_{l_i})`` off the same one-hot, sums both sides and writes its part of u_diff and
  of the loss; program 0 writes the counts. With d above one column block the per-program
  losses go through one more tiny launch (a fixed-order sum).
* larger K: the counts need a pass over all labels before any weight is known, and Triton
  has no grid-wide barrier, so a count launch (int64 atomics, exact) comes first: two
  zero fills + counts + the reduction launch.
Backward: one launch, ``grad_real_i = g sign(u_diff) / (1 + n_real[l_i])``, fake negated,
sign(0) = 0, in x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, div_rn, finalize_sum, interpreting, pow2

_IN_KERNEL_MAX_K = 64


@triton.jit
def _side_u(x_ptr, l_ptr, c_ptr, cnt_ptr, N, K, D, ds, dmask, write_counts,
            ACC_T: tl.constexpr, COUNTS_IN_KERNEL: tl.constexpr, KP: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's columns of u = sum_m c_m / (1 + n_m) + sum_i x_i / (1 + n_{l_i}), float64.

    The weighted rows are summed in float64 (the interpreter's blocks hold up to 2^15 rows):
    the error does not grow with N (contract 3)."""
    rl = tl.arange(0, BLOCK_N)
    accx = tl.zeros((BLOCK_D,), tl.float64)
    if COUNTS_IN_KERNEL:
        ks = tl.arange(0, KP)
        kmask = ks < K
        cnt = tl.zeros((KP,), tl.int32)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            lab = tl.load(l_ptr + rows, mask=rows < N, other=-1)
            cnt += tl.sum((lab[None, :] == ks[:, None]).to(tl.int32), axis=1)
        tl.store(cnt_ptr + ks, cnt.to(tl.int64), mask=kmask & write_counts)
        inv = div_rn(1.0, 1.0 + cnt.to(ACC_T))
        ct = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                     mask=kmask[:, None] & dmask[None, :], other=0.0).to(ACC_T)
        u = tl.sum(ct * inv[:, None], axis=0)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            rm = rows < N
            lab = tl.load(l_ptr + rows, mask=rm, other=-1)
            w = tl.sum(tl.where(lab[None, :] == ks[:, None], inv[:, None], 0.0), axis=0)
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                         mask=rm[:, None] & dmask[None, :], other=0.0).to(ACC_T)
            accx += tl.sum((xt * w[:, None]).to(tl.float64), axis=0)
    else:
        accc = tl.zeros((BLOCK_N, BLOCK_D), ACC_T)
        for k0 in range(0, K, BLOCK_N):
            ks = k0 + rl
            km = ks < K
            inv = div_rn(1.0, 1.0 + tl.load(cnt_ptr + ks, mask=km, other=0).to(ACC_T))
            ct = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                         mask=km[:, None] & dmask[None, :], other=0.0).to(ACC_T)
            accc += ct * inv[:, None]
        u = tl.sum(accc, axis=0)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            rm = rows < N
            lab = tl.load(l_ptr + rows, mask=rm, other=0)
            w = div_rn(1.0, 1.0 + tl.load(cnt_ptr + lab, mask=rm, other=0).to(ACC_T))
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                         mask=rm[:, None] & dmask[None, :], other=0.0).to(ACC_T)
            accx += tl.sum((xt * w[:, None]).to(tl.float64), axis=0)
    return u.to(tl.float64) + accx


@triton.jit
def _center_loss_fwd_kernel(
    xr_ptr, lr_ptr, cr_ptr, cntr_ptr, xf_ptr, lf_ptr, cf_ptr, cntf_ptr, udiff_ptr, out_ptr,
    Nr, Nf, Kr, Kf, D,
    ACC_T: tl.constexpr, COUNTS_IN_KERNEL: tl.constexpr, KPR: tl.constexpr, KPF: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """u_real - u_fake on BLOCK_D columns and their |.| sum (the loss when one program)."""
    pid = tl.program_id(0)
    ds = pid * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    ur = _side_u(xr_ptr, lr_ptr, cr_ptr, cntr_ptr, Nr, Kr, D, ds, dmask, pid == 0,
                 ACC_T, COUNTS_IN_KERNEL, KPR, BLOCK_N, BLOCK_D)
    uf = _side_u(xf_ptr, lf_ptr, cf_ptr, cntf_ptr, Nf, Kf, D, ds, dmask, pid == 0,
                 ACC_T, COUNTS_IN_KERNEL, KPF, BLOCK_N, BLOCK_D)
    diff = tl.where(dmask, ur - uf, 0.0).to(ACC_T)
    tl.store(udiff_ptr + ds, diff, mask=dmask)
    tl.store(out_ptr + pid, tl.sum(tl.abs(diff), axis=0))


@triton.jit
def _count_kernel(lr_ptr, cntr_ptr, Nr, lf_ptr, cntf_ptr, Nf, n_blocks_r, BLOCK_N: tl.constexpr):
    """counts[l_i] += 1 for both sides (int64 atomics: exact and order-free)."""
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK_N)
    is_fake = pid >= n_blocks_r
    rr = pid * BLOCK_N + lane
    mr = (rr < Nr) & (is_fake == 0)
    tl.atomic_add(cntr_ptr + tl.load(lr_ptr + rr, mask=mr, other=0), 1, mask=mr)
    rf = (pid - n_blocks_r) * BLOCK_N + lane
    mf = (rf >= 0) & (rf < Nf) & is_fake
    tl.atomic_add(cntf_ptr + tl.load(lf_ptr + rf, mask=mf, other=0), 1, mask=mf)


@triton.jit
def _center_loss_bwd_kernel(
    g_ptr, udiff_ptr, lr_ptr, cntr_ptr, gr_ptr, Nr, lf_ptr, cntf_ptr, gf_ptr, Nf, D, n_blocks_r,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """grad_real_i = g sign(u_diff) / (1 + n_real[l_i]); the fake side negated."""
    pid_n = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    ud = tl.load(udiff_ptr + ds, mask=dmask, other=0.0)
    acc_t = ud.dtype
    g = tl.load(g_ptr).to(acc_t)
    s = g * tl.where(ud > 0, 1.0, tl.where(ud < 0, -1.0, 0.0))
    lane = tl.arange(0, BLOCK_N)
    is_fake = pid_n >= n_blocks_r
    rr = pid_n * BLOCK_N + lane
    mr = (rr < Nr) & (is_fake == 0)
    wr = div_rn(1.0, 1.0 + tl.load(cntr_ptr + tl.load(lr_ptr + rr, mask=mr, other=0), mask=mr,
                              other=0).to(acc_t))
    tl.store(gr_ptr + rr[:, None].to(tl.int64) * D + ds[None, :],
             (wr[:, None] * s[None, :]).to(gr_ptr.dtype.element_ty),
             mask=mr[:, None] & dmask[None, :])
    rf = (pid_n - n_blocks_r) * BLOCK_N + lane
    mf = (rf >= 0) & (rf < Nf) & is_fake
    wf = div_rn(1.0, 1.0 + tl.load(cntf_ptr + tl.load(lf_ptr + rf, mask=mf, other=0), mask=mf,
                              other=0).to(acc_t))
    tl.store(gf_ptr + rf[:, None].to(tl.int64) * D + ds[None, :],
             (-(wf[:, None] * s[None, :])).to(gf_ptr.dtype.element_ty),
             mask=mf[:, None] & dmask[None, :])


def center_loss_forward(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake):
    """(loss, u_real - u_fake (d,), counts_real (K_r,), counts_fake (K_f,))."""
    nr, d = x_real.shape
    nf = x_fake.shape[0]
    kr, kf = centers_real.shape[0], centers_fake.shape[0]
    dev = x_real.device
    acc = acc_dtype(x_real)
    interp = interpreting(x_real)
    in_kernel = max(kr, kf) <= _IN_KERNEL_MAX_K and d > 0
    u_diff = torch.empty(d, dtype=acc, device=dev)
    loss = torch.zeros((), dtype=acc, device=dev) if d == 0 else torch.empty((), dtype=acc, device=dev)
    alloc = torch.empty if in_kernel else torch.zeros
    cnt_r = alloc(kr, dtype=torch.int64, device=dev)
    cnt_f = alloc(kf, dtype=torch.int64, device=dev)
    if interp:
        bd = pow2(d, 16, 1024)
        bn = pow2(max(nr, nf, kr, kf), 16, max(16, (1 << 19) // bd))
        opts = {}
    else:
        bd, bn, opts = pow2(d, 16, 128), 32, dict(num_warps=4)
    with device_guard(x_real):
        if not in_kernel and nr + nf > 0:
            cb = pow2(max(nr, nf), 16, 4096 if interp else 256)
            nbr = triton.cdiv(nr, cb)
            _count_kernel[(nbr + triton.cdiv(nf, cb),)](
                labels_real, cnt_r, nr, labels_fake, cnt_f, nf, nbr, BLOCK_N=cb)
        if d == 0:
            return loss, u_diff, cnt_r, cnt_f
        n_prog = triton.cdiv(d, bd)
        parts = loss if n_prog == 1 else torch.empty(n_prog, dtype=acc, device=dev)
        _center_loss_fwd_kernel[(n_prog,)](
            x_real, labels_real, centers_real, cnt_r, x_fake, labels_fake, centers_fake, cnt_f,
            u_diff, parts, nr, nf, kr, kf, d,
            ACC_T=tl.float64 if acc == torch.float64 else tl.float32, COUNTS_IN_KERNEL=in_kernel,
            KPR=pow2(kr, 16), KPF=pow2(kf, 16), BLOCK_N=bn, BLOCK_D=bd, **opts,
        )
        if n_prog > 1:
            finalize_sum(parts, loss)
    return loss, u_diff, cnt_r, cnt_f


def center_loss_backward(grad, u_diff, x_real, labels_real, counts_real, x_fake, labels_fake,
                         counts_fake):
    """(grad_x_real, grad_x_fake) in the dtypes of x_real and x_fake."""
    nr, d = x_real.shape
    nf = x_fake.shape[0]
    gr = torch.empty_like(x_real)
    gf = torch.empty_like(x_fake)
    if (nr + nf) == 0 or d == 0:
        return gr, gf
    if interpreting(x_real):
        bd = pow2(d, 16, 1024)
        bn, opts = pow2(max(nr, nf), 16, max(16, (1 << 20) // bd)), {}
    else:
        bn, bd, opts = 32, pow2(d, 16, 128), dict(num_warps=4)
    nbr = triton.cdiv(nr, bn)
    with device_guard(x_real):
        _center_loss_bwd_kernel[(nbr + triton.cdiv(nf, bn), triton.cdiv(d, bd))](
            grad, u_diff, labels_real, counts_real, gr, nr, labels_fake, counts_fake, gf, nf, d,
            nbr, BLOCK_N=bn, BLOCK_D=bd, **opts,
        )
    return gr, gf
