"""Soft assignment (DEC's Student-t, softmax of -D / T) and its backward, Triton (docs/ops.md).

Forward: a program holds G rows; pass 1 streams tiles of BLOCK_K centers, forms the distances
D by direct differences (float32, float64 for float64 inputs), writes the scores
s = -(alpha + 1) / 2 log(1 + D / alpha) or -D / T into q and keeps each row's running max m
and sum z = sum exp(s - m) (rescaled as m grows: online softmax); after a barrier, pass 2
rewrites q as exp(s - m) / z. Only q itself holds (N, K) values. A row of equal scores gets
exp(0) / K: uniform, never 0 / 0.

Backward: W = dL/dD = q (G - r) s'(D), r = rowsum(G q), s' = -1/T or -(alpha+1)/(2(alpha+D)).
grad_x = 2 (rowsum(W) x - W C) by row programs; grad_c = 2 (colsum(W) c - W^T X) by center
programs that visit all rows in index order (deterministic, no atomics). W is recomputed a
tile at a time (D re-formed for Student-t), never stored.

Past float32's range (contract 2): a forward row whose float32 score is not finite (its
distance overflowed, |x|, |c| past ~1e19) is redone in float64 from the inputs (pass 1 again
for its max and sum, then pass 2 re-forms its scores), never read back from q's float32. The
backward redoes in float64 the rows (grad_x) and row tiles (grad_c) with a distance past 2^64
(Student-t's W ~ 1 / D would reach float32's subnormals) or a float32 sum that overflowed.
Other rows and programs keep the float32 path and pay one flag test.

Correctness first: distances are not on tensor cores and the backward holds a (G, d) and a
(BLOCK_K, d) accumulator with d rounded up to a power of 2; a GPU session should tune.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, cast_for, device_guard, div_rn, interpreting, pow2
from .assign_topk import _tile_dist


@triton.jit
def _score(dist, alpha, temperature, STUDENT: tl.constexpr):
    dist = tl.where(dist < 0.0, 0.0, dist)  # not tl.maximum: it would turn NaN into 0
    if STUDENT:
        return -0.5 * (alpha + 1.0) * tl.log(1.0 + div_rn(dist, alpha))
    else:
        return -div_rn(dist, temperature)


@triton.jit
def _row_stats(x_ptr, c_ptr, qrow, rows, rmask, K, D, alpha, temperature, STORE: tl.constexpr,
               STUDENT: tl.constexpr, F64: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Pass 1 over all K: each row's max m and z = sum exp(s - m) (online softmax), in float64
    when F64, and a flag of rows with a score that is not finite; STORE: the scores into q."""
    G: tl.constexpr = rows.shape[0]
    lanes = tl.arange(0, BLOCK_K)
    if F64:
        m = tl.full((G,), float("-inf"), tl.float64)
        z = tl.zeros((G,), tl.float64)
    else:
        m = tl.full((G,), float("-inf"), tl.float32)
        z = tl.zeros((G,), tl.float32)
    bad = tl.zeros((G,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        kmask = ks < K
        s = _score(_tile_dist(x_ptr, c_ptr, rows, rmask, ks, kmask, D, F64, BLOCK_D),
                   alpha, temperature, STUDENT)
        # scores are <= 0: -inf (an overflowed distance) or NaN are the non-finite ones
        bad = bad | tl.max((kmask[None, :] & ((s != s) | (s == float("-inf")))).to(tl.int32), axis=1)
        s = tl.where(kmask[None, :], s, float("-inf"))
        if STORE:
            tl.store(qrow + ks[None, :], s.to(qrow.dtype.element_ty), mask=rmask[:, None] & kmask[None, :])
        nm = tl.maximum(m, tl.max(s, axis=1))
        # nm == -inf only while every score so far is -inf: keep z at 0 (no -inf - -inf)
        safe = tl.where(nm == float("-inf"), 0.0, nm)
        z = z * tl.exp(m - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        m = nm
    return m, z, bad


@triton.jit
def _soft_fwd_kernel(x_ptr, c_ptr, q_ptr, N, K, D, alpha, temperature,
                     STUDENT: tl.constexpr, F64: tl.constexpr, G: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * G + tl.arange(0, G)
    rmask = rows < N
    lanes = tl.arange(0, BLOCK_K)
    qrow = q_ptr + rows[:, None].to(tl.int64) * K
    m, z, bad = _row_stats(x_ptr, c_ptr, qrow, rows, rmask, K, D, alpha, temperature, True,
                           STUDENT, F64, BLOCK_K, BLOCK_D)
    tl.debug_barrier()  # pass 2 reads what other threads of this program wrote
    keep = rmask
    if not F64:
        # A row with a score that is not finite in float32 (its float32 distance overflowed,
        # or a NaN): the float64 reference may still be finite there (|x|, |c| past ~1e19),
        # so the row is redone in float64 from the inputs (contract 2). Such rows only cost
        # the programs that hold one.
        redo = rmask & (bad != 0)
        keep = rmask & (bad == 0)
        if tl.max(redo.to(tl.int32), axis=0) > 0:
            m64, z64, _b = _row_stats(x_ptr, c_ptr, qrow, rows, redo, K, D, alpha, temperature,
                                      False, STUDENT, True, BLOCK_K, BLOCK_D)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + lanes
                kmask = ks < K
                s = _score(_tile_dist(x_ptr, c_ptr, rows, redo, ks, kmask, D, True, BLOCK_D),
                           alpha, temperature, STUDENT)
                tl.store(qrow + ks[None, :], (tl.exp(s - m64[:, None]) / z64[:, None]).to(q_ptr.dtype.element_ty),
                         mask=redo[:, None] & kmask[None, :])
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        msk = keep[:, None] & (ks < K)[None, :]
        s = tl.load(qrow + ks[None, :], mask=msk, other=0.0)
        tl.store(qrow + ks[None, :], div_rn(tl.exp(s - m[:, None]), z[:, None]).to(q_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _w_tile(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, ks, kmask, K, D, alpha, temperature,
            STUDENT: tl.constexpr, F64: tl.constexpr, BLOCK_D: tl.constexpr):
    """W = q (G - r) s'(D) for rows x ks (0 outside the masks), in float64 when F64 (else
    float32), and a flag of rows whose float32 W is not to be trusted: a distance past 2^64
    (Student-t's W ~ 1 / D then reaches float32's subnormals, or 0) or not finite."""
    msk = rmask[:, None] & kmask[None, :]
    off = rows[:, None].to(tl.int64) * K + ks[None, :]
    q = tl.load(q_ptr + off, mask=msk, other=0.0)
    g = tl.load(g_ptr + off, mask=msk, other=0.0)
    if F64:
        q = q.to(tl.float64)
        g = g.to(tl.float64)
        r = r.to(tl.float64)
    ds = q * (g - r[:, None])
    huge = tl.zeros((rows.shape[0],), tl.int32)
    if STUDENT:
        dist = _tile_dist(x_ptr, c_ptr, rows, rmask, ks, kmask, D, F64, BLOCK_D)
        huge = tl.max((msk & ~(dist <= 1.8446744073709552e19)).to(tl.int32), axis=1)
        dist = tl.where(dist < 0.0, 0.0, dist)
        w = ds * div_rn(-0.5 * (alpha + 1.0), alpha + dist)
    else:
        w = -div_rn(ds, temperature)
    return tl.where(msk, w, 0.0), huge


@triton.jit
def _nonfinite_rows(v):
    """Per row of v: 1 where an entry is NaN or +-Inf (float32 overflow, or such an input)."""
    return tl.max(((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32), axis=1)


@triton.jit
def _grad_x_rows(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, K, D, alpha, temperature,
                 STUDENT: tl.constexpr, F64: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_D: tl.constexpr, DP: tl.constexpr):
    """(G, DP) grad_x = 2 (rowsum(W) x - W C) in float64 when F64 (else float32), and
    _w_tile's flag of rows with huge distances."""
    G: tl.constexpr = rows.shape[0]
    lanes = tl.arange(0, BLOCK_K)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    if F64:
        rw = tl.zeros((G,), tl.float64)
        wc = tl.zeros((G, DP), tl.float64)
    else:
        rw = tl.zeros((G,), tl.float32)
        wc = tl.zeros((G, DP), tl.float32)
    huge = tl.zeros((G,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        kmask = ks < K
        w, h = _w_tile(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, ks, kmask, K, D, alpha,
                       temperature, STUDENT, F64, BLOCK_D)
        huge = huge | h
        rw += tl.sum(w, axis=1)
        cv = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + dcol[None, :],
                     mask=kmask[:, None] & dmask[None, :], other=0.0).to(w.dtype)
        wc += tl.sum(w[:, :, None] * cv[None, :, :], axis=1)
    xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + dcol[None, :],
                 mask=rmask[:, None] & dmask[None, :], other=0.0).to(wc.dtype)
    return 2.0 * (rw[:, None] * xv - wc), huge


@triton.jit
def _soft_bwd_rows_kernel(g_ptr, q_ptr, r_ptr, x_ptr, c_ptr, gx_ptr, N, K, D, alpha, temperature,
                          STUDENT: tl.constexpr, F64: tl.constexpr, G: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DP: tl.constexpr):
    rows = tl.program_id(0) * G + tl.arange(0, G)
    rmask = rows < N
    lanes = tl.arange(0, BLOCK_K)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    q0 = tl.load(q_ptr + rows.to(tl.int64) * K, mask=rmask, other=0.0)
    r = tl.zeros((G,), q0.dtype)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        off = rows[:, None].to(tl.int64) * K + ks[None, :]
        msk = rmask[:, None] & (ks < K)[None, :]
        r += tl.sum(tl.load(q_ptr + off, mask=msk, other=0.0) * tl.load(g_ptr + off, mask=msk, other=0.0), axis=1)
    tl.store(r_ptr + rows, r, mask=rmask)
    gx, huge = _grad_x_rows(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, K, D, alpha, temperature,
                            STUDENT, F64, BLOCK_K, BLOCK_D, DP)
    keep = rmask
    if not F64:
        # Rows whose float32 W or sums are not to be trusted (huge distances, an overflow) are
        # redone in float64 from the inputs: only the programs that hold one pay (contract 2).
        redo = rmask & ((huge | _nonfinite_rows(gx)) != 0)
        keep = rmask & ~redo
        if tl.max(redo.to(tl.int32), axis=0) > 0:
            gx64, _h = _grad_x_rows(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, redo, K, D, alpha,
                                    temperature, STUDENT, True, BLOCK_K, BLOCK_D, DP)
            tl.store(gx_ptr + rows[:, None].to(tl.int64) * D + dcol[None, :],
                     cast_for(gx64, gx_ptr), mask=redo[:, None] & dmask[None, :])
    tl.store(gx_ptr + rows[:, None].to(tl.int64) * D + dcol[None, :],
             cast_for(gx, gx_ptr), mask=keep[:, None] & dmask[None, :])


@triton.jit
def _soft_bwd_centers_kernel(g_ptr, q_ptr, r_ptr, x_ptr, c_ptr, gc_ptr, N, K, D, alpha,
                             temperature, STUDENT: tl.constexpr, F64: tl.constexpr,
                             G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                             DP: tl.constexpr):
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    lanes = tl.arange(0, G)
    dcol = tl.arange(0, DP)
    dmask = dcol < D
    # float64 column sums: their error does not grow with N
    cw = tl.zeros((BLOCK_K,), tl.float64)
    sx = tl.zeros((BLOCK_K, DP), tl.float64)
    for n0 in range(0, N, G):
        rows = n0 + lanes
        rmask = rows < N
        r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
        w, huge = _w_tile(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, ks, kmask, K, D, alpha,
                          temperature, STUDENT, F64, BLOCK_D)
        xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + dcol[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        pw = tl.sum(w, axis=0)
        px = tl.sum(w[:, :, None] * xv.to(w.dtype)[:, None, :], axis=0)
        redo = 0
        if not F64:
            # a tile with huge distances, or whose float32 sums overflowed: float64 (contract 2)
            redo = tl.max(huge, axis=0) | tl.max(_nonfinite_rows(px), axis=0) | tl.max(
                _nonfinite_rows(pw[:, None]), axis=0)
        if redo != 0:
            w64, _h = _w_tile(g_ptr, q_ptr, r, x_ptr, c_ptr, rows, rmask, ks, kmask, K, D, alpha,
                              temperature, STUDENT, True, BLOCK_D)
            cw += tl.sum(w64, axis=0)
            sx += tl.sum(w64[:, :, None] * xv.to(tl.float64)[:, None, :], axis=0)
        else:
            cw += pw.to(tl.float64)
            sx += px.to(tl.float64)
    cv = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + dcol[None, :],
                 mask=kmask[:, None] & dmask[None, :], other=0.0).to(tl.float64)
    gc = 2.0 * (cw[:, None] * cv - sx)
    tl.store(gc_ptr + ks[:, None].to(tl.int64) * D + dcol[None, :],
             cast_for(gc, gc_ptr), mask=kmask[:, None] & dmask[None, :])


def _blocks(x: torch.Tensor, k: int, d: int) -> tuple[int, int, int]:
    interp = interpreting(x)
    g = 64 if interp else 16
    return g, pow2(k, 16, 128 if interp else 32), pow2(d, 16, 32 if interp else 16)


def soft_assign(x, centers, kind="student_t", alpha=1.0, temperature=1.0):
    n, d = x.shape
    k = centers.shape[0]
    q = torch.empty(n, k, dtype=acc_dtype(x), device=x.device)
    if n == 0:
        return q
    g, block_k, block_d = _blocks(x, k, d)
    with device_guard(x):
        _soft_fwd_kernel[(triton.cdiv(n, g),)](
            x, centers, q, n, k, d, float(alpha), float(temperature), STUDENT=kind == "student_t",
            F64=x.dtype == torch.float64, G=g, BLOCK_K=block_k, BLOCK_D=block_d)
    return q


def soft_assign_backward(grad_q, q, x, centers, kind, alpha, temperature, centers_grad):
    n, d = x.shape
    k = centers.shape[0]
    acc = acc_dtype(x)
    g_, q_ = grad_q.to(acc).contiguous(), q.to(acc).contiguous()
    gx = torch.empty_like(x)
    gc = torch.zeros_like(centers) if centers_grad else centers.new_empty(0)
    if n == 0 or d == 0:
        return gx.zero_(), gc
    g, block_k, block_d = _blocks(x, k, d)
    r = torch.empty(n, dtype=acc, device=x.device)
    common = dict(STUDENT=kind == "student_t", F64=x.dtype == torch.float64, G=g, BLOCK_K=block_k,
                  BLOCK_D=block_d, DP=pow2(d, 16))
    with device_guard(x):
        _soft_bwd_rows_kernel[(triton.cdiv(n, g),)](
            g_, q_, r, x, centers, gx, n, k, d, float(alpha), float(temperature), **common)
        if centers_grad:
            _soft_bwd_centers_kernel[(triton.cdiv(k, block_k),)](
                g_, q_, r, x, centers, gc, n, k, d, float(alpha), float(temperature), **common)
    return gx, gc
