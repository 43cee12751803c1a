"""Inputs as they come: leading dimensions, int32 labels, 16-bit features against float32
centers (autocast), and error messages that name the expected value."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import backend_params


def _data(shape, k=4, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(dtype).to(device)
    c = torch.randn(k, shape[-1], generator=g).to(device)
    return x, c


# ------------------------------------------------------------------------------ leading dims
@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_leading_dims(device, backend):
    x, c = _data((2, 3, 7, 5), device=device)
    labels, dist2 = km.assign(x, c, backend=backend)
    assert labels.shape == (2, 3, 7) and dist2.shape == (2, 3, 7)
    flat_l, flat_d = km.assign(x.reshape(-1, 5), c, backend=backend)
    assert torch.equal(labels.reshape(-1), flat_l) and torch.equal(dist2.reshape(-1), flat_d)
    one_l, one_d = km.assign(x[1, 2, 3], c, backend=backend)  # a single (d,) vector
    assert one_l.shape == () and int(one_l) == int(labels[1, 2, 3])


# top-k (issue 12) takes the same forms: x (..., d) with 2-D centers gives (..., k)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_topk_leading_dims(device, backend, metric):
    x, c = _data((2, 3, 7, 5), k=6, device=device)
    labels, dist2 = km.assign(x, c, k=3, metric=metric, backend=backend)
    assert labels.shape == (2, 3, 7, 3) and dist2.shape == (2, 3, 7, 3)
    flat_l, flat_d = km.assign(x.reshape(-1, 5), c, k=3, metric=metric, backend=backend)
    assert torch.equal(labels.reshape(-1, 3), flat_l) and torch.equal(dist2.reshape(-1, 3), flat_d)
    one_l, one_d = km.assign(x[1, 2, 3], c, k=3, metric=metric, backend=backend)  # a (d,) vector
    assert one_l.shape == (3,) and torch.equal(one_l, labels[1, 2, 3])
    assert torch.equal(one_d, dist2[1, 2, 3])


@pytest.mark.parametrize("device,backend", backend_params())
def test_updates_leading_dims(device, backend):
    x, c = _data((3, 6, 4), device=device)
    labels, _ = km.assign(x, c, backend=backend)
    want, want_n = c.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    km.minibatch_update_(want, want_n, x.reshape(-1, 4), labels.reshape(-1), backend=backend,
                         deterministic=True)
    got, got_n = c.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    km.minibatch_update_(got, got_n, x, labels, backend=backend, deterministic=True)
    assert torch.equal(got, want) and torch.equal(got_n, want_n)
    got, got_n = c.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    step_labels = km.minibatch_step_(got, got_n, x, backend=backend, deterministic=True)
    assert step_labels.shape == (3, 6) and torch.equal(step_labels, labels)
    assert torch.equal(got, want) and torch.equal(got_n, want_n)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 6\) \(x.shape\[:-1\]\)"):
        km.minibatch_update_(c.clone(), want_n.clone(), x, labels.reshape(6, 3), backend=backend)


@pytest.mark.parametrize("device,backend", backend_params())
def test_losses_leading_dims(device, backend):
    x, c = _data((2, 5, 3), device=device)
    labels, _ = km.assign(x, c, backend="reference")
    for red in ("fro", "mean", "sq_sum"):
        got = km.assigned_distance(x, labels, c, red, backend=backend)
        want = km.assigned_distance(x.reshape(-1, 3), labels.reshape(-1), c, red, backend=backend)
        assert torch.equal(got, want), red
    got = km.kmgan_center_loss(x, labels, c, x.flip(0), labels.flip(0), c, backend=backend)
    want = km.kmgan_center_loss(x.reshape(-1, 3), labels.reshape(-1), c,
                                x.flip(0).reshape(-1, 3), labels.flip(0).reshape(-1), c,
                                backend=backend)
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------ int32 labels
@pytest.mark.parametrize("device,backend", backend_params())
def test_int32_labels(device, backend):
    x, c = _data((30, 3), device=device)
    l64, _ = km.assign(x, c, backend="reference")
    l32 = l64.to(torch.int32)
    for red in ("fro", "sq_sum"):
        assert torch.equal(km.assigned_distance(x, l32, c, red, backend=backend),
                           km.assigned_distance(x, l64, c, red, backend=backend))
    assert torch.equal(km.kmgan_center_loss(x, l32, c, x, l32, c, backend=backend),
                       km.kmgan_center_loss(x, l64, c, x, l64, c, backend=backend))
    a, na = c.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    b, nb = c.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    km.minibatch_update_(a, na, x, l32, deterministic=True, backend=backend)
    km.minibatch_update_(b, nb, x, l64, deterministic=True, backend=backend)
    assert torch.equal(a, b) and torch.equal(na, nb)
    sa, ea = torch.zeros(4, device=device), torch.zeros(4, 3, device=device)
    sb, eb = sa.clone(), ea.clone()
    km.ema_update_(a, sa, ea, x, l32, deterministic=True, backend=backend)
    km.ema_update_(b, sb, eb, x, l64, deterministic=True, backend=backend)
    assert torch.equal(a, b) and torch.equal(sa, sb) and torch.equal(ea, eb)


def test_int32_labels_range_still_checked():
    x, c = _data((5, 3))
    bad = torch.tensor([0, 1, 4, 0, 0], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        km.assigned_distance(x, bad, c)
    with pytest.raises(TypeError, match="labels must be int64 or int32, got torch.int16"):
        km.assigned_distance(x, bad.to(torch.int16), c)


# ------------------------------------------------------------------------------ autocast case
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device,backend", backend_params())
def test_half_features_float32_centers(device, backend, dtype):
    x, c = _data((40, 6), k=5, dtype=dtype, device=device)
    labels, dist2 = km.assign(x, c, backend=backend)
    want_l, want_d = km.assign(x.float(), c, backend=backend)  # the 16-bit values are exact in float32
    assert torch.equal(labels, want_l) and torch.equal(dist2, want_d)
    assert dist2.dtype == torch.float32
    a, na = c.clone(), torch.zeros(5, dtype=torch.int64, device=device)
    b, nb = c.clone(), torch.zeros(5, dtype=torch.int64, device=device)
    km.minibatch_update_(a, na, x, labels, deterministic=True, backend=backend)
    km.minibatch_update_(b, nb, x.float(), labels, deterministic=True, backend=backend)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(km.assigned_distance(x, labels, c, backend=backend),
                       km.assigned_distance(x.float(), labels, c, backend=backend))
    top_l, top_d = km.assign(x, c, k=3, backend=backend)  # top-k too (issue 12)
    want_l, want_d = km.assign(x.float(), c, k=3, backend=backend)
    assert torch.equal(top_l, want_l) and torch.equal(top_d, want_d)


def test_half_features_gradient_and_no_center_copy(monkeypatch):
    x, c = _data((20, 4), dtype=torch.float16)
    seen = []
    real = reference.assign

    def spy(xx, cc, *flags):
        seen.append(cc)
        return real(xx, cc, *flags)

    monkeypatch.setattr(reference, "assign", spy)
    x.requires_grad_(True)
    _, dist2 = km.assign(x, c, backend="reference")
    assert seen and seen[0].data_ptr() == c.data_ptr()  # the float32 centers as they are
    (gx,) = torch.autograd.grad(dist2.sum(), x)
    assert gx.dtype == torch.float16


# ------------------------------------------------------------------------------ messages
def test_dtype_messages_name_both_arguments():
    x, c = _data((5, 3))
    with pytest.raises(TypeError, match=r"x and centers must share one dtype .*: got x "
                                        r"torch.float64, centers torch.float32"):
        km.assign(x.double(), c)
    with pytest.raises(TypeError, match=r"got x torch.float32, centers torch.float64"):
        km.assign(x, c.double())
    with pytest.raises(TypeError, match=r"got x torch.float16, centers torch.float64"):
        km.assign(x.half(), c.double())  # only float32 centers take 16-bit features
    labels = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"x_real and centers_fake must share one dtype"):
        km.kmgan_center_loss(x, labels, c, x, labels, c.double())
    # kmgan_losses casts the features to centers_real's dtype: centers_fake is held to that.
    with pytest.raises(TypeError, match=r"centers_fake must have dtype torch.float32 \(as "
                                        r"centers_real\), got torch.float64"):
        km.kmgan_losses(x, x, c, c.double())
