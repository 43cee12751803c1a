"""``assign(..., metric="cosine")`` in Triton (issue 12; docs/ops.md "Cosine").

labels[i] = argmax_k cos(x_i, c_k), decided exactly as the float64 reference decides it; dist2
= 2 - 2 cos at the label. The plan is assign_cosine_cpu.cpp's:

* rank: s_k = x . u_k with u_k = c_k / ||c_k|| in float32 (the unit centers, K x d, formed
  once per call on the host; x is never normalised or copied: its norm is formed in the
  kernel) by ``tl.dot`` in TF32. ||x|| is the same for every k, so argmax s_k = argmax cos.
* window: |computed s_k - ||x|| cos_k| <= err = (alpha + 2 (d + 6) u) ||x|| + d 2^-126:
  alpha the TF32 truncation of both operands (2^-9 + 2^-19 per product, over
  sum |x_j u_j| <= ||x||), the float32 accumulation, the rounding of u and of x to float32
  (float64 inputs), the float64 reference's own misplacement of its key, and products flushed
  to zero. Rows with one candidate within 4 err of the best take it.
* re-check: every other row (two or more candidates, a zero/tiny row, NaN/Inf anywhere, or
  ||x||^2 past float32) is scanned over all K with the reference's float64 key
  cos |cos| = dot |dot| / (||x||^2 ||c||^2), every sum in index order (reference.cosine_keys):
  the same roundings, so the same label, ties to the lowest k, NaN as torch.argmin reads -key.
  On a GPU these launches pass enable_fp_fusion=False so that no multiply-add is contracted
  into an FMA (the reference rounds each product).
* dist2 = 2 - 2 dot / (||x|| ||c||) at the label in float64 (0 where ||x|| ||c|| = 0),
  clamped at 0 (NaN stays NaN).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, interpreting, pow2, sqrt_rn

_U = 2.0**-24  # float32 unit roundoff


@triton.jit
def _nonfinite(v):
    return (v * 0.0) != 0.0


@triton.jit
def _cosine_exact_scan(x_ptr, c_ptr, rows, rmask, K, D, G: tl.constexpr, BLOCK_K: tl.constexpr):
    """For G rows: the label of the largest float64 key dot |dot| / (||x||^2 ||c||^2), sums
    in index order as reference.cosine_keys forms them (ties to the lowest k; the lowest k
    whose key is NaN when any)."""
    lanes = tl.arange(0, BLOCK_K)
    best = tl.full((G, BLOCK_K), float("-inf"), tl.float64)
    best_k = tl.zeros((G, BLOCK_K), tl.int32)
    nan_k = tl.full((G, BLOCK_K), K, tl.int32)
    xbase = x_ptr + rows.to(tl.int64) * D
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        kmask = ks < K
        cbase = c_ptr + ks.to(tl.int64) * D
        dot = tl.zeros((G, BLOCK_K), tl.float64)
        nx2 = tl.zeros((G,), tl.float64)
        nc2 = tl.zeros((BLOCK_K,), tl.float64)
        for j in range(0, D):  # index order, each step rounded: the reference's sums
            xv = tl.load(xbase + j, mask=rmask, other=0.0).to(tl.float64)
            cv = tl.load(cbase + j, mask=kmask, other=0.0).to(tl.float64)
            dot += xv[:, None] * cv[None, :]
            nx2 += xv * xv
            nc2 += cv * cv
        den2 = nx2[:, None] * nc2[None, :]
        key = tl.where(den2 == 0.0, 0.0, dot * tl.abs(dot) / tl.where(den2 == 0.0, 1.0, den2))
        key = tl.where(kmask[None, :], key, float("-inf"))
        nan_k = tl.minimum(nan_k, tl.where(key != key, ks[None, :], K))
        take = key > best  # never for NaN
        best = tl.where(take, key, best)
        best_k = tl.where(take, ks[None, :], best_k)
    m = tl.max(best, axis=1)
    k_star = tl.min(tl.where(best == m[:, None], best_k, K), axis=1)
    first_nan = tl.min(nan_k, axis=1)
    return tl.where(first_nan < K, first_nan, k_star)


@triton.jit
def _assign_cosine_kernel(
    x_ptr, u_ptr, c_ptr, labels_ptr, dist2_ptr, N, K, D, rel_err, abs_err,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    FB_GROUP: tl.constexpr, FB_BLOCK_K: tl.constexpr,
):
    # Batched problems: grid axis 1 is the problem, every pointer below its own slice (the
    # unit centers are the (B*K, d) flat view's).
    pb = tl.program_id(1).to(tl.int64)
    x_ptr += pb * N * D
    u_ptr += pb * K * D
    c_ptr += pb * K * D
    labels_ptr += pb * N
    dist2_ptr += pb * N
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    kl = tl.arange(0, BLOCK_K)
    dcol = tl.arange(0, BLOCK_D)
    xrow = x_ptr + rows[:, None] * D

    # ||x||^2 in float32, formed here (no normalised copy of x).
    xsq = tl.zeros((BLOCK_N,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        xc = tl.load(xrow + ds[None, :], mask=rmask[:, None] & (ds < D)[None, :], other=0.0)
        xc = xc.to(tl.float32)
        xsq += tl.sum(xc * xc, axis=1)
    # 1.001: the float32 norm itself is a little off; 4: twice the misordering of two scores.
    win = 4.0 * (rel_err * 1.001 * sqrt_rn(xsq) + abs_err)
    # Zero or tiny rows (products flushed), NaN/Inf, or squares past float32: exact scan.
    special = _nonfinite(xsq) | (xsq < 1e-30)

    b1 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    i1 = tl.zeros((BLOCK_N,), tl.int32)
    nw = tl.zeros((BLOCK_N,), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + kl
        kmask = ks < K
        s = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + dcol
            dm = ds < D
            xc = tl.load(xrow + ds[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
            ut = tl.load(u_ptr + ks[None, :].to(tl.int64) * D + ds[:, None],
                         mask=dm[:, None] & kmask[None, :], other=0.0)
            s = tl.dot(xc.to(tl.float32), ut, s, input_precision="tf32")
        special |= tl.sum((kmask[None, :] & _nonfinite(s)).to(tl.int32), axis=1) > 0
        s = tl.where(kmask[None, :] & (s == s), s, float("-inf"))
        t1, j1 = tl.max(s, axis=1, return_indices=True)
        nb1 = tl.maximum(b1, t1)
        thr = nb1 - win
        # Earlier tiles were counted against a threshold that only rises: an upper bound,
        # or 0 once the old best left the window (so did everything counted with it).
        nw = tl.where(b1 >= thr, nw, 0) + tl.sum((s >= thr[:, None]).to(tl.int32), axis=1)
        i1 = tl.where(t1 > b1, j1 + k0, i1)
        b1 = nb1
    lab = i1

    # ---- rows the float32 ranking cannot decide: the exact float64 scan over all K ----------
    unresolved = rmask & (special | (nw >= 2))
    u32 = unresolved.to(tl.int32)
    n_u = tl.sum(u32, axis=0)
    rank = tl.cumsum(u32, axis=0) - 1
    slots = tl.arange(0, FB_GROUP)
    for g in range(0, n_u, FB_GROUP):
        sel = unresolved[None, :] & (rank[None, :] == (g + slots)[:, None])
        grow = tl.sum(tl.where(sel, rows[None, :], 0), axis=1)
        kb = _cosine_exact_scan(x_ptr, c_ptr, grow, g + slots < n_u, K, D, FB_GROUP, FB_BLOCK_K)
        hit = unresolved & (rank >= g) & (rank < g + FB_GROUP)
        lab = tl.where(hit, tl.sum(tl.where(sel, kb[:, None], 0), axis=0), lab)

    dist = cosine_dist2_at(x_ptr, c_ptr, rows, rmask, lab, D)
    tl.store(labels_ptr + rows, lab.to(tl.int64), mask=rmask)
    tl.store(dist2_ptr + rows, dist.to(dist2_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def cosine_dist2_at(x_ptr, c_ptr, rows, rmask, lab, D):
    """dist2 = 2 - 2 cos(x_row, c_lab), float64 from the raw inputs (sums in index order; 0
    cos where ||x|| ||c|| = 0), clamped at 0 (NaN stays NaN)."""
    cbase = c_ptr + lab.to(tl.int64) * D
    xbase = x_ptr + rows.to(tl.int64) * D
    dot = tl.zeros(rows.shape, tl.float64)
    nx2 = tl.zeros(rows.shape, tl.float64)
    nc2 = tl.zeros(rows.shape, tl.float64)
    for j in range(0, D):
        xv = tl.load(xbase + j, mask=rmask, other=0.0).to(tl.float64)
        cv = tl.load(cbase + j, mask=rmask, other=0.0).to(tl.float64)
        dot += xv * cv
        nx2 += xv * xv
        nc2 += cv * cv
    den = sqrt_rn(nx2) * sqrt_rn(nc2)
    cos = tl.where(den == 0.0, 0.0, dot / tl.where(den == 0.0, 1.0, den))
    dist = 2.0 - 2.0 * cos
    return tl.where(dist > 0.0, dist, tl.where(dist == dist, 0.0, dist))


@triton.jit
def _assign_cosine_bwd_kernel(g_ptr, x_ptr, c_ptr, l_ptr, gx_ptr, gc_ptr, N, D,
                              CENTERS_GRAD: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_D: tl.constexpr):
    """dist2 = 2 - 2 cos: gx = -2 g (c / (|x||c|) - cos x / |x|^2), gc[l] += -2 g (x / (|x||c|)
    - cos c / |c|^2), both 0 where |x||c| = 0; float64 (atomics for gc: contract 3)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    dcol = tl.arange(0, BLOCK_D)
    lab = tl.load(l_ptr + rows, mask=rmask, other=0)
    xrow = x_ptr + rows[:, None] * D
    crow = c_ptr + lab[:, None] * D
    dot = tl.zeros((BLOCK_N,), tl.float64)
    nx2 = tl.zeros((BLOCK_N,), tl.float64)
    nc2 = tl.zeros((BLOCK_N,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        m2 = rmask[:, None] & (ds < D)[None, :]
        xv = tl.load(xrow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
        cv = tl.load(crow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
        dot += tl.sum(xv * cv, axis=1)
        nx2 += tl.sum(xv * xv, axis=1)
        nc2 += tl.sum(cv * cv, axis=1)
    nx = sqrt_rn(nx2)
    nc = sqrt_rn(nc2)
    den = nx * nc
    zero = den == 0.0
    safe_den = tl.where(zero, 1.0, den)
    cos = tl.where(zero, 0.0, dot / safe_den)
    g = tl.where(zero, 0.0, -2.0 * tl.load(g_ptr + rows, mask=rmask, other=0.0).to(tl.float64))
    a = g / safe_den
    bx = g * cos / tl.where(zero, 1.0, nx * nx)
    bc = g * cos / tl.where(zero, 1.0, nc * nc)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        m2 = rmask[:, None] & (ds < D)[None, :]
        xv = tl.load(xrow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
        cv = tl.load(crow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
        gx = a[:, None] * cv - bx[:, None] * xv
        tl.store(gx_ptr + rows[:, None] * D + ds[None, :], gx.to(gx_ptr.dtype.element_ty), mask=m2)
        if CENTERS_GRAD:
            tl.atomic_add(gc_ptr + lab[:, None] * D + ds[None, :],
                          a[:, None] * xv - bc[:, None] * cv, mask=m2)


def unit_centers(centers: torch.Tensor) -> torch.Tensor:
    """c_k / ||c_k|| in float32 (K x d, once per call; a zero center stays zero; a NaN/Inf
    center or norm gives a NaN row, which sends every row to the exact scan)."""
    c = centers.double()
    n = c.norm(dim=1, keepdim=True)
    u = torch.where(n == 0, torch.zeros_like(c), c / torch.where(n == 0, torch.ones_like(n), n))
    # A norm past double's range (float64 centers near 1e154) would give u = 0: NaN instead.
    return torch.where(torch.isfinite(n), u, torch.full_like(u, float("nan"))).float()


def error_bounds(d: int, dtype: torch.dtype, tf32: bool = True) -> tuple[float, float]:
    """(relative, absolute) bound on |computed s_k - ||x|| cos_k| (module docstring); tf32=False
    for scores summed from float32 products (no TF32 truncation of the operands)."""
    rel = (2.0**-9 + 2.0**-19 if tf32 else 0.0) + 2.0 * (d + 6) * _U + (d + 6) * 2.0**-53
    if dtype == torch.float64:
        rel += _U  # x rounded to float32 for the dot
    return rel, d * 2.0**-126


# Grid axis 1 (the problem of batched problems) is limited to 65535 on CUDA GPUs.
_MAX_GRID_Y = 65535


def assign_cosine(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) outputs; (B, N) for batched problems x (B, N, d), centers (B, K, d), the problem
    on grid axis 1 (one launch for up to 65535 problems, after one unit-centers pass)."""
    n, d = x.shape[-2:]
    k = centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    labels = torch.empty(x.shape[:-1], dtype=torch.int64, device=x.device)
    dist2 = torch.empty(x.shape[:-1], dtype=acc_dtype(x), device=x.device)
    if n == 0 or batch == 0:
        return labels, dist2
    u = unit_centers(centers.reshape(batch * k, d))
    rel, absolute = error_bounds(d, x.dtype)
    if interpreting(x):
        bk, bd = pow2(k, 16, 512), pow2(d, 16, 512)
        bn = pow2(n, 16, max(16, min(4096, (1 << 18) // max(bk, bd))))
        opts = dict(FB_GROUP=256, FB_BLOCK_K=pow2(k, 16, 128))
    else:
        bn, bk, bd = 64, 64, 32 if d > 16 else 16
        opts = dict(FB_GROUP=1, FB_BLOCK_K=64, num_warps=4, enable_fp_fusion=False)
    with device_guard(x):
        for b0 in range(0, batch, _MAX_GRID_Y):
            nb = min(batch - b0, _MAX_GRID_Y)
            _assign_cosine_kernel[(triton.cdiv(n, bn), nb)](
                x[b0:], u[b0 * k:], centers[b0:], labels[b0:], dist2[b0:], n, k, d, rel, absolute, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, **opts)
    return labels, dist2


def assign_cosine_backward(grad_dist2, x, centers, labels, centers_grad):
    n, d = x.shape
    gx = torch.empty_like(x)
    gc = torch.zeros(centers.shape, dtype=torch.float64, device=x.device) if centers_grad else None
    if n and d:
        if interpreting(x):
            bd = pow2(d, 16, 512)
            bn, opts = pow2(n, 16, max(16, (1 << 18) // bd)), {}
        else:
            bn, bd, opts = 32, pow2(d, 16, 64), dict(num_warps=4)
        with device_guard(x):
            _assign_cosine_bwd_kernel[(triton.cdiv(n, bn),)](
                grad_dist2, x, centers, labels, gx, gc if centers_grad else gx, n, d,
                CENTERS_GRAD=centers_grad, BLOCK_N=bn, BLOCK_D=bd, **opts)
    if not centers_grad:
        return gx, centers.new_empty(0)
    return gx, gc.to(centers.dtype)
