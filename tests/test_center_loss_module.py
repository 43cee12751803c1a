"""km.CenterLoss (Wen et al. 2016) against transcriptions of its formulas and of
pytorch-center-loss' CenterLoss.forward, on every backend."""
import pytest
import torch

import kmgan_ext as km
from testing import backend_params


def _pytorch_center_loss(x, labels, centers):
    """pytorch-center-loss' CenterLoss.forward (KaiyangZhou), transcribed: the batch mean of
    ||x_i - c_{y_i}||^2 from the expanded distance matrix, every entry clamped to [1e-12, 1e12]."""
    b, c = x.shape[0], centers.shape[0]
    distmat = (x.pow(2).sum(1, keepdim=True).expand(b, c)
               + centers.pow(2).sum(1, keepdim=True).expand(c, b).t())
    distmat = distmat - 2 * x @ centers.t()
    mask = labels[:, None].eq(torch.arange(c)[None, :].expand(b, c))
    return (distmat * mask.to(x.dtype)).clamp(min=1e-12, max=1e12).sum() / b


def _wen_update(centers, x, labels, alpha):
    """Wen et al. Eq. 4: c_j -= alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)."""
    c = centers.clone()
    for j in range(c.shape[0]):
        rows = x[labels == j]
        if len(rows):
            c[j] -= alpha * (centers[j] - rows).sum(0) / (1 + len(rows))
    return c


@pytest.mark.parametrize("device,backend", backend_params())
def test_reductions_match_the_formulas(device, backend):
    torch.manual_seed(0)
    m = km.CenterLoss(10, 6, dtype=torch.float64, device=device, backend=backend)
    x = torch.randn(33, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(10, (33,), device=device)
    per_row = ((x - m.centers[y]) ** 2).sum(1)
    loss = m(x, y)
    torch.testing.assert_close(loss, _pytorch_center_loss(x.cpu(), y.cpu(), m.centers.cpu()).to(device),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss, per_row.mean(), rtol=1e-12, atol=1e-12)
    m.reduction = "sum"
    torch.testing.assert_close(m(x, y), per_row.sum(), rtol=1e-12, atol=1e-12)
    m.reduction = "half_sum"
    torch.testing.assert_close(m(x, y), 0.5 * per_row.sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", backend_params())
def test_parameter_centers_get_the_gradient(device, backend):
    torch.manual_seed(1)
    m = km.CenterLoss(5, 4, dtype=torch.float64, device=device, backend=backend)
    assert isinstance(m.centers, torch.nn.Parameter)
    x = torch.randn(20, 4, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.randint(5, (20,), device=device)
    m(x, y).backward()
    c = m.centers.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ((x2 - c[y]) ** 2).sum(1).mean().backward()
    torch.testing.assert_close(m.centers.grad, c.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", backend_params())
def test_buffer_centers_follow_wens_rule(device, backend):
    torch.manual_seed(2)
    m = km.CenterLoss(6, 3, centers="buffer", alpha=0.3, dtype=torch.float64, device=device,
                      backend=backend)
    assert "centers" in dict(m.named_buffers()) and not list(m.parameters())
    for _ in range(3):
        x = torch.randn(25, 3, dtype=torch.float64, device=device)
        y = torch.randint(5, (25,), device=device)  # class 5 absent: its center must not move
        want = _wen_update(m.centers, x, y, 0.3)
        loss_before = ((x - m.centers[y]) ** 2).sum(1).mean()
        x.requires_grad_(True)
        old = m.centers.clone()
        loss = m(x, y, update=True)  # loss with the old centers, then the update
        torch.testing.assert_close(loss, loss_before, rtol=1e-12, atol=1e-12)
        loss.backward()  # after the in-place update: the gradient of the old centers' loss
        torch.testing.assert_close(x.grad, 2 * (x.detach() - old[y]) / len(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.centers, want, rtol=1e-12, atol=1e-12)


def test_update_is_a_visible_choice():
    m = km.CenterLoss(4, 2, centers="buffer")
    before = m.centers.clone()
    m.train()
    m(torch.randn(8, 2), torch.randint(4, (8,)))
    assert torch.equal(m.centers, before)  # model.train() alone never updates
    t = km.CenterLoss(4, 2, centers="buffer", update="train").train()
    b2 = t.centers.clone()
    t(torch.randn(8, 2), torch.randint(4, (8,)))
    assert not torch.equal(t.centers, b2)
    with pytest.raises(RuntimeError, match="centers='buffer'"):
        km.CenterLoss(4, 2).update_centers_(torch.randn(3, 2), torch.zeros(3, dtype=torch.int64))


def test_mixed_precision_features_against_float32_centers():
    torch.manual_seed(3)
    m = km.CenterLoss(7, 8)
    x = torch.randn(16, 8).to(torch.bfloat16).requires_grad_(True)
    y = torch.randint(7, (16,), dtype=torch.int32)  # int32 labels are accepted
    loss = m(x, y)
    assert loss.dtype == torch.float32
    want = ((x.detach().float() - m.centers.detach()[y.long()]) ** 2).sum(1).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert x.grad.dtype == torch.bfloat16 and m.centers.grad.dtype == torch.float32


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_classes"):
        km.CenterLoss(0, 3)
    with pytest.raises(ValueError, match="reduction"):
        km.CenterLoss(3, 3, reduction="avg")
    with pytest.raises(ValueError, match="centers must be one of"):
        km.CenterLoss(3, 3, centers="tensor")
    with pytest.raises(ValueError, match="alpha"):
        km.CenterLoss(3, 3, alpha=2.0)
    m = km.CenterLoss(3, 4, centers="buffer")
    before = m.centers.clone()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4\)"):
        m(torch.randn(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        m(torch.randn(2, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="labels must be an integer"):
        m(torch.randn(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        m(torch.randn(2, 4), torch.tensor([0, 3]), update=True)
    assert torch.equal(m.centers, before)


def test_leading_dimensions_are_rows():
    torch.manual_seed(4)
    m = km.CenterLoss(5, 3)
    x = torch.randn(2, 7, 3)
    y = torch.randint(5, (2, 7))
    torch.testing.assert_close(m(x, y), m(x.reshape(14, 3), y.reshape(14)), rtol=0, atol=0)
