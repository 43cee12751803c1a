"""km.pairwise_l1 (KM-GAN Eq. 7) against the O(N^2) formula, ties included."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DTYPES, assert_grad_close, backend_params, noncontiguous


def _brute(a, b=None):
    """sum |a_i - b_j| over all pairs by broadcasting, float64 autograd (sign(0) = 0)."""
    other = a if b is None else b
    return (a[:, None, :] - other[None, :, :]).abs().sum()


def test_known_answer():
    a = torch.tensor([[0.0], [1.0], [3.0]])
    # Ordered pairs: 2 * (1 + 3 + 2) = 12.
    assert reference.pairwise_l1(a).item() == 12.0
    b = torch.tensor([[2.0]])
    assert reference.pairwise_l1(a, b).item() == 2.0 + 1.0 + 1.0


@pytest.mark.parametrize("with_b", [False, True])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 5, 3), (64, 64, 100), (1000, 900, 8)])
@pytest.mark.parametrize("device,backend", backend_params())
def test_against_brute_force_with_ties(device, backend, with_b, n, m, d):
    g = torch.Generator().manual_seed(n + m + d)
    # Values on a coarse grid: many exact ties within and across the batches.
    a = torch.randint(-4, 5, (n, d), generator=g).float().to(device).requires_grad_()
    b = torch.randint(-4, 5, (m, d), generator=g).float().to(device).requires_grad_() if with_b else None
    out = km.pairwise_l1(a, b, backend=backend)
    out.backward(torch.tensor(0.5, device=device))
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if with_b else None
    want = _brute(a64, b64)
    want.backward(torch.tensor(0.5, dtype=torch.float64, device=device))
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=0, atol=0)
    if with_b:
        torch.testing.assert_close(b.grad.double(), b64.grad, rtol=0, atol=0)


@pytest.mark.parametrize("with_b", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_random_values(device, backend, with_b):
    g = torch.Generator().manual_seed(9)
    a = torch.randn(300, 17, generator=g).to(device).requires_grad_()
    b = torch.randn(200, 17, generator=g).to(device) if with_b else None
    out = km.pairwise_l1(a, b, backend=backend)
    out.backward()
    a64 = a.detach().double().requires_grad_()
    want = _brute(a64, None if b is None else b.double())
    want.backward()
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(a.grad.double(), a64.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype):
    g = torch.Generator().manual_seed(10)
    a = torch.randn(100, 12, generator=g).to(device, dtype).requires_grad_()
    b = torch.randn(90, 12, generator=g).to(device, dtype)
    out = km.pairwise_l1(a, b, backend=backend)
    out.backward()
    torch.testing.assert_close(out.double(), reference.pairwise_l1(a.detach(), b).double(), rtol=1e-5, atol=1e-2)
    a64 = a.detach().cpu().double().requires_grad_()
    _brute(a64, b.cpu().double()).backward()
    assert_grad_close(a.grad, a64.grad, dtype)  # rank counts: exact in every dtype here


@pytest.mark.parametrize("device,backend", backend_params())
def test_empty_and_noncontiguous(device, backend):
    a = torch.randn(0, 4, device=device)
    assert km.pairwise_l1(a, backend=backend).item() == 0.0
    a = torch.randn(40, 6, device=device)
    b = torch.randn(30, 6, device=device)
    want = km.pairwise_l1(a, b, backend=backend)
    torch.testing.assert_close(km.pairwise_l1(noncontiguous(a), noncontiguous(b), backend=backend), want)


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    g = torch.Generator().manual_seed(11)
    a = torch.randn(9, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(6, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: km.pairwise_l1(a, backend=backend), (a,))
    assert torch.autograd.gradcheck(lambda a, b: km.pairwise_l1(a, b, backend=backend), (a, b))


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    g = torch.Generator().manual_seed(12)
    a = torch.randn(12, 4, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(10, 4, generator=g, dtype=torch.float64).to(device)
    op = torch.ops.kmgan_ext.pairwise_l1.default
    torch.library.opcheck(op, (a.clone().requires_grad_(), None, backend))
    torch.library.opcheck(op, (a.clone().requires_grad_(), b.clone().requires_grad_(), backend))
    one = torch.ones((), dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.kmgan_ext.pairwise_l1_backward.default, (one, a, b, backend))
