"""|| x - C[labels] ||, the pull term of KM-GAN Eq. 5/6, Triton (docs/ops.md, KM-GAN losses).

Reductions: ``"fro"`` sqrt(sum_i r_i^2), ``"mean"`` mean_i r_i, ``"sq_sum"`` 0.5 sum_i r_i^2,
with r_i = ||x_i - c_{l_i}||. C[labels] is gathered in-kernel, never materialised.

Forward: one launch when the rows fit one program (the paper's batch of 64), otherwise one
launch writing per-program partials plus a one-program fixed-order sum: deterministic.
Backward: one launch; ``grad_x = diff * scale`` with scale g/out ("fro"), g/(N r_i) ("mean"),
g ("sq_sum"), and 0 wherever the distance is 0; the centers get the negated segment sum
through float32 atomics into a zeroed buffer when they require a gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (acc_dtype, device_guard, finalize_sum, finish, interpreting, pow2,
                      row_offset, sqrt_rn)

_MODES = {"fro": 0, "mean": 1, "sq_sum": 2}
# (SQRT, MUL, divide by N) of the last step, per mode.
_FINISH = {0: (True, 1.0, False), 1: (False, 1.0, True), 2: (False, 0.5, False)}


@triton.jit
def _row_sq_dist(xrow, crow, rmask, D, acc_t: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """||x_i - c_{l_i}||^2 in acc_t for the BLOCK_N rows at xrow / crow (column pointers)."""
    acc = tl.zeros((BLOCK_N, BLOCK_D), acc_t)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (ds < D)[None, :]
        diff = (tl.load(xrow + ds[None, :], mask=m2, other=0.0).to(acc_t)
                - tl.load(crow + ds[None, :], mask=m2, other=0.0).to(acc_t))
        acc += diff * diff
    return tl.sum(acc, axis=1)


@triton.jit
def _row_sq_dist_f64(xrow, crow, rmask, D, acc_t: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """_row_sq_dist as float64, exact where acc_t's squares overflow (contract 2): a block
    with an infinite float32 distance (squares past ~3.4e38, or inf inputs) is recomputed in
    float64, so r_i^2 up to ~1e308 and the reductions of r_i stay finite when they fit."""
    row = _row_sq_dist(xrow, crow, rmask, D, acc_t, BLOCK_N, BLOCK_D).to(tl.float64)
    if acc_t != tl.float64:
        if tl.sum((row == float("inf")).to(tl.int32), axis=0) > 0:
            row = _row_sq_dist(xrow, crow, rmask, D, tl.float64, BLOCK_N, BLOCK_D)
    return row


@triton.jit
def _ad_fwd_kernel(x_ptr, l_ptr, c_ptr, out_ptr, N, D, div,
                   MODE: tl.constexpr, SINGLE: tl.constexpr, SQRT: tl.constexpr,
                   MUL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sum over BLOCK_N rows of r_i^2 ("fro", "sq_sum") or r_i ("mean"), in float64 (the
    partials are float64), the result rounded to out's dtype."""
    acc_t = out_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    lab = tl.load(l_ptr + rows, mask=rmask, other=0)
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    crow = c_ptr + row_offset(lab[:, None], D)  # int32 labels: lab * D in int64
    row = _row_sq_dist_f64(xrow, crow, rmask, D, acc_t, BLOCK_N, BLOCK_D)
    if MODE == 1:
        row = sqrt_rn(row)
    total = tl.sum(row, axis=0)
    if SINGLE:
        tl.store(out_ptr, finish(total, div, SQRT, MUL).to(out_ptr.dtype.element_ty))
    else:
        tl.store(out_ptr + tl.program_id(0), total)


@triton.jit
def _ad_bwd_kernel(g_ptr, out_ptr, x_ptr, l_ptr, c_ptr, gx_ptr, gc_ptr, N, D,
                   MODE: tl.constexpr, CENTERS_GRAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_x = (x - c_l) * scale per row; grad_c[l] -= grad_x (atomics) if CENTERS_GRAD.
    Scales, differences and products in float64, each gradient rounded once (contract 2): a
    float32 difference near float32 max overflows, and 1 / ||.|| of a row past 1e38 is
    subnormal in float32, where the float64 product fits."""
    o = tl.load(out_ptr)
    acc_t = o.dtype
    o = o.to(tl.float64)
    g = tl.load(g_ptr).to(tl.float64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    lab = tl.load(l_ptr + rows, mask=rmask, other=0)
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    crow = c_ptr + row_offset(lab[:, None], D)  # int32 labels: lab * D in int64
    if MODE == 0:
        scale = tl.zeros((BLOCK_N,), tl.float64) + tl.where(o > 0, g / tl.where(o > 0, o, 1.0), 0.0)
    elif MODE == 1:
        r = tl.sqrt(_row_sq_dist_f64(xrow, crow, rmask, D, acc_t, BLOCK_N, BLOCK_D))
        scale = tl.where(r > 0, g / N / tl.where(r > 0, r, 1.0), 0.0)
    else:
        scale = tl.zeros((BLOCK_N,), tl.float64) + g
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (ds < D)[None, :]
        diff = (tl.load(xrow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
                - tl.load(crow + ds[None, :], mask=m2, other=0.0).to(tl.float64))
        gx = diff * scale[:, None]
        tl.store(gx_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                 gx.to(acc_t).to(gx_ptr.dtype.element_ty), mask=m2)
        if CENTERS_GRAD:
            # float64 sums: the error does not grow with a center's rows (contract 3).
            tl.atomic_add(gc_ptr + row_offset(lab[:, None], D) + ds[None, :], -gx, mask=m2)


def _blocks(x):
    n, d = x.shape
    if interpreting(x):
        bd = pow2(d, 16, 1024)
        return pow2(n, 16, max(16, (1 << 20) // bd)), bd, {}
    # One program up to 128 rows (the paper's batch of 64 is a single launch).
    return pow2(n, 16, 128), pow2(d, 16, 64), dict(num_warps=4)


def assigned_distance(x, labels, centers, reduction):
    """0-d float32 (float64 for float64 x): the reduction of r_i = ||x_i - c_{l_i}||."""
    n, d = x.shape
    mode = _MODES[reduction]
    acc = acc_dtype(x)
    out = torch.empty((), dtype=acc, device=x.device)
    if n == 0 or d == 0:
        return out.zero_()
    bn, bd, opts = _blocks(x)
    n_prog = triton.cdiv(n, bn)
    sqrt, mul, by_n = _FINISH[mode]
    div = n if by_n else 1
    with device_guard(x):
        # float64 partials: r_i^2 of a float32 row may pass 3.4e38 while the result fits.
        parts = out if n_prog == 1 else torch.empty(n_prog, dtype=torch.float64, device=x.device)
        _ad_fwd_kernel[(n_prog,)](x, labels, centers, parts, n, d, div, MODE=mode,
                                  SINGLE=n_prog == 1, SQRT=sqrt, MUL=mul,
                                  BLOCK_N=bn, BLOCK_D=bd, **opts)
        if n_prog > 1:
            finalize_sum(parts, out, div=div, sqrt=sqrt, mul=mul)
    return out


def assigned_distance_backward(grad, out, x, labels, centers, reduction, centers_grad):
    """(grad_x in x's dtype, grad_centers in centers' dtype or an empty (0,) tensor)."""
    n, d = x.shape
    acc = acc_dtype(x)
    gx = torch.empty_like(x)
    gc = torch.zeros(centers.shape, dtype=torch.float64, device=x.device) if centers_grad else None
    if n and d:
        bn, bd, opts = _blocks(x)
        with device_guard(x):
            _ad_bwd_kernel[(triton.cdiv(n, bn),)](
                grad, out, x, labels, centers, gx, gc if centers_grad else gx, n, d,
                MODE=_MODES[reduction], CENTERS_GRAD=centers_grad, BLOCK_N=bn, BLOCK_D=bd,
                **opts,
            )
    if not centers_grad:
        return gx, centers.new_empty(0)
    return gx, gc.to(centers.dtype)
