"""km.CenterLoss (Wen et al. 2016), the face-recognition center loss, forward, backward, both.

Providers on the same features, labels and (learnable) centers:
  torch            pytorch-center-loss' CenterLoss.forward as it is written: the (N, C)
                   distance matrix by expand + addmm, a one-hot mask, a clamp, / N (baseline)
  torch-compile    the same under torch.compile
  torch-gather     the direct form a user could write: ((x - c[y]) ** 2).sum(1).mean()
  kmgan_ext-<b>    km.CenterLoss(reduction="mean", backend=b) (km.assigned_distance inside)
Checked first against float64 autograd of the batch mean of ||x_i - c_{y_i}||^2 (value,
gradients to x and to the centers), within twice plain float32 torch's own error.

Run alone: python bench/bench_center_loss_layer.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "center_loss_layer"
BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    # CASIA-WebFace: 10,575 identities, 512-d embeddings, batches of 256 (Wen et al. use 512-d)
    face = dict(N=256, d=512, C=10575)
    return ctx.size(tiny=[dict(N=16, d=8, C=10)], quick=[dict(N=128, d=2, C=10), face],
                    full=[dict(N=128, d=2, C=10), face], gpu=[face, dict(N=1024, d=512, C=10575)])


def make_inputs(shape: dict, device: torch.device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape["N"], shape["d"], generator=g)
    y = torch.randint(shape["C"], (shape["N"],), generator=g)
    c = torch.randn(shape["C"], shape["d"], generator=g)
    # the centers are an nn.Parameter (a leaf requiring grad), so the module can hold the same one
    return x.to(device).requires_grad_(), y.to(device), torch.nn.Parameter(c.to(device))


def pytorch_center_loss(x, labels, centers):
    """pytorch-center-loss (KaiyangZhou) CenterLoss.forward, transcribed."""
    b, c = x.shape[0], centers.shape[0]
    distmat = (x.pow(2).sum(1, keepdim=True).expand(b, c)
               + centers.pow(2).sum(1, keepdim=True).expand(c, b).t())
    distmat = torch.addmm(distmat, x, centers.t(), beta=1, alpha=-2)
    classes = torch.arange(c, device=x.device)
    mask = labels[:, None].expand(b, c).eq(classes.expand(b, c))
    return (distmat * mask.float()).clamp(min=1e-12, max=1e12).sum() / b


def gather_center_loss(x, labels, centers):
    return ((x - centers[labels]) ** 2).sum(1).mean()


def truth(x, y, c):
    x64, c64 = x.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    loss = ((x64 - c64[y]) ** 2).sum(1).mean()
    loss.backward()
    return loss.detach(), [x64.grad, c64.grad]


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km

    x, y, c = make_inputs(shape, ctx.device)
    want = H.Lazy(lambda: truth(x, y, c))

    def tols():
        plain = H.loss_and_grads(lambda a, b: gather_center_loss(a, y, b), [x, c])
        wl, wg = want()
        # pytorch-center-loss' clamp adds (C - 1) * 1e-12 per row: part of its formulation
        floors = [1e-5 * (1 + float(wl.abs())) + shape["C"] * 1e-12] + [1e-6 * (1 + float(g.abs().max())) for g in wg]
        return H.tolerances(plain, want(), floors)

    tol = H.Lazy(tols)

    def check(out):
        return H.check_loss(out, want(), tol(), ("loss", "grad x", "grad centers"))

    def ours(b):
        layer = km.CenterLoss(shape["C"], shape["d"], backend=b, device=ctx.device)
        layer.centers = c  # the shared Parameter, so its gradient is checked like the others'
        return lambda: layer(x, y)

    n, d, k = shape["N"], shape["d"], shape["C"]
    fwd = H.Work(bytes=2 * n * d * 4 + n * 8, flops=3.0 * n * d, items=n)
    work = {"forward": fwd, "backward": fwd, "full": H.Work(2 * fwd.bytes, 2 * fwd.flops, n)}
    providers = H.torch_providers(pytorch_center_loss, ctx, x, y, c)
    providers.append(("torch-gather", H.eager(gather_center_loss, x, y, c), None))
    providers += H.kmgan_providers(ctx, i, ours)
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=H.MODES_ALL, leaves=[x, c])


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "center_loss_layer", *sys.argv[1:]])
