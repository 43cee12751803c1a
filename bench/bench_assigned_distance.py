"""km.assigned_distance (docs/ops.md, KM-GAN losses, KM-GAN Eq. 5/6 and Wen et al.'s center loss).

Reductions: "fro" (the paper's ||D(x) - C[l]||_2 of the batch), "mean" (mean row norm),
"sq_sum" (0.5 sum ||x_i - c_{l_i}||^2, with learnable centers as in face recognition).
Providers on the same inputs:
  torch            the formula in float32 by autograd, e.g. (x - c[l]).norm() (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.assigned_distance(x, l, c, reduction, backend=b)
The truth is autograd of kmgan_ext.reference.assigned_distance on float64 copies; value and
gradients must be within twice plain float32 torch's own error of it (float32 sums over
millions of terms are off by ~1e-4 relative), or 1e-5 of their scale. The naive provider is
written here because the reference accumulates in float64 (ground truth).

Run alone: python bench/bench_assigned_distance.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "assigned_distance"
BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    def s(n, d, k, red="fro", cg=False):
        return dict(N=n, d=d, K=k, reduction=red, centers_grad=cg)

    paper = s(64, 100, 10)
    big = (65_536, 256, 1024)
    return ctx.size(
        tiny=[s(50, 8, 5), s(50, 8, 5, "mean"), s(50, 8, 5, "sq_sum", True), paper],
        quick=[paper, s(*big), s(*big, "sq_sum", True)],
        full=[paper, s(4096, 128, 100), s(*big), s(*big, "mean"), s(*big, "sq_sum", True), s(262_144, 128, 1024)],
        gpu=[paper, s(4096, 128, 100), s(*big), s(*big, "sq_sum", True), s(1_000_000, 128, 1024), s(1_000_000, 128, 1024, "sq_sum", True)],
    )


def torch_assigned_distance(x, labels, centers, reduction):
    diff = x - centers[labels]
    if reduction == "fro":
        return diff.norm()
    if reduction == "mean":
        return diff.norm(dim=1).mean()
    return 0.5 * (diff * diff).sum()


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km
    from kmgan_ext import reference

    n, d, k, red = shape["N"], shape["d"], shape["K"], shape["reduction"]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g).to(ctx.device).requires_grad_()
    labels = torch.randint(k, (n,), generator=g).to(ctx.device)
    centers = torch.randn(k, d, generator=g).to(ctx.device).requires_grad_(shape["centers_grad"])
    leaves = [x, centers] if shape["centers_grad"] else [x]

    def truth():
        x64 = x.detach().double().requires_grad_()
        c64 = centers.detach().double().requires_grad_(centers.requires_grad)
        loss = reference.assigned_distance(x64, labels, c64, red)
        loss.backward()
        return loss.detach(), [x64.grad] + ([c64.grad] if len(leaves) > 1 else [])

    want = H.Lazy(truth)

    def tols():
        if len(leaves) > 1:
            fn = lambda a, c: torch_assigned_distance(a, labels, c, red)  # noqa: E731
        else:
            fn = lambda a: torch_assigned_distance(a, labels, centers, red)  # noqa: E731
        wl, wg = want()
        floors = [1e-5 * (1 + float(wl.abs()))] + [1e-5 * (1 + float(g.abs().max())) for g in wg]
        return H.tolerances(H.loss_and_grads(fn, leaves), want(), floors)

    tol = H.Lazy(tols)
    s = x.element_size()
    fwd = H.Work(bytes=n * d * s + n * 8 + k * d * s, flops=3.0 * n * d, items=n)
    bwd = H.Work(bytes=2 * n * d * s + n * 8 + k * d * s * (2 if shape["centers_grad"] else 1), flops=2.0 * n * d, items=n)
    work = {"forward": fwd, "backward": bwd, "full": H.Work(fwd.bytes + bwd.bytes, fwd.flops + bwd.flops, n)}

    def check(out):
        return H.check_loss(out, want(), tol(), ("loss", "grad x", "grad centers"))

    providers = H.torch_providers(torch_assigned_distance, ctx, x, labels, centers, red)
    providers += H.kmgan_providers(
        ctx, i, lambda b: (lambda: km.assigned_distance(x, labels, centers, reduction=red, backend=b))
    )
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=H.MODES_ALL, leaves=leaves)


# Issue 15's CPU target (2-core machine): forward + backward >= 4x naive torch, as center_loss.
FULL_TARGET_VS_TORCH = 4.0


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE, cpu_targets=note_targets)


def note_targets(rows: list[dict]) -> None:
    H.note_full_vs_torch(rows, OP, dict(N=65_536, d=256, K=1024), FULL_TARGET_VS_TORCH)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "assigned_distance", *sys.argv[1:]])
