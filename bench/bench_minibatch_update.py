"""km.minibatch_update_ and km.minibatch_step_ (docs/ops.md): Sculley's mini-batch k-means.

op minibatch_update (labels given):
  torch            index_add_ + bincount + the Sculley formula, as a user writes it (baseline)
  torch-compile    the same under torch.compile
  kmgan_ext-<b>    km.minibatch_update_(..., deterministic=False, backend=b)  (fast mode)
  kmgan_ext-<b>-det  the same with deterministic=True (bitwise reproducible; checked twice)
  flash-kmeans     triton_centroid_update_euclid (GPU). It computes the Lloyd mean, which is
                   the Sculley step from zero counts, so it is checked against the reference
                   run with zero counts; the work per call (segment sums of N rows) is the same.
op minibatch_step (assign against the current centers, then update):
  torch, torch-compile, kmgan_ext-<b>[-det] (km.minibatch_step_),
  sklearn          MiniBatchKMeans.partial_fit with the same centers and counts (CPU)

Each provider works on its own copy of centers and counts; the timed calls keep updating
that copy (the work per call does not depend on the values).
Checks: the counts exactly, the centers against the update run in float64 (kmgan_ext
.reference on float64 copies) within twice plain float32 torch's own error against it, or 1e-6
of the centers' scale (bench/_correctness.tolerances' rule); a step's labels by
_correctness.check_labels, then its update with those labels by the same rule.

Run alone: python bench/bench_minibatch_update.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
from bench_assign import torch_matmul  # noqa: E402

BASELINE = "torch"


def shapes(ctx: H.Ctx) -> list[dict]:
    paper = dict(N=64, d=100, K=10, dtype="float32")
    return ctx.size(
        tiny=[dict(N=200, d=16, K=8, dtype="float32"), paper],
        quick=[paper, dict(N=200_000, d=100, K=100, dtype="float32")],
        full=[paper]
        + [dict(N=4096, d=100, K=100, dtype="float32"), dict(N=200_000, d=100, K=100, dtype="float32")]
        + [dict(N=200_000, d=128, K=1024, dtype="float32"), dict(N=1_000_000, d=64, K=16, dtype="float32")],
        gpu=[paper]
        + [dict(N=1_000_000, d=d, K=1024, dtype="float32") for d in (64, 128, 512)]
        + [dict(N=4_000_000, d=128, K=k, dtype="float32") for k in (16, 4096)],
    )


def make_inputs(shape: dict, device: torch.device):
    g = torch.Generator().manual_seed(1)
    n, d, k = shape["N"], shape["d"], shape["K"]
    dt = getattr(torch, shape["dtype"])
    x = torch.randn(n, d, generator=g)
    centers = x[torch.randint(n, (k,), generator=g)] + 0.1 * torch.randn(k, d, generator=g)
    labels = torch.randint(k, (n,), generator=g)
    # Counts as after some training, with a few clusters never hit yet.
    counts = torch.randint(0, 1000, (k,), generator=g)
    counts[:: max(1, k // 7)] = 0
    return x.to(device, dt), centers.to(device, dt), counts.to(device), labels.to(device)


# --------------------------------------------------------------------------- naive torch
def torch_update_(centers, counts, x, labels):
    k = centers.shape[0]
    acc = torch.promote_types(centers.dtype, torch.float32)  # float32, float64 for float64 centers
    sums = torch.zeros(k, x.shape[1], dtype=acc, device=x.device).index_add_(0, labels, x.to(acc))
    m = torch.bincount(labels, minlength=k)
    counts += m
    hit = (m > 0)[:, None]
    step = (sums - m[:, None] * centers.to(acc)) / counts.clamp_min(1)[:, None]
    centers.copy_(torch.where(hit, centers.to(acc) + step, centers.to(acc)).to(centers.dtype))
    return centers, counts


def torch_step_(centers, counts, x):
    labels, _ = torch_matmul(x, centers)
    torch_update_(centers, counts, x, labels)
    return centers, counts, labels


# --------------------------------------------------------------------------- checks
def update64(c0, n0, x, labels):
    """The update in float64 (kmgan_ext.reference on float64 copies): the truth."""
    from kmgan_ext import reference

    c, n = c0.double().clone(), n0.clone()
    reference.minibatch_update_(c, n, x.double(), labels.to(x.device, torch.int64))
    return c, n


def update_truth(c0, n0, x, labels):
    """(float64 truth, the tolerance of the centers): twice plain float32 torch's own error
    against that truth (torch_update_ from the same state, labels and x), or 1e-6 of the
    centers' scale (bench/_correctness.tolerances' rule)."""
    want = update64(c0, n0, x, labels)
    plain = torch_update_(c0.clone(), n0.clone(), x, labels.to(x.device, torch.int64))[0]
    tol = H.tolerances((plain, []), (want[0], []), [1e-6 * (1 + float(want[0].abs().max()))])[0]
    return want, tol


def _check_state(got, want_tol, note: str = "") -> tuple[bool, str]:
    (c, n), ((wc, wn), tol) = got, want_tol
    ok_n = bool(torch.equal(n.cpu(), wn.cpu()))
    own = H.yardstick_tols([wc])  # plain torch's own row: twice its own error cannot fail it
    why = "twice plain float32 torch's error against float64, or a floor"
    if own is not None:
        tol, why = own[0], f"plain torch, the yardstick: {H.YARDSTICK_RTOL:g} of the scale"
    res_c = H.close("centers", c, wc, rtol=0.0, atol=tol)
    return res_c[0] and ok_n, f"{res_c[1]} (allowed {tol:.2g}: {why}); counts {'exact' if ok_n else 'DIFFER'}{note}"


def _det_check(make_state, fn_of_state, check) -> tuple[bool, str]:
    """Two runs from the same state: bitwise identical, and right."""
    a = fn_of_state(*make_state())
    b = fn_of_state(*make_state())
    same = all(torch.equal(u, v) for u, v in zip(a, b) if u is not None)
    ok, msg = check(a)
    return ok and same, msg + ("; bitwise identical over 2 runs" if same else "; NOT bitwise reproducible")


def _check_step(out, x, c0, n0, truth) -> tuple[bool, str]:
    """An assignment + update from (c0, n0), judged with float32's near-ties in mind: the
    provider's labels must be the argmin up to near-ties (a near-tie row may go either way,
    which moves two centers and two counts), and its update with them must be as exact as
    plain float32 torch's update with them (``update_truth``)."""
    c, cnt, labels = out
    ok_l, msg_l = H.check_labels(x, c0, truth(), labels)
    ok_s, msg_s = _check_state((c, cnt), update_truth(c0, n0, x, labels))
    return ok_l and ok_s, f"{msg_l}; update with those labels: {msg_s}"


# Issue 15's CPU target (2-core machine): the deterministic segmented sums within 1.3x of the
# fast mode's time.
DET_TARGET_VS_FAST = 1.3


def run(ctx: H.Ctx) -> list[dict]:
    import kmgan_ext as km
    rows: list[dict] = []
    for i, shape in enumerate(shapes(ctx)):
        ctx.log(f"  minibatch_update/step {shape}")
        x, c0, n0, labels = make_inputs(shape, ctx.device)
        n, d, k = shape["N"], shape["d"], shape["K"]
        s = x.element_size()

        def fresh(c0=c0, n0=n0):
            return c0.clone(), n0.clone()

        want_update = H.Lazy(lambda: update_truth(c0, n0, x, labels))
        want_lloyd = H.Lazy(lambda: update_truth(c0, torch.zeros_like(n0), x, labels))

        truth = H.Lazy(lambda: H.nearest64(x, c0))
        upd_work = H.Work(bytes=n * d * s + n * 8 + 2 * k * d * s + 2 * k * 8, flops=2.0 * n * d, items=n)
        step_work = H.Work(
            bytes=n * d * s + 2 * k * d * s + 2 * k * 8,
            flops=2.0 * n * k * d + 2.0 * n * d,
            items=n,
            flop_kind="tf32" if ctx.cuda else "fp32",
        )

        # ---------------- update (labels given)
        def upd_make(fn):
            def make():
                c, cnt = fresh()
                return lambda: fn(c, cnt, x, labels)

            return make

        def upd_compiled():
            f = H.compiled(torch_update_, ctx)
            c, cnt = fresh()
            return lambda: f(c, cnt, x, labels)

        check_upd = lambda out: _check_state(out, want_update())  # noqa: E731
        entries = [
            ("torch", upd_make(torch_update_), check_upd, None),
            ("torch-compile", upd_compiled, check_upd, None),
        ]
        for b, why in H.kmgan_backends(ctx, i):
            for det in (False, True):

                def km_upd(c, cnt, xx, ll, b=b, det=det):
                    km.minibatch_update_(c, cnt, xx, ll, deterministic=det, backend=b)
                    return c, cnt

                name = f"kmgan_ext-{b}" + ("-det" if det else "")
                if det:
                    chk = lambda out, f=km_upd: _det_check(  # noqa: E731
                        fresh, lambda c, cnt: f(c, cnt, x, labels), check_upd
                    )
                else:
                    chk = check_upd
                entries.append((name, upd_make(km_upd), chk, why))

        def flash_make():
            if not ctx.cuda:
                raise H.Absent("GPU only (Triton kernels on CUDA tensors)")
            mod = H.optional_import("flash_kmeans.centroid_update_triton", "flash-kmeans")
            xb, lb, cb = x[None], labels[None], c0[None]

            def fn():
                new = mod.triton_centroid_update_euclid(xb, lb, cb)[0]
                return new, want_lloyd()[0][1]  # it keeps no counts: compare the centers only

            return fn

        entries.append(
            ("flash-kmeans", flash_make, lambda out: _check_state(out, want_lloyd(), " (Lloyd mean = zero counts)"), None)
        )
        entries.sort(key=H.compile_last)
        for name, make, chk, why in entries:
            rows += H.run_provider(ctx, "minibatch_update", shape, name, make, chk, work=upd_work, absent=why)

        # ---------------- step (assign + update)
        def step_make(fn):
            def make():
                c, cnt = fresh()
                return lambda: fn(c, cnt, x)

            return make

        def step_compiled():
            f = H.compiled(torch_step_, ctx)
            c, cnt = fresh()
            return lambda: f(c, cnt, x)

        check_step = lambda out: _check_step(out, x, c0, n0, truth)  # noqa: E731
        entries = [
            ("torch", step_make(torch_step_), check_step, None),
            ("torch-compile", step_compiled, check_step, None),
        ]
        for b, why in H.kmgan_backends(ctx, i):
            for det in (False, True):

                def km_step(c, cnt, xx, b=b, det=det):
                    return c, cnt, km.minibatch_step_(c, cnt, xx, deterministic=det, backend=b)

                name = f"kmgan_ext-{b}" + ("-det" if det else "")
                if det:
                    chk = lambda out, f=km_step: _det_check(fresh, lambda c, cnt: f(c, cnt, x), check_step)  # noqa: E731
                else:
                    chk = check_step
                make = step_make(km_step)
                if b == "reference" and n * k * d > (1e11 if ctx.cuda else 5e8):
                    make = H.skip("reference backend: float64 (N, K, d) differences too slow at this size")
                entries.append((name, make, chk, why))

        def sklearn_make():
            if ctx.cuda:
                raise H.Absent("CPU library (numpy arrays)")
            cluster = H.optional_import("sklearn.cluster", "scikit-learn")
            xs = x.numpy()
            mbk = cluster.MiniBatchKMeans(
                n_clusters=k, init=c0.numpy(), n_init=1, batch_size=n, reassignment_ratio=0.0
            )
            # partial_fit's first call seeds from `init` and takes a step; then we set the
            # state the other providers start from, and each timed call is one step.
            mbk.partial_fit(xs[: max(k, 1)])
            mbk.cluster_centers_ = c0.numpy().copy()
            mbk._counts = n0.numpy().astype(xs.dtype)

            calls = []

            def fn():
                # The check's call (the first) also asks for the labels the step will use:
                # predict runs the step's labelling function on the same centers. The timed
                # calls are partial_fit alone.
                labels = None if calls else torch.from_numpy(mbk.predict(xs)).long()
                calls.append(1)
                mbk.partial_fit(xs)
                return torch.from_numpy(mbk.cluster_centers_), torch.from_numpy(mbk._counts).long(), labels

            return fn

        entries.append(("sklearn", sklearn_make, check_step, None))
        entries.sort(key=H.compile_last)
        for name, make, chk, why in entries:
            rows += H.run_provider(ctx, "minibatch_step", shape, name, make, chk, work=step_work, absent=why)
    H.add_speedups(rows, BASELINE)
    H.note_cpu_targets(ctx, rows, note_targets)
    return rows


def note_targets(rows: list[dict]) -> None:
    H.note_target(
        rows, "minibatch_update", "kmgan_ext-cpu-det", "forward",
        lambda s: (s.get("N"), s.get("K")) == (200_000, 100),
        f"<= {DET_TARGET_VS_FAST:g}x the fast mode", _vs_fast_mode,
    )  # fmt: skip


def _vs_fast_mode(r: dict, rows: list[dict]):
    """The deterministic update's median over the fast mode's, same op, shape and mode."""
    fast = next((q for q in rows if q["op"] == r["op"] and q["shape"] == r["shape"] and q["mode"] == r["mode"]
                 and q["provider"] == "kmgan_ext-cpu" and q["median_ms"]), None)
    if fast is None:
        return None
    ratio = r["median_ms"] / fast["median_ms"]
    return f"{ratio:.2f}x the fast mode", ratio <= DET_TARGET_VS_FAST


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "minibatch_update", *sys.argv[1:]])
