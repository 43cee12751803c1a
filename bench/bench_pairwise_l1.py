"""km.pairwise_l1 (docs/ops.md, KM-GAN losses, KM-GAN Eq. 7): sum of L1 distances over all pairs.

pairs="inter": sum_{i,j} ||a_i - b_j||_1 (L_inter); pairs="intra": sum_{i != j} ||a_i - a_j||_1
over ordered pairs of one batch (L_intra). Providers on the same a (and b):
  torch            torch.cdist(a, b, p=1).sum() with its autograd backward (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.pairwise_l1(a, b, backend=b), the O(N log N d) sorting identity
  keops            pykeops LazyTensor sum of |a_i - b_j| (where installed)
The truth: gradients from kmgan_ext.reference.pairwise_l1_backward in float64 (rank counts),
and the value from them by Euler's identity for a positively 1-homogeneous function,
L(a, b) = <dL/da, a> + <dL/db, b> (exact, also with ties, whose pairs contribute |0| = 0);
reference.pairwise_l1 itself is the O(N^2 d) float64 cdist, minutes at the larger sizes.
Tolerance: twice plain float32 torch's own error (where it runs), or 1e-5 of the value.
The issue-4 target: N=4096, d=100 forward+backward ("full") >= 20x torch, on CPU and GPU.

Run alone: python bench/bench_pairwise_l1.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "pairwise_l1"
BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    def s(n, d, pairs):
        return dict(N=n, d=d, pairs=pairs)

    both = lambda n, d: [s(n, d, "inter"), s(n, d, "intra")]  # noqa: E731
    return ctx.size(
        tiny=both(40, 6) + [s(64, 100, "inter")],
        quick=both(64, 100) + [s(4096, 100, "inter")],  # the issue-4 target; cdist takes ~4 s/call here
        full=both(64, 100) + both(4096, 100) + [s(16_384, 100, "inter"), s(65_536, 128, "inter")],
        gpu=both(64, 100) + both(4096, 100) + [s(16_384, 100, "inter"), s(65_536, 128, "inter"), s(262_144, 128, "inter")],
    )


def torch_pairwise_l1(a, b=None):
    return torch.cdist(a, a if b is None else b, p=1).sum()


def _naive_skip(ctx: H.Ctx, n: int, d: int) -> str | None:
    """cdist(p=1) holds the (N, N) matrix and its backward does O(N^2 d) work."""
    if ctx.cuda:
        cap = 0.25 * torch.cuda.get_device_properties(ctx.device).total_memory
        if 3 * n * n * 4 > cap:
            return f"cdist(p=1) would hold ~{3 * n * n * 4 / 1e9:.0f} GB of (N, N) matrices"
        return None
    # Measured here: N=4096, d=100 takes ~1.4 s forward + 2.5 s backward on 2 cores.
    est = 4.0 * (n / 4096) ** 2 * (d / 100)
    if est > 30:
        return f"O(N^2 d) cdist would take ~{est:.0f} s per call on this CPU"
    return None


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km
    from kmgan_ext import reference

    n, d, inter = shape["N"], shape["d"], shape["pairs"] == "inter"
    g = torch.Generator().manual_seed(4)
    a = torch.randn(n, d, generator=g).to(ctx.device).requires_grad_()
    b = (0.3 + torch.randn(n, d, generator=g)).to(ctx.device).requires_grad_() if inter else None
    leaves = [a, b] if inter else [a]

    def truth():
        one = torch.ones((), dtype=torch.float64, device=a.device)
        ga, gb = reference.pairwise_l1_backward(one, a.detach().double(), None if b is None else b.detach().double())
        value = (ga * a.detach().double()).sum()
        grads = [ga]
        if b is not None:
            value = value + (gb * b.detach().double()).sum()
            grads.append(gb)
        return value, grads

    want = H.Lazy(truth)
    s = a.element_size()
    m = n if inter else n
    fwd = H.Work(bytes=(n + (m if inter else 0)) * d * s, items=n * m)
    bwd = H.Work(bytes=2 * (n + (m if inter else 0)) * d * s, items=n * m)
    work = {"forward": fwd, "backward": bwd, "full": H.Work(fwd.bytes + bwd.bytes, items=n * m, item_unit="pairs")}
    fwd.item_unit = bwd.item_unit = "pairs"

    skip = _naive_skip(ctx, n, d)

    def tols():
        wl, _ = want()
        # Gradients are integer rank counts: exact in float32 up to 2^24.
        floors = [1e-5 * (1 + float(wl.abs())), 1e-3, 1e-3]
        plain = None if skip else H.loss_and_grads(torch_pairwise_l1, leaves)
        return H.tolerances(plain, want(), floors)

    tol = H.Lazy(tols)

    def check(out):
        return H.check_loss(out, want(), tol(), ("value", "grad a", "grad b"))

    def keops_make():
        mod = H.optional_import("pykeops.torch", "pykeops")

        def fn():
            other = a if b is None else b
            a_i, b_j = mod.LazyTensor(a[:, None, :]), mod.LazyTensor(other[None, :, :])
            return (a_i - b_j).abs().sum(-1).sum(dim=1).sum()

        return fn

    def kmgan_make(bk):
        if bk == "reference" and n > (16_384 if ctx.cuda else 4096):
            raise H.Skipped("the reference forward is the O(N^2 d) float64 cdist")
        return lambda: km.pairwise_l1(a, b, backend=bk)

    providers = H.torch_providers(torch_pairwise_l1, ctx, a, b, skip=skip)
    providers += H.kmgan_providers(ctx, i, kmgan_make)
    providers.append(("keops", keops_make, None))
    return H.run_providers(ctx, OP, shape, providers, check, work=work, modes=H.MODES_ALL, leaves=leaves)


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "pairwise_l1", *sys.argv[1:]])
