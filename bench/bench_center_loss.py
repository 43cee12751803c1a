"""km.kmgan_center_loss (docs/ops.md, KM-GAN losses, KM-GAN Eq. 4), forward, backward and both.

Providers on the same features, labels and centers:
  torch            the formula in float32 with index_add + bincount, by autograd (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.kmgan_center_loss(..., backend=b)
The truth is autograd of kmgan_ext.reference.center_loss on float64 copies of the inputs;
value and gradients must be within twice plain float32 torch's own error of it (or 1e-5 of
their scale, whichever is larger).
The naive provider is written here rather than imported because the reference accumulates
in float64 (it is the ground truth), which no user would time as "plain torch".

Run alone: python bench/bench_center_loss.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "center_loss"
BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    paper = dict(N=64, d=100, K=10)
    return ctx.size(
        tiny=[dict(N=50, d=8, K=5), paper],
        quick=[paper, dict(N=65_536, d=256, K=1024)],
        full=[paper, dict(N=4096, d=128, K=100), dict(N=65_536, d=256, K=1024), dict(N=262_144, d=128, K=1024)],
        gpu=[paper, dict(N=4096, d=128, K=100), dict(N=65_536, d=256, K=1024), dict(N=1_000_000, d=128, K=1024)],
    )


def make_inputs(shape: dict, device: torch.device):
    g = torch.Generator().manual_seed(2)
    n, d, k = shape["N"], shape["d"], shape["K"]
    xr, xf = torch.randn(n, d, generator=g), 0.5 + torch.randn(n, d, generator=g)
    lr, lf = torch.randint(k, (n,), generator=g), torch.randint(k, (n,), generator=g)
    cr, cf = torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)
    xr, xf = (t.to(device).requires_grad_() for t in (xr, xf))
    return xr, lr.to(device), cr.to(device), xf, lf.to(device), cf.to(device)


def torch_center_loss(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake):
    def side(x, labels, centers):
        k = centers.shape[0]
        sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, labels, x)
        n = torch.bincount(labels, minlength=k)
        return ((centers + sums) / (1 + n)[:, None]).sum(0)

    return (side(x_real, labels_real, centers_real) - side(x_fake, labels_fake, centers_fake)).abs().sum()


def truth(inputs):
    from kmgan_ext import reference

    xr, lr, cr, xf, lf, cf = inputs
    xr64, xf64 = xr.detach().double().requires_grad_(), xf.detach().double().requires_grad_()
    loss = reference.center_loss(xr64, lr, cr.double(), xf64, lf, cf.double())
    loss.backward()
    return loss.detach(), [xr64.grad, xf64.grad]


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km

    inputs = make_inputs(shape, ctx.device)
    xr, lr, cr, xf, lf, cf = inputs
    n, d, k = shape["N"], shape["d"], shape["K"]
    want = H.Lazy(lambda: truth(inputs))

    def tols():
        plain = H.loss_and_grads(lambda a, b: torch_center_loss(a, lr, cr, b, lf, cf), [xr, xf])
        wl, wg = want()
        floors = [1e-5 * (1 + float(wl.abs()))] + [1e-6 * (1 + float(g.abs().max())) for g in wg]
        return H.tolerances(plain, want(), floors)

    tol = H.Lazy(tols)
    s = xr.element_size()
    fwd = H.Work(bytes=2 * n * d * s + 2 * n * 8 + 2 * k * d * s, flops=2.0 * n * d, items=2 * n)
    bwd = H.Work(bytes=2 * n * 8 + 2 * k * 8 + 2 * n * d * s, items=2 * n)
    work = {"forward": fwd, "backward": bwd, "full": H.Work(fwd.bytes + bwd.bytes, fwd.flops, 2 * n)}

    def check(out):
        return H.check_loss(out, want(), tol(), ("loss", "grad x_real", "grad x_fake"))

    providers = H.torch_providers(torch_center_loss, ctx, *inputs)
    providers += H.kmgan_providers(ctx, i, lambda b: (lambda: km.kmgan_center_loss(*inputs, backend=b)))
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=H.MODES_ALL, leaves=[xr, xf])


# Issue 15's CPU target (2-core machine): forward + backward >= 4x naive torch.
FULL_TARGET_VS_TORCH = 4.0


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE, cpu_targets=note_targets)


def note_targets(rows: list[dict]) -> None:
    H.note_full_vs_torch(rows, OP, dict(N=65_536, d=256, K=1024), FULL_TARGET_VS_TORCH)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "center_loss", *sys.argv[1:]])
