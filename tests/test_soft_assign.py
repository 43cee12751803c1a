"""km.soft_assign (DEC's Student-t, softmax of -D / T), on every backend, against the reference
and against transcriptions of the published formulas."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DTYPES, backend_params, noncontiguous

KINDS = ["student_t", "softmax"]


def dec_student_t(x, c, alpha):
    """DEC's soft assignment (Xie et al. 2016, eq. 1), as its published code writes it."""
    q = 1.0 / (1.0 + torch.sum((x.unsqueeze(1) - c) ** 2, 2) / alpha)
    q = q.pow((alpha + 1.0) / 2.0)
    return (q.t() / torch.sum(q, 1)).t()


def _rtol(dtype):
    return 1e-12 if dtype == torch.float64 else 2e-5


@pytest.mark.parametrize("alpha", [1.0, 0.3, 7.0])
def test_reference_is_dec(alpha):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    c = torch.randn(9, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(reference.soft_assign(x, c, "student_t", alpha, 1.0), dec_student_t(x, c, alpha))


@pytest.mark.parametrize("temperature", [1.0, 0.05, 20.0])
def test_reference_is_softmax_of_cdist(temperature):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    c = torch.randn(9, 6, generator=g, dtype=torch.float64)
    want = torch.softmax(-torch.cdist(x, c) ** 2 / temperature, dim=1)
    torch.testing.assert_close(reference.soft_assign(x, c, "softmax", 1.0, temperature), want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d,kc", [(0, 3, 4), (1, 1, 1), (7, 3, 10), (150, 37, 70), (65, 5, 300)])
@pytest.mark.parametrize("device,backend", backend_params())
def test_random_matches_formula(device, backend, kind, n, d, kc):
    g = torch.Generator().manual_seed(n + d + kc)
    x = torch.randn(n, d, generator=g).to(device)
    c = torch.randn(kc, d, generator=g).to(device)
    q = km.soft_assign(x, c, kind=kind, alpha=1.5, temperature=2.0, backend=backend)
    xd, cd = x.double().cpu(), c.double().cpu()
    want = dec_student_t(xd, cd, 1.5) if kind == "student_t" else torch.softmax(-torch.cdist(xd, cd) ** 2 / 2.0, 1)
    assert q.dtype == torch.float32 and q.shape == (n, kc)
    torch.testing.assert_close(q.double().cpu(), want, rtol=2e-5, atol=1e-6)
    if n:
        torch.testing.assert_close(q.double().sum(1).cpu(), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_dtypes(device, backend, dtype, kind):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(90, 13, generator=g).to(device, dtype)
    c = torch.randn(21, 13, generator=g).to(device, dtype)
    q = km.soft_assign(x, c, kind=kind, alpha=1.0, temperature=0.5, backend=backend)
    want = reference.soft_assign(x.cpu(), c.cpu(), kind, 1.0, 0.5)
    assert q.dtype == want.dtype
    torch.testing.assert_close(q.cpu(), want, rtol=_rtol(dtype), atol=_rtol(dtype) / 10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device,backend", backend_params())
def test_large_distances_and_equal_scores(device, backend, kind):
    """Distances ~1e8 (softmax scores -1e8: exp underflows without the running max;
    (1 + D)^-1 ... fine, but the Student-t power with alpha = 0.1 underflows to 0/0 outside log
    space), and rows whose scores are all equal (identical centers, any distance): uniform."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * 1e4
    c = torch.randn(8, 5, generator=g, dtype=torch.float64) * 1e4
    q = km.soft_assign(x.float().to(device), c.float().to(device), kind=kind, alpha=0.1, backend=backend)
    assert not torch.isnan(q).any()
    want = reference.soft_assign(x.float(), c.float(), kind, 0.1, 1.0)
    torch.testing.assert_close(q.cpu(), want, rtol=1e-4, atol=1e-4)
    same = torch.randn(1, 5, generator=g).repeat(6, 1) * 1e3
    far = torch.randn(10, 5, generator=g) * 1e3
    q = km.soft_assign(far.to(device), same.to(device), kind=kind, alpha=0.1, temperature=1e-3, backend=backend)
    assert torch.equal(q.cpu(), torch.full((10, 6), 1.0 / 6))


@pytest.mark.parametrize("device,backend", backend_params())
def test_nan_row_is_nan(device, backend):
    x = torch.randn(5, 3)
    x[2, 1] = float("nan")
    q = km.soft_assign(x.to(device), torch.randn(4, 3).to(device), backend=backend).cpu()
    assert torch.isnan(q[2]).all() and not torch.isnan(q[[0, 1, 3, 4]]).any()


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous(device, backend):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 8, generator=g).to(device)
    c = torch.randn(7, 8, generator=g).to(device)
    torch.testing.assert_close(km.soft_assign(noncontiguous(x), noncontiguous(c), backend=backend),
                               km.soft_assign(x, c, backend=backend))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("device,backend", backend_params())
def test_gradients_match_reference(device, backend, kind):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(70, 9, generator=g).to(device).requires_grad_()
    c = torch.randn(40, 9, generator=g).to(device).requires_grad_()
    w = torch.randn(70, 40, generator=g).to(device)
    q = km.soft_assign(x, c, kind=kind, alpha=2.0, temperature=3.0, backend=backend)
    gx, gc = torch.autograd.grad((q * w).sum(), (x, c))
    xr, cr = x.detach().double().cpu().requires_grad_(), c.detach().double().cpu().requires_grad_()
    want = dec_student_t(xr, cr, 2.0) if kind == "student_t" else torch.softmax(-((xr[:, None] - cr) ** 2).sum(-1) / 3.0, 1)
    wx, wc = torch.autograd.grad((want * w.double().cpu()).sum(), (xr, cr))
    torch.testing.assert_close(gx.double().cpu(), wx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gc.double().cpu(), wc, rtol=1e-4, atol=1e-5)
    # x only: the centers' pass is skipped, grad_x unchanged
    (gx2,) = torch.autograd.grad((km.soft_assign(x, c.detach(), kind=kind, alpha=2.0, temperature=3.0,
                                                 backend=backend) * w).sum(), (x,))
    torch.testing.assert_close(gx2, gx)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend, kind):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, c: km.soft_assign(x, c, kind=kind, alpha=0.7, temperature=0.4, backend=backend), (x, c))


def test_cpu_backward_is_deterministic_across_threads():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3000, 16, generator=g).requires_grad_()
    c = torch.randn(300, 16, generator=g).requires_grad_()
    w = torch.randn(3000, 300, generator=g)
    prev = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out.append(torch.autograd.grad((km.soft_assign(x, c, backend="cpu") * w).sum(), (x, c)))
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_opcheck():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(33, 7, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(5, 7, generator=g, dtype=torch.float64).requires_grad_()
    torch.library.opcheck(torch.ops.kmgan_ext.soft_assign.default, (x, c, "student_t", 1.0, 1.0, "cpu"))
    torch.library.opcheck(torch.ops.kmgan_ext.soft_assign.default, (x, c, "softmax", 1.0, 0.5, "cpu"))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kind="gaussian"), ValueError, r"kind must be one of \('student_t', 'softmax'\), got 'gaussian'"),
    (dict(alpha=0.0), ValueError, r"alpha must be a finite float > 0, got 0.0"),
    (dict(alpha=float("nan")), ValueError, r"alpha must be a finite float > 0"),
    (dict(temperature=0.0), ValueError, r"temperature must be a finite float > 0, got 0.0"),
    (dict(temperature=-1.0), ValueError, r"temperature must be a finite float > 0"),
    (dict(temperature=True), TypeError, r"temperature must be a float > 0, got bool"),
    (dict(alpha="1"), TypeError, r"alpha must be a float > 0, got str"),
])
def test_bad_parameters_are_named(kwargs, err, match):
    with pytest.raises(err, match=match):
        km.soft_assign(torch.randn(4, 3), torch.randn(5, 3), **kwargs)


def test_bad_tensors_are_named():
    with pytest.raises(ValueError, match="centers must have 3 columns"):
        km.soft_assign(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"centers must hold at least one center"):
        km.soft_assign(torch.randn(4, 3), torch.randn(0, 3))
    with pytest.raises(TypeError, match=r"x and centers must share one dtype .*: got x torch.float32, centers torch.float64"):
        km.soft_assign(torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="kind must be 'student_t' or 'softmax'"):
        torch.ops.kmgan_ext.soft_assign_native(torch.randn(4, 3), torch.randn(5, 3), "x", 1.0, 1.0)
