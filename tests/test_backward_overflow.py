"""The backward passes at huge finite inputs (issue 16, contract 2), on every kernel backend.

tests/test_bad_input.py calls the forwards only. Here the gradients of assigned_distance (x and
the centers, every reduction), assign's dist2, KM-GAN's center loss and the loss block
(kmgan_losses: L_D, L_G and L_center together) are taken at 3e19 (float32 squares overflow),
1e30 and near float32 max (differences overflow too), and compared with the float64 reference's
gradients rounded to float32. Two shapes: one block / program, and several.
"""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km
from testing import fast_backend_params

SCALES = [3e19, 1e30, 1e38]
SHAPES = [(6, 3, 4), (40, 33, 5)]  # (N, d, K)


def _data(scale, shape, seed=0):
    n, d, k = shape
    g = torch.Generator().manual_seed(seed)
    # |values| <= 3 * scale: finite at 1e38 (3e38 < 3.4e38), differences of two may not be.
    x = torch.randn(n, d, generator=g).clamp(-3, 3) * scale
    c = torch.randn(k, d, generator=g).clamp(-3, 3) * scale
    y = torch.randn(n + 3, d, generator=g).clamp(-3, 3) * scale
    ch = torch.randn(k + 1, d, generator=g).clamp(-3, 3)
    return x, c, y, ch


def _grads(fn, inputs, backend):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves, backend)
    outs = [o for o in (out if isinstance(out, tuple) else (out,))]
    ws = [0.7, -1.3, 0.4][: len(outs)]
    total = sum(w * o for w, o in zip(ws, outs))
    total.backward()
    return [out if isinstance(out, torch.Tensor) else torch.stack([o.detach() for o in outs])] + [
        t.grad for t in leaves]


def _compare(fn, inputs, backend):
    got = _grads(fn, inputs, backend)
    want = _grads(fn, inputs, "reference")
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is not None and w is not None, i
        assert g.dtype == w.dtype, (i, g.dtype, w.dtype)
        # float32 rounding of the largest finite entry; inf and NaN must match exactly.
        fin = w[w.isfinite()]
        scale = 1.0 + (float(fin.abs().max()) if fin.numel() else 0.0)
        torch.testing.assert_close(g.detach().double(), w.detach().double(), rtol=1e-5,
                                   atol=1e-5 * scale, equal_nan=True, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
def test_assigned_distance_backward(device, backend, reduction, scale, shape):
    x, c, _, _ = _data(scale, shape)
    labels = torch.arange(x.shape[0]) % c.shape[0]
    _compare(lambda x, c, be: km.assigned_distance(x, labels, c, reduction, backend=be), [x, c], backend)


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
def test_assign_backward(device, backend, scale, shape):
    x, c, _, _ = _data(scale, shape)
    _compare(lambda x, c, be: km.assign(x, c, backend=be)[1].sum(), [x, c], backend)


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
def test_center_loss_backward(device, backend, scale, shape):
    x, c, y, ch = _data(scale, shape)
    lr = torch.arange(x.shape[0]) % c.shape[0]
    lf = torch.arange(y.shape[0]) % ch.shape[0]
    _compare(lambda x, y, be: km.kmgan_center_loss(x, lr, c, y, lf, ch, backend=be), [x, y], backend)


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
def test_kmgan_losses_backward(device, backend, reduction, scale, shape):
    x, c, y, ch = _data(scale, shape)
    y = y / scale  # the fake batch near the origin: far from the huge real centers

    def fn(fr, ff, be):
        out = km.kmgan_losses(fr, ff, c, ch, reduction=reduction, backend=be)
        return out.loss_d, out.loss_g, out.loss_center

    _compare(fn, [x, y], backend)


def _compare_own_scale(fn, inputs, backend):
    """As _compare, but each output's tolerance follows its own size, not 1 + its size:
    soft_assign's Student-t gradients at these scales are ~1 / scale (W ~ 1 / D), and a
    kernel whose float32 W underflows to 0 must not pass under an absolute 1e-5."""
    got = _grads(fn, inputs, backend)
    want = _grads(fn, inputs, "reference")
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, (i, g.dtype, w.dtype)
        fin = w[w.isfinite()]
        scale = float(fin.abs().max()) if fin.numel() else 0.0
        torch.testing.assert_close(g.detach().double(), w.detach().double(), rtol=1e-4,
                                   atol=1e-5 * scale, equal_nan=True, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["student_t", "softmax"])
def test_soft_assign_backward(device, backend, kind, scale, shape):
    x, c, _, _ = _data(scale, shape)
    # Row 0 ties between its two nearest centers (x_0 = 0, c_2 = -c_0, c_0 the nearest to 0):
    # elsewhere softmax's q is one-hot at these scales, and a one-hot q has a zero gradient.
    norms = c.double().norm(dim=1)
    c[0] *= 0.5 * float(norms[1:].min() / norms[0])
    c[2] = -c[0]
    x[0] = 0.0
    q0 = km.soft_assign(x[:1], c, kind="softmax", backend="reference")[0]
    assert q0[0] == q0[2] == 0.5, q0
    # a weighted sum: q's rows sum to 1, so q.sum() has a zero gradient
    wq = torch.randn(x.shape[0], c.shape[0], generator=torch.Generator().manual_seed(3))
    _compare_own_scale(lambda x, c, be: (km.soft_assign(x, c, kind=kind, temperature=2.0, backend=be)
                                         * wq).sum(), [x, c], backend)


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
def test_assign_topk_backward(device, backend, scale, shape):
    x, c, _, _ = _data(scale, shape)
    wd = torch.tensor([0.7, -1.3])
    _compare(lambda x, c, be: (km.assign(x, c, k=2, backend=be)[1] * wd).sum(), [x, c], backend)
