"""km.soft_assign: DEC's Student-t and softmax responsibilities, forward and backward.

Providers on the same inputs (loss = sum(q * w) for a fixed random w, so the backward sees a
dense grad_q):
  torch            the formula by autograd: softmax(-cdist(x, c)^2 / T), or DEC's
                   (1 + cdist^2 / alpha)^-(alpha+1)/2 normalised (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.soft_assign(x, c, kind, backend=b)
The truth is autograd of kmgan_ext.reference.soft_assign on float64 copies; value and
gradients must be within twice plain float32 torch's own error, or 1e-5 of their scale.

Run alone: python bench/bench_soft_assign.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "soft_assign"
BASELINE = "torch"
ALPHA, TEMPERATURE = 1.0, 4.0


def shapes(ctx: H.Ctx) -> list[dict]:
    def s(n, d, k, kind):
        return dict(N=n, d=d, K=k, kind=kind)

    return ctx.size(
        tiny=[s(60, 8, 7, "student_t"), s(60, 8, 7, "softmax")],
        quick=[s(256, 10, 10, "student_t"), s(16_384, 64, 256, "student_t"), s(16_384, 64, 256, "softmax")],
        full=[s(256, 10, 10, "student_t"), s(65_536, 64, 256, "student_t"), s(65_536, 64, 256, "softmax"),
              s(65_536, 128, 1024, "softmax")],
        gpu=[s(256, 10, 10, "student_t"), s(1_000_000, 64, 256, "student_t"), s(1_000_000, 128, 1024, "softmax")],
    )


def torch_soft_assign(x, c, w, kind):
    d2 = torch.cdist(x, c) ** 2
    if kind == "softmax":
        q = torch.softmax(-d2 / TEMPERATURE, dim=1)
    else:
        q = (1.0 + d2 / ALPHA) ** (-(ALPHA + 1.0) / 2.0)
        q = q / q.sum(1, keepdim=True)
    return (q * w).sum()


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km
    from kmgan_ext import reference

    n, d, k, kind = shape["N"], shape["d"], shape["K"], shape["kind"]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, d, generator=g).to(ctx.device).requires_grad_()
    c = torch.randn(k, d, generator=g).to(ctx.device).requires_grad_()
    w = torch.randn(n, k, generator=g).to(ctx.device)
    leaves = [x, c]

    def truth():
        x64, c64 = x.detach().double().requires_grad_(), c.detach().double().requires_grad_()
        # float64 autograd through the reference's formula (its q is not differentiable itself)
        d2 = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
        q = torch.softmax(reference.soft_scores(d2, kind, ALPHA, TEMPERATURE), dim=1)
        loss = (q * w.double()).sum()
        loss.backward()
        return loss.detach(), [x64.grad, c64.grad]

    want = H.Lazy(truth)

    def tols():
        wl, wg = want()
        floors = [1e-5 * (1 + float(wl.abs()))] + [1e-5 * (1 + float(t.abs().max())) for t in wg]
        return H.tolerances(H.loss_and_grads(lambda a, b: torch_soft_assign(a, b, w, kind), leaves), want(), floors)

    tol = H.Lazy(tols)
    s = x.element_size()
    fwd = H.Work(bytes=(n + k) * d * s + n * k * 4, flops=3.0 * n * k * d, items=n)
    bwd = H.Work(bytes=2 * (n + k) * d * s + 2 * n * k * 4, flops=6.0 * n * k * d, items=n)
    work = {"forward": fwd, "backward": bwd, "full": H.Work(fwd.bytes + bwd.bytes, fwd.flops + bwd.flops, n)}

    def check(out):
        return H.check_loss(out, want(), tol(), ("loss", "grad x", "grad centers"))

    def make(b):
        if b == "reference" and n * k * d > (1e11 if ctx.cuda else 5e8):
            raise H.Skipped(f"reference backend skipped at N*K*d={n * k * d:.1e}")
        return lambda: (km.soft_assign(x, c, kind=kind, alpha=ALPHA, temperature=TEMPERATURE, backend=b) * w).sum()

    providers = H.torch_providers(torch_soft_assign, ctx, x, c, w, kind)
    providers += H.kmgan_providers(ctx, i, make)
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=H.MODES_ALL, leaves=leaves)


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", OP, *sys.argv[1:]])
