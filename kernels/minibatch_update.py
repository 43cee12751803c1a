"""Center updates, Triton (DESIGN.md 4.2): Sculley's mini-batch k-means and the VQ-VAE EMA.

Both are "per-cluster sums S_k and counts m_k, then a per-cluster apply":

* Sculley (scikit-learn's MiniBatchKMeans step), for every k with m_k > 0:
  ``counts_k += m_k;  c_k += (S_k - m_k c_k) / counts_k``;
* EMA: ``c_k = decay c_k + (1 - decay) S_k / m_k`` for every k with m_k > 0.

Clusters without rows are never written (bitwise untouched, never NaN).

Small problems (K <= 64, N K d <= 2^22, e.g. the paper's batch of 64 with K = 10): one
program, one launch, no atomics, for both modes.

Fast mode (``deterministic=False``): one fill (sums and counts share a buffer), one
segmented-sum launch that adds float32 partials with ``tl.atomic_add`` (for K <= 64 each
program first reduces its rows per cluster with a one-hot ``tl.dot`` in IEEE float32, so a
program issues K x BLOCK_D atomics instead of BLOCK_N x BLOCK_D, and small K does not
serialise on a few addresses), then one apply launch. The order of the float additions
varies between runs, so the last bits may too.

Deterministic mode: rows are sorted by label outside the kernel (``torch.sort(stable=True)``),
then a single launch finds each cluster's segment by binary search, sums it in a fixed order
and applies the update: no float atomics, bitwise identical run to run. A cluster's rows are
summed by one program, so a cluster holding most of a huge batch is a serial loop.

Accumulation is float32 (float64 for float64 centers).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, div_rn, interpreting, midpoint, pow2, zeros_pair
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
def _segment_sum_kernel(
    x_ptr, labels_ptr, sums_ptr, m_ptr, N, K, D,
    ONEHOT: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """sums[l_i] += x_i and m[l_i] += 1 with atomics (grid: row blocks x column blocks)."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    lab = tl.load(labels_ptr + rows, mask=rmask, other=0)
    xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                 mask=rmask[:, None] & dmask[None, :], other=0.0).to(sums_ptr.dtype.element_ty)
    if ONEHOT:
        ks = tl.arange(0, KP)
        onehot = ((lab[None, :] == ks[:, None]) & rmask[None, :]).to(tl.float32)
        part = tl.dot(onehot, xt, input_precision="ieee")
        cnt = tl.sum(onehot, axis=1)
        hit = cnt > 0
        tl.atomic_add(sums_ptr + ks[:, None] * D + ds[None, :], part,
                      mask=hit[:, None] & dmask[None, :])
        tl.atomic_add(m_ptr + ks, cnt.to(tl.int32), mask=hit & (pid_d == 0))
    else:
        tl.atomic_add(sums_ptr + lab[:, None] * D + ds[None, :], xt,
                      mask=rmask[:, None] & dmask[None, :])
        tl.atomic_add(m_ptr + lab, 1, mask=rmask & (pid_d == 0))


@triton.jit
def _apply_rows(centers_ptr, ks, ds, hit, dmask, D, S, m_f, n_f, decay_hi, decay_lo,
                MODE: tl.constexpr):
    """Write the updated center chunk (ks x ds) from its sums S; rows without data untouched."""
    acc_t = S.dtype
    offs = ks[:, None].to(tl.int64) * D + ds[None, :]
    mm = hit[:, None] & dmask[None, :]
    c = tl.load(centers_ptr + offs, mask=mm, other=0.0).to(acc_t)
    if MODE == 0:
        new = c + div_rn(S - m_f[:, None] * c, n_f[:, None])
    else:
        # tl.cast: a float argument is a float32 scalar on a GPU, a Python float when interpreted.
        hi = tl.cast(decay_hi, acc_t)
        lo = tl.cast(decay_lo, acc_t)
        decay = hi + lo
        one_minus = (1.0 - hi) - lo
        new = decay * c + one_minus * div_rn(S, m_f[:, None])
    tl.store(centers_ptr + offs, new.to(centers_ptr.dtype.element_ty), mask=mm)


@triton.jit
def _bump_counts(counts_ptr, ks, kmask, m, ACC_T: tl.constexpr, MODE: tl.constexpr):
    """(hit, m_f, n_f) for clusters ks with m rows each; Sculley mode also adds m to counts.

    hit: clusters with rows (the only ones written). m_f: m, n_f: the new count (Sculley) or
    m (EMA), both in ACC_T and 1 where there are no rows, so no lane divides by 0.
    """
    hit = kmask & (m > 0)
    m_f = tl.where(hit, m.to(ACC_T), 1.0)
    n_f = m_f
    if MODE == 0:
        n_new = tl.load(counts_ptr + ks, mask=kmask, other=0) + m
        tl.store(counts_ptr + ks, n_new, mask=hit)
        n_f = tl.where(hit, n_new.to(ACC_T), 1.0)
    return hit, m_f, n_f


@triton.jit
def _apply_kernel(
    centers_ptr, counts_ptr, sums_ptr, m_ptr, K, D, decay_hi, decay_lo,
    MODE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The per-cluster update from the sums (fast mode); a program owns BLOCK_K whole rows."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    kmask = ks < K
    m = tl.load(m_ptr + ks, mask=kmask, other=0)
    hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, m, sums_ptr.dtype.element_ty, MODE)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        S = tl.load(sums_ptr + ks[:, None].to(tl.int64) * D + ds[None, :],
                    mask=hit[:, None] & dmask[None, :], other=0.0)
        _apply_rows(centers_ptr, ks, ds, hit, dmask, D, S, m_f, n_f, decay_hi, decay_lo, MODE)


@triton.jit
def _sorted_segment_kernel(
    centers_ptr, counts_ptr, x_ptr, order_ptr, slab_ptr, N, K, D, n_steps, decay_hi, decay_lo,
    ACC_T: tl.constexpr, MODE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Deterministic: segment sums over label-sorted rows in a fixed order, then the update."""
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
    hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, m, ACC_T, MODE)
    rl = tl.arange(0, BLOCK_R)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        acc = tl.zeros((BLOCK_K, BLOCK_R, BLOCK_D), ACC_T)
        for r0 in range(0, max_len, BLOCK_R):
            r = r0 + rl
            rm = r[None, :] < m[:, None]
            orig = tl.load(order_ptr + start[:, None] + r[None, :], mask=rm, other=0)
            acc += tl.load(x_ptr + orig[:, :, None] * D + ds[None, None, :],
                           mask=rm[:, :, None] & dmask[None, None, :], other=0.0).to(ACC_T)
        _apply_rows(centers_ptr, ks, ds, hit, dmask, D, tl.sum(acc, axis=1), m_f, n_f,
                    decay_hi, decay_lo, MODE)


@triton.jit
def _small_update_kernel(
    centers_ptr, counts_ptr, x_ptr, labels_ptr, N, K, D, decay_hi, decay_lo,
    ACC_T: tl.constexpr, MODE: tl.constexpr,
    KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Small problems in ONE program: one-hot segment sums in a fixed order, then the update.

    No atomics, no zero fill, no sort: a single launch, bitwise repeatable, used for both modes
    while N K d is small (the paper's N=64, K=10, d=100).
    """
    ks = tl.arange(0, KP)
    kmask = ks < K
    rl = tl.arange(0, BLOCK_N)
    cnt = tl.zeros((KP,), tl.int32)
    for r0 in range(0, N, BLOCK_N):
        rows = r0 + rl
        lab = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
        cnt += tl.sum((lab[None, :] == ks[:, None]).to(tl.int32), axis=1)
    hit, m_f, n_f = _bump_counts(counts_ptr, ks, kmask, cnt, ACC_T, MODE)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        acc = tl.zeros((KP, BLOCK_D), ACC_T)
        for r0 in range(0, N, BLOCK_N):
            rows = r0 + rl
            rm = rows < N
            lab = tl.load(labels_ptr + rows, mask=rm, other=-1)
            xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                         mask=rm[:, None] & dmask[None, :], other=0.0).to(ACC_T)
            onehot = (lab[None, :] == ks[:, None]).to(ACC_T)
            acc += tl.sum(onehot[:, :, None] * xt[None, :, :], axis=1)
        _apply_rows(centers_ptr, ks, ds, hit, dmask, D, acc, m_f, n_f, decay_hi, decay_lo, MODE)


def _split_decay(decay: float) -> tuple[float, float]:
    """decay as float32 hi + lo: Triton passes Python floats as float32, float64 needs more."""
    hi = float(torch.tensor(decay, dtype=torch.float32))
    return hi, float(torch.tensor(decay - hi, dtype=torch.float32))


def _update(centers, counts, x, labels, deterministic, mode, decay):
    n, d = x.shape
    k = centers.shape[0]
    if n == 0:
        return
    interp = interpreting(x)
    acc = acc_dtype(centers)
    dec_hi, dec_lo = _split_decay(decay)
    cnt = counts if counts is not None else torch.empty(1, dtype=torch.int64, device=x.device)
    acc_t = tl.float64 if acc == torch.float64 else tl.float32
    with device_guard(x):
        if k <= _SMALL_MAX_K and n * k * d <= _SMALL_MAX_WORK:
            kp = pow2(k, 16)
            if interp:
                bn, bd = pow2(n, 16, 64), pow2(d, 16, max(16, (1 << 20) // (kp * pow2(n, 16, 64))))
                opts = {}
            else:
                # KP x BLOCK_N x BLOCK_D = 8192 products per step: 64 registers a thread.
                bn, bd, opts = max(2, 256 // kp), 32, dict(num_warps=4)
            _small_update_kernel[(1,)](
                centers, cnt, x, labels, n, k, d, dec_hi, dec_lo, ACC_T=acc_t, MODE=mode,
                KP=kp, BLOCK_N=bn, BLOCK_D=bd, **opts)
            return
        if deterministic:
            slab, order = torch.sort(labels, stable=True)
            if interp:
                bk = pow2(k, 1, 256)
                br = 16
                bd = pow2(d, 16, pow2((1 << 20) // (bk * br), 16, 512))
                opts = {}
            else:
                bk, br, bd, opts = 4, 16, pow2(d, 16, 64), dict(num_warps=4)
            _sorted_segment_kernel[(triton.cdiv(k, bk),)](
                centers, cnt, x, order, slab, n, k, d, n.bit_length() + 1, dec_hi, dec_lo,
                ACC_T=acc_t, MODE=mode,
                BLOCK_K=bk, BLOCK_R=br, BLOCK_D=bd, **opts,
            )
            return
        sums, m = zeros_pair(k, d, acc, x.device)
        onehot = k <= _ONEHOT_MAX_K and acc == torch.float32
        if interp:
            bn, bd, opts = pow2(n, 16, 1024), pow2(d, 16, 512), {}
        else:
            bn, bd, opts = 64, pow2(d, 16, 128), dict(num_warps=4)
        # At least one column block: with d = 0 the programs of column block 0 still count
        # the rows (a zero-sized grid axis would run no program at all).
        _segment_sum_kernel[(triton.cdiv(n, bn), max(1, triton.cdiv(d, bd)))](
            x, labels, sums, m, n, k, d,
            ONEHOT=onehot, KP=pow2(k, 16), BLOCK_N=bn, BLOCK_D=bd, **opts,
        )
        if interp:
            bk, bd = pow2(k, 1, 1024), pow2(d, 16, 512)
        else:
            bk, bd = 8, pow2(d, 16, 128)
        _apply_kernel[(triton.cdiv(k, bk),)](
            centers, cnt, sums, m, k, d, dec_hi, dec_lo,
            MODE=mode, BLOCK_K=bk, BLOCK_D=bd, **opts,
        )


def minibatch_update_(centers, counts, x, labels, deterministic=False) -> None:
    """Sculley's step in place (module docstring); labels against the pre-update centers."""
    _update(centers, counts, x, labels, deterministic, SCULLEY, 0.0)


def minibatch_step_(centers, counts, x, deterministic=False) -> torch.Tensor:
    """assign against the current centers, then minibatch_update_; returns the labels."""
    labels, _ = assign(x, centers)
    _update(centers, counts, x, labels, deterministic, SCULLEY, 0.0)
    return labels


def ema_update_(centers, x, labels, decay, deterministic=False) -> None:
    """c_k = decay c_k + (1 - decay) mean_k for every cluster with rows, in place."""
    _update(centers, None, x, labels, deterministic, EMA, float(decay))
