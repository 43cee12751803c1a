"""The KM-GAN loss block of one iteration, fused, Triton (docs/ops.md, KM-GAN
losses; README, The KM-GAN trainer; issue 4).

Forward, for the real batch x (N_r, d), the generated batch y (N_f, d), real centers C (K, d)
and fake centers C^ (K^, d)::

    l_i = argmin_k ||x_i - c_k||,  m_i = argmin_k ||y_i - c_k||,  m^_i = argmin_k ||y_i - c^_k||
    pull_real = ||x - C[l]||,  pull_fake = ||y - C[m]||       ("fro" | "mean" | "sq_sum")
    L_D = pull_real - pull_fake,  L_G = pull_fake
    L_center = || sum_k (c_k + S_k)/(1 + n_k) - sum_k (c^_k + S^_k)/(1 + n^_k) ||_1

with S_k, n_k the sum and number of real rows labelled k (S^, n^: generated rows by m^).

Launches (K, K^ <= 64, where a cluster's one-hot fits in registers):
* one program when the whole problem fits one CTA (the paper's 64 + 64 rows, d = 100,
  K = 10): it walks the row tiles, assigns, accumulates the pulls, counts and per-cluster
  sums in registers, and finishes Eq. 4 itself. ONE launch for the forward.
* otherwise one program per row tile writes its labels, its pull partial, its counts and
  per-cluster sums to a workspace, and a one-program finalize reduces them in a fixed order
  (deterministic, no atomics). Two launches.
* K or K^ above 64: the single ops' kernels composed (assign x3, assigned_distance x2,
  center_loss): correct, not fused.
Backward: ONE launch for both batches and all three upstream gradients (a missing one is 0).

Exactness of the labels: distances are formed from differences in float32 (no tensor cores:
at K = 10 the FMA units are not the bottleneck). Each computed distance is within a relative
tau = 2 (d + 4) 2^-24 of the exact one (differences, squares and any summation order, with a
factor 2 of margin), plus an absolute slack for underflow. A row whose best and any other
center are not separated by that window (a near tie, or an exact tie such as duplicated
centers) is re-scored in float64 from the raw inputs, ties to the lowest index. So labels
are the float64 argmin of the inputs, as km.assign guarantees. float64 inputs are computed in
float64 directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, div_rn, interpreting, pow2, sqrt_rn
from .assigned_distance import _row_sq_dist_f64

_U = 2.0**-24  # float32 unit roundoff
_SLACK = 2.0**-120  # per dimension: covers squares that underflow (|x - c| < 2^-63)
_MODES = {"fro": 0, "mean": 1, "sq_sum": 2}
# Largest cluster count whose one-hot (BLOCK_N x 64) the fused kernels keep in registers.
FUSED_MAX_K = 64
# One-program forward on a GPU: rows of both batches together, and the register tile of the
# per-cluster sums (clusters x d, per side). The row limit is not from a timing (no GPU here):
# one CTA walks the rows serially, so past a few hundred rows the two-launch tiled path should
# win; bench/bench_train_step.py's loss block on a GPU is where to set it.
SINGLE_MAX_ROWS = 1024
SINGLE_MAX_SUM_TILE = 16 * 128  # the configuration ptxas was checked at (below)
# Warps per GPU launch: ptxas -v for sm_90 (Triton 3.8 PTX, float32, d = 128 tiles) reports
# 255 registers and ~2 KB of spills with 4 warps for the one-program forward (32-row tiles) and
# the row-tile forward (64 rows), none with 8 (250 / 248 registers); the backward spills 88 B
# with 4 warps, none with 8 (184 registers). Not timed: no GPU was available.


@triton.jit
def _sq_dists(x_ptr, rows, rmask, c_ptr, K, D, ACC_T: tl.constexpr, KP: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BLOCK_N, KP) ||x_row - c_k||^2 from differences in ACC_T; +inf past K."""
    ks = tl.arange(0, KP)
    dcol = tl.arange(0, BLOCK_D)
    e = tl.zeros((BLOCK_N, KP), ACC_T)
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + dcol
        dm = ds < D
        xt = tl.load(xrow + ds[None, :], mask=rmask[:, None] & dm[None, :], other=0.0).to(ACC_T)
        for k in range(0, K):
            ck = tl.load(c_ptr + k * D + ds, mask=dm, other=0.0).to(ACC_T)
            diff = xt - ck[None, :]
            e += tl.where(ks[None, :] == k, tl.sum(diff * diff, axis=1)[:, None], 0.0)
    return tl.where(ks[None, :] < K, e, float("inf"))


@triton.jit
def _argmin_nan(e, K, KP: tl.constexpr):
    """(argmin, min) per row of e (BLOCK_N, KP; +inf past K), torch.argmin's rules: ties to
    the lowest index; a NaN entry wins (the lowest NaN index) and the minimum is NaN."""
    ks = tl.arange(0, KP)
    isnan = e != e
    first_nan = tl.min(tl.where(isnan, ks[None, :], KP), axis=1)
    e = tl.where(isnan, float("inf"), e)
    best = tl.min(e, axis=1)
    lab = tl.min(tl.where(e == best[:, None], ks[None, :], KP), axis=1)
    has_nan = first_nan < K
    return tl.where(has_nan, first_nan, lab), tl.where(has_nan, float("nan"), best)


@triton.jit
def _nearest(x_ptr, rows, rmask, c_ptr, K, D, tau, slack, ACC_T: tl.constexpr,
             GUARD: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(label, squared distance as float64) of each row: the float64 argmin, lowest index on
    ties, and torch.argmin's NaN rule (contract 1: any NaN distance -> the lowest such k, NaN).
    The distance stays float64: a float32 row's may pass 3.4e38 while its pull fits."""
    ks = tl.arange(0, KP)
    e = _sq_dists(x_ptr, rows, rmask, c_ptr, K, D, ACC_T, KP, BLOCK_N, BLOCK_D)
    lab, best = _argmin_nan(e, K, KP)
    dist = best.to(tl.float64)
    if GUARD:
        # Another center whose distance could be <= the best's once rounding is undone.
        hi = best * (1.0 + tau) + slack
        near = tl.sum((e * (1.0 - tau) <= hi[:, None]).to(tl.int32), axis=1)
        # Non-finite float32 distances (NaN/Inf inputs, or squares past ~3.4e38, contract
        # 2) are decided in float64 too: exact labels, dist2 = the float64 minimum rounded.
        bad = tl.sum(((ks[None, :] < K) & ((e * 0.0) != 0.0)).to(tl.int32), axis=1) > 0
        amb = rmask & ((near >= 2) | bad)
        if tl.sum(amb.to(tl.int32), axis=0) > 0:
            e64 = _sq_dists(x_ptr, rows, amb, c_ptr, K, D, tl.float64, KP, BLOCK_N, BLOCK_D)
            l64, b64 = _argmin_nan(e64, K, KP)
            lab = tl.where(amb, l64, lab)
            dist = tl.where(amb, b64, dist)
    # A row with NaN distances matches no minimum: give it a valid label.
    lab = tl.where(lab < K, lab, 0)
    return lab, dist


@triton.jit
def _pull_term(dist, rmask, MODE: tl.constexpr):
    """Per-row contribution to a pull: r_i^2 ("fro", "sq_sum") or r_i ("mean"), 0 off rows."""
    if MODE == 1:
        dist = sqrt_rn(dist)
    return tl.where(rmask, dist, 0.0)


@triton.jit
def _finish_pull(total, n_div, MODE: tl.constexpr):
    if MODE == 0:
        total = sqrt_rn(total)
    elif MODE == 1:
        total = div_rn(total, n_div)
    else:
        total = 0.5 * total
    return total


@triton.jit
def _count(lab, rmask, KP: tl.constexpr):
    ks = tl.arange(0, KP)
    return tl.sum(((lab[:, None] == ks[None, :]) & rmask[:, None]).to(tl.int32), axis=0)


@triton.jit
def _add_cluster_sums(s, x_ptr, rows, rmask, lab, K, D, ACC_T: tl.constexpr, KP: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """s (KP, BLOCK_D, float64) += this tile's per-label sums, in float64 (contract 3)."""
    ks = tl.arange(0, KP)
    ds = tl.arange(0, BLOCK_D)
    dm = ds < D
    xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                 mask=rmask[:, None] & dm[None, :], other=0.0).to(ACC_T)
    for k in range(0, K):
        sk = tl.sum(tl.where((rmask & (lab == k))[:, None], xt, 0.0).to(tl.float64), axis=0)
        s += tl.where(ks[:, None] == k, sk[None, :], 0.0)
    return s


@triton.jit
def _side_mean(c_ptr, s, n, K, D, ACC_T: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr,
               d0):
    """u = sum_k (c_k + S_k) / (1 + n_k) on columns d0 + [0, BLOCK_D) (Eq. 4, one side)."""
    ks = tl.arange(0, KP)
    ds = d0 + tl.arange(0, BLOCK_D)
    m2 = (ks < K)[:, None] & (ds < D)[None, :]
    ct = tl.load(c_ptr + ks[:, None].to(tl.int64) * D + ds[None, :], mask=m2, other=0.0).to(ACC_T)
    return tl.sum(tl.where(m2, div_rn(ct + s, (1.0 + n.to(ACC_T))[:, None]), 0.0), axis=0)


@triton.jit
def _store_results(loss_d_ptr, loss_g_ptr, loss_c_ptr, pulls_ptr, cnt_r_ptr, cnt_f_ptr,
                   pr, pf, lc, n_r, n_f, Kr, Kf, KPR: tl.constexpr, KPF: tl.constexpr):
    out_t = pulls_ptr.dtype.element_ty
    # L_D is the difference of the pulls as returned (rounded to out_t), as the reference
    # forms it: a pull past float32's range is inf there, and so is L_D.
    pr = pr.to(out_t)
    pf = pf.to(out_t)
    tl.store(pulls_ptr, pr)
    tl.store(pulls_ptr + 1, pf)
    tl.store(loss_d_ptr, (pr.to(tl.float64) - pf.to(tl.float64)).to(out_t))
    tl.store(loss_g_ptr, pf)
    tl.store(loss_c_ptr, lc.to(out_t))
    ksr = tl.arange(0, KPR)
    ksf = tl.arange(0, KPF)
    tl.store(cnt_r_ptr + ksr, n_r.to(tl.int64), mask=ksr < Kr)
    tl.store(cnt_f_ptr + ksf, n_f.to(tl.int64), mask=ksf < Kf)


@triton.jit
def _fwd_single_kernel(
    fr_ptr, ff_ptr, cr_ptr, cf_ptr, lr_ptr, lf_ptr, lh_ptr,
    loss_d_ptr, loss_g_ptr, loss_c_ptr, pulls_ptr, udiff_ptr, cnt_r_ptr, cnt_f_ptr,
    Nr, Nf, Kr, Kf, D, div_r, div_f, tau, slack,
    MODE: tl.constexpr, ACC_T: tl.constexpr, GUARD: tl.constexpr,
    KPR: tl.constexpr, KPF: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The whole forward in one program (d <= BLOCK_D): see the module docstring."""
    lane = tl.arange(0, BLOCK_N)
    # Row-tile totals in ACC_T, summed over tiles in float64 (contract 3).
    s_r = tl.zeros((KPR, BLOCK_D), tl.float64)
    s_f = tl.zeros((KPF, BLOCK_D), tl.float64)
    n_r = tl.zeros((KPR,), tl.int32)
    n_f = tl.zeros((KPF,), tl.int32)
    p_r = tl.zeros((1,), tl.float64)
    p_f = tl.zeros((1,), tl.float64)
    for r0 in range(0, Nr, BLOCK_N):
        rows = r0 + lane
        rmask = rows < Nr
        lab, dist = _nearest(fr_ptr, rows, rmask, cr_ptr, Kr, D, tau, slack, ACC_T, GUARD, KPR,
                             BLOCK_N, BLOCK_D)
        tl.store(lr_ptr + rows, lab.to(tl.int64), mask=rmask)
        p_r += tl.sum(_pull_term(dist, rmask, MODE).to(tl.float64), axis=0)
        n_r += _count(lab, rmask, KPR)
        s_r = _add_cluster_sums(s_r, fr_ptr, rows, rmask, lab, Kr, D, ACC_T, KPR, BLOCK_D)
    for r0 in range(0, Nf, BLOCK_N):
        rows = r0 + lane
        rmask = rows < Nf
        lab, dist = _nearest(ff_ptr, rows, rmask, cr_ptr, Kr, D, tau, slack, ACC_T, GUARD, KPR,
                             BLOCK_N, BLOCK_D)
        tl.store(lf_ptr + rows, lab.to(tl.int64), mask=rmask)
        p_f += tl.sum(_pull_term(dist, rmask, MODE).to(tl.float64), axis=0)
        lh, _ = _nearest(ff_ptr, rows, rmask, cf_ptr, Kf, D, tau, slack, ACC_T, GUARD, KPF,
                         BLOCK_N, BLOCK_D)
        tl.store(lh_ptr + rows, lh.to(tl.int64), mask=rmask)
        n_f += _count(lh, rmask, KPF)
        s_f = _add_cluster_sums(s_f, ff_ptr, rows, rmask, lh, Kf, D, ACC_T, KPF, BLOCK_D)
    u_r = _side_mean(cr_ptr, s_r, n_r, Kr, D, ACC_T, KPR, BLOCK_D, 0)
    u_f = _side_mean(cf_ptr, s_f, n_f, Kf, D, ACC_T, KPF, BLOCK_D, 0)
    ds = tl.arange(0, BLOCK_D)
    diff = tl.where(ds < D, u_r - u_f, 0.0).to(ACC_T)
    tl.store(udiff_ptr + ds, diff, mask=ds < D)
    pr = _finish_pull(tl.sum(p_r, axis=0), div_r, MODE)
    pf = _finish_pull(tl.sum(p_f, axis=0), div_f, MODE)
    _store_results(loss_d_ptr, loss_g_ptr, loss_c_ptr, pulls_ptr, cnt_r_ptr, cnt_f_ptr,
                   pr, pf, tl.sum(tl.abs(diff), axis=0), n_r, n_f, Kr, Kf, KPR, KPF)


@triton.jit
def _tile_partials(x_ptr, rows, rmask, lab, dist, K, D, pid, pull_ptr, cnt_ptr, sum_ptr,
                   MODE: tl.constexpr, ACC_T: tl.constexpr, KP: tl.constexpr, KPM: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    """This tile's pull partial, counts and per-cluster sums into slot ``pid``."""
    # Tile totals summed and stored in float64 (they may pass float32's range: contract 2).
    tl.store(pull_ptr + pid, tl.sum(_pull_term(dist, rmask, MODE).to(tl.float64), axis=0))
    ks = tl.arange(0, KP)
    slot = pid.to(tl.int64) * KPM
    tl.store(cnt_ptr + slot + ks, _count(lab, rmask, KP))
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dm = ds < D
        xt = tl.load(xrow + ds[None, :], mask=rmask[:, None] & dm[None, :], other=0.0).to(ACC_T)
        for k in range(0, K):
            sk = tl.sum(tl.where((rmask & (lab == k))[:, None], xt, 0.0).to(tl.float64), axis=0)
            tl.store(sum_ptr + (slot + k) * D + ds, sk, mask=dm)


@triton.jit
def _fwd_tiles_kernel(
    fr_ptr, ff_ptr, cr_ptr, cf_ptr, lr_ptr, lf_ptr, lh_ptr, pull_ptr, cnt_ptr, sum_ptr,
    Nr, Nf, Kr, Kf, D, n_tiles_r, tau, slack,
    MODE: tl.constexpr, ACC_T: tl.constexpr, GUARD: tl.constexpr, KPR: tl.constexpr,
    KPF: tl.constexpr, KPM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One row tile of the real batch (pid < n_tiles_r) or of the generated batch."""
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK_N)
    if pid < n_tiles_r:
        rows = pid * BLOCK_N + lane
        rmask = rows < Nr
        lab, dist = _nearest(fr_ptr, rows, rmask, cr_ptr, Kr, D, tau, slack, ACC_T, GUARD, KPR,
                             BLOCK_N, BLOCK_D)
        tl.store(lr_ptr + rows, lab.to(tl.int64), mask=rmask)
        _tile_partials(fr_ptr, rows, rmask, lab, dist, Kr, D, pid, pull_ptr, cnt_ptr, sum_ptr,
                       MODE, ACC_T, KPR, KPM, BLOCK_D)
    else:
        rows = (pid - n_tiles_r) * BLOCK_N + lane
        rmask = rows < Nf
        lab, dist = _nearest(ff_ptr, rows, rmask, cr_ptr, Kr, D, tau, slack, ACC_T, GUARD, KPR,
                             BLOCK_N, BLOCK_D)
        tl.store(lf_ptr + rows, lab.to(tl.int64), mask=rmask)
        lh, _ = _nearest(ff_ptr, rows, rmask, cf_ptr, Kf, D, tau, slack, ACC_T, GUARD, KPF,
                         BLOCK_N, BLOCK_D)
        tl.store(lh_ptr + rows, lh.to(tl.int64), mask=rmask)
        _tile_partials(ff_ptr, rows, rmask, lh, dist, Kf, D, pid, pull_ptr, cnt_ptr, sum_ptr,
                       MODE, ACC_T, KPF, KPM, BLOCK_D)


@triton.jit
def _side_partials(first, n_tiles, pull_ptr, cnt_ptr, K, KP: tl.constexpr, KPM: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    """(sum of the pull partials, counts) of tiles [first, first + n_tiles), in tile order."""
    pl = tl.arange(0, BLOCK_P)
    ks = tl.arange(0, KP)
    pv = tl.zeros((BLOCK_P,), tl.float64)
    for p0 in range(0, n_tiles, BLOCK_P):
        pv += tl.load(pull_ptr + first + p0 + pl, mask=p0 + pl < n_tiles, other=0.0).to(tl.float64)
    n = tl.zeros((KP,), tl.int32)
    for p in range(first, first + n_tiles):
        n += tl.load(cnt_ptr + p * KPM + ks, mask=ks < K, other=0)
    return tl.sum(pv, axis=0), n


@triton.jit
def _side_sums(first, n_tiles, sum_ptr, K, D, d0, ACC_T: tl.constexpr, KP: tl.constexpr,
               KPM: tl.constexpr, BLOCK_D: tl.constexpr):
    ks = tl.arange(0, KP)
    ks64 = ks.to(tl.int64)  # (tile, cluster) rows of D values: int64 offsets
    ds = d0 + tl.arange(0, BLOCK_D)
    m2 = (ks < K)[:, None] & (ds < D)[None, :]
    s = tl.zeros((KP, BLOCK_D), tl.float64)  # tile totals summed in float64 (contract 3)
    for p in range(first, first + n_tiles):
        s += tl.load(sum_ptr + (p * KPM + ks64[:, None]) * D + ds[None, :], mask=m2,
                     other=0.0).to(tl.float64)
    return s


@triton.jit
def _fwd_finalize_kernel(
    cr_ptr, cf_ptr, pull_ptr, cnt_ptr, sum_ptr,
    loss_d_ptr, loss_g_ptr, loss_c_ptr, pulls_ptr, udiff_ptr, cnt_r_ptr, cnt_f_ptr,
    Kr, Kf, D, n_tiles_r, n_tiles_f, div_r, div_f,
    MODE: tl.constexpr, ACC_T: tl.constexpr, KPR: tl.constexpr, KPF: tl.constexpr,
    KPM: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Reduce the tiles' partials in tile order and finish Eq. 4-6 (one program)."""
    tot_r, n_r = _side_partials(0, n_tiles_r, pull_ptr, cnt_ptr, Kr, KPR, KPM, BLOCK_P)
    tot_f, n_f = _side_partials(n_tiles_r, n_tiles_f, pull_ptr, cnt_ptr, Kf, KPF, KPM, BLOCK_P)
    lc = tl.zeros((BLOCK_D,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        s_r = _side_sums(0, n_tiles_r, sum_ptr, Kr, D, d0, ACC_T, KPR, KPM, BLOCK_D)
        s_f = _side_sums(n_tiles_r, n_tiles_f, sum_ptr, Kf, D, d0, ACC_T, KPF, KPM, BLOCK_D)
        u_r = _side_mean(cr_ptr, s_r, n_r, Kr, D, ACC_T, KPR, BLOCK_D, d0)
        u_f = _side_mean(cf_ptr, s_f, n_f, Kf, D, ACC_T, KPF, BLOCK_D, d0)
        ds = d0 + tl.arange(0, BLOCK_D)
        diff = tl.where(ds < D, u_r - u_f, 0.0).to(ACC_T)
        tl.store(udiff_ptr + ds, diff, mask=ds < D)
        lc += tl.abs(diff).to(tl.float64)
    pr = _finish_pull(tot_r, div_r, MODE)
    pf = _finish_pull(tot_f, div_f, MODE)
    _store_results(loss_d_ptr, loss_g_ptr, loss_c_ptr, pulls_ptr, cnt_r_ptr, cnt_f_ptr,
                   pr, pf, tl.sum(lc, axis=0), n_r, n_f, Kr, Kf, KPR, KPF)


@triton.jit
def _bwd_side(g_pull, pull, g_c, x_ptr, c_ptr, l_ptr, lc_ptr, cnt_ptr, udiff_ptr, out_ptr,
              rows, rmask, n_div, D, MODE: tl.constexpr, ACC_T: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out_i = g_pull d pull / d x_i + g_c sign(u_diff) / (1 + n[lc_i]) for this tile's rows.
    In float64, rounded once (contract 2): a float32 difference near float32 max overflows, and
    a "mean" scale 1 / (N r_i) past 1e38 is subnormal in float32."""
    # "+ zeros": g_pull and g_c may be the constant 0.0 of a missing upstream gradient
    zero = tl.zeros((BLOCK_N,), tl.float64)
    g_pull = g_pull + zero
    g_c = g_c + zero
    pull = pull.to(tl.float64)
    lab = tl.load(l_ptr + rows, mask=rmask, other=0)
    labc = tl.load(lc_ptr + rows, mask=rmask, other=0)
    w = g_c / (1.0 + tl.load(cnt_ptr + labc, mask=rmask, other=0).to(tl.float64))
    xrow = x_ptr + rows[:, None].to(tl.int64) * D
    crow = c_ptr + lab[:, None] * D
    if MODE == 0:
        scale = tl.zeros((BLOCK_N,), tl.float64) + tl.where(pull > 0, g_pull / tl.where(pull > 0, pull, 1.0), 0.0)
    elif MODE == 1:
        r = tl.sqrt(_row_sq_dist_f64(xrow, crow, rmask, D, ACC_T, BLOCK_N, BLOCK_D))
        scale = tl.where(r > 0, g_pull / n_div / tl.where(r > 0, r, 1.0), 0.0)
    else:
        scale = tl.zeros((BLOCK_N,), tl.float64) + g_pull
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dm = ds < D
        m2 = rmask[:, None] & dm[None, :]
        diff = (tl.load(xrow + ds[None, :], mask=m2, other=0.0).to(tl.float64)
                - tl.load(crow + ds[None, :], mask=m2, other=0.0).to(tl.float64))
        ud = tl.load(udiff_ptr + ds, mask=dm, other=0.0).to(ACC_T)
        sgn = tl.where(ud > 0, 1.0, tl.where(ud < 0, -1.0, 0.0)).to(tl.float64)
        g = diff * scale[:, None] + w[:, None] * sgn[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * D + ds[None, :],
                 g.to(ACC_T).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_kernel(
    gd_ptr, gg_ptr, gc_ptr, fr_ptr, ff_ptr, cr_ptr, lr_ptr, lf_ptr, lh_ptr, pulls_ptr, udiff_ptr,
    cnt_r_ptr, cnt_f_ptr, gr_ptr, gf_ptr, Nr, Nf, D, n_tiles_r, div_r, div_f,
    HAS_GD: tl.constexpr, HAS_GG: tl.constexpr, HAS_GC: tl.constexpr, MODE: tl.constexpr,
    ACC_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients of g_d L_D + g_g L_G + g_c L_center for one row tile of either batch."""
    # A missing upstream gradient (HAS_* False) counts 0; its pointer is a dummy, never read.
    gd = 0.0
    gg = 0.0
    gc = 0.0
    if HAS_GD:
        gd = tl.load(gd_ptr).to(ACC_T)
    if HAS_GG:
        gg = tl.load(gg_ptr).to(ACC_T)
    if HAS_GC:
        gc = tl.load(gc_ptr).to(ACC_T)
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK_N)
    if pid < n_tiles_r:
        rows = pid * BLOCK_N + lane
        _bwd_side(gd, tl.load(pulls_ptr).to(ACC_T), gc, fr_ptr, cr_ptr, lr_ptr, lr_ptr, cnt_r_ptr,
                  udiff_ptr, gr_ptr, rows, rows < Nr, div_r, D, MODE, ACC_T, BLOCK_N, BLOCK_D)
    else:
        rows = (pid - n_tiles_r) * BLOCK_N + lane
        _bwd_side(gg - gd, tl.load(pulls_ptr + 1).to(ACC_T), -gc, ff_ptr, cr_ptr, lf_ptr, lh_ptr,
                  cnt_f_ptr, udiff_ptr, gf_ptr, rows, rows < Nf, div_f, D, MODE, ACC_T, BLOCK_N,
                  BLOCK_D)


def _tl_acc(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _guard_args(x: torch.Tensor, d: int) -> dict:
    # float64 inputs are computed in float64: no float32 window to undo.
    return dict(tau=2.0 * (d + 4) * _U, slack=max(1, d) * _SLACK, GUARD=x.dtype != torch.float64)


def _use_single(nr: int, nf: int, kpr: int, kpf: int, block_d: int, d: int, interp: bool) -> bool:
    if d > block_d:
        return False
    if interp:  # the interpreter pays per program and per op, not per register
        return True
    return nr + nf <= SINGLE_MAX_ROWS and max(kpr, kpf) * block_d <= SINGLE_MAX_SUM_TILE


def kmgan_losses(f_real, f_fake, centers_real, centers_fake, reduction):
    """Backend interface (see kmgan_ext/reference.py::kmgan_losses)."""
    nr, d = f_real.shape
    nf = f_fake.shape[0]
    kr, kf = centers_real.shape[0], centers_fake.shape[0]
    if max(kr, kf) > FUSED_MAX_K:
        return _composed(f_real, f_fake, centers_real, centers_fake, reduction)
    dev = f_real.device
    acc = acc_dtype(f_real)
    i64 = dict(dtype=torch.int64, device=dev)
    lr, lf, lh = torch.empty(nr, **i64), torch.empty(nf, **i64), torch.empty(nf, **i64)
    loss_d, loss_g, loss_c = (torch.empty((), dtype=acc, device=dev) for _ in range(3))
    pulls = torch.empty(2, dtype=acc, device=dev)
    u_diff = torch.empty(d, dtype=acc, device=dev)
    cnt_r, cnt_f = torch.empty(kr, **i64), torch.empty(kf, **i64)
    outs = (loss_d, loss_g, loss_c, lr, lf, lh, pulls, u_diff, cnt_r, cnt_f)
    interp = interpreting(f_real)
    kpr, kpf = pow2(kr, 2), pow2(kf, 2)
    mode = _MODES[reduction]
    div_r, div_f = max(1, nr), max(1, nf)
    common = dict(MODE=mode, ACC_T=_tl_acc(f_real), KPR=kpr, KPF=kpf)
    single_d = pow2(d, 16, 1024 if interp else 128)
    with device_guard(f_real):
        if _use_single(nr, nf, kpr, kpf, single_d, d, interp):
            bn = pow2(max(nr, nf), 16, max(16, (1 << 18) // single_d)) if interp else 32
            _fwd_single_kernel[(1,)](
                f_real, f_fake, centers_real, centers_fake, lr, lf, lh, loss_d, loss_g, loss_c,
                pulls, u_diff, cnt_r, cnt_f, nr, nf, kr, kf, d, div_r, div_f,
                **_guard_args(f_real, d), **common, BLOCK_N=bn, BLOCK_D=single_d,
                **({} if interp else dict(num_warps=8)),
            )
            return outs
        if interp:
            bd = pow2(d, 16, 1024)
            bn, opts = pow2(max(nr, nf), 16, max(16, (1 << 18) // bd)), {}
        else:
            bn, bd, opts = 64, pow2(d, 16, 64), dict(num_warps=8)
        tr, tf = triton.cdiv(nr, bn), triton.cdiv(nf, bn)
        kpm = max(kpr, kpf)
        # float64 workspaces: a float32 tile's pull or cluster sum may pass 3.4e38.
        part_pull = torch.empty(tr + tf, dtype=torch.float64, device=dev)
        part_cnt = torch.empty((tr + tf) * kpm, dtype=torch.int32, device=dev)
        part_sum = torch.empty((tr + tf) * kpm * d, dtype=torch.float64, device=dev)
        if tr + tf:
            _fwd_tiles_kernel[(tr + tf,)](
                f_real, f_fake, centers_real, centers_fake, lr, lf, lh, part_pull, part_cnt,
                part_sum, nr, nf, kr, kf, d, tr, **_guard_args(f_real, d), **common, KPM=kpm,
                BLOCK_N=bn, BLOCK_D=bd, **opts,
            )
        _fwd_finalize_kernel[(1,)](
            centers_real, centers_fake, part_pull, part_cnt, part_sum, loss_d, loss_g, loss_c,
            pulls, u_diff, cnt_r, cnt_f, kr, kf, d, tr, tf, div_r, div_f, **common, KPM=kpm,
            BLOCK_P=pow2(tr + tf, 16, 1024), BLOCK_D=bd, **({} if interp else dict(num_warps=4)),
        )
    return outs


def _composed(f_real, f_fake, centers_real, centers_fake, reduction):
    """K above FUSED_MAX_K: the single ops' kernels, one after the other."""
    from .assign import assign
    from .assigned_distance import assigned_distance
    from .center_loss import center_loss_forward

    lr, _ = assign(f_real, centers_real)
    lf, _ = assign(f_fake, centers_real)
    lh, _ = assign(f_fake, centers_fake)
    pr = assigned_distance(f_real, lr, centers_real, reduction)
    pf = assigned_distance(f_fake, lf, centers_real, reduction)
    loss_c, u_diff, cnt_r, cnt_f = center_loss_forward(f_real, lr, centers_real, f_fake, lh, centers_fake)
    return pr - pf, pf, loss_c, lr, lf, lh, torch.stack([pr, pf]), u_diff, cnt_r, cnt_f


def kmgan_losses_backward(grad_d, grad_g, grad_center, f_real, f_fake, centers_real, labels_real,
                          labels_fake, labels_fake_hat, pulls, u_diff, counts_real, counts_fake,
                          reduction):
    """(grad_f_real, grad_f_fake) in one launch; a None upstream gradient counts as 0."""
    nr, d = f_real.shape
    nf = f_fake.shape[0]
    gr = torch.empty_like(f_real)
    gf = torch.empty_like(f_fake)
    if nr + nf == 0 or d == 0:
        return gr, gf
    if interpreting(f_real):
        bd = pow2(d, 16, 1024)
        bn, opts = pow2(max(nr, nf), 16, max(16, (1 << 20) // bd)), {}
    else:
        bn, bd, opts = 32, pow2(d, 16, 128), dict(num_warps=8)
    tr, tf = triton.cdiv(nr, bn), triton.cdiv(nf, bn)
    grads = [g if g is not None else pulls for g in (grad_d, grad_g, grad_center)]
    with device_guard(f_real):
        _bwd_kernel[(tr + tf,)](
            *grads, f_real, f_fake, centers_real, labels_real, labels_fake, labels_fake_hat, pulls,
            u_diff, counts_real, counts_fake, gr, gf, nr, nf, d, tr, max(1, nr), max(1, nf),
            HAS_GD=grad_d is not None, HAS_GG=grad_g is not None,
            HAS_GC=grad_center is not None, MODE=_MODES[reduction], ACC_T=_tl_acc(f_real),
            BLOCK_N=bn, BLOCK_D=bd, **opts,
        )
    return gr, gf
