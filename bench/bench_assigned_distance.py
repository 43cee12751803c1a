"""km.assigned_distance (DESIGN.md 4.4, KM-GAN Eq. 5/6 and Wen et al.'s center loss).

Reductions: "fro" (the paper's ||D(x) - C[l]||_2 of the batch), "mean" (mean row norm),
"sq_sum" (0.5 sum ||x_i - c_{l_i}||^2, with learnable centers as in face recognition).
Providers on the same inputs:
  torch            the formula in float32 by autograd, e.g. (x - c[l]).norm() (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.assigned_distance(x, l, c, reduction, backend=b)
The truth is autograd of kmgan_ext.reference.assigned_distance on float64 copies. The naive
provider is written here because the reference accumulates in float64 (ground truth).

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
MODES_ALL = ("forward", "backward", "full")


def shapes(ctx: H.Ctx) -> list[dict]:
    def s(n, d, k, red="fro", cg=False):
        return dict(N=n, d=d, K=k, reduction=red, centers_grad=cg)

    paper = s(64, 100, 10)
    big = (65_536, 256, 1024)
    return ctx.size(
        tiny=[s(50, 8, 5), s(50, 8, 5, "mean"), s(50, 8, 5, "sq_sum", True), paper],
        quick=[paper, s(4096, 128, 100), s(*big), s(*big, "mean"), s(*big, "sq_sum", True)],
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


def run(ctx: H.Ctx) -> list[dict]:
    import kmgan_ext as km
    from kmgan_ext import reference

    rows: list[dict] = []
    for shape in shapes(ctx):
        ctx.log(f"  {OP} {shape}")
        n, d, k, red = shape["N"], shape["d"], shape["K"], shape["reduction"]
        g = torch.Generator().manual_seed(3)
        x = torch.randn(n, d, generator=g).to(ctx.device).requires_grad_()
        labels = torch.randint(k, (n,), generator=g).to(ctx.device)
        centers = torch.randn(k, d, generator=g).to(ctx.device).requires_grad_(shape["centers_grad"])
        leaves = [x, centers] if shape["centers_grad"] else [x]

        def truth(x=x, labels=labels, centers=centers, red=red, leaves=leaves):
            x64 = x.detach().double().requires_grad_()
            c64 = centers.detach().double().requires_grad_(centers.requires_grad)
            loss = reference.assigned_distance(x64, labels, c64, red)
            loss.backward()
            return loss.detach(), [x64.grad] + ([c64.grad] if len(leaves) > 1 else [])

        want = H.Lazy(truth)
        s = x.element_size()
        fwd = H.Work(bytes=n * d * s + n * 8 + k * d * s, flops=3.0 * n * d, items=n)
        bwd = H.Work(bytes=2 * n * d * s + n * 8 + k * d * s * (2 if shape["centers_grad"] else 1), flops=2.0 * n * d, items=n)
        work = {"forward": fwd, "backward": bwd, "full": H.Work(fwd.bytes + bwd.bytes, fwd.flops + bwd.flops, n)}

        def check(out, want=want):
            (loss, grads), (wl, wg) = out, want()
            res = [H.close("loss", loss, wl, rtol=1e-4, atol=1e-6)]
            res += [
                H.close(f"grad {nm}", gv, wv, rtol=1e-4, atol=1e-6 * (1 + float(wv.abs().max())))
                for nm, gv, wv in zip(("x", "centers"), grads, wg)
            ]
            return H.all_ok(*res)

        def naive(x=x, labels=labels, centers=centers, red=red):
            return lambda: torch_assigned_distance(x, labels, centers, red)

        def compiled_make(x=x, labels=labels, centers=centers, red=red):
            f = H.compiled(torch_assigned_distance, ctx)
            return lambda: f(x, labels, centers, red)

        providers = [("torch", naive, None), ("torch-compile", compiled_make, None)]
        for b, why in H.kmgan_backends(ctx):

            def make(b=b, x=x, labels=labels, centers=centers, red=red):
                return lambda: km.assigned_distance(x, labels, centers, reduction=red, backend=b)

            providers.append((f"kmgan_ext-{b}", make, why))
        for name, make, why in providers:
            rows += H.run_provider(
                ctx, OP, shape, name, make, check, work=work, modes=MODES_ALL, leaves=leaves, absent=why
            )
    H.add_speedups(rows, BASELINE)
    return rows


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "assigned_distance", *sys.argv[1:]])
