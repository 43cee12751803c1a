"""km.assign on B independent problems (x (B, N, d), centers (B, K, d)), against a Python
loop over the problems and against what peers offer for it.

Providers, all on the same x and centers:
  torch-bmm            ||x||^2 - 2 x c^T + ||c||^2 batched (torch.baddbmm) then min(-1):
                       the batched GEMM form users write
  torch-cdist          torch.cdist(x, c).min(-1) (cdist takes batches as they are): the
                       plainest form (float32 only: CPU cdist has no half kernels); the
                       baseline is the faster of the two plain-torch forms
  kmgan_ext-<b>        km.assign(x, c, backend=b), one launch for all problems
  loop-kmgan_ext-<b>   [km.assign(x[i], c[i], backend=b) for i in range(B)]: what a user
                       without batched problems writes (B launches)
  fast-pytorch-kmeans  fast_pytorch_kmeans.MultiKMeans.predict (labels only)
Every answer is checked problem by problem against the float64 argmin before it is timed.

Run alone: python bench/bench_assign_batched.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

OP = "assign_batched"
BASELINE = ("torch-bmm", "torch-cdist")


def shapes(ctx: H.Ctx) -> list[dict]:
    f32 = "float32"
    # B=32 problems (the row): e.g. one codebook per head or per channel group.
    return ctx.size(
        tiny=[dict(B=4, N=100, d=8, K=5, dtype=f32)],
        # The (slow, float64) reference is timed on a quick run's first shape only: the small one.
        quick=[dict(B=32, N=512, d=32, K=16, dtype=f32), dict(B=32, N=4096, d=64, K=64, dtype=f32)],
        full=[dict(B=32, N=4096, d=64, K=64, dtype=f32), dict(B=32, N=512, d=32, K=16, dtype=f32),
              dict(B=32, N=16384, d=128, K=256, dtype=f32)],
        gpu=[dict(B=32, N=65536, d=128, K=256, dtype=f32), dict(B=32, N=512, d=32, K=16, dtype=f32),
             dict(B=32, N=65536, d=128, K=256, dtype="bfloat16")],
    )


def make_inputs(shape: dict, device: torch.device):
    g = torch.Generator().manual_seed(0)
    b, n, d, k = shape["B"], shape["N"], shape["d"], shape["K"]
    x = torch.randn(b, n, d, generator=g) + 3 * torch.randn(b, 1, d, generator=g)
    idx = torch.randint(n, (b, k), generator=g)
    c = torch.gather(x, 1, idx[:, :, None].expand(b, k, d)) + 0.1 * torch.randn(b, k, d, generator=g)
    dt = getattr(torch, shape["dtype"])
    return x.to(device, dt), c.to(device, dt)


def torch_bmm(x, c):
    d = torch.baddbmm((c * c).sum(-1)[:, None, :], x, c.transpose(1, 2), alpha=-2)
    d += (x * x).sum(-1, keepdim=True)
    dist2, labels = d.min(-1)
    return labels, dist2.clamp_min(0)


def torch_cdist(x, c):
    dist, labels = torch.cdist(x, c).min(-1)
    return labels, dist * dist


def _multikmeans(ctx, x, c):
    mod = H.optional_import("fast_pytorch_kmeans", "fast-pytorch-kmeans")
    model = mod.MultiKMeans(n_clusters=c.shape[1], mode="euclidean")
    model.centroids = c
    return lambda: (model.predict(x), None)


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    x, c = make_inputs(shape, ctx.device)
    b, n, d, k = shape["B"], shape["N"], shape["d"], shape["K"]
    truth = H.Lazy(lambda: [H.nearest64(x[p], c[p]) for p in range(b)])
    s = x.element_size()
    flop_kind = {"bfloat16": "bf16", "float16": "fp16"}.get(shape["dtype"], "tf32" if ctx.cuda else "fp32")
    work = H.Work(bytes=b * ((n + k) * d * s + n * 12), flops=2.0 * b * n * k * d, items=b * n,
                  flop_kind=flop_kind)

    def check(out):
        labels, dist2 = out
        if labels is None or tuple(labels.shape) != (b, n):
            return False, f"labels shape {None if labels is None else tuple(labels.shape)} != ({b}, {n})"
        results = [
            H.check_labels(x[p], c[p], truth()[p], labels[p], None if dist2 is None else dist2[p])
            for p in range(b)
        ]
        bad = [(p, m) for p, (ok, m) in enumerate(results) if not ok]
        if bad:
            return False, f"problem {bad[0][0]}: {bad[0][1]} ({len(bad)}/{b} problems wrong)"
        return True, f"every problem: {results[0][1]}" if b else "no problems"

    def kmgan_make(be):
        import kmgan_ext as km

        return lambda: km.assign(x, c, backend=be)

    def loop_make(be):
        import kmgan_ext as km

        def fn():
            outs = [km.assign(x[p], c[p], backend=be) for p in range(b)]
            return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

        return fn

    cdist_skip = None if shape["dtype"] == "float32" else "torch.cdist: float32 only here (no half kernels on CPU)"
    providers = [("torch-bmm", H.eager(torch_bmm, x, c), None),
                 ("torch-cdist", H.eager(torch_cdist, x, c, skip=cdist_skip), None)]
    providers += H.kmgan_providers(ctx, i, kmgan_make)
    providers += [(f"loop-kmgan_ext-{be}", lambda be=be: loop_make(be), why)
                  for be, why in H.kmgan_backends(ctx, i)]
    providers.append(("fast-pytorch-kmeans", lambda: _multikmeans(ctx, x, c), None))
    return H.run_providers(ctx, OP, shape, providers, check, work=work)


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "assign_batched", *sys.argv[1:]])
