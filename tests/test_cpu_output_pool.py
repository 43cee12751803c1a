"""The CPU gradients of x of 8 MB and more (center_loss and assigned_distance backward) come
from a cache of huge-page blocks that freed gradients return to (csrc/cpu/output_pool.cpp,
issue 15): a reused block must hold the new values only, a live gradient's memory is never
handed out again, and the next backward of the same size maps no fresh pages."""
import resource
import sys

import pytest
import torch

import kmgan_ext as km

# 8,192 x 256 float32 = 8 MB: the smallest pooled size. 16,384 rows = 16 MB.
N, D, K = 8192, 256, 64


def _center_loss_problem(seed, n=N):
    g = torch.Generator().manual_seed(seed)
    xr, xf = torch.randn(n, D, generator=g), 0.5 + torch.randn(n, D, generator=g)
    lr, lf = torch.randint(K, (n,), generator=g), torch.randint(K, (n,), generator=g)
    cr, cf = torch.randn(K, D, generator=g), torch.randn(K, D, generator=g)
    return xr, lr, cr, xf, lf, cf


def _leaves(problem):
    xr, lr, cr, xf, lf, cf = problem
    return xr.clone().requires_grad_(), lr, cr, xf.clone().requires_grad_(), lf, cf


def _center_loss_grads(problem, backend="cpu", leaves=None):
    xr, lr, cr, xf, lf, cf = leaves or _leaves(problem)
    return torch.autograd.grad(km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend=backend), [xr, xf])


def _assigned_distance_grad(seed, reduction, backend="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g).requires_grad_()
    labels = torch.randint(K, (N,), generator=g)
    centers = torch.randn(K, D, generator=g)
    return torch.autograd.grad(km.assigned_distance(x, labels, centers, reduction=reduction, backend=backend), x)[0]


def test_reused_blocks_hold_the_new_gradient():
    # The first gradients are freed into the cache; the second call's gradients reuse those
    # blocks and must equal the reference's for their own inputs (nothing of the first left).
    del_me = _center_loss_grads(_center_loss_problem(1))
    del del_me
    got = _center_loss_grads(_center_loss_problem(2))
    want = _center_loss_grads(_center_loss_problem(2), backend="reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    for reduction in ("fro", "mean", "sq_sum"):
        first = _assigned_distance_grad(3, reduction)
        del first
        got = _assigned_distance_grad(4, reduction)
        want = _assigned_distance_grad(4, reduction, backend="reference")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_live_gradients_never_share_memory():
    kept = _center_loss_grads(_center_loss_problem(5))
    copies = [g.clone() for g in kept]
    more = _center_loss_grads(_center_loss_problem(6)) + (_assigned_distance_grad(7, "fro"),)
    spans = [(g.data_ptr(), g.data_ptr() + g.nbytes) for g in kept + more]
    for i, (a0, a1) in enumerate(spans):
        for b0, b1 in spans[i + 1:]:
            assert a1 <= b0 or b1 <= a0, "two live gradients overlap"
    for g, c in zip(kept, copies):
        assert torch.equal(g, c), "a live gradient was overwritten"


def test_pooled_gradient_is_an_ordinary_tensor():
    gr, _ = _center_loss_grads(_center_loss_problem(8))
    assert gr.is_contiguous() and gr.device.type == "cpu" and gr.shape == (N, D)
    acc = gr.clone()
    gr += 1.0  # in place, as an optimizer or grad accumulation does
    torch.testing.assert_close(gr, acc + 1.0)
    assert torch.equal(gr.view(-1)[:5], (acc + 1.0).view(-1)[:5])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cache is Linux-only (posix_memalign, madvise)")
def test_next_backward_maps_no_fresh_pages():
    # A fresh 16 MB gradient pair faults in >= 16 pages (8 huge pages each side, or 4,096
    # small ones); from the cache, none. The margin covers the interpreter's own allocations.
    problem = _center_loss_problem(9, n=2 * N)
    leaves = _leaves(problem)
    _center_loss_grads(problem, leaves=leaves)  # warm: fills the cache with this size's blocks
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grads = _center_loss_grads(problem, leaves=leaves)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del grads
    assert faults < 16, f"{faults} minor page faults for a backward whose gradient blocks are cached"
