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

metric="cosine" (COSINE): the list ranks -s_k, s_k = x . u_k with u_k = c_k / ||c_k|| (the
unit centers of assign_cosine.py, float32), summed from float32 products: |computed s_k -
||x|| cos_k| <= E = rel ||x|| + abs (assign_cosine.error_bounds without TF32). A center whose
-s exceeds the k-th smallest by more than 4 E (2 E, doubled as assign_cosine's window) is below
each of the k listed exactly. Candidates are re-keyed with the reference's float64 key
cos |cos| = dot |dot| / (||x||^2 ||c||^2), sums in index order (reference.cosine_keys; on a GPU
without FMA contraction, enable_fp_fusion=False), and ordered by it: NaN first, the larger
key, the lower index. Zero, tiny, non-finite or float32-overflowing rows stream all K on that
key. dist2 = 2 - 2 cos at each label (assign_cosine.cosine_dist2_at).

Correctness first: the tile merge costs L selection steps per tile, and the distances are not
on tensor cores; a GPU session should measure and tune (a threshold test before the merge,
tl.dot with the CPU kernel's expansion bound).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, interpreting, pow2, sqrt_rn
from .assign_cosine import cosine_dist2_at, error_bounds, unit_centers

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
def _tile_neg_score(x_ptr, u_ptr, rows, rmask, ks, kmask, D, BLOCK_D: tl.constexpr):
    """(G, BLOCK_K) -x . u_k summed from float32 products (the cosine ranking value)."""
    dcol = tl.arange(0, BLOCK_D)
    s = tl.zeros((rows.shape[0], ks.shape[0]), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        dmask = ds < D
        xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        uv = tl.load(u_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                     mask=kmask[:, None] & dmask[None, :], other=0.0)
        s += tl.sum(xv[:, None, :] * uv[None, :, :], axis=2)
    return -s


@triton.jit
def _neg_keys(x_ptr, c_ptr, rows, rmask, cidx, cmask, D):
    """(G, W) -key for the centers cidx (G, W) of each row, key = dot |dot| / (||x||^2
    ||c||^2) (0 where the denominator is 0) in float64 with every sum in index order, as
    reference.cosine_keys forms it; a NaN key reads -inf (first)."""
    xbase = x_ptr + rows.to(tl.int64) * D
    cbase = c_ptr + cidx.to(tl.int64) * D
    dot = tl.zeros(cidx.shape, tl.float64)
    nc2 = tl.zeros(cidx.shape, tl.float64)
    nx2 = tl.zeros(rows.shape, tl.float64)
    for j in range(0, D):  # index order, each step rounded: the reference's sums
        xv = tl.load(xbase + j, mask=rmask, other=0.0).to(tl.float64)
        cv = tl.load(cbase + j, mask=cmask, other=0.0).to(tl.float64)
        dot += xv[:, None] * cv
        nx2 += xv * xv
        nc2 += cv * cv
    den2 = nx2[:, None] * nc2
    key = tl.where(den2 == 0.0, 0.0, dot * tl.abs(dot) / tl.where(den2 == 0.0, 1.0, den2))
    return tl.where(key != key, float("-inf"), -key)


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
def _stream(x_ptr, c_ptr, u_ptr, rows, rmask, K, D, EXACT: tl.constexpr, F64: tl.constexpr,
            COSINE: tl.constexpr, L: tl.constexpr, MERGE: tl.constexpr, BLOCK_K: tl.constexpr,
            BLOCK_D: tl.constexpr, BIG: tl.constexpr):
    """Each row's L first (key, index) over all K, and whether a distance was not finite.

    EXACT: key = -1 for NaN (first), else the distance (F64 must be set). Otherwise a
    non-finite distance only sets the flag (the row is redone exactly). F64: float64
    distances. MERGE = min(L, BLOCK_K) selection steps per tile. COSINE: the value is -x . u_k
    (float32; F64 unset), or with EXACT the exact -key (_neg_keys; F64 set)."""
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
        if COSINE:
            if EXACT:
                t = _neg_keys(x_ptr, c_ptr, rows, rmask, ks[None, :] + tl.zeros((G, BLOCK_K), tl.int32),
                              rmask[:, None] & kmask[None, :], D)
            else:
                t = _tile_neg_score(x_ptr, u_ptr, rows, rmask, ks, kmask, D, BLOCK_D)
            bad = (t * 0.0) != 0.0  # NaN or +-Inf
        else:
            t = _tile_dist(x_ptr, c_ptr, rows, rmask, ks, kmask, D, F64, BLOCK_D)
            bad = (t != t) | (t == float("inf"))
        if EXACT:
            if not COSINE:
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
def _topk_kernel(x_ptr, c_ptr, u_ptr, lab_ptr, d2_ptr, N, K, D, k, rel, abs_err,
                 F64: tl.constexpr, COSINE: tl.constexpr, L: tl.constexpr, MERGE: tl.constexpr,
                 G: tl.constexpr, BLOCK_K: tl.constexpr,
                 BLOCK_D: tl.constexpr, BIG: tl.constexpr):
    # Batched problems: grid axis 1 is the problem, every pointer below its own slice (the
    # unit centers are the (B*K, d) flat view's).
    pb = tl.program_id(1).to(tl.int64)
    x_ptr += pb * N * D
    c_ptr += pb * K * D
    u_ptr += pb * K * D
    lab_ptr += pb * N * k
    d2_ptr += pb * N * k
    rows = tl.program_id(0) * G + tl.arange(0, G)
    rmask = rows < N
    lv, li, special = _stream(x_ptr, c_ptr, u_ptr, rows, rmask, K, D, False, F64, COSINE, L, MERGE,
                              BLOCK_K, BLOCK_D, BIG)
    # v_k: the k-th smallest computed distance
    sv = lv
    si = li
    vk = tl.zeros((G,), lv.dtype)
    for _ in range(k):
        vk, _i, sv, si = _pop_min(sv, si, BIG)
    if COSINE:
        # ||x||^2 in float32 (the scores' scale): zero or tiny rows (products flushed), NaN/Inf
        # and squares past float32 take the exact stream.
        dcol = tl.arange(0, BLOCK_D)
        xsq = tl.zeros((G,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + dcol
            xc = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                         mask=rmask[:, None] & (ds < D)[None, :], other=0.0).to(tl.float32)
            xsq += tl.sum(xc * xc, axis=1)
        special = special | (((xsq * 0.0) != 0.0) | (xsq < 1e-30)).to(tl.int32)
        # 1.001: the float32 norm itself is a little off; 4: twice the misordering of two scores.
        thr = vk + 4.0 * (rel * 1.001 * sqrt_rn(xsq) + abs_err)
    else:
        thr = vk * (1.0 + 4.0 * rel) + abs_err
    lmax = tl.max(lv, axis=1)
    full = tl.max(li, axis=1) < BIG
    complete = (L >= K) | (~full) | (lmax > thr)
    need = rmask & ((special != 0) | ~complete)
    keep = (lv <= thr[:, None]) & (li < BIG)
    if COSINE:
        ev = tl.where(keep, _neg_keys(x_ptr, c_ptr, rows, rmask, li, keep, D), float("inf"))
    else:
        ev = _rescore(x_ptr, c_ptr, rows, rmask, li, keep, D, BLOCK_D)
    ei = tl.where(keep, li, BIG)
    if tl.max(need.to(tl.int32), axis=0) > 0:
        xv, xi, _s = _stream(x_ptr, c_ptr, u_ptr, rows, rmask, K, D, True, True, COSINE, L, MERGE,
                             BLOCK_K, BLOCK_D, BIG)
        ev = tl.where(need[:, None], xv, ev)
        ei = tl.where(need[:, None], xi, ei)
    out = rows.to(tl.int64) * k
    for j in range(k):
        m, mi, ev, ei = _pop_min(ev, ei, BIG)
        tl.store(lab_ptr + out + j, mi.to(tl.int64), mask=rmask)
        if COSINE:
            dist = cosine_dist2_at(x_ptr, c_ptr, rows, rmask, mi, D)
        else:
            dist = tl.where(m < 0.0, float("nan"), m)  # key -1: a NaN distance
        tl.store(d2_ptr + out + j, dist.to(d2_ptr.dtype.element_ty), mask=rmask)


# Grid axis 1 (the problem of batched problems) is limited to 65535 on CUDA GPUs.
_MAX_GRID_Y = 65535


def assign_topk(x: torch.Tensor, centers: torch.Tensor, k: int, cosine: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, k) outputs; (B, N, k) for batched problems x (B, N, d), centers (B, K, d), the
    problem on grid axis 1 (one launch for up to 65535 problems; cosine: after one
    unit-centers pass over the flat (B*K, d) view)."""
    n, d = x.shape[-2:]
    kc = centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    labels = torch.empty(*x.shape[:-1], k, dtype=torch.int64, device=x.device)
    dist2 = torch.empty(*x.shape[:-1], k, dtype=acc_dtype(x), device=x.device)
    if n == 0 or batch == 0:
        return labels, dist2
    f64 = x.dtype == torch.float64
    if cosine:
        u_centers = unit_centers(centers.reshape(batch * kc, d))
        rel, abs_err = error_bounds(d, x.dtype, tf32=False)
    else:
        u_centers = centers  # unread
        u = 2.0**-53 if f64 else 2.0**-24
        rel = (d + 2) * u + (d + 2) * 2.0**-53  # the kernel's rounding, and the reference's
        abs_err = (d + 1) * (2.0**-1074 if f64 else 2.0**-149)
    big_l = pow2(min(kc, k + _SLACK))
    interp = interpreting(x)
    g = 64 if interp else 16
    block_k = pow2(kc, 16, 128 if interp else 32)
    block_d = pow2(d, 16, 32 if interp else 16)
    # Cosine keys are compared bitwise with the reference's: no FMA contraction on a GPU.
    opts = dict(enable_fp_fusion=False) if cosine and not interp else {}
    u_centers = u_centers.reshape(batch, kc, d) if x.dim() == 3 else u_centers
    with device_guard(x):
        for b0 in range(0, batch, _MAX_GRID_Y):
            nb = min(batch - b0, _MAX_GRID_Y)
            sl = slice(b0, b0 + nb) if x.dim() == 3 else slice(None)
            _topk_kernel[(triton.cdiv(n, g), nb)](
                x[sl], centers[sl], u_centers[sl], labels[sl], dist2[sl], n, kc, d, k, rel, abs_err,
                F64=f64 and not cosine, COSINE=cosine, L=big_l, MERGE=min(big_l, block_k), G=g,
                BLOCK_K=block_k, BLOCK_D=block_d, BIG=_BIG, **opts)
    return labels, dist2
