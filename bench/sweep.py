"""Scaling sweep: how each op's time grows with N, K and d, against its peers and the roofline.

    python bench/sweep.py --quick --out bench/results/sweep-cpu    # this CPU, minutes
    python bench/sweep.py --device cuda --out /tmp/sweep-gpu       # a lent GPU
    python bench/sweep.py --tiny --out /tmp/s                      # seconds (tests/test_bench_sweep.py)
    make bench-sweep

The grid is sparse: one factor at a time around a centre point (N, K, d) = (10^5, 100, 128),
N over 10^4..10^6, K over 10..4,096, d over 32..512 (--quick: fewer and smaller points).
Cells whose least work would take longer than --cell-s at the roofline (or a provider's
estimate, for the slow peers) are written as skipped rows with the reason, never dropped.

Providers per op (peers where they exist; absent ones are rows saying why):
  assign             kmgan_ext (km.assign), torch (matmul form + min), faiss IndexFlatL2 k=1
  minibatch_update   kmgan_ext fast and deterministic, torch (index_add_ + bincount + Sculley)
  assigned_distance  kmgan_ext "mean" forward+backward, torch autograd of the same formula
  center_loss        kmgan_ext (Eq. 4) forward+backward, torch autograd of Eq. 4 in float32
  kmeans_plusplus    kmgan_ext (km.kmeans_plusplus), scikit-learn kmeans_plusplus
  kmeans             the same initial centers and NITER Lloyd iterations over every row:
                     torch (_correctness.lloyd in float32: matmul-form argmin, index_add
                     means), kmgan_ext (km.kmeans backend "torch"), faiss (faiss.Kmeans as km.kmeans
                     backend "faiss" calls it: no subsampling; called directly for its
                     iteration statistics), scikit-learn KMeans(n_init=1, lloyd)

Each provider's first call, plain torch's too, is checked against the cell's float64 truth
(kmgan_ext.reference; for kmeans a float64 Lloyd, bench/_correctness.lloyd): labels equal
except at float32 near-ties (bench/_correctness.check_labels); values, gradients and Lloyd's
final centers and inertia within twice plain float32 torch's own error against the truth, or
a floor (_correctness.tolerances, _correctness.check_lloyd: the same rule as every bench_*.py);
plain torch's own rows, which that rule cannot fail, within 1e-3 of the scale (Lloyd: inertia
within 1e-4); seeding centers rows of x. Lloyd's truth refills an empty cluster with
scikit-learn's rule (the farthest row), except for faiss, which splits a large cluster
instead: a faiss row that split is judged against a float64 Lloyd with faiss's own split
rule, donor draws included (_correctness.faiss_split), and its note says so. A wrong answer
is not timed.
Timing, thread settings and the roofline (measured copy bandwidth and sgemm rate on CPU,
datasheet peaks on a known GPU) come from the bench harness (_timing.py, _roofline.py).
Written: results.json (run metadata, load average at start and end, rows with the work
model: flops, bytes, and pct_of_roofline), and one <op>.png per op: time against work.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _harness as H  # noqa: E402
from _timing import measure  # noqa: E402

OPS = ("assign", "minibatch_update", "assigned_distance", "center_loss", "kmeans_plusplus", "kmeans")
NITER = 5  # Lloyd iterations of the kmeans cells (the sweep is about growth, not totals)
# --quick's budget: no cell starts after it; the cell running then, the plots and the
# roofline measurement fit in the rest of 10 minutes on the 2-core machine (Makefile)
QUICK_BUDGET_S = 480.0


CENTRE = {"tiny": dict(N=2000, K=8, d=16), "quick": dict(N=100_000, K=100, d=128), "full": dict(N=100_000, K=100, d=128)}


def grid(size: str) -> list[dict]:
    """One factor at a time around a centre point (CENTRE)."""
    centre = CENTRE[size]
    if size == "tiny":
        ns, ks, ds = [500, 2000], [4, 8], [16]
    elif size == "quick":
        ns, ks, ds = [10_000, 100_000, 1_000_000], [10, 100, 1024, 4096], [32, 128, 512]
    else:
        ns, ks, ds = [10_000, 30_000, 100_000, 300_000, 1_000_000], [10, 32, 100, 320, 1024, 4096], [32, 64, 128, 256, 512]
    shapes = [dict(centre, N=n) for n in ns] + [dict(centre, K=k) for k in ks] + [dict(centre, d=d) for d in ds]
    out, seen = [], set()
    for s in shapes:
        key = (s["N"], s["K"], s["d"])
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def work(op: str, n: int, k: int, d: int, e: int) -> H.Work:
    """The least bytes and flops of one call (e = element size)."""
    trials = 2 + int(math.log(k))
    if op == "assign":
        return H.Work(bytes=n * d * e + k * d * e + n * 12, flops=2.0 * n * k * d)
    if op == "minibatch_update":
        return H.Work(bytes=n * d * e + n * 8 + 2 * k * d * e, flops=float(n * d))
    if op == "assigned_distance":  # forward reads x, backward reads x and writes grad x
        return H.Work(bytes=3 * n * d * e + n * 8, flops=6.0 * n * d)
    if op == "center_loss":  # real and fake sides of N rows each, forward + backward
        return H.Work(bytes=2 * 3 * n * d * e + 2 * n * 8, flops=4.0 * n * d)
    if op == "kmeans_plusplus":  # one pass over x per center, the candidates' distances
        return H.Work(bytes=float(k) * n * d * e, flops=2.0 * n * d * k * trials)
    if op == "kmeans":  # NITER assign + update passes, and the final assignment
        return H.Work(bytes=(NITER * 2 + 1) * n * d * e, flops=(NITER + 1) * 2.0 * n * k * d)
    raise ValueError(op)


# Providers known to take far longer than the roofline: an estimated rate (flop/s of the
# least work) used to skip a provider whose one call would take over 5 x --cell-s (the
# roofline's rule for a cell), and to order the cells (``plan``). Measured in the quick sweep
# on the 2-core machine at load 7-8: scikit-learn's kmeans_plusplus 1.5e9 flops in 17 s
# (the idle machine is some 3x faster), its KMeans 1.5e9 in 0.39 s.
_SLOW_RATE = {("kmeans_plusplus", "sklearn"): 3e8, ("kmeans", "sklearn"): 4e9, ("assign", "sklearn"): 3e9}


def slow_estimate_s(op: str, name: str, flops: float) -> float | None:
    """The estimated seconds of one call of a slow provider (``_SLOW_RATE``), or None."""
    rate = _SLOW_RATE.get((op, name))
    return None if rate is None else flops / rate


def _data(n, d, k, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(min(k, 64), d, generator=g)
    x = means[torch.randint(len(means), (n,), generator=g)] + torch.randn(n, d, generator=g)
    c = x[torch.randperm(n, generator=g)[:k]].clone()
    return x.to(device), c.to(device)


def cell_labels(op: str, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor | None:
    """The labels the update and loss cells take as input (the same for every provider and
    for the float64 truth)."""
    import kmgan_ext as km

    return km.assign(x, c)[0] if op in ("minibatch_update", "assigned_distance", "center_loss") else None


def providers(op: str, x: torch.Tensor, c: torch.Tensor, ctx: H.Ctx, labels: torch.Tensor | None = None):
    """[(name, fn or None, why absent)], plain torch (the yardstick of the checks) first."""
    import kmgan_ext as km

    n, d = x.shape
    k = c.shape[0]
    dev = x.device
    out = []
    if op == "assign":
        def naive():
            dist = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
            return dist.min(1)
        out.append(("torch", naive, None))
        out.append(("kmgan_ext", lambda: km.assign(x, c), None))
        try:
            faiss = H.optional_import("faiss", "faiss-cpu")
            xs, cs = x.cpu().numpy(), c.cpu().numpy()
            index = faiss.IndexFlatL2(d)
            index.add(cs)

            def fa():
                dd, ii = index.search(xs, 1)
                return torch.from_numpy(dd[:, 0]), torch.from_numpy(ii[:, 0])
            out.append(("faiss", fa, None))
        except H.Absent as e:
            out.append(("faiss", None, str(e)))
    elif op == "minibatch_update":

        def naive():
            cc, cnt = c.clone(), torch.zeros(k, dtype=torch.int64, device=dev)
            m = torch.bincount(labels, minlength=k)
            s = torch.zeros_like(cc).index_add_(0, labels, x)
            cnt += m
            upd = (s - m[:, None] * cc) / cnt.clamp(min=1)[:, None]
            return torch.where((m > 0)[:, None], cc + upd, cc)

        def ours(det):
            def f():
                cc, cnt = c.clone(), torch.zeros(k, dtype=torch.int64, device=dev)
                km.minibatch_update_(cc, cnt, x, labels, deterministic=det)
                return cc
            return f
        out += [("torch", naive, None), ("kmgan_ext", ours(False), None), ("kmgan_ext-deterministic", ours(True), None)]
    elif op == "assigned_distance":
        xg = x.clone().requires_grad_(True)

        def naive():
            v = (xg - c[labels]).norm(dim=1).mean()
            (g,) = torch.autograd.grad(v, xg)
            return v.detach(), g

        def ours():
            v = km.assigned_distance(xg, labels, c, "mean")
            (g,) = torch.autograd.grad(v, xg)
            return v.detach(), g
        out += [("torch", naive, None), ("kmgan_ext", ours, None)]
    elif op == "center_loss":
        xf, lf, cf = fake_side(x, labels, c)
        xr_g, xf_g = x.clone().requires_grad_(True), xf.clone().requires_grad_(True)

        def eq4(xr, lr, cr, xf_, lf_, cf_):
            def u(xx, ll, cc):
                s = torch.zeros_like(cc).index_add(0, ll, xx)
                m = torch.bincount(ll, minlength=cc.shape[0]).to(xx.dtype)
                return ((cc + s) / (1 + m)[:, None]).sum(0)
            return (u(xr, lr, cr) - u(xf_, lf_, cf_)).abs().sum()

        def naive():
            v = eq4(xr_g, labels, c, xf_g, lf, cf)
            return (v.detach(), *torch.autograd.grad(v, (xr_g, xf_g)))

        def ours():
            v = km.kmgan_center_loss(xr_g, labels, c, xf_g, lf, cf)
            return (v.detach(), *torch.autograd.grad(v, (xr_g, xf_g)))
        out += [("torch", naive, None), ("kmgan_ext", ours, None)]
    elif op == "kmeans_plusplus":
        out.append(("kmgan_ext", lambda: km.kmeans_plusplus(x, k, seed=0), None))
        try:
            from sklearn.cluster import kmeans_plusplus
            xs = x.cpu().numpy()
            out.append(("sklearn", lambda: torch.from_numpy(kmeans_plusplus(xs, k, random_state=0)[0]), None))
        except ImportError:
            out.append(("sklearn", None, "scikit-learn not installed"))
    elif op == "kmeans":
        out.append(("torch", lambda: H.lloyd(x, c, NITER, torch.float32)[0], None))
        out.append(("kmgan_ext", lambda: km.kmeans(x, k, init=c, niter=NITER, backend="torch").centers, None))
        from kmgan_ext.seeding import _data as sdata

        faiss = sdata.faiss_module()
        if faiss is not None and (dev.type == "cpu" or faiss.get_num_gpus() > 0):
            xs, cs = x.cpu().numpy(), c.cpu().numpy()

            def fa():
                # faiss.Kmeans as km.kmeans(backend="faiss") calls it (every row, no
                # subsample), directly, for its iteration statistics (the check reads nsplit).
                f = faiss.Kmeans(d, k, niter=NITER, seed=0, max_points_per_centroid=n // k + 1,
                                 min_points_per_centroid=1, gpu=faiss.get_num_gpus() > 0, verbose=False)
                f.train(xs, init_centroids=cs)
                return torch.from_numpy(f.centroids), [dict(obj=st["obj"], nsplit=st["nsplit"]) for st in f.iteration_stats]
            out.append(("faiss", fa, None))
        else:
            out.append(("faiss", None, "faiss not installed" if faiss is None else "faiss sees no GPU"))
        try:
            from sklearn.cluster import KMeans
            xs, cs = x.cpu().numpy(), c.cpu().numpy()

            def sk():
                km_ = KMeans(k, init=cs, n_init=1, max_iter=NITER, tol=0.0, algorithm="lloyd")
                return torch.from_numpy(km_.fit(xs).cluster_centers_)
            out.append(("sklearn", sk, None))
        except ImportError:
            out.append(("sklearn", None, "scikit-learn not installed"))
    return out


def fake_side(x, labels, c):
    """center_loss's fake side: the real rows and labels in reverse order, the centers
    reversed. The per-cluster sums of the two sides are equal, so L = |sum_m (c_m - c_(K-1-m))
    / (1 + n_m)|_1 is a small difference of large sums: float32 sums lose digits to the
    cancellation, which the float64 truth measures."""
    return x.flip(0).contiguous(), labels.flip(0).contiguous(), c.flip(0).contiguous()


def truth(op: str, x, c, labels):
    """The float64 answer of a cell (kmgan_ext.reference where it has the op)."""
    from kmgan_ext import reference as R

    if op == "assign":
        return H.nearest64(x, c)
    if op == "minibatch_update":
        cc, cnt = c.double().clone(), torch.zeros(c.shape[0], dtype=torch.int64, device=x.device)
        R.minibatch_update_(cc, cnt, x.double(), labels)
        return (cc,)
    if op == "assigned_distance":
        x64 = x.detach().double().requires_grad_()
        v = R.assigned_distance(x64, labels, c.double(), "mean")
        return (v.detach(), *torch.autograd.grad(v, x64))
    if op == "center_loss":
        xf, lf, cf = fake_side(x, labels, c)
        a, b = x.detach().double().requires_grad_(), xf.detach().double().requires_grad_()
        v = R.center_loss(a, labels, c.double(), b, lf, cf.double())
        u_r, u_f = R._side_mean(a.detach(), labels, c.double())[0], R._side_mean(b.detach(), lf, cf.double())[0]
        return (v.detach(), *torch.autograd.grad(v, (a, b))), (u_r - u_f, float(u_r.abs().max() + u_f.abs().max()))
    if op == "kmeans":
        # scikit-learn's rule for a cluster left empty; faiss's rows are judged against its own
        # (``faiss_truth``)
        return H.lloyd(x, c, NITER)
    return None


FAISS_SPLIT = ("faiss splits a large cluster in two for each cluster left empty, where scikit-learn and "
               "kmgan_ext move the farthest row into it: judged against a float64 Lloyd with faiss's own "
               "split rule (bench/_correctness.check_faiss_lloyd)")


def _tensor(a) -> torch.Tensor:
    """A provider's centers as a tensor: numpy arrays (scikit-learn, faiss) or tensors on any
    device (np.asarray cannot take a CUDA tensor)."""
    return a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def check(op, got, want, plain, x, c, yardstick: bool = False) -> tuple[bool, str]:
    """A provider's first answer against the float64 truth ``want``: labels and seeding by
    their own bars, values and gradients within twice plain float32 torch's (``plain``)
    error against the truth, or a floor (bench/_correctness.tolerances). ``yardstick``: got
    is plain torch's own answer (``plain``), which twice its own error cannot fail; it is
    held to _correctness.YARDSTICK_RTOL of the values' scale instead (Lloyd: its inertia to
    1e-4)."""
    if op == "assign":
        # (values, indices) for torch and faiss, (labels, dist2) for km.assign
        d2, lab = (got[1], got[0]) if got[1].is_floating_point() else (got[0], got[1])
        return H.check_labels(x, c, want, lab.to(x.device, torch.int64), d2.to(x.device).clamp(min=0))
    if op == "kmeans_plusplus":
        g = _tensor(got).to(x.device, x.dtype)
        if tuple(g.shape) != tuple(c.shape):
            return False, f"centers shape {tuple(g.shape)} != {tuple(c.shape)}"
        rows = H.nearest64(g, x)[1]
        ok = bool((rows == 0).all())
        return ok, "centers are rows of x" if ok else f"{int((rows != 0).sum())} centers are not rows of x"
    if op == "kmeans":
        stats = None
        if isinstance(got, tuple):
            got, stats = got
        got = _tensor(got)
        nsplit = sum(st["nsplit"] for st in stats or [])
        if stats is None:
            return H.check_lloyd(x, got, want, None if yardstick else plain)
        return H.check_faiss_lloyd(x, c, NITER, got, nsplit, want, plain)
    outs, extra = (want, None) if op != "center_loss" else want
    gs = got if isinstance(got, tuple) else (got,)
    ps = plain if isinstance(plain, tuple) else (plain,)
    names = {"minibatch_update": ("centers",), "assigned_distance": ("value", "grad x"),
             "center_loss": ("value", "grad x_real", "grad x_fake")}[op]  # fmt: skip
    results = []
    for i, (name, g, w, pl) in enumerate(zip(names, gs, outs, ps)):
        g, w, pl = g.double(), w.double(), pl.double()
        keep = torch.ones_like(w, dtype=torch.bool)
        note = ""
        if extra is not None and i > 0:
            # grad = sign(u_r - u_f) / (1 + n): a feature whose u_r - u_f is within float32
            # rounding of 0 may take either sign; those columns are left out.
            diff, u_scale = extra
            p_err = float((ps[0].double() - outs[0]).abs())
            ambiguous = diff.abs() <= 2 * p_err + 1e-6 * u_scale
            keep = keep & ~ambiguous[None, :]
            if bool(ambiguous.any()):
                note = f" ({int(ambiguous.sum())} of {diff.numel()} near-zero features of u_r - u_f left out)"
        floor = 1e-6 * (1 + float(w.abs().max())) if w.numel() else 1e-6
        tol = max(floor, 2 * float(((pl - w).abs() * keep).max())) if w.numel() else floor
        if yardstick:
            tol = H.YARDSTICK_RTOL * (1 + float(w.abs().max())) if w.numel() else floor
            note += " (plain torch: the yardstick, held to 1e-3 of the scale)"
        ok, msg = H.close(name, torch.where(keep, g, w), w, rtol=0.0, atol=tol)
        results.append((ok, msg + note))
    return H.all_ok(*results)


def plan(ops, size: str, roof) -> list[tuple[str, dict, float, float]]:
    """Every (op, shape) cell with its least work in seconds at the roofline and its
    estimated cost (the slowest peer's call, ``_SLOW_RATE``, where larger), in rounds: each
    op's cheapest cell, then each op's second cheapest, and so on. A run short of its
    --budget-s loses the costliest cells of every op, each listed as skipped, rather than
    every cell of the slow ops: each op's plot keeps its cheapest points."""
    cells = []
    for op in ops:
        mine = []
        for shape in grid(size):
            w = work(op, shape["N"], shape["K"], shape["d"], 4)
            bound_s = roof.bound(w.bytes, w.flops, w.flop_kind)[0] / 1e3
            # the slow peers' calls where they will run (estimate: _SLOW_RATE), else the roofline
            slow = [e for name in ("sklearn",) if (e := slow_estimate_s(op, name, w.flops)) is not None]
            mine.append((op, shape, bound_s, max([bound_s] + slow)))
        cells += [(rank, cell) for rank, cell in enumerate(sorted(mine, key=lambda cell: cell[3]))]
    return [cell for _, cell in sorted(cells, key=lambda rc: (rc[0], rc[1][3]))]


def run_cell(op: str, shape: dict, ctx: H.Ctx, cell_s: float) -> list[dict]:
    n, k, d = shape["N"], shape["K"], shape["d"]
    w = work(op, n, k, d, 4)
    bound_ms, _ = ctx.roof.bound(w.bytes, w.flops, w.flop_kind)
    rows = []
    if bound_ms / 1e3 * 5 > cell_s:
        for name in ("(all)",):
            r = H.empty_row(op, shape, name, "full")
            r["skipped"] = f"least work {bound_ms / 1e3:.2g} s at the roofline, x5 > --cell-s {cell_s}"
            rows.append(r)
        return rows
    x, c = _data(n, d, k, ctx.device)
    labels = cell_labels(op, x, c)
    want = H.Lazy(lambda: truth(op, x, c, labels))
    plain = None  # plain float32 torch's answer: the yardstick of the tolerances
    for name, fn, why in providers(op, x, c, ctx, labels):
        r = H.empty_row(op, shape, name, "full")
        r.update(flops=w.flops, bytes=w.bytes)
        rows.append(r)
        if fn is None:
            r["absent"] = why
            continue
        est = slow_estimate_s(op, name, w.flops)
        if est is not None and est > 5 * cell_s:
            r["skipped"] = (f"estimated {est:.2g} s a call at {_SLOW_RATE[(op, name)]:.2g} flop/s, "
                            f"x1 > 5 x --cell-s {cell_s}")
            continue
        if ctx.time_left() <= 0:
            r["skipped"] = "out of the run's budget"
            continue
        try:
            t0 = time.perf_counter()
            out = fn()
            ctx.sync()
            slow = time.perf_counter() - t0 > 0.2
            if name == "torch":
                plain = out
            if op in ("minibatch_update", "assigned_distance", "center_loss", "kmeans") and plain is None and name != "torch":
                r["correct"], r["check"] = False, "no plain torch answer to size the tolerance"
            else:
                r["correct"], r["check"] = check(op, out, want(), plain, x, c, yardstick=name == "torch")
            if op == "kmeans" and name == "faiss" and "judged by faiss's split rule" in r["check"]:
                r["note"] = FAISS_SPLIT
            if not r["correct"]:
                continue
            t = measure(fn, ctx, warm=slow)
            r.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, runs=t.runs)
            b_ms, what = ctx.roof.bound(w.bytes, w.flops, w.flop_kind)
            r["roofline"] = what
            r["pct_of_roofline"] = round(100.0 * b_ms / t.median_ms, 2) if t.median_ms else None
            r["gflops"] = w.flops / t.median_ms / 1e6
            r["gbps"] = w.bytes / t.median_ms / 1e6
        except Exception as e:  # one provider's failure is a row, not a crashed sweep
            r["error"] = f"{type(e).__name__}: {e}"[:300]
    return rows


SERIES_MARKERS = {"N": "o", "K": "s", "d": "^"}


def series(shape: dict, centre: dict) -> list[str]:
    """The factors whose one-at-a-time series hold this shape (the centre is in all three)."""
    varying = [f for f in ("N", "K", "d") if shape[f] != centre[f]]
    return varying or ["N", "K", "d"]


def _scaling_note(result: dict) -> str:
    """The 1-thread to all-threads sgemm ratios of the run (bench/_metadata.core_scaling)."""
    ratios = [cs["ratio"] for _, cs in H.core_scaling_runs(result)]
    return ", sgemm all / 1 thread " + " / ".join(f"{r}x" for r in ratios) if ratios else ""


def plot(result: dict, op: str, path: str) -> None:
    """Top: median time against the least work, one colour per provider, one line per
    one-factor series (marker: which of N, K, d varies), the roofline's time as black dashes.
    Bottom: each peer's time over kmgan_ext's at the same shape; where a line crosses 1 the
    faster one changes (the crossover), below 1 the peer is faster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = [r for r in result["rows"] if r["op"] == op and r.get("median_ms")]
    if not rows:
        return
    centre = CENTRE[result.get("args", {}).get("size", "quick")]
    bandwidth_op = op in ("minibatch_update", "assigned_distance", "center_loss")
    key, unit = ("bytes", "bytes moved (least)") if bandwidth_op else ("flops", "flops (least)")
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(7.5, 7.5), sharex=True, gridspec_kw=dict(height_ratios=[3, 2]))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    colour = {p: f"C{i}" for i, p in enumerate(provs)}
    shape_key = lambda r: (r["shape"]["N"], r["shape"]["K"], r["shape"]["d"])  # noqa: E731
    ours = {shape_key(r): r["median_ms"] for r in rows if r["provider"] == "kmgan_ext"}
    for fac, mk in SERIES_MARKERS.items():
        part = [r for r in rows if fac in series(r["shape"], centre)]
        for prov in provs:
            pts = sorted((r[key], r["median_ms"], r["p20_ms"], r["p80_ms"], shape_key(r)) for r in part if r["provider"] == prov)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker=mk, ms=4, lw=1, capsize=2, color=colour[prov])
            if prov != "kmgan_ext" and not prov.startswith("kmgan_ext"):
                rel = [(p[0], p[1] / ours[p[4]]) for p in pts if p[4] in ours]
                if rel:
                    rx.plot([q[0] for q in rel], [q[1] for q in rel], marker=mk, ms=4, lw=1, color=colour[prov])
    roof = result["roofline"]
    if roof:
        from _roofline import Roofline

        rl = Roofline(**roof)
        ax.plot([r[key] for r in rows], [rl.bound(r["bytes"], r["flops"], "fp32")[0] for r in rows], "k_", ms=9)
    handles = [Line2D([], [], color=colour[p], lw=2, label=p) for p in provs]
    handles += [Line2D([], [], color="grey", marker=mk, ls="none", label=f"{fac} varies") for fac, mk in SERIES_MARKERS.items()]
    handles.append(Line2D([], [], color="k", marker="_", ms=9, ls="none", label="roofline (least work)"))
    ax.legend(handles=handles, fontsize=7, ncol=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms)")
    c = ", ".join(f"{f}={v:g}" for f, v in centre.items())
    ax.set_title(f"{op}: time against work, one factor at a time around {c}\n"
                 f"({result['device']['name']}, load {result.get('load_avg_start')} at start, "
                 f"{result.get('load_avg_end')} at end{_scaling_note(result)})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    rx.axhline(1.0, color="k", lw=1)
    rx.set_yscale("log")
    rx.set_xlabel(unit)
    rx.set_ylabel("peer time / kmgan_ext time")
    rx.set_title("above 1: kmgan_ext is faster; a line crossing 1 is a crossover", fontsize=8)
    rx.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cell-s", type=float, default=None, help="skip cells whose least work exceeds this (s)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting cells after this many seconds (the rest are listed as skipped); "
                        "--quick: 480 unless given, so that the quick sweep ends within 10 minutes")
    a = p.parse_args(argv)
    a.ops = [o for o in a.ops.split(",") if o]
    bad = [o for o in a.ops if o not in OPS]
    if bad:
        p.error(f"unknown ops {bad}; choose from {OPS}")
    return a


def main(argv=None) -> dict:
    args = parse(argv)
    device = torch.device(args.device)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    cell_s = args.cell_s if args.cell_s is not None else {"tiny": 5.0, "quick": 2.0, "full": 20.0}[size]
    if args.budget_s is None and size == "quick":
        args.budget_s = QUICK_BUDGET_S
    threads = H.set_threads(args.threads)
    out = args.out or os.path.join(HERE, "results", f"sweep-{device.type}")
    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    ctx = H.Ctx(device=device, quick=size == "quick", tiny=size == "tiny", compile=False,
                deadline=None if args.budget_s is None else t0 + args.budget_s, log=H.eprint)  # fmt: skip
    start = H.wait_for_cores(log=H.eprint) if device.type == "cpu" and size != "tiny" else None
    ctx.roof = H.roofline_for(device, small=args.tiny)
    meta = H.run_metadata(ctx, dict(vars(args), size=size, cell_s=cell_s, niter=NITER), start)
    meta["threads"] = threads
    rows = []
    for op, shape, bound_s, _ in plan(args.ops, size, ctx.roof):
        if ctx.time_left() <= 0:
            r = H.empty_row(op, shape, "(all)", "full")
            r["skipped"] = (f"the run's budget (--budget-s {args.budget_s:g}) was spent before this cell: least work "
                            f"{bound_s:.2g} s at the roofline (cells run cheapest first)")
            rows.append(r)
            continue
        H.eprint(f"sweep: {op} {shape} ({time.monotonic() - t0:.0f} s)")
        try:
            rows += run_cell(op, shape, ctx, cell_s)
        except Exception as e:
            H.eprint(traceback.format_exc())
            r = H.empty_row(op, shape, "(cell)", "full")
            r["error"] = f"cell crashed: {type(e).__name__}: {e}"[:300]
            rows.append(r)
    # back in the grid's order: op by op, shape by shape
    order = {(op, json.dumps(sh, sort_keys=True)): i for i, (op, sh) in
             enumerate((op, sh) for op in args.ops for sh in grid(size))}  # fmt: skip
    rows.sort(key=lambda r: order[(r["op"], json.dumps(r["shape"], sort_keys=True))])
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["load_avg_end"] = H._loadavg()
    meta["core_scaling_end"] = H.core_scaling() if not ctx.cuda else None
    result = {**meta, "rows": rows}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")
    for op in args.ops:
        try:
            plot(result, op, os.path.join(out, f"{op}.png"))
        except Exception as e:
            H.eprint(f"sweep: no plot for {op}: {type(e).__name__}: {e}")
    H.eprint(f"sweep: wrote {out} in {meta['elapsed_s']} s")
    return result


if __name__ == "__main__":
    main()
