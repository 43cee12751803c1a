"""km.VectorQuantizer against a literal transcription of VQ-VAE (van den Oord et al. 2017,
Eq. 3 and appendix A.1) and against vector-quantize-pytorch's VectorQuantize."""
import inspect

import pytest
import torch

import kmgan_ext as km
from kmgan_ext.modules import vector_quantizer as vqmod
from testing import backend_params


def _backends():
    """Every backend; triton's ema_update_ is skipped, visibly, while its kernel still has the
    signature from before the VQ-VAE EMA (contract 4) -- it lands with the Triton kernel."""
    out = []
    for p in backend_params():
        device, b = p.values
        if b == "triton" and not p.marks:
            try:
                from kmgan_ext import kernels

                old = "cluster_size" not in inspect.signature(kernels.ema_update_).parameters
            except Exception:
                old = False
            if old:
                p = pytest.param(device, b, id=p.id, marks=[pytest.mark.skip(
                    reason="triton ema_update_ still has the pre-contract-4 signature")])
        out.append(p)
    return out


def _paper_step(x, E, N, M, beta, gamma, eps):
    """One training forward of VQ-VAE, written from the paper in float64.

    k_i = argmin_j ||z_i - e_j||^2; z_q = e_k; commitment beta * mean (z - sg[e])^2;
    N_j <- gamma N_j + (1 - gamma) n_j; m_j <- gamma m_j + (1 - gamma) sum_{i: k_i = j} z_i;
    N'_j = (N_j + eps) / (sum N + K eps) * sum N; e_j = m_j / N'_j.
    """
    z = x.double()
    K = E.shape[0]
    d2 = ((z[:, None, :] - E[None]) ** 2).sum(-1)
    k = d2.argmin(1)
    q = E[k]
    loss = beta * ((z - q) ** 2).mean()
    n = torch.zeros(K, dtype=torch.float64, device=z.device).index_add_(
        0, k, torch.ones(len(k), dtype=torch.float64, device=z.device))
    S = torch.zeros_like(E).index_add_(0, k, z)
    N = gamma * N + (1 - gamma) * n
    M = gamma * M + (1 - gamma) * S
    tot = N.sum()
    Ns = (N + eps) / (tot + K * eps) * tot
    return k, q, loss, N, M, M / Ns[:, None]


@pytest.mark.parametrize("device,backend", _backends())
def test_against_the_paper_over_several_steps(device, backend):
    torch.manual_seed(0)
    K, d, beta, gamma, eps = 32, 8, 0.25, 0.9, 1e-5
    vq = km.VectorQuantizer(K, d, decay=gamma, eps=eps, commitment_weight=beta, dtype=torch.float64,
                            device=device, backend=backend)
    E = vq.codebook[0].clone()
    N, M = torch.ones(K, dtype=torch.float64, device=device), E.clone()
    for step in range(4):
        x = torch.randn(3, 40, d, dtype=torch.float64, device=device)
        out = vq(x, update=True)
        k, q, loss, N, M, E = _paper_step(x.reshape(-1, d), E, N, M, beta, gamma, eps)
        assert torch.equal(out.codes.reshape(-1), k), step
        # the codebook after earlier steps carries the EMA's rounding (Triton's float64 decay is a
        # float32 hi/lo pair: ~1e-14), so the codes it gives agree to the codebook's tolerance
        torch.testing.assert_close(out.quantized.reshape(-1, d), q, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(vq.cluster_size[0], N, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(vq.embed_sum[0], M, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(vq.codebook[0], E, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("update", [False, True])
def test_straight_through_and_commitment_gradient(update):
    """With update=True the backward runs after the EMA rewrote the codebook: the gradient
    must still use the codes the forward used (it read the new ones before the fix)."""
    torch.manual_seed(1)
    vq = km.VectorQuantizer(16, 4, commitment_weight=0.5, decay=0.5)
    x = torch.randn(10, 4, requires_grad=True)
    used = vq.codebook[0].clone()
    out = vq(x, update=update)
    assert update != torch.equal(vq.codebook[0], used)
    g = torch.randn(10, 4)
    ((out.quantized * g).sum() + out.loss).backward()
    q = used[out.codes]
    want = g + 0.5 * 2 * (x.detach() - q) / x.numel()  # identity + commitment
    torch.testing.assert_close(x.grad, want, rtol=1e-6, atol=1e-7)
    assert vq.codebook.grad is None if hasattr(vq.codebook, "grad") else True


def test_learnable_codebook_gets_the_codebook_term():
    torch.manual_seed(2)
    vq = km.VectorQuantizer(8, 3, learnable_codebook=True, commitment_weight=0.25, dtype=torch.float64)
    assert isinstance(vq.codebook, torch.nn.Parameter)
    x = torch.randn(20, 3, dtype=torch.float64)
    before = vq.codebook.detach().clone()
    out = vq(x, update=True)  # no EMA on a learnable codebook
    assert torch.equal(vq.codebook.detach(), before)
    out.loss.backward()
    E = before[0].clone().requires_grad_(True)
    k = out.codes
    ref = ((x - E[k]) ** 2).mean() + 0.25 * ((x - E[k].detach()) ** 2).mean()
    ref.backward()
    torch.testing.assert_close(vq.codebook.grad[0], E.grad, rtol=1e-12, atol=1e-14)


def test_update_is_a_visible_choice():
    vq = km.VectorQuantizer(8, 3)
    before = vq.codebook.clone()
    vq.train()
    vq(torch.randn(30, 3))
    assert torch.equal(vq.codebook, before)  # model.train() alone never updates
    vq(torch.randn(30, 3), update=True)
    assert not torch.equal(vq.codebook, before)
    t = km.VectorQuantizer(8, 3, update="train").eval()
    b2 = t.codebook.clone()
    t(torch.randn(30, 3))
    assert torch.equal(t.codebook, b2)
    t.train()(torch.randn(30, 3))
    assert not torch.equal(t.codebook, b2)


def test_kmeans_init_from_the_first_update_and_init_():
    x = torch.randn(200, 5)
    vq = km.VectorQuantizer(6, 5, kmeans_init=True, seed=3, decay=1.0)
    assert not bool(vq.initted)
    vq(x, update=True)
    assert bool(vq.initted)
    # decay 1: the EMA keeps N = 1, M = E, so the codebook is the k-means++ seeding itself
    torch.testing.assert_close(vq.codebook[0], km.kmeans_plusplus(x, 6, seed=3), rtol=1e-5, atol=1e-6)
    other = km.VectorQuantizer(6, 5, seed=3).init_(x)
    assert torch.equal(other.codebook[0], km.kmeans_plusplus(x, 6, seed=3))
    assert torch.equal(other.embed_sum, other.codebook) and bool((other.cluster_size == 1).all())


def test_dead_codes_replaced_by_batch_rows_deterministically():
    torch.manual_seed(4)
    x = torch.randn(64, 4)

    def run():
        torch.manual_seed(0)  # the initial codebook comes from torch's global RNG (as nn.Linear)
        vq = km.VectorQuantizer(16, 4, threshold_dead_code=0.6, decay=0.5, seed=7)
        vq.codebook.data[0, 8:] += 100.0  # far away: never used
        vq.embed_sum.copy_(vq.codebook)
        vq(x, update=True)
        return vq

    a, b = run(), run()
    assert torch.equal(a.codebook, b.codebook)
    replaced = a.codebook[0, 8:]
    assert bool((replaced[:, None, :] == x[None]).all(-1).any(1).all())  # rows of the batch
    assert bool((a.cluster_size[0, 8:] == 0.6).all())
    torch.testing.assert_close(a.embed_sum[0, 8:], 0.6 * replaced)


def test_usage_perplexity_and_heads():
    vq = km.VectorQuantizer(4, 2, heads=3)
    x = torch.randn(5, 7, 6)
    out = vq(x)
    assert out.quantized.shape == x.shape and out.codes.shape == (5, 7, 3)
    for h in range(3):
        xh = x.reshape(-1, 3, 2)[:, h]
        assert torch.equal(out.codes.reshape(-1, 3)[:, h], km.assign(xh, vq.codebook[h])[0])
    codes = torch.arange(4).repeat(5)
    assert float(vqmod._perplexity(codes, 4, torch.float32)) == pytest.approx(4.0)
    assert vq.usage().shape == (3, 4) and torch.allclose(vq.usage().sum(-1), torch.ones(3))
    assert float(vq.codebook_perplexity()[0]) == pytest.approx(4.0)


def test_distributed_path_equals_the_fused_update(monkeypatch):
    """With a one-rank "group" (all_reduce the identity), the all-reduced EMA equals ema_update_."""
    torch.manual_seed(5)
    a = km.VectorQuantizer(16, 4, decay=0.8, heads=2)
    b = km.VectorQuantizer(16, 4, decay=0.8, heads=2)
    b.load_state_dict(a.state_dict())
    xs = [torch.randn(50, 8) for _ in range(3)]
    for x in xs:
        a(x, update=True)
    monkeypatch.setattr(vqmod, "world", lambda group: "group")
    monkeypatch.setattr(vqmod.dist, "all_reduce", lambda t, group=None: None)
    for x in xs:
        b(x, update=True)
    torch.testing.assert_close(b.codebook, a.codebook, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.cluster_size, a.cluster_size, rtol=1e-6, atol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="num_codes"):
        km.VectorQuantizer(0, 3)
    with pytest.raises(ValueError, match="decay"):
        km.VectorQuantizer(4, 3, decay=1.5)
    with pytest.raises(ValueError, match="update must be one of"):
        km.VectorQuantizer(4, 3, update=True)
    vq = km.VectorQuantizer(4, 3, heads=2)
    with pytest.raises(ValueError, match="heads \\* dim = 6"):
        vq(torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating"):
        vq(torch.ones(2, 6, dtype=torch.int64))


def test_mixed_precision_input():
    vq = km.VectorQuantizer(8, 4)
    x = torch.randn(20, 4, dtype=torch.bfloat16, requires_grad=True)
    out = vq(x, update=True)
    assert out.quantized.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert x.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------- vector-quantize-pytorch
@pytest.mark.parametrize("heads,cosine", [(1, False), (2, False), (1, True)])
def test_against_vector_quantize_pytorch(heads, cosine):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(6)
    K, d, decay, eps, beta = 64, 8, 0.9, 1e-5, 0.25
    ours = km.VectorQuantizer(K, d, heads=heads, decay=decay, eps=eps, commitment_weight=beta,
                              cosine=cosine)
    theirs = vqp.VectorQuantize(
        dim=heads * d, codebook_dim=d, codebook_size=K, heads=heads, separate_codebook_per_head=heads > 1,
        decay=decay, eps=eps, commitment_weight=beta, kmeans_init=False,
        threshold_ema_dead_code=0, rotation_trick=False, use_cosine_sim=cosine,
    )
    cb = theirs._codebook
    cb.embed.data.copy_(ours.codebook.data)
    cb.embed_avg.data.copy_(ours.embed_sum)
    cb.cluster_size.data.copy_(ours.cluster_size)
    ours.train()
    theirs.train()
    for step in range(3):
        x = torch.randn(4, 30, heads * d)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        o = ours(x1, update=True)
        q, idx, loss = theirs(x2)
        assert torch.equal(o.codes, idx), step
        torch.testing.assert_close(o.quantized, q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(o.loss, loss.reshape(()), rtol=1e-5, atol=1e-7)
        g = torch.randn_like(q)
        ((o.quantized * g).sum() + o.loss).backward()
        ((q * g).sum() + loss.sum()).backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.codebook, cb.embed, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.cluster_size, cb.cluster_size, rtol=1e-6, atol=1e-6)
