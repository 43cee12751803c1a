"""km.VectorQuantizer: one training step of a VQ-VAE codebook (forward + backward + EMA update).

Shape: VQ-VAE's latents, B x 32 x 32 positions of d = 64 against K = 512 codes (B = 8).
Providers on the same latents and the same initial codebook (each builds a fresh layer):
  torch               the step as a user writes it: cdist argmin, gather, straight-through,
                      F.mse_loss commitment, EMA with a one-hot matmul (baseline)
  torch-compile       the same under torch.compile. Judged WRONG on torch 2.14.1 (CPU), rightly:
                      inductor drops the alpha of ``a.mul_(0.99).add_(m @ n, alpha=0.01)``
                      (the codebook after the EMA ~30x off; 4 lines reproduce it), and its grad
                      z is off by 2 beta (q_new - q) / numel, as if q were gathered from the
                      codebook after that update
  vector-quantize-pytorch  VectorQuantize(decay, eps, commitment_weight, rotation_trick=False)
  kmgan_ext-<b>       km.VectorQuantizer(update="always", backend=b)
The timed callable returns ``(quantized * w).sum() + loss`` (fixed w), so "full" is the whole
training step: quantize, commitment, the EMA update, and the backward to the latents.
Checked first against the VQ-VAE equations in float64 (kmgan_ext.reference's exact assign):
the loss, the latents' gradient (w + 2 beta (z - q) / numel) and the codebook after the EMA,
each within twice plain float32 torch's own error against that truth (bench/_correctness
.tolerances; floors 1e-5 of the loss, 1e-6 of the gradient's and the codebook's scale).

Run alone: python bench/bench_vector_quantizer.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "vector_quantizer"
BASELINE = "torch"
DECAY, EPS, BETA = 0.99, 1e-5, 0.25


def shapes(ctx: H.Ctx) -> list[dict]:
    vqvae = dict(B=8, H=32, W=32, d=64, K=512)
    return ctx.size(tiny=[dict(B=2, H=4, W=4, d=8, K=16)], quick=[vqvae], full=[vqvae],
                    gpu=[vqvae, dict(B=64, H=32, W=32, d=64, K=512)])


def make_inputs(shape: dict, device: torch.device):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(shape["B"], shape["H"], shape["W"], shape["d"], generator=g)
    codebook = torch.randn(shape["K"], shape["d"], generator=g)
    w = torch.randn(z.shape, generator=g)
    return z.to(device).requires_grad_(), codebook.to(device), w.to(device)


class TorchVQ:
    """The naive step (float32, as a user writes it)."""

    def __init__(self, codebook):
        self.embed = codebook.clone()
        self.cluster_size = torch.ones(codebook.shape[0], device=codebook.device)
        self.embed_avg = codebook.clone()

    def __call__(self, z):
        flat = z.reshape(-1, z.shape[-1])
        codes = torch.cdist(flat.detach(), self.embed).argmin(1)
        q = self.embed[codes].view_as(z)
        loss = BETA * F.mse_loss(z, q)
        with torch.no_grad():
            onehot = F.one_hot(codes, self.embed.shape[0]).to(flat.dtype)
            self.cluster_size.mul_(DECAY).add_(onehot.sum(0), alpha=1 - DECAY)
            self.embed_avg.mul_(DECAY).add_(onehot.t() @ flat.detach(), alpha=1 - DECAY)
            n = self.cluster_size.sum()
            size = (self.cluster_size + EPS) / (n + self.embed.shape[0] * EPS) * n
            self.embed.copy_(self.embed_avg / size[:, None])
        return z + (q - z).detach(), loss


def step_value(step, z, w):
    """The timed value of a naive step: (quantized * w).sum() + the commitment loss."""
    q, loss = step(z)
    return (q * w).sum() + loss


def truth(z, codebook, w):
    from kmgan_ext import reference

    z64, c64 = z.detach().double().reshape(-1, z.shape[-1]), codebook.double()
    codes, _ = reference.assign(z64, c64)
    q = c64[codes]
    loss = (q.reshape(z.shape) * w.double()).sum() + BETA * ((z64 - q) ** 2).mean()
    grad = w.double() + (2 * BETA * (z64 - q) / z64.numel()).reshape(z.shape)
    k = c64.shape[0]
    n = torch.zeros(k, dtype=torch.float64, device=z.device).index_add_(0, codes, torch.ones_like(codes, dtype=torch.float64))
    s = torch.zeros_like(c64).index_add_(0, codes, z64)
    size = DECAY + (1 - DECAY) * n
    avg = DECAY * c64 + (1 - DECAY) * s
    tot = size.sum()
    new = avg / ((size + EPS) / (tot + k * EPS) * tot)[:, None]
    return loss, grad, new


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km

    z, codebook, w = make_inputs(shape, ctx.device)
    want = H.Lazy(lambda: truth(z, codebook, w))
    state: dict = {}

    def tols():
        # plain float32 torch's own step (a fresh TorchVQ), its error against the float64
        # truth the yardstick of every provider, torch-compile's and torch's own included
        vq = TorchVQ(codebook)
        plain = H.loss_and_grads(lambda zz: step_value(vq, zz, w), [z])
        wl, wg, wc = want()
        floors = [1e-5 * (1 + float(wl.abs())), 1e-6 * (1 + float(wg.abs().max())), 1e-6 * (1 + float(wc.abs().max()))]
        return H.tolerances((plain[0], [plain[1][0], vq.embed]), (wl, [wg, wc]), floors)

    tol = H.Lazy(tols)

    def check(out):
        loss, grads = out
        wl, wg, wc = want()
        return H.check_loss((loss, [grads[0], state["codebook"]()]), (wl, [wg, wc]), tol(),
                            ("loss", "grad z", "codebook after the EMA"))

    def naive(compile_: bool):
        def make():
            vq = TorchVQ(codebook)
            state["codebook"] = lambda: vq.embed
            step = H.compiled(vq.__call__, ctx) if compile_ else vq
            return lambda: step_value(step, z, w)

        return make

    def vqp():
        mod = H.optional_import("vector_quantize_pytorch", "vector-quantize-pytorch")
        layer = mod.VectorQuantize(dim=shape["d"], codebook_size=shape["K"], decay=DECAY, eps=EPS,
                                   commitment_weight=BETA, rotation_trick=False,
                                   threshold_ema_dead_code=0).to(ctx.device).train()
        layer._codebook.embed.data.copy_(codebook[None])
        layer._codebook.embed_avg.data.copy_(codebook[None])
        state["codebook"] = lambda: layer._codebook.embed[0]

        def fn():
            q, _, loss = layer(z.reshape(shape["B"], -1, shape["d"]))
            return (q.reshape(z.shape) * w).sum() + loss.sum()

        return fn

    def ours(b):
        layer = km.VectorQuantizer(shape["K"], shape["d"], decay=DECAY, eps=EPS, commitment_weight=BETA,
                                   update="always", device=ctx.device, backend=b)
        layer.codebook.copy_(codebook[None])
        layer.embed_sum.copy_(codebook[None])
        state["codebook"] = lambda: layer.codebook[0]

        def fn():
            out = layer(z)
            return (out.quantized * w).sum() + out.loss

        return fn

    n, d, k = z.numel() // shape["d"], shape["d"], shape["K"]
    work = H.Work(bytes=3 * n * d * 4 + 2 * k * d * 4, flops=2.0 * n * k * d, items=n, item_unit="latents")
    providers = [("torch", naive(False), None), ("torch-compile", naive(True), None),
                 ("vector-quantize-pytorch", vqp, None)]
    providers += H.kmgan_providers(ctx, i, lambda b: ours(b))
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=("full",), leaves=[z])


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "vector_quantizer", *sys.argv[1:]])
