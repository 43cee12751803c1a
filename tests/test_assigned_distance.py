"""km.assigned_distance (KM-GAN Eq. 5/6, Wen's center loss) against float64 autograd."""
import math

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DTYPES, assert_grad_close, backend_params, noncontiguous

REDUCTIONS = ["fro", "mean", "sq_sum"]


def _problem(n, d, k, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(device, dtype)
    c = torch.randn(k, d, generator=g).to(device, dtype)
    labels = torch.randint(0, k, (n,), generator=g).to(device)
    return x, labels, c


def test_known_answer():
    x = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    lab = torch.tensor([0, 1])
    assert reference.assigned_distance(x, lab, c, "fro").item() == 5.0  # sqrt(9 + 16)
    assert reference.assigned_distance(x, lab, c, "mean").item() == 3.5  # (3 + 4) / 2
    assert reference.assigned_distance(x, lab, c, "sq_sum").item() == 12.5  # (9 + 16) / 2


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n,d,k", [(1, 1, 1), (7, 3, 10), (64, 100, 10), (1023, 129, 50)])
@pytest.mark.parametrize("device,backend", backend_params())
def test_forward_backward_random(device, backend, reduction, n, d, k):
    x, labels, c = _problem(n, d, k, device, seed=n + d)
    x.requires_grad_()
    c.requires_grad_()
    out = km.assigned_distance(x, labels, c, reduction, backend=backend)
    assert out.shape == () and out.dtype == torch.float32
    out.backward(torch.tensor(0.7, device=device))
    x64, c64 = x.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    want = reference.assigned_distance(x64, labels, c64, reduction)
    want.backward(torch.tensor(0.7, dtype=torch.float64, device=device))
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("device,backend", backend_params())
def test_zero_distance_gives_zero_gradient(device, backend, reduction):
    c = torch.randn(4, 5, device=device)
    labels = torch.tensor([0, 1, 2, 3, 1], device=device)
    x = c[labels].clone().requires_grad_()
    out = km.assigned_distance(x, labels, c, reduction, backend=backend)
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(x.grad).all() and x.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("device,backend", backend_params())
def test_mean_with_some_zero_rows(device, backend):
    c = torch.randn(3, 4, device=device)
    labels = torch.tensor([0, 1, 2], device=device)
    x = c[labels].clone()
    x[1] += 1.0
    x.requires_grad_()
    km.assigned_distance(x, labels, c, "mean", backend=backend).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0].abs().max().item() == 0.0 and x.grad[1].abs().max().item() > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype):
    x, labels, c = _problem(200, 33, 7, device, dtype, seed=2)
    x.requires_grad_()
    out = km.assigned_distance(x, labels, c, backend=backend)
    out.backward()
    want = reference.assigned_distance(x.detach(), labels, c)
    torch.testing.assert_close(out.double(), want.double(), rtol=1e-5, atol=1e-5)
    x64 = x.detach().cpu().double().requires_grad_()
    reference.assigned_distance(x64, labels.cpu(), c.cpu().double()).backward()
    assert_grad_close(x.grad, x64.grad, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
def test_no_center_gradient_unless_asked(device, backend):
    x, labels, c = _problem(20, 4, 3, device, seed=3)
    x.requires_grad_()
    km.assigned_distance(x, labels, c, backend=backend).backward()
    assert c.grad is None and x.grad is not None


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous(device, backend):
    x, labels, c = _problem(60, 8, 5, device, seed=4)
    want = km.assigned_distance(x, labels, c, "mean", backend=backend)
    got = km.assigned_distance(noncontiguous(x), labels, noncontiguous(c), "mean", backend=backend)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend, reduction):
    x, labels, c = _problem(8, 3, 3, device, torch.float64, seed=5)
    x.requires_grad_()
    c.requires_grad_()
    f = lambda x, c: km.assigned_distance(x, labels, c, reduction, backend=backend)  # noqa: E731
    # The CUDA kernels' centers gradient adds rows with atomics (fast mode): the order, hence
    # the last bits, may differ between two backward passes.
    nondet = 1e-12 if backend in ("cuda", "cuda_emulated") else 0.0
    assert torch.autograd.gradcheck(f, (x, c), nondet_tol=nondet)


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    x, labels, c = _problem(16, 5, 4, device, torch.float64, seed=6)
    for reduction in REDUCTIONS:
        torch.library.opcheck(
            torch.ops.kmgan_ext.assigned_distance.default,
            (x.clone().requires_grad_(), labels, c.clone().requires_grad_(), reduction, backend),
        )
    out = reference.assigned_distance(x, labels, c, "fro")
    torch.library.opcheck(
        torch.ops.kmgan_ext.assigned_distance_backward.default,
        (torch.ones((), dtype=torch.float64, device=device), out, x, labels, c, "fro", True, backend),
    )


def _row_order_grads(x, labels, c, s):
    """gx_i = s (x_i - c_{l_i}) rounded once to float32, and gc_k = -sum_{l_i = k} of the
    unrounded float64 terms added row after row in index order (csrc/cpu/common.h,
    scaled_diff_grad: the bits the cpu backend gives for any thread count)."""
    x64, c64 = x.double(), c.double()
    terms = s * (x64 - c64[labels])
    sums = torch.zeros_like(c64)
    for i in range(x.shape[0]):
        sums[labels[i]] += -terms[i]
    return terms.float(), sums.float()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("reduction", ["sq_sum", "fro"])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_cpu_centers_gradient_is_the_row_order_sum(threads, reduction, offset):
    """The cpu backward with the centers' gradient splits rows into chunks of 2**15 / d among
    threads (issue 15): 4,100 rows of 64 columns are 9 chunks. Every chunk's grad_x must be
    written once and every row added once, in index order, to its center's float64 sum."""
    if km.available_backends()["cpu"] is not None:
        pytest.skip(str(km.available_backends()["cpu"]))
    x, labels, c = _problem(4100, 64, 7, "cpu", seed=5)
    x, c = x + offset, c + offset
    labels[1000:2500] = 3  # a long run of one label across chunk boundaries
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()
        loss = km.assigned_distance(xg, labels, cg, reduction, backend="cpu")
        gx, gc = torch.autograd.grad(loss, [xg, cg])
    finally:
        torch.set_num_threads(before)
    s = 1.0 if reduction == "sq_sum" else 1.0 / float(loss)
    want_gx, want_gc = _row_order_grads(x, labels, c, s)
    assert torch.equal(gx, want_gx)
    assert torch.equal(gc, want_gc)


def _cpu_row_sq(xi, ci):
    """csrc/cpu/assigned_distance_cpu.cpp's row_sq in Python floats (IEEE doubles, so every
    operation rounds as the kernel's): column j into partial sum j % 16, the partials added
    as row_sq_combine (common.h)."""
    s = [0.0] * 16
    for j, (a, b) in enumerate(zip(xi, ci)):
        t = a - b
        s[j % 16] += t * t
    u = [(s[q] + s[q + 8]) + (s[q + 4] + s[q + 12]) for q in range(4)]
    return (u[0] + u[1]) + (u[2] + u[3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [37, 100, 5])
def test_cpu_row_distance_is_the_documented_order(dtype, d):
    # "mean"'s gradient scales each row by 1 / (N ||x_i - c||): in float64 every row's
    # distance shows in its gradient's bits (16 partial sums where 8 were meant fails ~1 row
    # in 8 here). float32 rows take the AVX2 loop where the CPU has it (row_sq_avx2.cpp, the
    # same order by construction) and their gradients are the double terms rounded once.
    if km.available_backends()["cpu"] is not None:
        pytest.skip(str(km.available_backends()["cpu"]))
    g = torch.Generator().manual_seed(d)
    # Full float64 mantissas far from 0, so that the squares and their sums round.
    x = torch.randn(300, d, generator=g, dtype=torch.float64) * 3 + 100
    c = torch.randn(9, d, generator=g, dtype=torch.float64) + 100
    labels = torch.randint(9, (300,), generator=g)
    x, c = x.to(dtype), c.to(dtype)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(km.assigned_distance(xg, labels, c, "mean", backend="cpu"), [xg])
    xs, cs, ls = x.double().tolist(), c.double().tolist(), labels.tolist()
    want = []
    for xi, li in zip(xs, ls):
        scale = (1.0 / len(xs)) / math.sqrt(_cpu_row_sq(xi, cs[li]))
        want.append([scale * (a - b) for a, b in zip(xi, cs[li])])
    assert torch.equal(gx, torch.tensor(want, dtype=torch.float64).to(dtype))
