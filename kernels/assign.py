"""Fused nearest-center assignment, Triton (docs/ops.md, Assignment).

``assign(x, centers) -> (labels, dist2)`` never writes the (N, K) distance matrix: each
program holds a tile of x rows and streams tiles of centers through ``tl.dot`` (TF32 tensor
cores), keeping a running best per row.

Centring: x and the centers are shifted by the mean of the centers (``x' = x - mu``,
``c' = c - mu``, in float32) before the dot. Distances do not change, and the dot's rounding
error then scales with the spread of the data instead of its offset: on features that sit
far from the origin (ReLU outputs around 100) an uncentred float16 dot had every row
ambiguous (window ~64 against gaps ~1), the centred TF32 dot none (window ~0.4).
float16/bfloat16 rows are centred in float32 too, so every floating dtype but float64 takes
this path (float64 takes a direct-difference kernel: Triton's fp64 ``tl.dot`` is not
available on every target we support; exact and slow).

Exactness guard (a tensor-core path must not change a label versus float32): the dot scores
``s_k = x'.c'_k - ||c'_k||^2 / 2`` (maximised; ``||x'||^2`` is the same for every k). For
each row the kernel derives a rigorous bound ``W`` on how far two scores can be misordered
(TF32 truncation of both operands, float32 accumulation counted as truncating, the
centring; times 2 for safety) and tracks the best two candidates plus a conservative count
of candidates within ``W`` of the best:

* one candidate in the window: it is the argmin;
* two: both are re-scored exactly (float64 differences from the raw inputs, ties to the
  lower index);
* three or more: the row is appended to a list (one atomic per program) and a second launch
  re-scores the listed rows with 3xTF32 (a ~20x narrower window); what is still ambiguous
  there, and every ambiguous row when K fits one tile (single launch), gets an exact float64
  scan over all K inside the kernel.

So labels are the float64 argmin of the given inputs (ties to the lowest index), and
``dist2`` is ``||x_i - c_label||^2`` computed in float64 from the raw inputs, then rounded.

How often the guard fires (CPU simulation of the bound, N=20000, d=128, K=4096): random
Gaussian x and centers 35% of rows have two candidates in the window, 11% three or more;
clustered data 0%. Random Gaussian data has no cluster structure, so its nearest centers are
all nearly equidistant; that is why the 3xTF32 second pass exists instead of an exact scan
for all of them. ``assign_stats`` reports the count on real data.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .assign_cosine import assign_cosine, assign_cosine_backward
from ._common import (acc_dtype, autotune_allowed, config_kwargs, device_guard, div_rn,
                      interpreting, pow2, sqrt_rn)

_U = 2.0**-24  # float32 unit roundoff


@triton.jit
def _exact_scan(x_ptr, c_ptr, rows, rmask, K, D,
                G: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """For G rows: (min_k ||x_row - c_k||^2, argmin) in float64 from the raw inputs.

    Ties go to the lowest k: each (row, lane) keeps its running best over k = lane,
    lane + BLOCK_K, ... with a strict <, and lanes are merged by value, then index.
    NaN rule (torch.argmin's, contract 1): a row with any NaN distance gets the lowest such k
    and a NaN distance. float64 squares do not overflow for float32/16-bit inputs (contract 2).
    """
    lanes = tl.arange(0, BLOCK_K)
    dcol = tl.arange(0, BLOCK_D)
    best = tl.full((G, BLOCK_K), float("inf"), tl.float64)
    best_k = tl.zeros((G, BLOCK_K), tl.int32)
    nan_k = tl.full((G, BLOCK_K), K, tl.int32)
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + lanes
        kmask = ks < K
        dist = tl.zeros((G, BLOCK_K), tl.float64)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + dcol
            dmask = ds < D
            xv = tl.load(xrow + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            cv = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                         mask=kmask[:, None] & dmask[None, :], other=0.0)
            diff = xv.to(tl.float64)[:, None, :] - cv.to(tl.float64)[None, :, :]
            dist += tl.sum(diff * diff, axis=2)
        dist = tl.where(kmask[None, :], dist, float("inf"))
        nan_k = tl.minimum(nan_k, tl.where(dist != dist, ks[None, :], K))
        take = dist < best  # never for NaN: best stays NaN-free
        best = tl.where(take, dist, best)
        best_k = tl.where(take, ks[None, :], best_k)
    m = tl.min(best, axis=1)
    k_star = tl.min(tl.where(best == m[:, None], best_k, K), axis=1)
    first_nan = tl.min(nan_k, axis=1)
    has_nan = first_nan < K
    return tl.where(has_nan, float("nan"), m), tl.where(has_nan, first_nan, k_star)


@triton.jit
def _nonfinite(v):
    """v is Inf or NaN (v * 0 is NaN exactly then)."""
    return (v * 0.0) != 0.0


@triton.jit
def _assign_exact_kernel(x_ptr, c_ptr, labels_ptr, dist2_ptr, N, K, D,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Direct float64 differences for BLOCK_N rows (the float64 path)."""
    pb = tl.program_id(1).to(tl.int64)  # the problem (batched problems: grid axis 1)
    x_ptr += pb * N * D
    c_ptr += pb * K * D
    labels_ptr += pb * N
    dist2_ptr += pb * N
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    m, k = _exact_scan(x_ptr, c_ptr, rows, rmask, K, D, BLOCK_N, BLOCK_K, BLOCK_D)
    tl.store(labels_ptr + rows, k.to(tl.int64), mask=rmask)
    tl.store(dist2_ptr + rows, m.to(dist2_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _prep_centers_kernel(c_ptr, mu_ptr, cs_ptr, hsq_ptr, cpart_ptr, count_ptr, K, D,
                         BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per center: c' = c - mu (float32), -||c'||^2/2; per program max ||c'||^2.

    Program 0 also zeroes the ambiguous-row counter of the main pass (saves a fill launch).
    Grid axis 1 is the problem of batched problems (each has its own mu, c', counter).
    """
    pid = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    c_ptr += pb * K * D
    cs_ptr += pb * K * D
    mu_ptr += pb * D
    hsq_ptr += pb * K
    cpart_ptr += pb * tl.num_programs(0)
    count_ptr += pb
    ks = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    dcol = tl.arange(0, BLOCK_D)
    csq = tl.zeros((BLOCK_K,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        dmask = ds < D
        m2 = kmask[:, None] & dmask[None, :]
        offs = ks[:, None].to(tl.int64) * D + ds[None, :]
        mu = tl.load(mu_ptr + ds, mask=dmask, other=0.0)
        cv = tl.where(m2, tl.load(c_ptr + offs, mask=m2, other=0.0).to(tl.float32) - mu[None, :], 0.0)
        tl.store(cs_ptr + offs, cv, mask=m2)
        csq += tl.sum(cv * cv, axis=1)
    tl.store(hsq_ptr + ks, -0.5 * csq, mask=kmask)
    tl.store(cpart_ptr + pid, tl.max(tl.where(kmask, csq, 0.0), axis=0))
    tl.store(count_ptr, 0, mask=pid == 0)


@triton.jit
def _centred_x_chunk(xrow, mu_ptr, rmask, ds, D):
    """Columns ds of the rows at xrow as float32 minus the centers' mean (0 past D)."""
    dm = ds < D
    xc = tl.load(xrow + ds[None, :], mask=rmask[:, None] & dm[None, :], other=0.0)
    muc = tl.load(mu_ptr + ds, mask=dm, other=0.0)
    return tl.where(dm[None, :], xc.to(tl.float32) - muc[None, :], 0.0)


@triton.jit
def _assign_tc_kernel(
    x_ptr, c_ptr, cs_ptr, mu_ptr, hsq_ptr, cpart_ptr, n_cpart,
    rows_ptr, count_ptr, labels_ptr, dist2_ptr,
    N, K, D, N_BUCKET,
    alpha, beta, gamma,
    PRECISION: tl.constexpr,
    PREP_IN_KERNEL: tl.constexpr,
    ONE_D: tl.constexpr,
    ROW_LIST: tl.constexpr,
    COMPACT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EPI_BLOCK_D: tl.constexpr,
    FB_GROUP: tl.constexpr,
    FB_BLOCK_K: tl.constexpr,
    FB_BLOCK_D: tl.constexpr,
):
    """Tensor-core assignment of BLOCK_N rows with the exactness guard (module docstring).

    PREP_IN_KERNEL (K <= BLOCK_K, D <= BLOCK_D): the centers are centred in registers, one
    launch in all. Otherwise mu, c', -||c'||^2/2 and max ||c'||^2 come from the prep launch.
    ROW_LIST: the rows are rows_ptr[:count] (the 3xTF32 second pass). COMPACT: ambiguous
    rows are appended to rows_ptr for that pass instead of being scanned here.
    N_BUCKET only keys the autotuner (log2 N). Grid axis 1 is the problem of batched
    problems: every buffer below is that problem's slice (rows index within the problem).
    """
    pid = tl.program_id(0)
    pb = tl.program_id(1).to(tl.int64)
    x_ptr += pb * N * D
    c_ptr += pb * K * D
    cs_ptr += pb * K * D
    mu_ptr += pb * D
    hsq_ptr += pb * K
    cpart_ptr += pb * n_cpart
    rows_ptr += pb * N
    count_ptr += pb
    labels_ptr += pb * N
    dist2_ptr += pb * N
    lane = tl.arange(0, BLOCK_N)
    kl = tl.arange(0, BLOCK_K)
    dcol = tl.arange(0, BLOCK_D)
    dmask0 = dcol < D
    n_ktiles = (K + BLOCK_K - 1) // BLOCK_K
    if ROW_LIST:
        n_listed = tl.load(count_ptr)
        pos = pid.to(tl.int64) * BLOCK_N + lane
        rmask = pos < n_listed
        rows = tl.load(rows_ptr + pos, mask=rmask, other=0).to(tl.int64)
        # A program past the end of the list does no work: its loops run zero times.
        live = pid.to(tl.int64) * BLOCK_N < n_listed
        n_ktiles = tl.where(live, n_ktiles, 0)
        d_end = tl.where(live, D, 0)
    else:
        rows = pid.to(tl.int64) * BLOCK_N + lane
        rmask = rows < N
        d_end = D
    xrow = x_ptr + rows[:, None] * D

    # ---- centers: centred tile (single-launch case) or the prep launch's products -------
    if PREP_IN_KERNEL:
        kmask0 = kl < K
        m2 = dmask0[:, None] & kmask0[None, :]
        ct0 = tl.load(c_ptr + kl[None, :].to(tl.int64) * D + dcol[:, None], mask=m2,
                      other=0.0).to(tl.float32)
        mu = div_rn(tl.sum(ct0, axis=1), K)
        ct0 = tl.where(m2, ct0 - mu[:, None], 0.0)
        csq0 = tl.sum(ct0 * ct0, axis=0)
        hsq0 = tl.where(kmask0, -0.5 * csq0, float("-inf"))
        cmax2 = tl.max(tl.where(kmask0, csq0, 0.0), axis=0)
    else:
        if ONE_D:
            mu = tl.load(mu_ptr + dcol, mask=dmask0, other=0.0)
        pl = tl.arange(0, 128)
        cm = tl.zeros((128,), tl.float32)
        for p0 in range(0, n_cpart, 128):
            cm = tl.maximum(cm, tl.load(cpart_ptr + p0 + pl, mask=p0 + pl < n_cpart, other=0.0))
        cmax2 = tl.max(cm, axis=0)
    cnorm = sqrt_rn(cmax2)

    # ---- rows: centred x tile (hoisted when D fits one chunk) and ||x'|| -----------------
    if ONE_D:
        xt = tl.load(xrow + dcol[None, :], mask=rmask[:, None] & dmask0[None, :], other=0.0)
        xt = tl.where(dmask0[None, :], xt.to(tl.float32) - mu[None, :], 0.0)
        xsq = tl.sum(xt * xt, axis=1)
    else:
        xsq = tl.zeros((BLOCK_N,), tl.float32)
        for d0 in range(0, d_end, BLOCK_D):
            xc = _centred_x_chunk(xrow, mu_ptr, rmask, d0 + dcol, D)
            xsq += tl.sum(xc * xc, axis=1)
    xnorm = sqrt_rn(xsq)
    # Misordering window on the halved score (module docstring), safety factor 2.
    err = alpha * xnorm * cnorm + beta * (cmax2 + 2.0 * xnorm * cnorm)
    win = 2.0 * (2.0 * err + gamma * (xnorm + cnorm) * (xnorm + cnorm))

    # ---- stream the centers ----------------------------------------------------------------
    b1 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    b2 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    i1 = tl.zeros((BLOCK_N,), tl.int32)
    i2 = tl.zeros((BLOCK_N,), tl.int32)
    nw = tl.zeros((BLOCK_N,), tl.int32)
    # Rows the float32 scores cannot decide (contracts 1-2): NaN/Inf in the row or in a
    # center, or float32 overflow of the squares (|x|, |c| past ~1e19). They take the exact
    # float64 scan over all K, which applies the NaN rule and cannot overflow.
    special = _nonfinite(xsq + win + cmax2)  # all >= 0: Inf or NaN in any shows in the sum
    for kt in range(0, n_ktiles):
        k0 = kt * BLOCK_K
        ks = k0 + kl
        kmask = ks < K
        if PREP_IN_KERNEL:
            s = tl.dot(xt, ct0, tl.zeros((BLOCK_N, BLOCK_K), tl.float32) + hsq0[None, :],
                       input_precision=PRECISION)
        else:
            hsq = tl.load(hsq_ptr + ks, mask=kmask, other=float("-inf"))
            s = tl.zeros((BLOCK_N, BLOCK_K), tl.float32) + hsq[None, :]
            if ONE_D:
                ct = tl.load(cs_ptr + ks[None, :].to(tl.int64) * D + dcol[:, None],
                             mask=dmask0[:, None] & kmask[None, :], other=0.0)
                s = tl.dot(xt, ct, s, input_precision=PRECISION)
            else:
                for d0 in range(0, D, BLOCK_D):
                    ds = d0 + dcol
                    xc = _centred_x_chunk(xrow, mu_ptr, rmask, ds, D)
                    ct = tl.load(cs_ptr + ks[None, :].to(tl.int64) * D + ds[:, None],
                                 mask=(ds < D)[:, None] & kmask[None, :], other=0.0)
                    s = tl.dot(xc, ct, s, input_precision=PRECISION)
        special |= tl.sum((kmask[None, :] & _nonfinite(s)).to(tl.int32), axis=1) > 0
        s = tl.where(s == s, s, float("-inf"))  # NaN scores: the row is special anyway
        # Best two of the tile (ties to the lower index), then merge with the running two.
        t1, j1 = tl.max(s, axis=1, return_indices=True)
        t2, j2 = tl.max(tl.where(kl[None, :] == j1[:, None], float("-inf"), s), axis=1,
                        return_indices=True)
        nb1 = tl.maximum(b1, t1)
        thr = nb1 - win
        # Candidates within the window. Earlier tiles were counted against a threshold that
        # only falls, so their count is an upper bound, or 0 once the old best left it.
        nw = tl.where(b1 >= thr, nw, 0) + tl.sum((s >= thr[:, None]).to(tl.int32), axis=1)
        take = t1 > b1
        ov = tl.where(take, b1, b2)
        oi = tl.where(take, i1, i2)
        nv = tl.where(take, t2, t1)
        ni = tl.where(take, j2, j1) + k0
        use_new = nv > ov
        b2 = tl.where(use_new, nv, ov)
        i2 = tl.where(use_new, ni, oi)
        i1 = tl.where(take, j1 + k0, i1)
        b1 = nb1

    nw = tl.where(special, 3, nw)  # special rows: an exact scan (here or in the second pass)

    # ---- exact re-check of the (at most two) candidates, float64 from the raw inputs -------
    pair = rmask & (nw == 2)
    ecol = tl.arange(0, EPI_BLOCK_D)
    e1 = tl.zeros((BLOCK_N,), tl.float64)
    e2 = tl.zeros((BLOCK_N,), tl.float64)
    c1row = c_ptr + i1[:, None].to(tl.int64) * D
    c2row = c_ptr + i2[:, None].to(tl.int64) * D
    for d0 in range(0, d_end, EPI_BLOCK_D):
        ds = d0 + ecol
        dm = ds < D
        m1 = rmask[:, None] & dm[None, :]
        xv = tl.load(xrow + ds[None, :], mask=m1, other=0.0).to(tl.float64)
        c1 = tl.load(c1row + ds[None, :], mask=m1, other=0.0).to(tl.float64)
        c2 = tl.load(c2row + ds[None, :], mask=pair[:, None] & dm[None, :], other=0.0).to(tl.float64)
        e1 += tl.sum((xv - c1) * (xv - c1), axis=1)
        e2 += tl.sum((xv - c2) * (xv - c2), axis=1)
    pick2 = pair & ((e2 < e1) | ((e2 == e1) & (i2 < i1)))
    lab = tl.where(pick2, i2, i1)
    d2 = tl.where(pick2, e2, e1)

    # ---- three or more candidates: hand the row on, or scan it exactly here ---------------
    unresolved = rmask & (nw >= 3)
    u32 = unresolved.to(tl.int32)
    n_u = tl.sum(u32, axis=0)
    if COMPACT:
        base = tl.atomic_add(count_ptr, n_u, mask=n_u > 0)
        slot = base + tl.cumsum(u32, axis=0) - 1
        tl.store(rows_ptr + slot, rows.to(rows_ptr.dtype.element_ty), mask=unresolved)
    else:
        # FB_GROUP ambiguous rows at a time: 1 on a GPU (a masked row would cost as much as
        # a real one), 16 in the interpreter (its cost is per call more than per element).
        rank = tl.cumsum(u32, axis=0) - 1
        slots = tl.arange(0, FB_GROUP)
        for g in range(0, n_u, FB_GROUP):
            sel = unresolved[None, :] & (rank[None, :] == (g + slots)[:, None])
            grow = tl.sum(tl.where(sel, rows[None, :], 0), axis=1)
            m, kb = _exact_scan(x_ptr, c_ptr, grow, g + slots < n_u, K, D,
                                FB_GROUP, FB_BLOCK_K, FB_BLOCK_D)
            hit = unresolved & (rank >= g) & (rank < g + FB_GROUP)
            lab = tl.where(hit, tl.sum(tl.where(sel, kb[:, None], 0), axis=0), lab)
            d2 = tl.where(hit, tl.sum(tl.where(sel, m[:, None], 0.0), axis=0), d2)
    tl.store(labels_ptr + rows, lab.to(tl.int64), mask=rmask)
    tl.store(dist2_ptr + rows, d2.to(dist2_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _assign_bwd_kernel(g_ptr, x_ptr, c_ptr, l_ptr, gx_ptr, gc_ptr, N, D,
                       CENTERS_GRAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_x_i = 2 g_i (x_i - c_{l_i}); grad_c[l_i] -= grad_x_i (float64 atomics: the
    error of a center's sum does not grow with its number of rows, contract 3). Differences
    and products in float64, rounded once: a float32 difference near float32 max overflows
    where the reference's gradient fits (contract 2)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    m2 = rmask[:, None] & (ds < D)[None, :]
    g = tl.load(g_ptr + rows, mask=rmask, other=0.0)
    acc_t = g.dtype
    lab = tl.load(l_ptr + rows, mask=rmask, other=0)
    offs = rows[:, None].to(tl.int64) * D + ds[None, :]
    diff = (tl.load(x_ptr + offs, mask=m2, other=0.0).to(tl.float64)
            - tl.load(c_ptr + lab[:, None] * D + ds[None, :], mask=m2, other=0.0).to(tl.float64))
    gx = (2.0 * g.to(tl.float64))[:, None] * diff
    tl.store(gx_ptr + offs, gx.to(acc_t).to(gx_ptr.dtype.element_ty), mask=m2)
    if CENTERS_GRAD:
        tl.atomic_add(gc_ptr + lab[:, None] * D + ds[None, :], -gx, mask=m2)


def assign_backward(grad_dist2, x, centers, labels, centers_grad, cosine=False):
    """(grad_x in x's dtype, grad_centers in centers' dtype or an empty (0,) tensor).

    One launch (plus the zero fill of the float32 center-gradient buffer, and a cast for
    16-bit centers); the segment sum uses float atomics, so its last bits vary run to run.
    """
    if cosine:
        return assign_cosine_backward(grad_dist2, x, centers, labels, centers_grad)
    n, d = x.shape
    gx = torch.empty_like(x)
    gc = torch.zeros(centers.shape, dtype=torch.float64, device=x.device) if centers_grad else None
    if n and d:
        if interpreting(x):
            bd = pow2(d, 16, 512)
            bn, opts = pow2(n, 16, max(16, (1 << 19) // bd)), {}
        else:
            bn, bd, opts = 32, pow2(d, 16, 128), dict(num_warps=4)
        with device_guard(x):
            _assign_bwd_kernel[(triton.cdiv(n, bn), triton.cdiv(d, bd))](
                grad_dist2, x, centers, labels, gx, gc if centers_grad else gx, n, d,
                CENTERS_GRAD=centers_grad, BLOCK_N=bn, BLOCK_D=bd, **opts)
    if not centers_grad:
        return gx, centers.new_empty(0)
    return gx, gc.to(centers.dtype)


def _tc_configs():
    # (BLOCK_N, BLOCK_K, warps, stages) that compile for sm_90 without register spills and
    # within 227 KB of shared memory at d <= 128 (ptxas -v on the Triton 3.8 PTX; the centred
    # x tile is a register operand of wgmma, which is what fills the registers).
    shapes = [(128, 128, 8, 2), (128, 128, 8, 1), (128, 64, 8, 2), (128, 64, 8, 3),
              (64, 128, 4, 2), (64, 64, 4, 3), (64, 64, 8, 2), (64, 32, 4, 3)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in shapes]


# GPU only: autotuned over tiles/warps/stages per (K, D, log2 N, dtype). The counter is reset
# before every trial, so benchmarking leaves the ambiguous-row list consistent.
_assign_tc_tuned = triton.autotune(
    configs=_tc_configs(), key=["K", "D", "N_BUCKET"], reset_to_zero=["count_ptr"]
)(_assign_tc_kernel)
# Without autotuning (capture, KMGAN_TRITON_AUTOTUNE=0, set_autotune(False), tests): the
# config the autotuner chose for the same key earlier in this process, else this one (a
# mid-size tile that compiles without spills; not timed: no GPU was available).
TC_DEFAULT_CONFIG = _tc_configs()[2]
_tc_chosen: dict[tuple, triton.Config] = {}


# Rows past this index do not fit the int32 row list of the second pass (issue 11, 3.7).
ROW_LIST_INT32_MAX = 2**31 - 1


def row_list_dtype(n: int) -> torch.dtype:
    """Row indices of the ambiguous-row list: int32 (half the traffic) while they fit."""
    return torch.int32 if n - 1 <= ROW_LIST_INT32_MAX else torch.int64


def _window_constants(d: int, precision: str) -> tuple[float, float, float]:
    """(alpha, beta, gamma) of the misordering window, see the module docstring.

    alpha: relative error of one product: TF32 truncates both operands to 10 mantissa bits
    (2^-9 + 2^-20, rounded up); 3xTF32 drops only the lo*lo term (2^-18, rounded up to 2^-17).
    beta: float32 accumulation of d products (3d for 3xTF32) into -||c'||^2/2, counted as
    truncating (2u per add), plus the float32 ||c'||^2.
    gamma: the float32 rounding of the centring, on both sides of a comparison.
    """
    if precision == "tf32x3":
        return 2.0**-17, 2.0 * (3 * d + 4) * _U, 3.0 * _U
    return 2.0**-9 + 2.0**-19, 2.0 * (d + 4) * _U, 3.0 * _U


def assign(x: torch.Tensor, centers: torch.Tensor, cosine: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (N,) int64 = argmin_k ||x_i - c_k||^2 (ties to the lowest k), dist2 at it.

    Batched problems, x (B, N, d) with centers (B, K, d): (B, N) outputs from the same
    launches, the problem on grid axis 1 (at most 65535 problems a launch)."""
    if cosine:
        return assign_cosine(x, centers)
    if x.dim() == 3 and x.shape[0] > _MAX_GRID_Y:
        parts = [_assign(x[s : s + _MAX_GRID_Y], centers[s : s + _MAX_GRID_Y])[:2]
                 for s in range(0, x.shape[0], _MAX_GRID_Y)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    labels, dist2, _ = _assign(x, centers)
    return labels, dist2


def assign_stats(x: torch.Tensor, centers: torch.Tensor) -> int:
    """How many rows the main pass handed to the 3xTF32 pass (bench/ and tuning).

    0 when the call took a single-launch path (float64, or K within one tile).
    """
    _, _, count = _assign(x, centers)
    return 0 if count is None else int(count.sum().item())


# Grid axis 1 (the problem of batched problems) is limited to 65535 on CUDA GPUs.
_MAX_GRID_Y = 65535


def _assign(x, centers):
    n, d = x.shape[-2:]
    k = centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    labels = torch.empty(x.shape[:-1], dtype=torch.int64, device=x.device)
    dist2 = torch.empty(x.shape[:-1], dtype=acc_dtype(x), device=x.device)
    if n == 0 or batch == 0:
        return labels, dist2, None
    with device_guard(x):
        if x.dtype == torch.float64:
            if interpreting(x):
                bn, bk, bd = pow2(n, 16, 64), pow2(k, 16, 64), pow2(d, 16, 128)
                opts = {}
            else:
                bn, bk, bd, opts = 16, 16, 16, dict(num_warps=4)
            _assign_exact_kernel[(triton.cdiv(n, bn), batch)](
                x, centers, labels, dist2, n, k, d, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=bd, **opts)
            return labels, dist2, None
        return labels, dist2, _assign_tc(x, centers, labels, dist2)


def _assign_tc(x, centers, labels, dist2):
    """Launch the tensor-core path; returns the ambiguous-row counters (one per problem) of
    a two-pass call."""
    n, d = x.shape[-2:]
    k = centers.shape[-2]
    batch = x.shape[0] if x.dim() == 3 else 1
    dev = x.device
    interp = interpreting(x)
    if interp:
        # Few, large program instances (the interpreter pays per call, not per element);
        # K above 512 still takes the two-pass path so that CI exercises it.
        block_d = pow2(d, 16, 512)
        block_k = pow2(k, 16, 512)
        small = k <= block_k and d <= block_d
        # Up to 8192 rows a program while the (rows x max(K, d)) tiles stay within 2^18.
        fixed = dict(BLOCK_N=pow2(n, 16, max(512, min(8192, (1 << 18) // max(block_k, block_d)))),
                     BLOCK_K=block_k)
        # FB_GROUP * FB_BLOCK_K * FB_BLOCK_D stays within triton's 2**20 elements per tensor.
        fb = dict(FB_GROUP=16, FB_BLOCK_K=pow2(k, 16, 128), FB_BLOCK_D=pow2(d, 16, 512))
        epi_d = block_d
    else:
        # Single launch while the centers fit one tile: the kernel is then bound by reading x.
        block_d = pow2(d, 16) if d <= 128 else 64
        small = k <= 64 and d <= 128
        fixed = dict(BLOCK_N=64, BLOCK_K=pow2(k, 16), num_warps=4, num_stages=2)
        fb = dict(FB_GROUP=1, FB_BLOCK_K=64, FB_BLOCK_D=32)
        epi_d = 16
    alpha, beta, gamma = _window_constants(d, "tf32")
    dummy = torch.empty(1, dtype=torch.float32, device=dev)
    # The counter and the list are int64 once row indices pass int32 (row_list_dtype).
    count = torch.empty(batch, dtype=row_list_dtype(n), device=dev)  # zeroed by _prep_centers_kernel
    rows = torch.empty(1 if small else batch * n, dtype=row_list_dtype(n), device=dev)
    if small:
        cs = mu = hsq = cpart = dummy
        n_cpart = 0
    else:
        pk = pow2(k, 16, 512 if interp else 64)
        n_cpart = triton.cdiv(k, pk)
        mu = centers.mean(-2, dtype=torch.float32)
        cs = torch.empty(batch * k, d, dtype=torch.float32, device=dev)
        hsq = torch.empty(batch * k, dtype=torch.float32, device=dev)
        cpart = torch.empty(batch * n_cpart, dtype=torch.float32, device=dev)
        _prep_centers_kernel[(n_cpart, batch)](
            centers, mu, cs, hsq, cpart, count, k, d,
            BLOCK_K=pk, BLOCK_D=pow2(d, 16, 512 if interp else 64),
        )
    flags = dict(PREP_IN_KERNEL=small, ONE_D=d <= block_d, BLOCK_D=block_d, EPI_BLOCK_D=epi_d,
                 **fb)
    main = (x, centers, cs, mu, hsq, cpart, n_cpart, rows, count, labels, dist2,
            n, k, d, min(n.bit_length(), 24), alpha, beta, gamma)
    tune_key = (k, d, main[14], x.dtype)
    if interp or small:
        _assign_tc_kernel[(triton.cdiv(n, fixed["BLOCK_N"]), batch)](
            *main, PRECISION="tf32", ROW_LIST=False, COMPACT=not small, **flags, **fixed)
    elif autotune_allowed(x):
        _assign_tc_tuned[lambda m: (triton.cdiv(n, m["BLOCK_N"]), batch)](
            *main, PRECISION="tf32", ROW_LIST=False, COMPACT=True, **flags)
        if getattr(_assign_tc_tuned, "best_config", None) is not None:
            _tc_chosen[tune_key] = _assign_tc_tuned.best_config
    else:
        cfg = config_kwargs(_tc_chosen.get(tune_key, TC_DEFAULT_CONFIG))
        _assign_tc_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), batch)](
            *main, PRECISION="tf32", ROW_LIST=False, COMPACT=True, **flags, **cfg)
    if small:
        return None
    # Second pass over the listed rows only: 3xTF32; rows still ambiguous are scanned exactly.
    # On a GPU the grid covers the worst case (every row listed) to avoid a host sync on the
    # counter; in the interpreter reading it is free and empty programs are not.
    a3, b3, g3 = _window_constants(d, "tf32x3")
    if interp:
        refine, listed = fixed, int(count.max().item())
    else:
        refine, listed = dict(BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2), n
    if listed:
        _assign_tc_kernel[(triton.cdiv(listed, refine["BLOCK_N"]), batch)](
            x, centers, cs, mu, hsq, cpart, n_cpart, rows, count, labels, dist2,
            n, k, d, 0, a3, b3, g3, PRECISION="tf32x3", ROW_LIST=True, COMPACT=False,
            **flags, **refine,
        )
    return count
