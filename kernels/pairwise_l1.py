"""Sum of pairwise L1 distances (KM-GAN Eq. 7) in O(N log N d), Triton (docs/ops.md, KM-GAN losses).

Per feature column the sum of |differences| follows from the sorted values (``torch.sort``
along dim 0 outside the kernels):

* within one batch (ordered pairs i != j): ``2 sum_j (2j - N + 1) v_(j)``;
* between a (N rows) and b (M rows): sort the concatenation; a value from a at sorted
  position p with ``cb`` values of b before it contributes ``v (2 cb - M)``, a value from b
  contributes ``v (2 ca - N)`` (``ca = p - cb``): each pair (a > b) yields ``a - b``. The
  counts are running prefix sums (``tl.cumsum``) carried across row chunks. Ties between a
  and b cancel whatever their order.

Every value is taken relative to its column's median before weighting: the sums are
shift-invariant, and within a batch this makes every term non-negative (no cancellation
when |x| >> spread, e.g. |x| ~ 1e4).

Backward (the rank count, ties give 0): d/dv = #(other values strictly below v) -
#(strictly above), x2 within a batch, found by two binary searches per element in the
sorted column of the other set (lower and upper bound). No atomics: each element's
gradient is written once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (acc_dtype, device_guard, finalize_sum, finish, interpreting, midpoint, pow2,
                      row_offset)


@triton.jit
def _l1_sorted_kernel(z_ptr, idx_ptr, out_ptr, N, M, D,
                      BETWEEN: tl.constexpr, SINGLE: tl.constexpr, MUL: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Weighted sum over the column-sorted values z (T rows) for BLOCK_D columns."""
    acc_t = out_ptr.dtype.element_ty
    ds = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    if BETWEEN:
        total_rows = N + M
    else:
        total_rows = N
    med = tl.load(z_ptr + row_offset(total_rows // 2, D) + ds, mask=dmask, other=0.0).to(acc_t)
    rl = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_R, BLOCK_D), acc_t)
    cb = tl.zeros((BLOCK_D,), tl.int32)
    for r0 in range(0, total_rows, BLOCK_R):
        r = r0 + rl
        m2 = (r < total_rows)[:, None] & dmask[None, :]
        offs = r[:, None].to(tl.int64) * D + ds[None, :]
        z = tl.load(z_ptr + offs, mask=m2, other=0.0).to(acc_t) - med[None, :]
        if BETWEEN:
            is_b = ((tl.load(idx_ptr + offs, mask=m2, other=0) >= N) & m2).to(tl.int32)
            cb_before = cb[None, :] + tl.cumsum(is_b, axis=0) - is_b
            ca_before = r[:, None] - cb_before
            # int64: 2 * rank passes 2^31 once a batch has 2^30 rows.
            w = tl.where(is_b != 0, 2 * ca_before.to(tl.int64) - N, 2 * cb_before.to(tl.int64) - M)
            cb += tl.sum(is_b, axis=0)
        else:
            w = tl.zeros((BLOCK_R, BLOCK_D), tl.int64) + (2 * r.to(tl.int64) - N + 1)[:, None]
        acc += tl.where(m2, w.to(acc_t) * z, 0.0)
    total = tl.sum(tl.sum(acc, axis=1), axis=0)
    if SINGLE:
        tl.store(out_ptr, finish(total, 1, False, MUL))
    else:
        tl.store(out_ptr + tl.program_id(0), total)


@triton.jit
def _l1_rank_grad_kernel(src_ptr, sorted_ptr, g_ptr, grad_ptr, N, M, D, n_steps,
                         MUL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad[i, d] = MUL g (#(sorted[:, d] < v) - #(sorted[:, d] > v)), v = src[i, d]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m2 = (rows < N)[:, None] & (ds < D)[None, :]
    offs = rows[:, None].to(tl.int64) * D + ds[None, :]
    v = tl.load(src_ptr + offs, mask=m2, other=0.0)
    acc_t = tl.load(g_ptr).dtype
    v = v.to(acc_t)
    g = tl.load(g_ptr)
    lo = tl.zeros((BLOCK_N, BLOCK_D), tl.int32)  # first position with sorted >= v
    hi = lo + M
    lo2 = lo                                        # first position with sorted > v
    hi2 = hi
    col = ds[None, :]
    for _ in range(0, n_steps):
        act = lo < hi
        mid = midpoint(lo, hi)
        below = tl.load(sorted_ptr + mid.to(tl.int64) * D + col, mask=act & m2, other=0.0).to(acc_t) < v
        lo = tl.where(act & below, mid + 1, lo)
        hi = tl.where(act & (below == 0), mid, hi)
        act2 = lo2 < hi2
        mid2 = midpoint(lo2, hi2)
        not_above = tl.load(sorted_ptr + mid2.to(tl.int64) * D + col, mask=act2 & m2, other=0.0).to(acc_t) <= v
        lo2 = tl.where(act2 & not_above, mid2 + 1, lo2)
        hi2 = tl.where(act2 & (not_above == 0), mid2, hi2)
    rank = (lo - (M - lo2)).to(acc_t)
    tl.store(grad_ptr + offs, (g * MUL * rank).to(grad_ptr.dtype.element_ty), mask=m2)


def _sorted_blocks(x, rows_total):
    d = x.shape[1]
    if interpreting(x):
        bd = pow2(d, 16, 1024)
        return pow2(rows_total, 16, max(16, (1 << 19) // bd)), bd, {}
    # One program up to d = 128 (then the loss needs no second launch).
    return 64, pow2(d, 16, 128), dict(num_warps=4)


def pairwise_l1(a, b=None):
    """b None: sum_{i != j} ||a_i - a_j||_1; else sum_{i, j} ||a_i - b_j||_1. 0-d tensor."""
    n, d = a.shape
    m = 0 if b is None else b.shape[0]
    acc = acc_dtype(a)
    out = torch.empty((), dtype=acc, device=a.device)
    if d == 0 or (b is None and n < 2) or (b is not None and (n == 0 or m == 0)):
        return out.zero_()
    with device_guard(a):
        if b is None:
            z = torch.sort(a, dim=0).values
            idx = z  # unused by the within-batch kernel
        else:
            z, idx = torch.sort(torch.cat([a, b], dim=0), dim=0)
        br, bd, opts = _sorted_blocks(a, n + m)
        n_prog = triton.cdiv(d, bd)
        mul = 2.0 if b is None else 1.0
        parts = out if n_prog == 1 else torch.empty(n_prog, dtype=acc, device=a.device)
        _l1_sorted_kernel[(n_prog,)](z, idx, parts, n, m, d, BETWEEN=b is not None,
                                     SINGLE=n_prog == 1, MUL=mul, BLOCK_R=br, BLOCK_D=bd, **opts)
        if n_prog > 1:
            finalize_sum(parts, out, mul=mul)
    return out


def _rank_grad(src, other_sorted, grad, mul):
    n, d = src.shape
    m = other_sorted.shape[0]
    out = torch.empty_like(src)
    if n == 0 or d == 0:
        return out
    if interpreting(src):
        bd = pow2(d, 16, 512)
        bn, opts = pow2(n, 16, max(16, (1 << 18) // bd)), {}
    else:
        bn, bd, opts = 32, pow2(d, 16, 32), dict(num_warps=4)
    _l1_rank_grad_kernel[(triton.cdiv(n, bn), triton.cdiv(d, bd))](
        src, other_sorted, grad, out, n, m, d, m.bit_length() + 1,
        MUL=mul, BLOCK_N=bn, BLOCK_D=bd, **opts)
    return out


def pairwise_l1_backward(grad, a, b):
    """(grad_a, grad_b) by rank counts; grad_b is an empty (0,) tensor when b is None."""
    with device_guard(a):
        if b is None:
            return _rank_grad(a, torch.sort(a, dim=0).values, grad, 2.0), a.new_empty(0)
        ga = _rank_grad(a, torch.sort(b, dim=0).values, grad, 1.0)
        gb = _rank_grad(b, torch.sort(a, dim=0).values, grad, 1.0)
    return ga, gb
