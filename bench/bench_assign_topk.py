"""km.assign(x, centers, k=k): the k nearest centers of every row, against naive torch.

Providers, all on the same x (N, d) and centers (K, d):
  torch            torch.cdist(x, c).topk(k, largest=False), the one-liner (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.assign(x, c, k=k, backend=b) for every backend usable on the device
Checked before timing (``_check``): each row's k labels are the float64 top k up to float32
near-ties (the allowance of assign's check, _correctness.check_labels), and dist2 is their
float64 squared distance within twice plain float32 torch's own dist2 error on the same
inputs (bench/_correctness.tolerances' rule), or 1e-6 of |x|^2 + |c|^2. kmgan_ext's labels
are exact (tests/test_assign_topk.py).

Run alone: python bench/bench_assign_topk.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
from bench_assign import _too_big_for_naive, make_inputs  # noqa: E402

OP = "assign_topk"
BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    f32 = "float32"
    return ctx.size(
        tiny=[dict(N=300, d=20, K=17, k=3, dtype=f32)],
        quick=[dict(N=64, d=100, K=10, k=3, dtype=f32), dict(N=50_000, d=64, K=1000, k=5, dtype=f32)],
        full=[dict(N=64, d=100, K=10, k=3, dtype=f32)]
        + [dict(N=100_000, d=d, K=1000, k=k, dtype=f32) for d, k in ((64, 5), (128, 10), (128, 1))],
        gpu=[dict(N=1_000_000, d=128, K=K, k=k, dtype=f32) for K, k in ((1024, 10), (4096, 5))],
    )


def torch_topk(x, c, k):
    dist2, labels = (torch.cdist(x, c) ** 2).topk(k, dim=1, largest=False)
    return labels, dist2


def _dist2_errors(x, c, k, out):
    """Per row chunk: (sorted float64 distances of the chosen labels, the float64 top k, the
    scale |x|^2 + max |c|^2, |dist2 - the chosen labels' float64 distances|), or a message."""
    labels, dist2 = out
    if tuple(labels.shape) != (x.shape[0], k) or tuple(dist2.shape) != (x.shape[0], k):
        return f"labels/dist2 shape {tuple(labels.shape)}/{tuple(dist2.shape)} != ({x.shape[0]}, {k})"
    if (torch.sort(labels.long(), dim=1).values.diff(dim=1) == 0).any():
        return "a center listed twice in a row"
    c64 = c.double()
    cc = float((c64 * c64).sum(1).max())
    step = max(1, (1 << 24) // max(1, c.shape[0] * x.shape[1]))
    parts = []
    for s in range(0, x.shape[0], step):
        xs, ls = x[s : s + step].double(), labels[s : s + step].long()
        d = torch.cdist(xs, c64) ** 2
        chosen = d.gather(1, ls)
        parts.append((chosen.sort(dim=1).values, d.topk(k, dim=1, largest=False).values,
                      (xs * xs).sum(1, keepdim=True) + cc, (dist2[s : s + step].double() - chosen).abs()))
    return [torch.cat(t) for t in zip(*parts)]


def _check(x, c, k, out, plain=None) -> tuple[bool, str]:
    """The labels: the float64 k nearest up to float32 near-ties, position by position (the
    allowance of _correctness.check_labels: 3e-5 of the distance plus 1e-6 of |x|^2 + |c|^2).
    dist2: the chosen labels' float64 squared distances within twice plain float32 torch's own
    error (``plain``, its answer on the same inputs), or 1e-6 of the scale; ``plain`` None
    (the torch row itself, the yardstick, or no naive run at this size): check_labels'
    allowance for dist2, 1e-4 of the distance plus 1e-6 of the scale."""
    got = _dist2_errors(x, c, k, out)
    if isinstance(got, str):
        return False, got
    chosen, best, scale, err = got
    near = chosen - best <= 3e-5 * best + 1e-6 * scale
    if not near.all():
        row = int((~near).any(1).nonzero()[0])
        return False, (f"{int((~near).any(1).sum())}/{x.shape[0]} rows not the float64 top {k} beyond float32 "
                       f"near-ties (row {row}: {chosen[row].tolist()} vs {best[row].tolist()})")
    msg = f"top-{k} labels = the float64 top {k} up to near-ties"
    if plain is None:
        bad = err > 1e-4 * chosen + 1e-6 * scale
        if bad.any():
            return False, msg + f"; dist2 off in {int(bad.sum())} of {bad.numel()}, worst {float(err.max()):.3g}"
        return True, msg + f"; dist2 within 1e-4 of the distance + 1e-6 of the scale (max err {float(err.max()):.2g})"
    p = _dist2_errors(x, c, k, plain)
    tol = max(1e-6 * float(scale.max()), 2 * float(p[3].max())) if not isinstance(p, str) else 0.0
    ok = float(err.max()) <= tol
    return ok, msg + (f"; dist2 max err {float(err.max()):.2g} (allowed {tol:.2g}: twice plain float32 torch's, "
                      "or 1e-6 of the scale)")


def case(ctx: H.Ctx, i: int, shape: dict) -> list[dict]:
    import kmgan_ext as km

    x, c = make_inputs(shape, ctx.device)
    n, d, kc, k = shape["N"], shape["d"], shape["K"], shape["k"]
    work = H.Work(bytes=(n + kc) * d * x.element_size() + n * k * 12, flops=3.0 * n * kc * d, items=n)
    naive_skip = _too_big_for_naive(ctx, shape)
    providers = [
        ("torch", H.eager(torch_topk, x, c, k, skip=naive_skip), None),
        ("torch-compile", H.compiled_eager(torch_topk, ctx, x, c, k, skip=naive_skip), None),
    ]

    def make(b):
        if b == "reference" and n * kc * d > (1e11 if ctx.cuda else 5e8):
            raise H.Skipped(f"reference backend skipped at N*K*d={n * kc * d:.1e}: float64 differences")
        return lambda: km.assign(x, c, k=k, backend=b)

    providers += H.kmgan_providers(ctx, i, make)
    plain = H.Lazy(lambda: None if naive_skip else torch_topk(x, c, k))
    rows: list[dict] = []
    for name, mk, why in sorted(providers, key=H.compile_last):
        chk = (lambda out: _check(x, c, k, out)) if name == "torch" else (lambda out: _check(x, c, k, out, plain()))
        rows += H.run_provider(ctx, OP, shape, name, mk, chk, work=work, absent=why)
    return rows


def run(ctx: H.Ctx) -> list[dict]:
    return H.run_cases(ctx, OP, shapes(ctx), case, BASELINE)


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", OP, *sys.argv[1:]])
