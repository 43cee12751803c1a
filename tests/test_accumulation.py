"""Sums whose error does not grow with N (DESIGN.md 4.2, contract 3; issue 16 item 1).

A float32 running sum of 10^5 rows at offset 1e4 drifts by ~7 standard deviations of the mean
(9992.59 for a true 9999.9995; -443 at offset 1e6). Every kernel that sums rows per cluster
(the updates, the center gradients, Eq. 4's u) must match the float64 reference to a few ulps
of the result, in fast and deterministic modes.
"""
import os

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import backend_params

ULPS = 4


# The Triton interpreter runs ~1 s per 10^4 rows here: on CPU tensors it gets 3 * 10^4 rows
# (a float32 running sum still drifts ~90 ulps at offset 1e4), unless KMGAN_EXT_TEST_FULL=1
# asks for the full sizes (a blocked float32 sum that passes at 3 * 10^4 rows failed the
# 10^5-row, offset-1e6 case).
INTERPRETER_ROWS = None if os.environ.get("KMGAN_EXT_TEST_FULL") == "1" else 30_000


def _n(n, device, backend):
    # The Triton interpreter and the CUDA-on-CPU harness run 10^5 rows in 5-15 s per case.
    interpreted = backend in ("triton", "cuda_emulated") and device == "cpu"
    return min(n, INTERPRETER_ROWS) if interpreted and INTERPRETER_ROWS else n


def _far_rows(n, offset, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (offset + torch.randn(n, d, generator=g, dtype=torch.float64)).float()


def assert_ulps(got, want, ulps=ULPS):
    """|got - want| <= ulps float32 ulps of want (want: the float64 reference's value)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    ulp = torch.finfo(torch.float32).eps * want.abs().clamp_min(torch.finfo(torch.float32).tiny)
    err = (got - want).abs()
    assert bool((err <= ulps * ulp).all()), f"error {float((err / ulp).max()):.1f} ulps: {got.flatten()[:4]} vs {want.flatten()[:4]}"


CASES = [(100_000, 1e4), (100_000, 1e6), (1_000_000, 1e4)]


@pytest.mark.parametrize("n,offset", CASES)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_step_mean_of_far_rows(device, backend, deterministic, n, offset):
    """The issue's reproducer: one cluster, fresh counts, so the new center is the batch mean."""
    if backend in ("triton", "cuda_emulated") and device == "cpu" and n > 100_000 and INTERPRETER_ROWS:
        pytest.skip(f"{backend} on CPU: the 10^5-row cases cover it (at 3 * 10^4 rows)")
    x = _far_rows(_n(n, device, backend), offset)
    c, cnt = torch.tensor([[offset]]), torch.zeros(1, dtype=torch.int64)
    want_c, want_n = c.clone(), cnt.clone()
    reference.minibatch_step_(want_c, want_n, x)
    assert_ulps(want_c, x.double().mean(0, keepdim=True), 1)  # the reference is the true mean
    c, cnt = c.to(device), cnt.to(device)
    km.minibatch_step_(c, cnt, x.to(device), deterministic=deterministic, backend=backend)
    assert int(cnt) == x.shape[0]
    assert_ulps(c, want_c)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_update_far_rows_several_clusters(device, backend, deterministic):
    x = _far_rows(_n(200_000, device, backend), 1e4, d=3, seed=1)
    labels = torch.arange(x.shape[0]) % 3
    c = torch.full((3, 3), 1e4)
    cnt = torch.tensor([5, 0, 1_000_000])
    want_c, want_n = c.clone(), cnt.clone()
    reference.minibatch_update_(want_c, want_n, x, labels)
    c, cnt = c.to(device), cnt.to(device)
    km.minibatch_update_(c, cnt, x.to(device), labels.to(device), deterministic=deterministic, backend=backend)
    assert torch.equal(cnt.cpu(), want_n)
    assert_ulps(c, want_c)


@pytest.mark.parametrize("n,offset", CASES[:2])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_embed_sum_of_far_rows(device, backend, deterministic, n, offset):
    x = _far_rows(_n(n, device, backend), offset, seed=2)
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    state = [torch.tensor([[offset]]), torch.zeros(1), torch.zeros(1, 1)]
    want = [t.clone() for t in state]
    reference.ema_update_(*want, x, labels, 0.5, 1e-5)
    state = [t.to(device) for t in state]
    km.ema_update_(*state, x.to(device), labels.to(device), decay=0.5, deterministic=deterministic,
                   backend=backend)
    for got, exp in zip(state, want):
        assert_ulps(got, exp)


@pytest.mark.parametrize("device,backend", backend_params())
def test_center_loss_u_of_far_rows(device, backend):
    """Eq. 4's u sums 10^5 weighted rows at offset 1e4."""
    xr, xf = _far_rows(_n(100_000, device, backend), 1e4, d=2, seed=3), _far_rows(_n(50_000, device, backend), 1e4 + 1, d=2, seed=4)
    lr, lf = torch.zeros(xr.shape[0], dtype=torch.int64), torch.zeros(xf.shape[0], dtype=torch.int64)
    c = torch.full((2, 2), 1e4)
    _, want, _, _ = reference.center_loss_forward(xr, lr, c, xf, lf, c)
    args = [t.to(device) for t in (xr, lr, c, xf, lf, c)]
    got = km.center_loss(*args, backend=backend)
    # u_real - u_fake is ~1 after cancelling ~2e4: a few ulps of u itself, not of the difference.
    tol = ULPS * torch.finfo(torch.float32).eps * 2e4
    assert abs(float(got) - float(want.double().abs().sum())) <= 2 * tol


@pytest.mark.parametrize("device,backend", backend_params())
def test_center_gradient_of_far_rows(device, backend):
    """The centers' gradient of assign / assigned_distance is a per-cluster sum of 10^5 rows."""
    x = _far_rows(_n(100_000, device, backend), 1e4, d=2, seed=5)
    c = torch.tensor([[1e4 - 3.0, 1e4 + 2.0], [-1e4, -1e4]])
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    g = torch.ones(x.shape[0])
    _, want = reference.assign_backward(g, x, c, labels, True)
    xd, cd = x.to(device), c.to(device).clone().requires_grad_()
    _, dist2 = km.assign(xd, cd, backend=backend)
    dist2.sum().backward()
    assert_ulps(cd.grad, want)
    out = reference.assigned_distance(x, labels, c, "sq_sum")
    _, want = reference.assigned_distance_backward(torch.tensor(1.0), out, x, labels, c, "sq_sum", True)
    cd = c.to(device).clone().requires_grad_()
    km.assigned_distance(xd, labels.to(device), cd, "sq_sum", backend=backend).backward()
    assert_ulps(cd.grad[0], want[0])
