"""Seeding over a whole dataset (docs/ops.md, Seeding): km.kmeans_plusplus and km.kmeans.

KM-GAN seeds its real centers by k-means++ over the discriminator features of the whole
training set (70,000 x 100 for MNIST / Fashion-MNIST, K=10; K=100 for the larger runs).
The data here is a fixed Gaussian mixture of 10 blobs of that size.

op kmeans_plusplus (greedy, 2 + ln K trials per center, over all N rows):
  torch            the greedy loop as a user writes it: multinomial + cdist + min (baseline)
  torch-compile    the same loop with its per-center step under torch.compile
  kmgan_ext-<b>    km.kmeans_plusplus(x, K, seed=0, backend=b), every backend it offers
  sklearn          sklearn.cluster.kmeans_plusplus (CPU)
  faiss-kmeans++   faiss.Kmeans(niter=0, init_method=k-means++, no subsampling): its seeding
op kmeans (k-means++ seeding then 20 Lloyd iterations over all rows):
  torch            the naive seeding above + 20 iterations of cdist argmin + index_add means
  kmgan_ext        km.kmeans(x, K, niter=20, seed=0)
  faiss-kmeans++   faiss.Kmeans(niter=20, k-means++ init, no subsampling)
  faiss-default    faiss.Kmeans(niter=20) with faiss's own defaults (random init, a subsample
                   of 256 points per centroid)
  sklearn          sklearn.cluster.KMeans(init="k-means++", n_init=1, max_iter=20, tol=0)
op kmeans_lloyd (Lloyd alone, the fair comparison of the engines: the SAME initial centers,
km.kmeans_plusplus(x, K, seed=0), NITER iterations over every row, tol 0, the run's one thread
setting for all):
  torch            NITER iterations of cdist argmin + index_add means from those centers
  kmgan_ext        km.kmeans(x, K, init=c0, niter=NITER, backend="torch"): its own ops
  kmgan_ext-auto   the same with backend="auto" (the torch engine on CPU, faiss on a GPU it sees)
  faiss            faiss.Kmeans(niter=NITER, max_points_per_centroid=N) from init_centroids=c0
  sklearn          sklearn.cluster.KMeans(init=c0, n_init=1, max_iter=NITER, tol=0, "lloyd")
  scikit-learn stops once the labels repeat (even at tol=0) and kmgan_ext once the centers
  do (kmeans.py's _cycle_ends): every later iteration would repeat that one, so the answer
  is that of NITER iterations; faiss and torch run all NITER. Throughput and % roofline count
  NITER iterations: a figure past 100% means the engine stopped early (on these blobs at K=10
  after a few iterations; at K=100 none does within NITER).
  Check (bench/_correctness.check_lloyd): the final centers and their inertia against the
  same Lloyd run in float64 (scikit-learn's rule for an empty cluster), within twice plain
  float32 torch's own error (the torch row's: its count of centers farther than 1e-3 of a
  row's rms distance, at least 1% of K; its inertia error, at least 1e-4). The torch row
  itself: its inertia within 1e-4. faiss, where it split a cluster (its rule for an empty
  one), against a float64 Lloyd with faiss's own split rule (check_faiss_lloyd).
The roofline counts the least work of any k-means++ that reads every row (one pass over x
per center); kmgan_ext-cpu leaves out the rows no column of a pass can come nearer to (its
note says how many it read), so its figure can pass 100%. The check is quality, since seeds
differ between libraries (a provider below the bar is still timed, and flagged
correct=False): k-means++ centers must be rows of x, and the mean inertia (sum of
squared distances of all rows to the nearest center, float64) over SEEDS seeds of the
provider within 1.25x of scikit-learn's kmeans_plusplus's mean over as many seeds of its own;
Lloyd results likewise against scikit-learn's KMeans. One seed's inertia varies by several
percent (issue 19): a bar judged on one seed says little. The timed call is seed 0; each row
carries its ``inertia_ratio`` (ratio of the means) and the per-seed ratios in its check.

Run alone: python bench/bench_kmeans_plusplus.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

BASELINE = "torch"
NITER = 20
# Issue 15's CPU targets (2-core machine, N=70,000, d=100): each kmgan_ext row of these
# cases carries the target and whether this run met it in its note.
SEED_TARGET_MS = {10: 40.0, 100: 250.0}  # greedy k-means++, milliseconds
LLOYD_TARGET_VS = {"faiss": 1.5, "sklearn": 5.0}  # kmeans_lloyd K=100: speedup over the peer
SEED_RATIO = 1.25
LLOYD_RATIO = 1.25
SEEDS = 5  # seeds of each provider in the quality check (2 in a --tiny run)


def shapes(ctx: H.Ctx) -> list[dict]:
    paper = [dict(N=70_000, d=100, K=k) for k in (10, 100)]
    return ctx.size(
        tiny=[dict(N=2000, d=16, K=8)],
        quick=paper,  # issue 5's CPU targets: K=10 and K=100
        full=paper + [dict(N=200_000, d=128, K=256)],
        gpu=paper + [dict(N=1_000_000, d=128, K=1024)],  # issue 5's H100 target: < 0.5 s
    )


def make_data(shape: dict, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    n, d = shape["N"], shape["d"]
    means = 4.0 * torch.randn(10, d, generator=g)
    x = means[torch.randint(10, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return x.to(device)


# --------------------------------------------------------------------------- naive torch
def _kpp_step(x, closest, cand):
    d = torch.cdist(x, x[cand]) ** 2
    pot = torch.minimum(closest[:, None], d).sum(0)
    best = pot.argmin()
    return best, torch.minimum(closest, d[:, best])


def torch_kmeans_plusplus(x, k, seed=0, step=_kpp_step):
    """Greedy k-means++ (scikit-learn's rule, 2 + ln k trials), the way people write it."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    n, trials = x.shape[0], 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=g, device=x.device))
    idx = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        cand = torch.multinomial(closest, trials, replacement=True, generator=g)
        best, closest = step(x, closest, cand)
        idx.append(int(cand[best]))
    return x[idx]


def torch_kmeans(x, k, niter=NITER, seed=0, init=None):
    c = torch_kmeans_plusplus(x, k, seed) if init is None else init.clone()
    for _ in range(niter):
        labels = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        n = torch.bincount(labels, minlength=k)
        c = torch.where((n > 0)[:, None], sums / n.clamp_min(1)[:, None], c)
    return c


# --------------------------------------------------------------------------- checks
def inertia(x: torch.Tensor, c: torch.Tensor) -> float:
    return float(H.nearest64(x, c.to(x.device, x.dtype))[1].sum())


def _as_tensor(out) -> torch.Tensor:
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a named tuple (centers, labels, ...)
        out = out[0]
    elif isinstance(out, tuple):
        out = out[0]
    return torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)


def _quality(x, outs, k, yardsticks, bound, rows_of_x) -> tuple[bool, str, float | None]:
    """Mean inertia of ``outs`` (one output per seed) over the mean of ``yardsticks``."""
    inertias = []
    for centers in outs:
        c = _as_tensor(centers).to(x.device, x.dtype)
        if tuple(c.shape) != (k, x.shape[1]):
            return False, f"centers shape {tuple(c.shape)} != ({k}, {x.shape[1]})", None
        if not torch.isfinite(c).all():
            return False, "non-finite centers", None
        if rows_of_x:
            dist = H.nearest64(c, x)[1]
            if (dist > 0).any():
                return False, f"{int((dist > 0).sum())} of {k} centers are not rows of x", None
        inertias.append(inertia(x, c))
    msg = ["centers are rows of x"] if rows_of_x else []
    ratio = float(np.mean(inertias) / np.mean(yardsticks))
    per_seed = ", ".join(f"{i / np.mean(yardsticks):.3f}" for i in inertias)
    msg.append(f"mean inertia over {len(outs)} seeds {ratio:.4f}x scikit-learn's mean over "
               f"{len(yardsticks)} (per seed: {per_seed})")  # fmt: skip
    return ratio <= bound, "; ".join(msg) + ("" if ratio <= bound else f" (> {bound})"), ratio


def _kmgan_seeding():
    """km.kmeans_plusplus and the backends it offers, or Absent while it is being written."""
    fn = H.kmgan_function("kmeans_plusplus")
    backends = getattr(sys.modules.get(fn.__module__), "BACKENDS", ("auto",))
    return fn, [b for b in backends if b != "auto"] or ["auto"]


def _faiss_kmeans(ctx, x, k, niter, plusplus, seed=0):
    faiss = H.optional_import("faiss", "faiss-cpu / faiss-gpu")
    n, d = x.shape
    kw = dict(niter=niter, seed=1234 + seed, verbose=False)
    if plusplus:
        if not hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
            raise H.Absent(f"faiss {faiss.__version__} has no k-means++ init (>= 1.14 has)")
        kw.update(init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS, max_points_per_centroid=n)
    gpu = ctx.cuda and faiss.get_num_gpus() > 0
    xs = x.detach().cpu().numpy()

    def fn():
        km = faiss.Kmeans(d, k, gpu=gpu, **kw)
        km.train(xs)
        return torch.from_numpy(km.centroids)

    return fn


def _lloyd_same_init(ctx: H.Ctx, shape: dict, x: torch.Tensor, KMeans) -> list[dict]:
    """op kmeans_lloyd: every engine from the same initial centers (see the docstring)."""
    import kmgan_ext as km

    op, k, n = "kmeans_lloyd", shape["K"], shape["N"]
    c0 = km.kmeans_plusplus(x, k, seed=0)
    xs, cs = x.cpu().numpy(), c0.cpu().numpy()
    s = x.element_size()
    work = H.Work(bytes=NITER * n * shape["d"] * s * 2, flops=NITER * 2.0 * n * k * shape["d"], items=NITER,
                  item_unit="Lloyd iterations", flop_kind="tf32" if ctx.cuda else "fp32")  # fmt: skip
    # The truth: Lloyd in float64 from the same start (scikit-learn's rule for an empty
    # cluster); the yardstick: plain float32 torch's Lloyd (the "torch" row) against it.
    truth = H.Lazy(lambda: H.lloyd(x, c0, NITER))
    plain = H.Lazy(lambda: torch_kmeans(x, k, init=c0))

    def check_for(name):
        def check(out):
            if name == "faiss":
                centers, stats = out
                return H.check_faiss_lloyd(x, c0, NITER, centers, sum(st["nsplit"] for st in stats), truth(), plain())
            return H.check_lloyd(x, _as_tensor(out), truth(), None if name == "torch" else plain())

        return check

    def faiss_fn():
        faiss = H.optional_import("faiss", "faiss-cpu / faiss-gpu")
        gpu = ctx.cuda and faiss.get_num_gpus() > 0

        def fn():
            f = faiss.Kmeans(shape["d"], k, niter=NITER, max_points_per_centroid=n, min_points_per_centroid=1, gpu=gpu, verbose=False)
            f.train(xs, init_centroids=cs)
            # its iteration statistics: the check reads how many clusters it split
            return torch.from_numpy(f.centroids), [dict(nsplit=st["nsplit"]) for st in f.iteration_stats]
        return fn

    def sk_fn():
        if KMeans is None:
            raise H.Absent("scikit-learn not installed")
        if ctx.cuda and n * k * shape["d"] > 1e10:
            raise H.Skipped("scikit-learn on the host CPU: too slow for the GPU run's budget")
        return lambda: KMeans(k, init=cs, n_init=1, max_iter=NITER, tol=0.0, algorithm="lloyd").fit(xs).cluster_centers_

    entries = [
        ("torch", lambda: (lambda: torch_kmeans(x, k, init=c0))),
        ("kmgan_ext", lambda: (lambda: km.kmeans(x, k, init=c0, niter=NITER, backend="torch"))),
        ("kmgan_ext-auto", lambda: (lambda: km.kmeans(x, k, init=c0, niter=NITER))),
        ("faiss", faiss_fn),
        ("sklearn", sk_fn),
    ]
    rows = []
    for name, make in entries:
        rows += H.run_provider(ctx, op, shape, name, make, check_for(name), work=work)
    return rows


def run(ctx: H.Ctx) -> list[dict]:
    rows: list[dict] = []
    for shape in shapes(ctx):
        ctx.log(f"  kmeans_plusplus/kmeans {shape}")
        n, d, k = shape["N"], shape["d"], shape["K"]
        x = make_data(shape, ctx.device)
        xs = x.cpu().numpy()
        # scikit-learn's results are the yardsticks; without it, or where it would take minutes
        # on the GPU machine's host (cpu_heavy), the naive torch ones (same algorithms).
        cpu_heavy = ctx.cuda and n * k * d > 1e10
        seeds = range(2 if ctx.tiny else SEEDS)

        def sk_seed_at(seed):
            return torch.from_numpy(kmeans_plusplus(xs, k, random_state=seed)[0])

        def sk_lloyd_at(seed):
            km = KMeans(k, init="k-means++", n_init=1, max_iter=NITER, tol=0.0, random_state=seed)
            return torch.from_numpy(km.fit(xs).cluster_centers_)

        try:
            from sklearn.cluster import KMeans, kmeans_plusplus

            seed_yard = H.Lazy(lambda: [inertia(x, sk_seed_at(s)) for s in seeds])
            lloyd_yard = H.Lazy(lambda: [inertia(x, sk_lloyd_at(s)) for s in seeds])
        except ImportError:
            kmeans_plusplus = KMeans = None
        if kmeans_plusplus is None or cpu_heavy:
            seed_yard = H.Lazy(lambda: [inertia(x, torch_kmeans_plusplus(x, k, seed=s)) for s in seeds])
            lloyd_yard = H.Lazy(lambda: [inertia(x, torch_kmeans(x, k, seed=s)) for s in seeds])
        s = x.element_size()
        kind = "tf32" if ctx.cuda else "fp32"
        # The least work of any k-means++: one pass over x per center (classic, one candidate);
        # the greedy rule (scikit-learn's, kmgan_ext's) evaluates 2 + ln K candidates per pass.
        seed_work = H.Work(bytes=k * n * d * s, flops=2.0 * n * d * k, items=k, item_unit="centers", flop_kind=kind)
        lloyd_work = H.Work(
            bytes=seed_work.bytes + NITER * n * d * s * 2,
            flops=seed_work.flops + NITER * 2.0 * n * k * d,
            items=NITER,
            item_unit="Lloyd iterations",
            flop_kind=kind,
        )

        def extra(rows_, ratio_holder):
            for r in rows_:
                r["inertia_ratio"] = ratio_holder.get("ratio")
            return rows_

        def run_one(op, name, seeded, bound, rows_of_x, yard, work, absent=None):
            """``seeded()`` builds ``at(seed) -> callable`` (or raises Absent/Skipped); seed 0
            is timed, every seed is judged."""
            holder: dict = {}
            built: dict = {}

            def make():
                built["at"] = seeded()
                return built["at"](0)

            def check(out):
                outs = [out] + [built["at"](s)() for s in seeds if s != 0]
                ok, msg, ratio = _quality(x, outs, k, yard(), bound, rows_of_x)
                holder["ratio"] = ratio
                return ok, msg

            return extra(
                H.run_provider(ctx, op, shape, name, make, check, work=work, absent=absent, time_if_wrong=True),
                holder,
            )

        # ---------------- k-means++ seeding
        op = "kmeans_plusplus"

        def compiled_seeded():
            step = H.compiled(_kpp_step, ctx)
            return lambda seed: (lambda: torch_kmeans_plusplus(x, k, seed=seed, step=step))

        def sk_seed():
            if kmeans_plusplus is None:
                raise H.Absent("scikit-learn not installed")
            if cpu_heavy:
                raise H.Skipped("scikit-learn on the host CPU: too slow for the GPU run's budget")
            return lambda seed: (lambda: kmeans_plusplus(xs, k, random_state=seed)[0])

        entries = [
            ("torch", lambda: (lambda seed: (lambda: torch_kmeans_plusplus(x, k, seed=seed))), None),
            ("torch-compile", compiled_seeded, None),
        ]
        try:
            seed_fn, seed_backends = _kmgan_seeding()
            for b in seed_backends:
                why = None
                if ctx.cuda and b == "faiss":
                    why = "kmeans_plusplus(backend='faiss') reads host memory; x is on the GPU"
                entries.append((f"kmgan_ext-{b}",
                                lambda b=b: (lambda seed: (lambda: seed_fn(x, k, seed=seed, backend=b))), why))  # fmt: skip
        except H.Absent as e:
            entries.append(("kmgan_ext", None, str(e)))
        entries += [
            ("sklearn", sk_seed, None),
            ("faiss-kmeans++", lambda: (lambda seed: _faiss_kmeans(ctx, x, k, 0, True, seed)), None),
        ]
        entries.sort(key=H.compile_last)
        for name, seeded, why in entries:
            got = run_one(op, name, seeded, SEED_RATIO, True, seed_yard, seed_work, absent=why)
            if name == "kmgan_ext-cpu" and got and got[0].get("median_ms") is not None:
                H.add_note(got[0], _rows_read(x, k))
            rows += got

        # ---------------- k-means (Lloyd)
        op = "kmeans"

        def km_lloyd():
            fn = H.kmgan_function("kmeans")
            return lambda seed: (lambda: fn(x, k, niter=NITER, seed=seed))

        def sk_lloyd():
            if KMeans is None:
                raise H.Absent("scikit-learn not installed")
            if cpu_heavy:
                raise H.Skipped("scikit-learn on the host CPU: too slow for the GPU run's budget")
            return lambda seed: (lambda: sk_lloyd_at(seed))

        entries = [
            ("torch", lambda: (lambda seed: (lambda: torch_kmeans(x, k, seed=seed)))),
            ("kmgan_ext", km_lloyd),
            ("faiss-kmeans++", lambda: (lambda seed: _faiss_kmeans(ctx, x, k, NITER, True, seed))),
            ("faiss-default", lambda: (lambda seed: _faiss_kmeans(ctx, x, k, NITER, False, seed))),
            ("sklearn", sk_lloyd),
        ]
        for name, seeded in entries:
            rows += run_one(op, name, seeded, LLOYD_RATIO, False, lloyd_yard, lloyd_work)
        rows += _lloyd_same_init(ctx, shape, x, KMeans)
    H.add_speedups(rows, BASELINE)
    H.note_cpu_targets(ctx, rows, note_targets)
    return rows


def _rows_read(x: torch.Tensor, k: int) -> str:
    """The share of the K passes' rows that backend "cpu" read for seed 0: the rest were
    skipped by its triangle-inequality test (csrc/cpu/kmeans_plusplus_cpu.cpp), which is how
    its % roofline (one pass over x per center) can pass 100%."""
    import importlib

    kpp = importlib.import_module("kmgan_ext.seeding.kmeans_plusplus")  # the module, not the function

    u = kpp.uniforms(0, k, kpp._data.default_trials(k))
    first = int(kpp._first_index(len(x), u, None))
    read = int(torch.ops.kmgan_ext.kmeans_plusplus_native(x.contiguous(), None, u, first)[3])
    return f"rows read: {read / (k * len(x)):.0%} of K passes over x"


def _target_shape(shape: dict) -> bool:
    return shape.get("N") == 70_000 and shape.get("d") == 100


def note_targets(rows: list[dict]) -> None:
    """Issue 15's targets in the notes of the kmgan_ext rows: the k-means++ time against
    SEED_TARGET_MS, and Lloyd from the same start against faiss and scikit-learn (the ratio
    of their medians to kmgan_ext's, LLOYD_TARGET_VS). The issue's scikit-learn 5x can also
    be read as whole fit against whole fit, each with its own seeding (its "now" column
    compares those): op kmeans' kmgan_ext row carries that ratio. A row that was not timed
    says so."""
    for r in rows:
        if not _target_shape(r["shape"]):
            continue
        k = r["shape"].get("K")
        if r["op"] == "kmeans_plusplus" and r["provider"] == "kmgan_ext-cpu" and k in SEED_TARGET_MS:
            goal = SEED_TARGET_MS[k]
            if r["median_ms"] is None:
                H.add_note(r, f"target <= {goal:g} ms: not timed")
            else:
                met = "met" if r["median_ms"] <= goal else "MISSED"
                H.add_note(r, f"target <= {goal:g} ms: {met}")
        if r["op"] == "kmeans_lloyd" and r["provider"] == "kmgan_ext" and k == 100:
            parts = []
            for peer, goal in LLOYD_TARGET_VS.items():
                p = next((q for q in rows if q["op"] == "kmeans_lloyd" and q["shape"] == r["shape"]
                          and q["provider"] == peer and q["median_ms"]), None)
                if p is None or r["median_ms"] is None:
                    parts.append(f"vs {peer}: not timed (target >= {goal:g}x)")
                    continue
                ratio = p["median_ms"] / r["median_ms"]
                met = "met" if ratio >= goal else "MISSED"
                parts.append(f"{ratio:.2f}x {peer} (target >= {goal:g}x: {met})")
            H.add_note(r, "; ".join(parts))
        if r["op"] == "kmeans" and r["provider"] == "kmgan_ext" and k == 100:
            # The first reading of its 5x: the whole fit, each with its own seeding.
            p = next((q for q in rows if q["op"] == "kmeans" and q["shape"] == r["shape"]
                      and q["provider"] == "sklearn" and q["median_ms"]), None)
            if p is not None and r["median_ms"] is not None:
                ratio = p["median_ms"] / r["median_ms"]
                met = "met" if ratio >= LLOYD_TARGET_VS["sklearn"] else "MISSED"
                H.add_note(r, f"whole fit {ratio:.2f}x sklearn (>= {LLOYD_TARGET_VS['sklearn']:g}x: {met})")


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "kmeans_plusplus", *sys.argv[1:]])
