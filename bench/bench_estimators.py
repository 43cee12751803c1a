"""km.KMeans.fit and km.MiniBatchKMeans.fit against the clustering libraries people use.

Data: Fashion-MNIST's test images (10,000 x 784, K = 10) when the Debian package is
installed, else (and in --tiny runs) a fixed Gaussian mixture; the same float32 array for
every provider (numpy for the CPU libraries, a tensor on the device for the torch ones).

op kmeans_fit (k-means++ or the library's own init, then Lloyd over all rows, 20 iterations):
  sklearn              sklearn.cluster.KMeans(n_init=1, max_iter=20, tol=0) (baseline)
  kmgan_ext            km.KMeans(n_init=1, max_iter=20, tol=0) on the data's device
  faiss                faiss.Kmeans(niter=20, no subsampling)
  fast-pytorch-kmeans  fast_pytorch_kmeans.KMeans(max_iter=20, tol=-1: no early stop)
  kmeans-pytorch       kmeans_pytorch.kmeans(tol=1e-4): it has no iteration cap, runs to its tol
op minibatch_kmeans_fit (batches of 1024):
  sklearn              sklearn.cluster.MiniBatchKMeans(batch_size=1024, n_init=1) (baseline)
  kmgan_ext            km.MiniBatchKMeans(batch_size=1024, n_init=1)
  fast-pytorch-kmeans  KMeans(minibatch=1024, max_iter=20)
  faiss, kmeans-pytorch  absent: no mini-batch k-means
The check is quality (seeds differ between libraries): the inertia of the returned centers
over all rows (float64) within 1.25x of scikit-learn KMeans's; a provider over the bar is
still timed and flagged correct=False. Each row carries its ``inertia_ratio``.

Run alone: python bench/bench_estimators.py [--quick|--tiny] [--out DIR]
"""
from __future__ import annotations

import gzip
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

BASELINE = "sklearn"
NITER = 20
RATIO = 1.25
FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def shapes(ctx: H.Ctx) -> list[dict]:
    fashion = dict(data="fashion-mnist", N=10_000, d=784, K=10)
    blobs = dict(data="blobs", N=20_000, d=64, K=32)
    if not os.path.exists(FASHION):
        fashion = blobs
    return ctx.size(tiny=[dict(data="blobs", N=2000, d=16, K=8)], quick=[fashion], full=[fashion, blobs],
                    gpu=[fashion, dict(data="blobs", N=1_000_000, d=64, K=256)])


def make_data(shape: dict) -> np.ndarray:
    if shape["data"] == "fashion-mnist":
        with gzip.open(FASHION) as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
        return (raw.reshape(-1, 784)[: shape["N"]].astype(np.float32) / 255.0).copy()
    rs = np.random.RandomState(5)
    means = 4.0 * rs.randn(shape["K"], shape["d"])
    return (means[rs.randint(shape["K"], size=shape["N"])] + rs.randn(shape["N"], shape["d"])).astype(np.float32)


def inertia(x64: torch.Tensor, centers) -> float:
    import kmgan_ext as km

    c = torch.as_tensor(np.asarray(centers.detach().cpu() if isinstance(centers, torch.Tensor) else centers))
    _, d2 = km.assign(x64, c.to(x64), backend="reference")
    return float(d2.sum())


def run(ctx: H.Ctx) -> list[dict]:
    import kmgan_ext as km

    rows: list[dict] = []
    for shape in shapes(ctx):
        ctx.log(f"  kmeans_fit/minibatch_kmeans_fit {shape}")
        xs = make_data(shape)
        x = torch.from_numpy(xs).to(ctx.device)
        x64 = torch.from_numpy(xs).double()
        k, n, d = shape["K"], shape["N"], shape["d"]
        sk = H.Lazy(lambda: __import__("sklearn.cluster", fromlist=["KMeans"]))
        yard = H.Lazy(lambda: inertia(x64, sk().KMeans(k, n_init=1, max_iter=NITER, tol=0.0, random_state=0)
                                      .fit(xs).cluster_centers_))
        work = H.Work(bytes=NITER * n * d * 4 * 2, flops=NITER * 2.0 * n * k * d, items=NITER,
                      item_unit="Lloyd iterations")

        def run_one(op, name, make, absent=None):
            holder: dict = {}

            def check(out):
                ratio = inertia(x64, out) / yard()
                holder["ratio"] = ratio
                return ratio <= RATIO, f"inertia {ratio:.4f}x scikit-learn KMeans's (bar {RATIO}x)"

            w = work if op == "kmeans_fit" else None  # a mini-batch fit's work depends on its stopping
            out = H.run_provider(ctx, op, shape, name, make, check, work=w, absent=absent, time_if_wrong=True)
            for r in out:
                r["inertia_ratio"] = holder.get("ratio")
            return out

        def sklearn_make(cls, **kw):
            def make():
                try:
                    mod = sk()
                except ImportError as e:
                    raise H.Absent("scikit-learn not installed") from e
                return lambda: getattr(mod, cls)(k, random_state=0, **kw).fit(xs).cluster_centers_
            return make

        def faiss_make():
            faiss = H.optional_import("faiss", "faiss-cpu")
            if ctx.cuda and faiss.get_num_gpus() == 0:
                raise H.Skipped("faiss-cpu on the host: the data is on the GPU")

            def fn():
                f = faiss.Kmeans(d, k, niter=NITER, seed=0, max_points_per_centroid=n)
                f.train(xs)
                return f.centroids
            return fn

        def fpk_make(**kw):
            def make():
                mod = H.optional_import("fast_pytorch_kmeans", "fast-pytorch-kmeans")

                def fn():
                    torch.manual_seed(0)
                    m = mod.KMeans(n_clusters=k, max_iter=NITER, tol=-1.0, **kw)
                    m.fit(x)
                    return m.centroids
                return fn
            return make

        def kp_make():
            mod = H.optional_import("kmeans_pytorch", "kmeans-pytorch")
            if ctx.quick and n * k * d > 1e7:
                raise H.Skipped("kmeans-pytorch has no iteration cap (runs to tol=1e-4): too slow for a quick run")

            def fn():
                np.random.seed(0)
                _, centers = mod.kmeans(x, k, distance="euclidean", device=ctx.device)
                return centers
            return fn

        op = "kmeans_fit"
        entries = [
            ("sklearn", sklearn_make("KMeans", n_init=1, max_iter=NITER, tol=0.0), None),
            ("kmgan_ext", lambda: (lambda: km.KMeans(k, n_init=1, max_iter=NITER, tol=0.0, random_state=0)
                                   .fit(x).cluster_centers_), None),
            ("faiss", faiss_make, None),
            ("fast-pytorch-kmeans", fpk_make(), None),
            ("kmeans-pytorch", kp_make, None),
        ]
        for name, make, why in entries:
            rows += run_one(op, name, make, why)

        op = "minibatch_kmeans_fit"
        entries = [
            ("sklearn", sklearn_make("MiniBatchKMeans", n_init=1, batch_size=1024), None),
            ("kmgan_ext", lambda: (lambda: km.MiniBatchKMeans(k, n_init=1, batch_size=1024, random_state=0)
                                   .fit(x).cluster_centers_), None),
            ("fast-pytorch-kmeans", fpk_make(minibatch=1024), None),
            ("faiss", None, "faiss has no mini-batch k-means"),
            ("kmeans-pytorch", None, "kmeans-pytorch has no mini-batch k-means"),
        ]
        for name, make, why in entries:
            rows += run_one(op, name, make, why)
    H.add_speedups(rows, BASELINE)
    return rows


if __name__ == "__main__":
    import run_all

    run_all.main(["--ops", "estimators", *sys.argv[1:]])
