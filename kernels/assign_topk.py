"""The k nearest centers of every row, Triton (``km.assign(x, centers, k=k)``; docs/ops.md).

One program holds G rows and streams tiles of BLOCK_K centers: distances by direct
differences (sum of (x - c)^2 over d in float32, float64 for float64 inputs: no cancellation),
folded into each row's running list of its L = k + 8 (rounded up to a power of 2) smallest
(value, index) pairs, by repeated selection (the tile's smallest entry replaces the list's
largest while it is smaller; ties by index). The (N, K) matrix is never written.

Exactness (the same argument as csrc/cpu/assign_topk_cpu.cpp): a computed distance is within a
relative (d + 2) u of the exact one (all terms are >= 0) plus d 2^-149 for subnormal terms. With
v_k the k-th smallest computed distance and T = v_k (1 + 4 rel) + abs, no center whose computed
distance exceeds T is in the top k. When the list holds every center with a computed distance
<= T, those are re-scored in float64 from the raw inputs and the k smallest by (distance,
index) are the answer; else (more than L - k near-ties at the k-th place, or a NaN / Inf /
overflowing distance in the row), the program streams all K again in float64 with the exact
order: NaN first (lowest index first, torch.argmin's rule), then ascending, ties to the lowest
index.

Correctness first: the tile merge costs L selection steps per tile, and the distances are not
on tensor cores; a GPU session should measure and tune (a threshold test before the merge,
tl.dot with the CPU kernel's expansion bound).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, interpreting, pow2

_BIG = 2**31 - 1  # index of an empty list entry: loses every tie
_SLACK = 8


@triton.jit
def _tile_dist(x_ptr, c_ptr, rows, rmask, ks, kmask, D, F64: tl.constexpr, BLOCK_D: tl.constexpr):
    """(G, BLOCK_K) sum_j (x_ij - c_kj)^2 in float32 (float64 when F64), direct differences."""
    dcol = tl.arange(0, BLOCK_D)
    if F64:
        dist = tl.zeros((rows.shape[0], ks.shape[0]), tl.float64)
    else:
        dist = tl.zeros((rows.shape[0], ks.shape[0]), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        dmask = ds < D
        xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        cv = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                     mask=kmask[:, None] & dmask[None, :], other=0.0)
        if F64:
            diff = xv.to(tl.float64)[:, None, :] - cv.to(tl.float64)[None, :, :]
        else:
            diff = xv.to(tl.float32)[:, None, :] - cv.to(tl.float32)[None, :, :]
        dist += tl.sum(diff * diff, axis=2)
    return dist


@triton.jit
def _before(va, ia, vb, ib):
    """(va, ia) before (vb, ib): smaller value, then smaller index."""
    return (va < vb) | ((va == vb) & (ia < ib))


@triton.jit
def _pop_min(v, ix, BIG: tl.constexpr):
    """Each row's first (value, index) of (v, ix), and (v, ix) with it removed."""
    m = tl.min(v, axis=1)
    mi = tl.min(tl.where(v == m[:, None], ix, BIG), axis=1)
    hit = ix == mi[:, None]
    return m, mi, tl.where(hit, float("inf"), v), tl.where(hit, BIG, ix)


@triton.jit
def _stream(x_ptr, c_ptr, rows, rmask, K, D, EXACT: tl.constexpr, F64: tl.constexpr,
            L: tl.constexpr, MERGE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
            BIG: tl.constexpr):
    """Each row's L first (key, index) over all K, and whether a distance was not finite.

    EXACT: key = -1 for NaN (first), else the distance (F64 must be set). Otherwise a
    non-finite distance only sets the flag (the row is redone exactly). F64: float64
    distances. MERGE = min(L, BLOCK_K) selection steps per tile."""
    G: tl.constexpr = rows.shape[0]
    if F64:
        lv = tl.full((G, L), float("inf"), tl.float64)
    else:
        lv = tl.full((G, L), float("inf"), tl.float32)
    li = tl.full((G, L), BIG, tl.int32)
    special = tl.zeros((G,), tl.int32)
    lanes = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, L)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        kmask = ks < K
        t = _tile_dist(x_ptr, c_ptr, rows, rmask, ks, kmask, D, F64, BLOCK_D)
        bad = (t != t) | (t == float("inf"))
        if EXACT:
            t = tl.where(t != t, -1.0, t)
        else:
            special = special | tl.max((bad & kmask[None, :]).to(tl.int32), axis=1)
            t = tl.where(bad, float("inf"), t)
        # (G, BLOCK_K), not (1, BLOCK_K): the merge loop below carries it, and the compiler
        # (not the interpreter) requires a loop-carried value's shape to stay the same
        tk = tl.where(kmask[None, :], ks[None, :], BIG) + tl.zeros((rows.shape[0], BLOCK_K), tl.int32)
        t = tl.where(kmask[None, :], t, float("inf"))
        for _ in range(MERGE):
            m, mi, t, tk = _pop_min(t, tk, BIG)
            lmax = tl.max(lv, axis=1)
            lidx = tl.max(tl.where(lv == lmax[:, None], li, -1), axis=1)
            take = _before(m, mi, lmax, lidx) & (mi < BIG)
            # the list's last entry: (lmax, lidx), in one column (empty entries all read
            # (inf, BIG): the highest such column)
            last = (lv == lmax[:, None]) & (li == lidx[:, None])
            col = tl.max(tl.where(last, cols[None, :], -1), axis=1)
            slot = take[:, None] & (cols[None, :] == col[:, None])
            lv = tl.where(slot, m[:, None], lv)
            li = tl.where(slot, mi[:, None], li)
    return lv, li, special


@triton.jit
def _rescore(x_ptr, c_ptr, rows, rmask, li, keep, D, BLOCK_D: tl.constexpr):
    """float64 ||x_row - c_li||^2 for the list entries in keep (inf elsewhere)."""
    dcol = tl.arange(0, BLOCK_D)
    G: tl.constexpr = li.shape[0]
    L: tl.constexpr = li.shape[1]
    acc = tl.zeros((G, L), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        dmask = ds < D
        xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float64)
        cv = tl.load(c_ptr + li[:, :, None].to(tl.int64) * D + ds[None, None, :],
                     mask=keep[:, :, None] & dmask[None, None, :], other=0.0).to(tl.float64)
        diff = xv[:, None, :] - cv
        acc += tl.sum(diff * diff, axis=2)
    return tl.where(keep, acc, float("inf"))


@triton.jit
def _topk_kernel(x_ptr, c_ptr, lab_ptr, d2_ptr, N, K, D, k, rel, abs_err,
                 F64: tl.constexpr, L: tl.constexpr, MERGE: tl.constexpr, G: tl.constexpr,
                 BLOCK_K: tl.constexpr,
                 BLOCK_D: tl.constexpr, BIG: tl.constexpr):
    rows = tl.program_id(0) * G + tl.arange(0, G)
    rmask = rows < N
    lv, li, special = _stream(x_ptr, c_ptr, rows, rmask, K, D, False, F64, L, MERGE, BLOCK_K, BLOCK_D, BIG)
    # v_k: the k-th smallest computed distance
    sv = lv
    si = li
    vk = tl.zeros((G,), lv.dtype)
    for _ in range(k):
        vk, _i, sv, si = _pop_min(sv, si, BIG)
    thr = vk * (1.0 + 4.0 * rel) + abs_err
    lmax = tl.max(lv, axis=1)
    full = tl.max(li, axis=1) < BIG
    complete = (L >= K) | (~full) | (lmax > thr)
    need = rmask & ((special != 0) | ~complete)
    keep = (lv <= thr[:, None]) & (li < BIG)
    ev = _rescore(x_ptr, c_ptr, rows, rmask, li, keep, D, BLOCK_D)
    ei = tl.where(keep, li, BIG)
    if tl.max(need.to(tl.int32), axis=0) > 0:
        xv, xi, _s = _stream(x_ptr, c_ptr, rows, rmask, K, D, True, True, L, MERGE, BLOCK_K,
                               BLOCK_D, BIG)
        ev = tl.where(need[:, None], xv, ev)
        ei = tl.where(need[:, None], xi, ei)
    out = rows.to(tl.int64) * k
    for j in range(k):
        m, mi, ev, ei = _pop_min(ev, ei, BIG)
        tl.store(lab_ptr + out + j, mi.to(tl.int64), mask=rmask)
        dist = tl.where(m < 0.0, float("nan"), m)  # key -1: a NaN distance
        tl.store(d2_ptr + out + j, dist.to(d2_ptr.dtype.element_ty), mask=rmask)


def assign_topk(x: torch.Tensor, centers: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = x.shape
    kc = centers.shape[0]
    labels = torch.empty(n, k, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(n, k, dtype=acc_dtype(x), device=x.device)
    if n == 0:
        return labels, dist2
    f64 = x.dtype == torch.float64
    u = 2.0**-53 if f64 else 2.0**-24
    rel = (d + 2) * u + (d + 2) * 2.0**-53  # the kernel's rounding, and the reference's
    abs_err = (d + 1) * (2.0**-1074 if f64 else 2.0**-149)
    big_l = pow2(min(kc, k + _SLACK))
    interp = interpreting(x)
    g = 64 if interp else 16
    block_k = pow2(kc, 16, 128 if interp else 32)
    block_d = pow2(d, 16, 32 if interp else 16)
    with device_guard(x):
        _topk_kernel[(triton.cdiv(n, g),)](
            x, centers, labels, dist2, n, kc, d, k, rel, abs_err,
            F64=f64, L=big_l, MERGE=min(big_l, block_k), G=g, BLOCK_K=block_k, BLOCK_D=block_d, BIG=_BIG)
    return labels, dist2
