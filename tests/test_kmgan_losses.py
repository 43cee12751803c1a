"""km.kmgan_losses / km.KMGANLosses against the paper's formulas in float64 autograd."""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference as R

from testing import assert_labels_match, fast_backend_params

N_REAL, N_FAKE, D, K, K_HAT = 33, 29, 24, 7, 5


def _inputs(device, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    f_real = torch.randn(N_REAL, D, generator=g).to(device, dtype)
    f_fake = (0.5 * torch.randn(N_FAKE, D, generator=g) + 0.3).to(device, dtype)
    c_real = torch.randn(K, D, generator=g).to(device)
    c_fake = torch.randn(K_HAT, D, generator=g).to(device)
    return f_real, f_fake, c_real, c_fake


def _pull64(f, labels, c, reduction):
    diff = f - c.double()[labels]
    if reduction == "fro":
        return diff.norm()
    if reduction == "mean":
        return diff.norm(dim=1).mean()
    return 0.5 * (diff**2).sum()


def _center64(fr, lr, cr, ff, lf, cf):
    def u(x, labels, c):
        c = c.double()
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        n = torch.zeros(c.shape[0], dtype=torch.float64, device=x.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float64)
        )
        return ((c + sums) / (1 + n)[:, None]).sum(0)

    return (u(fr, lr, cr) - u(ff, lf, cf)).abs().sum()


def _pairs64(a, b=None):
    if b is None:
        return (a[:, None, :] - a[None, :, :]).abs().sum()
    return (a[:, None, :] - b[None, :, :]).abs().sum()


def _truth(f_real, f_fake, c_real, c_fake, terms, reduction, lam, pairwise_reduction):
    """Float64 losses and gradients with the labels the op chose (checked separately)."""
    fr = f_real.detach().double().requires_grad_()
    ff = f_fake.detach().double().requires_grad_()
    lr, lf, lh = terms.labels_real, terms.labels_fake, terms.labels_fake_hat
    pull_r, pull_f = _pull64(fr, lr, c_real, reduction), _pull64(ff, lf, c_real, reduction)
    loss_d, loss_g = pull_r - pull_f, pull_f
    if lam:
        nr, nf = fr.shape[0], ff.shape[0]
        scale = (1 / (nr * (nr - 1)), 1 / (nf * (nf - 1)), 1 / (nr * nf)) if pairwise_reduction == "mean" else (1, 1, 1)
        intra = scale[0] * _pairs64(fr) + scale[1] * _pairs64(ff)
        inter = scale[2] * _pairs64(fr, ff)
        loss_d = loss_d + lam * (intra - inter)
        loss_g = loss_g + lam * scale[2] * _pairs64(fr.detach(), ff)
    loss_c = _center64(fr, lr, c_real, ff, lh, c_fake)
    out = {}
    for name, loss in (("loss_d", loss_d), ("loss_g", loss_g), ("loss_center", loss_c)):
        gr, gf = torch.autograd.grad(loss, [fr, ff], retain_graph=True, allow_unused=True)
        out[name] = (loss.detach(), gr, gf)
    return out


@pytest.mark.parametrize("device,backend", fast_backend_params() + [pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize(
    "reduction,lam,pairwise_reduction",
    [("fro", 0.0, "sum"), ("mean", 0.0, "sum"), ("sq_sum", 0.0, "sum"), ("fro", 0.5, "sum"), ("fro", 2.0, "mean")],
)
def test_losses_and_gradients_match_formulas(device, backend, reduction, lam, pairwise_reduction):
    f_real, f_fake, c_real, c_fake = _inputs(device)
    f_real.requires_grad_()
    f_fake.requires_grad_()
    c_before = (c_real.clone(), c_fake.clone())
    terms = km.kmgan_losses(
        f_real, f_fake, c_real, c_fake, reduction=reduction, lam=lam, pairwise_reduction=pairwise_reduction,
        backend=backend,
    )  # fmt: skip
    assert_labels_match(f_real.detach(), c_real, terms.labels_real)
    assert_labels_match(f_fake.detach(), c_real, terms.labels_fake)
    assert_labels_match(f_fake.detach(), c_fake, terms.labels_fake_hat)
    assert (terms.l_intra is None) == (lam == 0) and (terms.l_inter is None) == (lam == 0)
    want = _truth(f_real, f_fake, c_real, c_fake, terms, reduction, lam, pairwise_reduction)
    for name in ("loss_d", "loss_g", "loss_center"):
        loss = getattr(terms, name)
        assert loss.dtype == torch.float32 and loss.shape == ()
        w_loss, w_gr, w_gf = want[name]
        scale = 1 + float(w_loss.abs())
        torch.testing.assert_close(loss.double().cpu(), w_loss.cpu(), rtol=1e-5, atol=1e-5 * scale)
        gr, gf = torch.autograd.grad(loss, [f_real, f_fake], retain_graph=True, allow_unused=True)
        for got, w in ((gr, w_gr), (gf, w_gf)):
            if w is None:  # no path from this loss to that input (L_G to the real features)
                assert got is None or not got.any()
                continue
            torch.testing.assert_close(got.double().cpu(), w.cpu(), rtol=1e-4, atol=1e-5 * (1 + float(w.abs().max())))
    # Centers are buffers: untouched, and no gradient flows to them.
    assert torch.equal(c_real, c_before[0]) and torch.equal(c_fake, c_before[1])


def test_module_matches_function_and_generator_loss_matches_loss_g():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=3)
    f_fake.requires_grad_()
    mod = km.KMGANLosses(reduction="mean", lam=0.25, pairwise_reduction="sum", backend="cpu")
    assert "lam=0.25" in repr(mod)
    a = mod(f_real, f_fake, c_real, c_fake)
    b = km.kmgan_losses(f_real, f_fake, c_real, c_fake, reduction="mean", lam=0.25, backend="cpu")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    g_loss = mod.generator_loss(f_fake, a.labels_fake, c_real, f_real)
    torch.testing.assert_close(g_loss, a.loss_g, rtol=1e-6, atol=0)
    c_loss = mod.center_loss(f_real, a.labels_real, c_real, f_fake, a.labels_fake_hat, c_fake)
    assert torch.equal(c_loss, a.loss_center)


def test_low_precision_features_are_cast_to_the_centers_dtype():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=5)
    terms32 = km.kmgan_losses(f_real.bfloat16().float(), f_fake.bfloat16().float(), c_real, c_fake, backend="cpu")
    bf_real = f_real.bfloat16().requires_grad_()
    terms = km.kmgan_losses(bf_real, f_fake.bfloat16(), c_real, c_fake, backend="cpu")
    assert terms.loss_d.dtype == torch.float32
    for x, y in zip(terms, terms32):
        if x is not None:
            assert torch.equal(x, y)
    terms.loss_d.backward()
    assert bf_real.grad.dtype == torch.bfloat16


def test_labels_agree_with_assign():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=7)
    terms = km.kmgan_losses(f_real, f_fake, c_real, c_fake, backend="cpu")
    assert torch.equal(terms.labels_real, R.assign(f_real, c_real)[0])
    assert torch.equal(terms.labels_fake_hat, km.assign(f_fake, c_fake, backend="cpu")[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reduction="l1"), "reduction"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(pairwise_reduction="max"), "pairwise_reduction"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    f_real, f_fake, c_real, c_fake = _inputs("cpu")
    with pytest.raises(ValueError, match=match):
        km.kmgan_losses(f_real, f_fake, c_real, c_fake, **kwargs)
    with pytest.raises(ValueError, match=match):
        km.KMGANLosses(**kwargs)


def test_bad_features_are_rejected_before_anything_runs():
    f_real, f_fake, c_real, c_fake = _inputs("cpu")
    with pytest.raises(ValueError, match="f_real"):
        km.kmgan_losses(f_real[0], f_fake, c_real, c_fake)
    with pytest.raises(TypeError, match="f_fake"):
        km.kmgan_losses(f_real, f_fake.long(), c_real, c_fake)
    with pytest.raises(ValueError, match="x"):  # the ops' own shape check: d differs
        km.kmgan_losses(f_real[:, :5], f_fake, c_real, c_fake)
