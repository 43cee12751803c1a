"""Center updates, Triton (docs/ops.md): Sculley's mini-batch k-means and the VQ-VAE EMA.

Both are "per-cluster sums S_k and counts m_k, then a per-cluster apply":

* Sculley (scikit-learn's MiniBatchKMeans step), for every k with m_k > 0:
  ``counts_k += m_k;  c_k += (S_k - m_k c_k) / counts_k``; clusters without rows are never
  written (bitwise untouched, never NaN);
* EMA (VQ-VAE, van den Oord 2017 A.1; kmgan_ext/reference.py::ema_update_), for every k:
  ``N_k <- decay N_k + (1 - decay) m_k;  M_k <- decay M_k + (1 - decay) S_k``, then a second
  launch ``c_k = M_k / N'_k`` with ``N'_k = (N_k + eps) / (n + K eps) n``, ``n = sum_k N_k``
  (from the state as stored); where ``N'_k == 0`` the center is left unchanged.

Small problems (K <= 64, N K d <= 2^22, e.g. the paper's batch of 64 with K = 10): one
program, one launch, no atomics, for both modes.

Batched EMA problems (centers (B, K, d), x (B, N, d), labels (B, N) in [0, K)): the problem
is the last grid axis of every launch below (the one program of the small path becomes B
programs), each kernel offsetting its pointers to its problem's slices, so a problem takes the
same blocks, the same order and its own total n as its own 2-D call (bitwise), and B problems
take the launches of one. Sculley's updates are one problem (their batched form is the flat
(B*K, d) view, kmgan_ext/minibatch_update.py).

Fast mode (``deterministic=False``): one fill (sums and counts share a buffer), one
segmented-sum launch that adds float64 block totals with ``tl.atomic_add`` (for K <= 64 each
program first reduces its rows per cluster with a one-hot ``tl.dot`` in IEEE float32, so a
program issues K x BLOCK_D atomics instead of BLOCK_N x BLOCK_D, and small K does not
serialise on a few addresses), then one apply launch. The order of the float additions
varies between runs, so the last bits may too.

Deterministic mode: rows are sorted by label outside the kernel (``torch.sort(stable=True)``),
then a single launch finds each cluster's segment by binary search, sums it in a fixed order
and applies the update: no float atomics, bitwise identical run to run. A cluster's rows are
summed by one program, so a cluster holding most of a huge batch is a serial loop.

Accumulation (contract 3: the error must not grow with N): blocks of at most 64 rows are
summed in float32 (float64 for float64 inputs), the block totals in float64, and the update
is computed in float64. A mean of 10^6 rows at offset 1e4 then matches the float64
reference to about an ulp, where a float32 running sum drifts by thousands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, cast_for, device_guard, interpreting, midpoint, pow2, zeros_pair
from .assign import assign

SCULLEY = 0
EMA = 1
# Largest K reduced per program with a one-hot dot before the atomics (fast mode).
_ONEHOT_MAX_K = 64
# Single-program update (both modes) while K <= 64 and N K d <= 2^22 multiply-adds: about
# 20 us on one SM, less than the three launches of the general path cost.
_SMALL_MAX_K = 64
_SMALL_MAX_WORK = 1 << 22


@triton.jit
def _block_total(part, axis: tl.constexpr):
    """tl.sum(part, axis) in part's dtype, as float64; redone in float64 when a float32 total
    passes 3.4e38 (contract 2: the float64 sum, rounded only at the end)."""
    blk = tl.sum(part, axis=axis).to(tl.float64)
    if tl.sum(((blk == float("inf")) | (blk == -float("inf"))).to(tl.int32)) > 0:
        blk = tl.sum(part.to(tl.float64), axis=axis)
    return blk


@triton.jit
def _row_norms(x_ptr, rows, rmask, D, BLOCK_D: tl.constexpr):
    """||x_row|| in float64 over all D columns (metric="cosine": the rows are normalised as
    they are summed, never copied)."""
    dcol = tl.arange(0, BLOCK_D)
    n2 = tl.zeros(rows.shape, tl.float64)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        v = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                    mask=rmask[:, None] & (ds < D)[None, :], other=0.0).to(tl.float64)
        n2 += tl.sum(v * v, axis=1)
    return tl.sqrt(n2)


@triton.jit
def _unit(v, norm):
    """v / norm in float64 (a zero row adds 0; a NaN row stays NaN)."""
    return tl.where(norm == 0.0, 0.0, v.to(tl.float64) / tl.where(norm == 0.0, 1.0, norm))


@triton.jit
def _segment_sum_kernel(
    x_ptr, labels_ptr, w_ptr, sums_ptr, m_ptr, N, K, D,
    ONEHOT: tl.constexpr, COSINE: tl.constexpr, WEIGHTED: tl.constexpr, KP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """sums[l_i] += x_i (float64) and m[l_i] += 1 with atomics (grid: row x column blocks).

    A program's rows are first summed per cluster in float32 (one-hot dot, K <= 64) and the
    block total added in float64, or (K > 64) each row is added in float64: the error of a
    sum does not grow with the number of rows (contract 3). WEIGHTED (sample_weight; never
    ONEHOT): sums[l_i] += w_i x_i and m[l_i] += w_i, both float64.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    pb = tl.program_id(2).to(tl.int64)  # the problem (batched EMA), else 0
    x_ptr += pb * N * D
    labels_ptr += pb * N
    w_ptr += pb * N
    sums_ptr += pb * K * D
    m_ptr += pb * K
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    lab = tl.load(labels_ptr + rows, mask=rmask, other=0)
    xt = tl.load(x_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :],
                 other=0.0)
    if ONEHOT:
        ks = tl.arange(0, KP)
        onehot = ((lab[None, :] == ks[:, None]) & rmask[None, :]).to(tl.float32)
        part = tl.dot(onehot, xt.to(tl.float32), input_precision="ieee")
        cnt = tl.sum(onehot, axis=1)
        hit = cnt > 0
        tl.atomic_add(m_ptr + ks, cnt.to(tl.int32), mask=hit & (pid_d == 0))
        if tl.sum(((part * 0.0) != 0.0).to(tl.int32)) == 0:
            tl.atomic_add(sums_ptr + ks[:, None] * D + ds[None, :], part.to(tl.float64),
                          mask=hit[:, None] & dmask[None, :])
        else:
            # A NaN row times the one-hot's zeros reaches every cluster's total, and a
            # float32 total may overflow: this block's rows go in one by one, in float64.
            tl.atomic_add(sums_ptr + lab[:, None] * D + ds[None, :], xt.to(tl.float64),
                          mask=rmask[:, None] & dmask[None, :])
    else:
        xv = xt.to(tl.float64)
        if COSINE:
            xv = _unit(xv, _row_norms(x_ptr, rows, rmask, D, BLOCK_D)[:, None])
        if WEIGHTED:
            wv = tl.load(w_ptr + rows, mask=rmask, other=0.0).to(tl.float64)
            xv = xv * wv[:, None]
            tl.atomic_add(m_ptr + lab, wv, mask=rmask & (pid_d == 0))
        else:
            tl.atomic_add(m_ptr + lab, 1, mask=rmask & (pid_d == 0))
        tl.atomic_add(sums_ptr + lab[:, None] * D + ds[None, :], xv,
                      mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _decay_pair(decay_hi, decay_lo):
    """(decay, 1 - decay) in float64 from decay's float32 hi + lo split."""
    # tl.cast: a float argument is a float32 scalar on a GPU, a Python float when interpreted.
    hi = tl.cast(decay_hi, tl.float64)
    lo = tl.cast(decay_lo, tl.float64)
    return hi + lo, (1.0 - hi) - lo


@triton.jit
def _apply_rows(centers_ptr, esum_ptr, ks, ds, hit, kmask, dmask, D, S, m_f, n_f,
                decay_hi, decay_lo, MODE: tl.constexpr, WEIGHTED: tl.constexpr = False):
    """Finish a (ks x ds) chunk from its float64 sums S.

    Sculley (MODE 0): the new centers, clusters without rows untouched; WEIGHTED: scikit-learn's
    ``(c W + S) * (1 / W_new)`` with m_f = the old cumulative weight W, n_f = W_new. EMA (MODE 1): the
    state M_k <- decay M_k + (1 - decay) S_k for every cluster (the centers come from
    _ema_centers_kernel once every cluster's size is known).
    """
    offs = ks[:, None].to(tl.int64) * D + ds[None, :]
    if MODE == 0:
        mm = hit[:, None] & dmask[None, :]
        c = tl.load(centers_ptr + offs, mask=mm, other=0.0).to(tl.float64)
        if WEIGHTED:
            new = (c * m_f[:, None] + S) * (1.0 / n_f)[:, None]
        else:
            new = c + (S - m_f[:, None] * c) / n_f[:, None]
        tl.store(centers_ptr + offs, cast_for(new, centers_ptr), mask=mm)
    else:
        mm = kmask[:, None] & dmask[None, :]
        decay, one_minus = _decay_pair(decay_hi, decay_lo)
        old = tl.load(esum_ptr + offs, mask=mm, other=0.0).to(tl.float64)
        tl.store(esum_ptr + offs, cast_for(decay * old + one_minus * S, esum_ptr), mask=mm)


@triton.jit
def _bump_counts(counts_ptr, ks, kmask, m, decay_hi, decay_lo, MODE: tl.constexpr,
                 WEIGHTED: tl.constexpr = False):
    """(hit, m_f, n_f) for clusters ks with m rows each, and the count state.

    Sculley: counts += m; hit = clusters with rows (the only ones written), m_f = m and n_f =
    the new count as float64 (1 where there are no rows, so no lane divides by 0). WEIGHTED
    Sculley: m is the float64 batch weight, counts the float64 cumulative weights W; hit =
    m > 0, m_f = the old W, n_f = W + m. EMA: the cluster-size state
    N_k <- decay N_k + (1 - decay) m_k for every cluster.
    """
    hit = kmask & (m > 0)
    m_f = tl.where(hit, m.to(tl.float64), 1.0)
    n_f = m_f
    if MODE == 0:
        if WEIGHTED:
            old = tl.load(counts_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
            w_new = old + m.to(tl.float64)
            tl.store(counts_ptr + ks, w_new, mask=hit)
            m_f = tl.where(hit, old, 0.0)
            n_f = tl.where(hit, w_new, 1.0)
        else:
            n_new = tl.load(counts_ptr + ks, mask=kmask, other=0) + m
            tl.store(counts_ptr + ks, n_new, mask=hit)
            n_f = tl.where(hit, n_new.to(tl.float64), 1.0)
    else:
        decay, one_minus = _decay_pair(decay_hi, decay_lo)
        old = tl.load(counts_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
        tl.store(counts_ptr + ks,
                 (decay * old + one_minus * m.to(tl.float64)).to(counts_ptr.dtype.element_ty),
                 mask=kmask)
    return hit, m_f, n_f


@triton.jit
def _apply_kernel(
    centers_ptr, counts_ptr, esum_ptr, sums_ptr, m_ptr, hit_ptr, K, D, decay_hi, decay_lo,
    MODE: tl.constexpr, WEIGHTED: tl.constexpr, HIT: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The per-cluster update from the float64 sums (fast mode); BLOCK_K whole rows each."""
    pb = tl.program_id(1).to(tl.int64)  # the problem (batched EMA), else 0
    centers_ptr += pb * K * D
    counts_ptr += pb * K
    esum_ptr += pb * K * D
    sums_ptr += pb * K * D
    m_ptr += pb * K
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    m = tl.load(m_ptr + ks, mask=kmask, other=0)
    hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, m, decay_hi, decay_lo, MODE, WEIGHTED)
    if HIT:  # metric="cosine" Sculley: the clusters that received rows (_renormalize_kernel)
        tl.store(hit_ptr + ks, hit.to(tl.int8), mask=kmask)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        S = tl.load(sums_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                    mask=kmask[:, None] & dmask[None, :], other=0.0)
        _apply_rows(centers_ptr, esum_ptr, ks, ds, hit, kmask, dmask, D, S, m_f, n_f,
                    decay_hi, decay_lo, MODE, WEIGHTED)


@triton.jit
def _sorted_segment_kernel(
    centers_ptr, counts_ptr, esum_ptr, x_ptr, w_ptr, order_ptr, slab_ptr, hit_ptr, N, K, D,
    n_steps, decay_hi, decay_lo, ACC_T: tl.constexpr, MODE: tl.constexpr, COSINE: tl.constexpr,
    WEIGHTED: tl.constexpr, HIT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Deterministic: segment sums over label-sorted rows in a fixed order, then the update.

    Each block of BLOCK_R rows is summed in ACC_T, the block totals in float64 (contract 3).
    Grid axis 1: the problem (batched EMA; order and slab hold each problem's own sort).
    """
    pb = tl.program_id(1).to(tl.int64)
    centers_ptr += pb * K * D
    counts_ptr += pb * K
    esum_ptr += pb * K * D
    x_ptr += pb * N * D
    w_ptr += pb * N
    order_ptr += pb * N
    slab_ptr += pb * N
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    # Lower bounds of k and k + 1 in the sorted labels (vector binary search).
    lo_s = tl.zeros((BLOCK_K,), tl.int32)
    hi_s = lo_s + N
    lo_e = lo_s
    hi_e = hi_s
    for _ in range(0, n_steps):
        act_s = lo_s < hi_s
        mid_s = midpoint(lo_s, hi_s)
        right_s = tl.load(slab_ptr + mid_s, mask=act_s, other=0) < ks
        lo_s = tl.where(act_s & right_s, mid_s + 1, lo_s)
        hi_s = tl.where(act_s & (right_s == 0), mid_s, hi_s)
        act_e = lo_e < hi_e
        mid_e = midpoint(lo_e, hi_e)
        right_e = tl.load(slab_ptr + mid_e, mask=act_e, other=0) < ks + 1
        lo_e = tl.where(act_e & right_e, mid_e + 1, lo_e)
        hi_e = tl.where(act_e & (right_e == 0), mid_e, hi_e)
    start = lo_s
    m = tl.where(kmask, lo_e - lo_s, 0)
    max_len = tl.max(m, axis=0)
    rl = tl.arange(0, BLOCK_R)
    if WEIGHTED:  # the segment's weights, summed in sorted order (float64)
        wk = tl.zeros((BLOCK_K,), tl.float64)
        for r0 in range(0, max_len, BLOCK_R):
            r = r0 + rl
            rm = r[None, :] < m[:, None]
            orig = tl.load(order_ptr + start[:, None] + r[None, :], mask=rm, other=0)
            wk += tl.sum(tl.load(w_ptr + orig, mask=rm, other=0.0).to(tl.float64), axis=1)
        hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, wk, decay_hi, decay_lo, MODE, True)
    else:
        hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, m, decay_hi, decay_lo, MODE)
    if HIT:  # metric="cosine" Sculley: the clusters that received rows (_renormalize_kernel)
        tl.store(hit_ptr + ks, hit.to(tl.int8), mask=kmask)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float64)
        for r0 in range(0, max_len, BLOCK_R):
            r = r0 + rl
            rm = r[None, :] < m[:, None]
            orig = tl.load(order_ptr + start[:, None] + r[None, :], mask=rm, other=0)
            tile = tl.load(x_ptr + orig[:, :, None] * D + ds[None, None, :],
                           mask=rm[:, :, None] & dmask[None, None, :], other=0.0).to(ACC_T)
            if COSINE:  # ACC_T is float64 then
                nrm = tl.reshape(_row_norms(x_ptr, tl.reshape(orig, (BLOCK_K * BLOCK_R,)),
                                            tl.reshape(rm, (BLOCK_K * BLOCK_R,)), D, BLOCK_D),
                                 (BLOCK_K, BLOCK_R))
                tile = _unit(tile, nrm[:, :, None])
            if WEIGHTED:  # ACC_T is float64 then
                tile = tile * tl.load(w_ptr + orig, mask=rm, other=0.0).to(tl.float64)[:, :, None]
            acc += _block_total(tile, 1)
        _apply_rows(centers_ptr, esum_ptr, ks, ds, hit, kmask, dmask, D, acc, m_f, n_f,
                    decay_hi, decay_lo, MODE, WEIGHTED)


@triton.jit
def _small_update_kernel(
    centers_ptr, counts_ptr, esum_ptr, x_ptr, labels_ptr, w_ptr, hit_ptr, N, K, D, decay_hi,
    decay_lo, ACC_T: tl.constexpr, MODE: tl.constexpr, COSINE: tl.constexpr,
    WEIGHTED: tl.constexpr, HIT: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Small problems in ONE program: one-hot segment sums in a fixed order, then the update.

    No atomics, no zero fill, no sort: a single launch, bitwise repeatable, used for both modes
    while N K d is small (the paper's N=64, K=10, d=100). Blocks of BLOCK_N rows are summed
    in ACC_T, the block totals in float64 (contract 3). Batched EMA: program b is problem b.
    """
    pb = tl.program_id(0).to(tl.int64)
    centers_ptr += pb * K * D
    counts_ptr += pb * K
    esum_ptr += pb * K * D
    x_ptr += pb * N * D
    labels_ptr += pb * N
    w_ptr += pb * N
    ks = tl.arange(0, KP)
    kmask = ks < K
    rl = tl.arange(0, BLOCK_N)
    if WEIGHTED:  # the clusters' weights (float64, rows in index order)
        wk = tl.zeros((KP,), tl.float64)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            lab = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
            wr = tl.load(w_ptr + rows, mask=rows < N, other=0.0).to(tl.float64)
            wk += tl.sum(tl.where(lab[None, :] == ks[:, None], wr[None, :], 0.0), axis=1)
        hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, wk, decay_hi, decay_lo, MODE, True)
    else:
        cnt = tl.zeros((KP,), tl.int32)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            lab = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
            cnt += tl.sum((lab[None, :] == ks[:, None]).to(tl.int32), axis=1)
        hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, cnt, decay_hi, decay_lo, MODE)
    if HIT:  # metric="cosine" Sculley: the clusters that received rows (_renormalize_kernel)
        tl.store(hit_ptr + ks, hit.to(tl.int8), mask=kmask)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        acc = tl.zeros((KP, BLOCK_D), tl.float64)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            rm = rows < N
            lab = tl.load(labels_ptr + rows, mask=rm, other=-1)
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                         mask=rm[:, None] & dmask[None, :], other=0.0).to(ACC_T)
            if COSINE:  # ACC_T is float64 then
                xt = _unit(xt, _row_norms(x_ptr, rows, rm, D, BLOCK_D)[:, None])
            if WEIGHTED:  # ACC_T is float64 then
                xt = xt * tl.load(w_ptr + rows, mask=rm, other=0.0).to(tl.float64)[:, None]
            # A select, not a product with the one-hot: NaN * 0 would put a NaN row into
            # every cluster's sum instead of its own.
            part = tl.where((lab[None, :] == ks[:, None])[:, :, None], xt[None, :, :], 0.0)
            if BLOCK_N > 64:  # the interpreter's blocks of thousands of rows: float64 sums
                acc += tl.sum(part.to(tl.float64), axis=1)
            else:
                acc += _block_total(part, 1)
        _apply_rows(centers_ptr, esum_ptr, ks, ds, hit, kmask, dmask, D, acc, m_f, n_f,
                    decay_hi, decay_lo, MODE, WEIGHTED)


@triton.jit
def _ema_centers_kernel(centers_ptr, size_ptr, esum_ptr, K, D, eps_hi, eps_lo,
                        COSINE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """c_k = M_k / N'_k, N'_k = (N_k + eps) / (n + K eps) n, n = sum_k N_k (float64).

    Every program sums all K sizes of its problem itself, in the same fixed order (a bitwise
    identical n everywhere, no extra launch). Centers with N'_k == 0 are left unchanged.
    Grid axis 1: the problem (batched EMA), whose own total n each program sums.
    """
    pb = tl.program_id(1).to(tl.int64)
    centers_ptr += pb * K * D
    size_ptr += pb * K
    esum_ptr += pb * K * D
    sl = tl.arange(0, BLOCK_S)
    tot = tl.zeros((BLOCK_S,), tl.float64)
    for s0 in range(0, K, BLOCK_S):
        tot += tl.load(size_ptr + s0 + sl, mask=s0 + sl < K, other=0.0).to(tl.float64)
    n = tl.sum(tot, axis=0)
    eps = tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    size = tl.load(size_ptr + ks, mask=kmask, other=0.0).to(tl.float64)
    smoothed = (size + eps) / (n + K * eps) * n
    live = kmask & (smoothed != 0)
    denom = tl.where(live, smoothed, 1.0)
    if COSINE:  # c_k = M_k / N'_k renormalised (a zero result stays zero): a first pass for ||.||
        n2 = tl.zeros((BLOCK_K,), tl.float64)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            mm = live[:, None] & (ds < D)[None, :]
            M = tl.load(esum_ptr + ks[:, None].to(tl.int64) * D + ds[None, :], mask=mm,
                        other=0.0).to(tl.float64) / denom[:, None]
            n2 += tl.sum(M * M, axis=1)
        nrm = tl.sqrt(n2)
        denom = tl.where(nrm == 0.0, denom, denom * nrm)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mm = live[:, None] & (ds < D)[None, :]
        offs = ks[:, None].to(tl.int64) * D + ds[None, :]
        M = tl.load(esum_ptr + offs, mask=mm, other=0.0).to(tl.float64)
        tl.store(centers_ptr + offs, cast_for(M / denom[:, None], centers_ptr), mask=mm)


@triton.jit
def _renormalize_kernel(src_ptr, dst_ptr, hit_ptr, K, D,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sculley, metric="cosine": dst_k = src_k / ||src_k|| (float64 src; a zero row stays
    zero) for the clusters that received rows (batch count or weight > 0, as the reference:
    not "the count changed", which a batch weight below 2^-53 W_k leaves as it was); the
    others are not written."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    hit = kmask & (tl.load(hit_ptr + ks, mask=kmask, other=0) != 0)
    n2 = tl.zeros((BLOCK_K,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(src_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                    mask=hit[:, None] & (ds < D)[None, :], other=0.0)
        n2 += tl.sum(v * v, axis=1)
    nrm = tl.sqrt(n2)
    nrm = tl.where(nrm == 0.0, 1.0, nrm)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        mm = hit[:, None] & (ds < D)[None, :]
        offs = ks[:, None].to(tl.int64) * D + ds[None, :]
        v = tl.load(src_ptr + offs, mask=mm, other=0.0)
        tl.store(dst_ptr + offs, cast_for(v / nrm[:, None], dst_ptr), mask=mm)


def _split(v: float) -> tuple[float, float]:
    """v as float32 hi + lo: Triton passes Python floats as float32, float64 needs more."""
    hi = float(torch.tensor(v, dtype=torch.float32))
    return hi, float(torch.tensor(v - hi, dtype=torch.float32))


def _update(centers, counts, esum, x, labels, deterministic, mode, decay, cosine=False, w=None,
            hit=None):
    """Segment sums + apply. Sculley: counts is the int64 count state (float64 cumulative
    weights with sample_weight w). EMA: counts is the cluster-size state and esum the
    embed-sum state (the centers follow in _ema_centers); batched EMA problems (centers
    (B, K, d), x (B, N, d)) take the problem as the last grid axis of every launch. hit:
    (K,) int8, set to whether each cluster received rows (Sculley, metric="cosine")."""
    n, d = x.shape[-2:]
    k = centers.shape[-2]
    b = x.shape[0] if x.dim() == 3 else 1
    if n == 0 and mode == SCULLEY:
        return
    interp = interpreting(x)
    weighted = w is not None
    w = w if weighted else x  # a dummy pointer, never read without WEIGHTED
    # metric="cosine" / sample_weight: the rows are divided by their norm / multiplied by
    # their weight in float64 as they are summed.
    acc_t = (tl.float64 if cosine or weighted or acc_dtype(centers) == torch.float64
             else tl.float32)
    dec_hi, dec_lo = _split(decay)
    esum = esum if esum is not None else centers  # Sculley: a dummy, never read
    store_hit = hit is not None
    hit = hit if store_hit else counts  # a dummy pointer, never written without HIT
    with device_guard(x):
        if k <= _SMALL_MAX_K and n * k * d <= _SMALL_MAX_WORK:
            kp = pow2(k, 16)
            if interp:
                # Few, large steps (the interpreter pays per op): up to 2^20 products a step.
                bd = pow2(d, 16, 64)
                bn, opts = pow2(n, 16, max(16, (1 << 20) // (kp * bd))), {}
            else:
                # KP x BLOCK_N x BLOCK_D = 8192 products per step: 64 registers a thread.
                bn, bd, opts = max(2, 256 // kp), 32, dict(num_warps=4)
            _small_update_kernel[(b,)](
                centers, counts, esum, x, labels, w, hit, n, k, d, dec_hi, dec_lo, ACC_T=acc_t,
                MODE=mode, COSINE=cosine, WEIGHTED=weighted, HIT=store_hit, KP=kp, BLOCK_N=bn,
                BLOCK_D=bd, **opts)
            return
        if deterministic:
            slab, order = torch.sort(labels, dim=-1, stable=True)  # each problem's own
            if interp:
                bk = pow2(k, 1, 256)
                br = 16
                bd = pow2(d, 16, pow2((1 << 20) // (bk * br), 16, 512))
                opts = {}
            else:
                bk, br, bd, opts = 4, 16, pow2(d, 16, 64), dict(num_warps=4)
            _sorted_segment_kernel[(triton.cdiv(k, bk), b)](
                centers, counts, esum, x, w, order, slab, hit, n, k, d, n.bit_length() + 1,
                dec_hi, dec_lo, ACC_T=acc_t, MODE=mode, COSINE=cosine, WEIGHTED=weighted,
                HIT=store_hit, BLOCK_K=bk, BLOCK_R=br, BLOCK_D=bd, **opts,
            )
            return
        # float64 sums (atomics of float32 block totals, see _segment_sum_kernel).
        if weighted:  # float64 sums and batch weights, one fill
            buf = torch.zeros(b * (k * d + k), dtype=torch.float64, device=x.device)
            sums, m = buf[: b * k * d].view(b * k, d), buf[b * k * d:]
        else:
            sums, m = zeros_pair(b * k, d, torch.float64, x.device)
        onehot = k <= _ONEHOT_MAX_K and acc_t == tl.float32  # never for cosine or weights
        if interp:
            bn, bd, opts = pow2(n, 16, 1024), pow2(d, 16, 512), {}
        else:
            bn, bd, opts = 64, pow2(d, 16, 128), dict(num_warps=4)
        if n:
            # At least one column block: with d = 0 the programs of column block 0 still
            # count the rows (a zero-sized grid axis would run no program at all).
            _segment_sum_kernel[(triton.cdiv(n, bn), max(1, triton.cdiv(d, bd)), b)](
                x, labels, w, sums, m, n, k, d, ONEHOT=onehot, COSINE=cosine,
                WEIGHTED=weighted, KP=pow2(k, 16), BLOCK_N=bn, BLOCK_D=bd, **opts,
            )
        if interp:
            bk, bd = pow2(k, 1, 1024), pow2(d, 16, 512)
        else:
            bk, bd = 8, pow2(d, 16, 128)
        _apply_kernel[(triton.cdiv(k, bk), b)](
            centers, counts, esum, sums, m, hit, k, d, dec_hi, dec_lo,
            MODE=mode, WEIGHTED=weighted, HIT=store_hit, BLOCK_K=bk, BLOCK_D=bd, **opts,
        )


def _ema_centers(centers, cluster_size, embed_sum, eps, cosine=False):
    k, d = centers.shape[-2:]
    b = centers.shape[0] if centers.dim() == 3 else 1
    if interpreting(centers):
        bk, bs, bd, opts = pow2(k, 1, 1024), pow2(k, 16, 4096), pow2(d, 16, 512), {}
    else:
        bk, bs, bd, opts = 8, 1024, pow2(d, 16, 128), dict(num_warps=4)
    eps_hi, eps_lo = _split(eps)
    with device_guard(centers):
        _ema_centers_kernel[(triton.cdiv(k, bk), b)](
            centers, cluster_size, embed_sum, k, d, eps_hi, eps_lo, COSINE=cosine,
            BLOCK_K=bk, BLOCK_S=bs, BLOCK_D=bd, **opts)


def minibatch_update_(centers, counts, x, labels, deterministic=False, cosine=False,
                      sample_weight=None) -> None:
    """Sculley's step in place (module docstring); labels against the pre-update centers.

    metric="cosine": S_k sums x_i / ||x_i||; the step runs on a float64 copy of the centers
    (K x d) and the updated ones are renormalised from it into ``centers``.
    sample_weight: (N,) weights, float64 ``counts`` (scikit-learn's weighted step). With
    cosine, every cluster whose batch weight is > 0 is renormalised, as in the reference,
    even where that weight is below 2^-53 of its cumulative weight (the count as it was)."""
    if not cosine:
        _update(centers, counts, None, x, labels, deterministic, SCULLEY, 0.0, w=sample_weight)
        return
    k, d = centers.shape
    if x.shape[0] == 0 or k == 0:
        return
    work = centers.to(torch.float64)
    hit = torch.empty(k, dtype=torch.int8, device=x.device)  # every entry written by _update
    _update(work, counts, None, x, labels, deterministic, SCULLEY, 0.0, cosine=True,
            w=sample_weight, hit=hit)
    if interpreting(x):
        bk, bd, opts = pow2(k, 1, 1024), pow2(d, 16, 512), {}
    else:
        bk, bd, opts = 8, pow2(d, 16, 128), dict(num_warps=4)
    with device_guard(x):
        _renormalize_kernel[(triton.cdiv(k, bk),)](work, centers, hit, k, d,
                                                   BLOCK_K=bk, BLOCK_D=bd, **opts)


def minibatch_step_(centers, counts, x, deterministic=False, cosine=False,
                    sample_weight=None) -> torch.Tensor:
    """assign against the current centers, then minibatch_update_; returns the labels."""
    labels, _ = assign(x, centers, cosine)
    minibatch_update_(centers, counts, x, labels, deterministic, cosine, sample_weight)
    return labels


# Grid axes 1 and 2 (the problem of batched EMA problems) are limited to 65535 on CUDA GPUs.
_MAX_PROBLEMS = 65535


def ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps,
                deterministic=False, cosine=False, sample_weight=None) -> None:
    """The VQ-VAE EMA in place (module docstring; kmgan_ext/reference.py::ema_update_).

    Batched problems (centers (B, K, d), cluster_size (B, K), embed_sum (B, K, d), x
    (B, N, d), labels (B, N), sample_weight (B, N)): the launches of one problem, up to
    65535 problems a launch sequence."""
    if centers.dim() == 3 and centers.shape[0] > _MAX_PROBLEMS:
        for s in range(0, centers.shape[0], _MAX_PROBLEMS):
            part = slice(s, s + _MAX_PROBLEMS)
            ema_update_(centers[part], cluster_size[part], embed_sum[part], x[part], labels[part],
                        decay, eps, deterministic, cosine,
                        None if sample_weight is None else sample_weight[part])
        return
    if centers.shape[0] == 0 or centers.shape[-2] == 0:
        return
    _update(centers, cluster_size, embed_sum, x, labels, deterministic, EMA, float(decay), cosine,
            w=sample_weight)
    _ema_centers(centers, cluster_size, embed_sum, float(eps), cosine)
