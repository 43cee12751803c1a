"""The CPU kernels give the same bits for any thread count (DESIGN 4.2: "deterministic either
way"), on shapes large enough to be split across threads (kParallelElems = 2**15 elements per
task in csrc/cpu/common.h, ~4M multiply-adds per assign task): every op, forward and backward,
under torch.set_num_threads(1, 2, 3), with deterministic=False as well as True."""
from __future__ import annotations

import inspect

import pytest
import torch

import kmgan_ext as km

# KM-GAN's Eq. 4 (named km.kmgan_center_loss where km.center_loss is its deprecated alias).
CENTER_LOSS = getattr(km, "kmgan_center_loss", None) or km.center_loss

pytestmark = pytest.mark.skipif(km.available_backends()["cpu"] is not None, reason=str(km.available_backends()["cpu"]))

THREADS = (1, 2, 3)
N, D, K = 6000, 48, 40  # 288k elements: ~9 tasks of row work; 47 assign tiles


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g) * 3 + 1e3
    y = torch.randn(N // 2, D, generator=g) + 1e3
    c = x[torch.randperm(N, generator=g)[:K]].clone()
    return x, y, c


def _ema_update_(centers, x, labels, deterministic):
    if "cluster_size" in inspect.signature(km.ema_update_).parameters:
        size = torch.rand(K, generator=torch.Generator().manual_seed(1))
        embed = centers.clone()
        km.ema_update_(centers, size, embed, x, labels, decay=0.9, deterministic=deterministic, backend="cpu")
        return [centers, size, embed]
    km.ema_update_(centers, x, labels, 0.9, deterministic=deterministic, backend="cpu")
    return [centers]


def _all_outputs(deterministic):
    x, y, c = _inputs()
    x, y, cg = x.requires_grad_(), y.requires_grad_(), c.clone().requires_grad_()
    labels, dist2 = km.assign(x, cg, backend="cpu")
    pull = km.assigned_distance(x, labels, cg, "mean", backend="cpu")
    ly = km.assign(y.detach(), c, backend="cpu")[0]
    cl = CENTER_LOSS(x, labels, c, y, ly, c, backend="cpu")
    pl = km.pairwise_l1(x[:700], backend="cpu") + km.pairwise_l1(x[:700], y[:500], backend="cpu")
    t = km.kmgan_losses(x, y, c, c[: K // 2], reduction="fro", backend="cpu")
    outs = [labels, dist2, pull, cl, pl, t.loss_d, t.loss_g, t.loss_center]
    grads = torch.autograd.grad(
        dist2.sum() + pull + cl + pl + t.loss_d + 0.5 * t.loss_g + t.loss_center, [x, y, cg]
    )
    upd, counts = c.clone(), torch.arange(K)
    km.minibatch_update_(upd, counts, x.detach(), labels, deterministic=deterministic, backend="cpu")
    step = c.clone()
    step_labels = km.minibatch_step_(step, torch.zeros(K, dtype=torch.int64), y.detach(), deterministic=deterministic,
                                     backend="cpu")  # fmt: skip
    ema = _ema_update_(c.clone(), x.detach(), labels, deterministic)
    return [o.detach() for o in outs] + list(grads) + [upd, counts, step, step_labels] + ema + _sum_passes(
        deterministic)


def _sum_passes(deterministic):
    """The other passes that add rows into (K, d) sums split by columns across threads
    (common.h for_accumulator_blocks): float64 (compensated sums), metric="cosine" (rows
    normalised), sample weights, the cosine assignment's backward into the centers, and the
    float64 center loss's (d,) sum."""
    x, y, c = _inputs()
    labels = km.assign(x, c, backend="cpu")[0]
    ly = km.assign(y, c, backend="cpu")[0]
    g = torch.Generator().manual_seed(2)
    w = torch.rand(N, generator=g, dtype=torch.float64)
    outs = [CENTER_LOSS(x.double(), labels, c.double(), y.double(), ly, c.double(), backend="cpu")]
    for xx, cc, kw in ((x.double(), c.double(), {}), (x, c, {"metric": "cosine"}), (x, c, {"sample_weight": w}),
                       (x.double(), c.double(), {"sample_weight": w, "metric": "cosine"})):
        upd = cc.clone()
        counts = torch.zeros(K, dtype=torch.float64 if "sample_weight" in kw else torch.int64)
        km.minibatch_update_(upd, counts, xx, labels, deterministic=deterministic, backend="cpu", **kw)
        outs.append(upd)
    for dtype in (torch.float32, torch.float64):
        xg, cg = x.to(dtype).requires_grad_(), c.to(dtype).requires_grad_()
        d2 = km.assign(xg, cg, metric="cosine", backend="cpu")[1]
        outs += list(torch.autograd.grad((d2 * torch.linspace(0.5, 2.0, N, dtype=dtype)).sum(), [xg, cg]))
    return outs


@pytest.mark.parametrize("deterministic", [False, True])
def test_same_bits_for_any_thread_count(deterministic):
    before = torch.get_num_threads()
    try:
        runs = {}
        for n in THREADS:
            torch.set_num_threads(n)
            runs[n] = _all_outputs(deterministic)
    finally:
        torch.set_num_threads(before)
    for n in THREADS[1:]:
        for i, (a, b) in enumerate(zip(runs[THREADS[0]], runs[n])):
            assert torch.equal(a, b), f"output {i} differs between 1 and {n} threads"


def test_assign_few_centers_same_bits_for_any_thread_count():
    """K <= 12 takes the one-sweep float32 path (assign_small_k.cpp), split over rows in tasks of
    ~4M multiply-adds: 30,000 rows x 48 columns x 10 centers is ~3 tasks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30_000, 48, generator=g) * 3 + 1e3
    c = x[torch.randperm(30_000, generator=g)[:10]].clone()
    before = torch.get_num_threads()
    try:
        runs = {}
        for n in THREADS:
            torch.set_num_threads(n)
            runs[n] = km.assign(x, c, backend="cpu")
    finally:
        torch.set_num_threads(before)
    for n in THREADS[1:]:
        assert torch.equal(runs[1][0], runs[n][0]) and torch.equal(runs[1][1], runs[n][1]), f"1 vs {n} threads"
