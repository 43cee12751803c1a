"""km.kmgan_center_loss (KM-GAN Eq. 4; deprecated alias km.center_loss) against the reference and float64 autograd of the formula."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DTYPES, assert_grad_close, backend_params, noncontiguous, tol


def _problem(n_r, n_f, d, k, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    lab = lambda n: torch.randint(0, k, (n,), generator=g).to(device)  # noqa: E731
    return mk(n_r, d), lab(n_r), mk(k, d), mk(n_f, d), lab(n_f), mk(k, d)


def test_known_answer():
    # K = 2, d = 1. Real: rows 1, 3 in cluster 0 -> (c0 + 4)/3; cluster 1 empty -> c1.
    xr, lr, cr = torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]), torch.tensor([[2.0], [5.0]])
    # Fake: row 4 in cluster 1 -> (c1 + 4)/2; cluster 0 empty -> c0.
    xf, lf, cf = torch.tensor([[4.0]]), torch.tensor([1]), torch.tensor([[1.0], [0.0]])
    u_r = (2.0 + 4.0) / 3 + 5.0
    u_f = 1.0 + (0.0 + 4.0) / 2
    loss = reference.center_loss(xr, lr, cr, xf, lf, cf)
    assert loss.item() == pytest.approx(abs(u_r - u_f))


@pytest.mark.parametrize("n_r,n_f,d,k", [(0, 0, 3, 2), (1, 1, 1, 1), (7, 5, 3, 10), (64, 64, 100, 10), (1023, 999, 129, 50)])
@pytest.mark.parametrize("device,backend", backend_params())
def test_forward_backward_random(device, backend, n_r, n_f, d, k):
    xr, lr, cr, xf, lf, cf = _problem(n_r, n_f, d, k, device, seed=n_r + d)
    xr.requires_grad_()
    xf.requires_grad_()
    loss = km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend=backend)
    assert loss.dtype == torch.float32 and loss.shape == ()
    w = 1.7
    (loss * w).backward()
    xr64, xf64 = xr.detach().double().requires_grad_(), xf.detach().double().requires_grad_()
    want = reference.center_loss(xr64, lr, cr.double(), xf64, lf, cf.double())
    (want * w).backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(xr.grad.double(), xr64.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xf.grad.double(), xf64.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype):
    xr, lr, cr, xf, lf, cf = _problem(100, 80, 20, 6, device, dtype, seed=3)
    xr.requires_grad_()
    loss = km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend=backend)
    loss.backward()
    want = reference.center_loss(xr.detach(), lr, cr, xf, lf, cf)
    torch.testing.assert_close(loss.double(), want.double(), rtol=1e-5, atol=1e-4)
    xr64 = xr.detach().cpu().double().requires_grad_()
    cpu = [t.cpu() for t in (lr, cr, xf, lf, cf)]
    reference.center_loss(xr64, cpu[0], cpu[1].double(), cpu[2].double(), cpu[3], cpu[4].double()).backward()
    assert_grad_close(xr.grad, xr64.grad, dtype)


@pytest.mark.parametrize("device,backend", backend_params())
def test_sign_zero_gives_zero_gradient(device, backend):
    # Both sides identical: u_real - u_fake = 0 in every dimension, so the gradient is 0.
    xr, lr, cr, _, _, _ = _problem(16, 16, 4, 3, device, seed=4)
    xr = xr.requires_grad_()
    xf = xr.detach().clone().requires_grad_()
    loss = km.kmgan_center_loss(xr, lr, cr, xf, lr, cr, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert xr.grad.abs().max().item() == 0.0 and xf.grad.abs().max().item() == 0.0


@pytest.mark.parametrize("device,backend", backend_params())
def test_centers_get_no_gradient(device, backend):
    xr, lr, cr, xf, lf, cf = _problem(10, 10, 4, 3, device, seed=5)
    cr.requires_grad_()
    xr.requires_grad_()
    km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend=backend).backward()
    assert cr.grad is None and xr.grad is not None


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous(device, backend):
    xr, lr, cr, xf, lf, cf = _problem(50, 40, 8, 5, device, seed=6)
    want = km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend=backend)
    got = km.kmgan_center_loss(noncontiguous(xr), lr, noncontiguous(cr), noncontiguous(xf), lf, cf, backend=backend)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    xr, lr, cr, xf, lf, cf = _problem(9, 7, 3, 4, device, torch.float64, seed=7)
    xr.requires_grad_()
    xf.requires_grad_()
    f = lambda a, b: km.kmgan_center_loss(a, lr, cr, b, lf, cf, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (xr, xf))


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    xr, lr, cr, xf, lf, cf = _problem(20, 18, 6, 4, device, torch.float64, seed=8)
    torch.library.opcheck(
        torch.ops.kmgan_ext.center_loss.default,
        (xr.requires_grad_(), lr, cr, xf.requires_grad_(), lf, cf, backend),
    )
    loss, diff, nr, nf = reference.center_loss_forward(xr.detach(), lr, cr, xf.detach(), lf, cf)
    torch.library.opcheck(
        torch.ops.kmgan_ext.center_loss_backward.default,
        (torch.ones((), dtype=torch.float64, device=device), diff, xr.detach(), lr, nr, xf.detach(), lf, nf, backend),
    )


def test_old_name_warns_and_gives_the_same_loss():
    """km.center_loss is KM-GAN's Eq. 4 under a name that traps face-recognition users: it
    still works, with a DeprecationWarning pointing at km.kmgan_center_loss / km.CenterLoss."""
    g = torch.Generator().manual_seed(0)
    xr, xf = torch.randn(9, 3, generator=g), torch.randn(7, 3, generator=g)
    c = torch.randn(4, 3, generator=g)
    lr, lf = torch.randint(4, (9,), generator=g), torch.randint(4, (7,), generator=g)
    with pytest.warns(DeprecationWarning, match="kmgan_center_loss"):
        old = km.center_loss(xr, lr, c, xf, lf, c)
    assert torch.equal(old, km.kmgan_center_loss(xr, lr, c, xf, lf, c))
    assert "kmgan_center_loss" in km.__all__ and km.CenterLoss is not None


def _cpu_side_in_order(x, labels, centers):
    """csrc/cpu/center_loss_cpu.cpp's float32 sum written out in its order: w_m = 1/(1 + n_m);
    rows in chunks of 1024, each chunk in row order (w * x, then +, in double); then the
    centers' terms in center order, then the chunks in chunk order."""
    k = centers.shape[0]
    w = 1.0 / (1.0 + torch.bincount(labels.long(), minlength=k).double())
    x64, c64 = x.double(), centers.double()
    chunks = []
    for i0 in range(0, x.shape[0], 1024):
        acc = torch.zeros(x.shape[1], dtype=torch.float64)
        for i in range(i0, min(x.shape[0], i0 + 1024)):
            acc = acc + w[labels[i]] * x64[i]
        chunks.append(acc)
    u = torch.zeros(x.shape[1], dtype=torch.float64)
    for q in range(k):
        u = u + w[q] * c64[q]
    for acc in chunks:
        u = u + acc
    return u


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n,d", [(2500, 37), (1100, 256), (9, 8)])
def test_cpu_float32_sum_is_the_documented_order(n, d, label_dtype):
    # The same bits whichever loop runs (the AVX2 one of center_loss_avx2.cpp or the portable
    # one under KMGAN_EXT_CPU_NO_AVX2=1): both must follow this order exactly.
    xr, lr, cr, _, _, _ = _problem(n, 0, d, 40, "cpu", seed=d)
    xr = xr * 3 + 1
    # The fake side: the same rows and labels in another order. u - u_hat is then 0 but for
    # the double rounding of the two orders, which float32 holds exactly enough to see it:
    # any change of order or of operation shows in u_diff.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    xf, lf, cf = xr[perm], lr[perm], cr.clone()
    lr, lf = lr.to(label_dtype), lf.to(label_dtype)
    _, u_diff, _, _ = torch.ops.kmgan_ext.center_loss(xr, lr, cr, xf, lf, cf, "cpu")
    want = _cpu_side_in_order(xr, lr, cr) - _cpu_side_in_order(xf, lf, cf)
    assert want.abs().max() > 0  # the orders did round differently
    assert torch.equal(u_diff, want.float())


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n,d", [(8192, 256), (8200, 248), (8192, 250), (100, 256)])
def test_cpu_float32_gradient_bits(n, d, label_dtype):
    # 8 MB or more of float32 gradient with d % 8 == 0 is written by the streaming-store loop
    # of center_loss_avx2.cpp (kStreamOutputBytes), the rest by the portable one: both must
    # give float(sign(u - u_hat)_j * (g / (1 + n_{l_i}))) exactly, one rounding from double.
    xr, lr, cr, xf, lf, cf = _problem(n, n - 3, d, 300, "cpu", seed=d)
    lr, lf = lr.to(label_dtype), lf.to(label_dtype)
    xr.requires_grad_(), xf.requires_grad_()
    g = 0.75  # exact in float32: the backward receives it as a float32 scalar
    (km.kmgan_center_loss(xr, lr, cr, xf, lf, cf, backend="cpu") * g).backward()
    _, u_diff, _, _ = torch.ops.kmgan_ext.center_loss(xr.detach(), lr, cr, xf.detach(), lf, cf, "cpu")
    sgn = torch.sign(u_diff.double())
    for x, labels, sign in ((xr, lr, 1.0), (xf, lf, -1.0)):
        counts = torch.bincount(labels.long(), minlength=300).double()
        w = (sign * g) / (1.0 + counts[labels.long()])
        assert torch.equal(x.grad, (sgn[None, :] * w[:, None]).float())
