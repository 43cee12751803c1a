"""km.kmeans: k-means++ seeding, then Lloyd iterations over every row (or a subsample)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _optional
from .._checks import metric as check_metric
from ..assign import assign
from . import _data
from .kmeans_plusplus import kmeans_plusplus, unit

BACKENDS = ("auto", "faiss", "torch")


class KMeansResult(NamedTuple):
    """centers (K, d) in x's dtype and kind; labels (N,) int64, the nearest of the returned
    centers for every row of x; inertia = sum_i ||x_i - centers[labels_i]||^2 (a float)."""

    centers: Tensor | np.ndarray
    labels: Tensor | np.ndarray
    inertia: float


def _resolve(backend: str, rows: _data.Rows) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    faiss = _data.faiss_module()
    faiss_gpus = faiss.get_num_gpus() if faiss is not None else 0
    usable = faiss is not None and (rows.device.type == "cpu" or faiss_gpus > 0)
    if backend == "auto":
        return "faiss" if usable else "torch"
    if backend == "faiss" and not usable:
        if faiss is None:
            raise RuntimeError(f"backend 'faiss' needs faiss: {_optional.hint('faiss', 'faiss-cpu')}, or faiss-gpu")
        raise ValueError(
            f"backend 'faiss' got tensors on {rows.device} but this faiss build sees no GPU; "
            "use backend='torch' (or install faiss-gpu)"
        )
    return backend


def _initial_centers(init, rows: _data.Rows, k, seed, n_local_trials, chunk_size, num_threads,
                     metric="euclidean"):
    """(K, d) compute-dtype tensor on rows.device."""
    if isinstance(init, str):
        if init == "k-means++":
            _, idx = kmeans_plusplus(
                rows.x, k, seed=seed, n_local_trials=n_local_trials, chunk_size=chunk_size,
                num_threads=num_threads, return_indices=True, metric=metric,
            )
            return rows.take(torch.as_tensor(idx))
        if init == "random":
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(rows.n, generator=g)[:k].to(rows.device)
            return rows.take(idx)
        raise ValueError(f"init must be 'k-means++', 'random' or a (k, d) array, got {init!r}")
    c = torch.tensor(init) if isinstance(init, np.ndarray) else init
    if not isinstance(c, Tensor):
        raise TypeError(f"init must be a string, a tensor or a numpy array, got {type(init).__name__}")
    if c.shape != (k, rows.d):
        raise ValueError(f"init must have shape ({k}, {rows.d}) (k, d), got {tuple(c.shape)}")
    if not c.is_floating_point():
        raise TypeError(f"init must be floating, got {c.dtype}")
    c = c.detach().to(device=rows.device, dtype=rows.compute_dtype)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("init contains NaN or Inf")
    return c


def _lloyd_torch(rows: _data.Rows, centers: Tensor, niter: int, chunk: int,
                 metric: str = "euclidean") -> Tensor:
    """Lloyd's iterations with km.assign and float64 segment sums on the device.

    A cluster left empty takes the row farthest from its center (the j-th empty cluster the
    j-th farthest row, as scikit-learn relocates), so no center is ever NaN; done with
    device ops (topk + where), no host sync. metric="cosine" (spherical k-means, Dhillon &
    Modha 2001): the sums are of the normalised rows (chunk by chunk), every center is
    renormalised to unit length, and a moved row is normalised.
    """
    k, n = centers.shape[0], rows.n
    acc = torch.float64
    cosine = metric == "cosine"
    for _ in range(niter):
        sums = torch.zeros(k, rows.d, dtype=acc, device=rows.device)
        counts = torch.zeros(k, dtype=torch.int64, device=rows.device)
        dist2 = torch.empty(n, dtype=acc, device=rows.device)
        for s, ch in rows.chunks(chunk):
            labels, d2 = assign(ch, centers, metric=metric)
            sums.index_add_(0, labels, unit(ch.to(acc)) if cosine else ch.to(acc))
            counts += torch.bincount(labels, minlength=k)
            dist2[s : s + ch.shape[0]] = d2
        empty = counts == 0
        far = torch.topk(dist2, k).indices
        rank = (torch.cumsum(empty, 0) - 1).clamp_(min=0)
        moved = rows.take(far.index_select(0, rank))
        means = sums / counts.clamp(min=1)[:, None]
        if cosine:
            moved, means = unit(moved), unit(means)
        centers = torch.where(empty[:, None], moved, means.to(rows.compute_dtype))
    return centers


def _lloyd_faiss(rows: _data.Rows, centers: Tensor, niter: int, seed: int) -> Tensor:
    faiss = _data.faiss_module()
    x = rows.x
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)  # no copy for float32 arrays / memmaps
    k = centers.shape[0]
    km = faiss.Kmeans(
        rows.d,
        k,
        niter=niter,
        seed=seed & 0x7FFFFFFF,  # faiss's seed is a C int; seeds are < 2**32
        # faiss silently trains on a random k * max_points_per_centroid rows (256 per
        # centroid by default): raise the cap above N so every row takes part.
        max_points_per_centroid=rows.n // k + 1,
        min_points_per_centroid=1,  # only silences faiss's "too few points" warning
        gpu=faiss.get_num_gpus() > 0,
        verbose=False,
    )
    km.train(x, init_centroids=np.ascontiguousarray(centers.cpu().numpy(), dtype=np.float32))
    return torch.from_numpy(km.centroids).to(device=rows.device, dtype=rows.compute_dtype)


def _assign_all(rows: _data.Rows, centers: Tensor, chunk: int, metric: str = "euclidean") -> tuple[Tensor, float]:
    labels = torch.empty(rows.n, dtype=torch.int64, device=rows.device)
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    for s, ch in rows.chunks(chunk):
        lab, d2 = assign(ch, centers, metric=metric)
        labels[s : s + ch.shape[0]] = lab
        total += d2.sum(dtype=torch.float64)
    return labels, float(total)


def kmeans(
    x: Tensor | np.ndarray,
    k: int,
    *,
    init: str | Tensor | np.ndarray = "k-means++",
    niter: int = 20,
    seed: int = 0,
    subsample: int | None = None,
    backend: str = "auto",
    n_local_trials: int | None = None,
    chunk_size: int | None = None,
    num_threads: int | None = None,
    metric: str = "euclidean",
) -> KMeansResult:
    """k-means: seeding (``init``), then ``niter`` Lloyd iterations over all rows of x.

    Args:
        x: (N, d) floating tensor (any device) or numpy array / np.memmap.
        k: number of clusters, 1 <= k <= N.
        init: "k-means++" (:func:`kmeans_plusplus` over the training rows, greedy),
            "random" (k distinct rows) or a (k, d) array of initial centers.
        niter: Lloyd iterations (exactly this many; 0 returns the initial centers).
        seed: seeds the initialisation, the subsample and faiss's own randomness (it
            re-seeds an empty cluster by splitting a large one).
        subsample: None trains on every row. An int m < N trains (and seeds) on m rows drawn
            at random; labels and inertia still cover every row. Unlike ``faiss.Kmeans``'s
            default, no subsampling ever happens unless asked for here.
        backend: "auto" = "faiss" when faiss is importable and can reach x (CPU data, or a
            faiss build that sees a GPU), else "torch"; "faiss" = ``faiss.Kmeans`` (its GPU
            implementation when faiss sees a GPU; data are copied to host float32); "torch"
            = km.assign + float64 segment sums on x's device.
        n_local_trials, chunk_size, num_threads: as in :func:`kmeans_plusplus` (chunk_size
            also sets the rows per km.assign call; num_threads also holds for Lloyd's
            iterations, torch's and faiss's).
        metric: "euclidean" or "cosine" (spherical k-means: k-means++ on the sphere, labels
            by the largest cosine similarity, centers the renormalised means of the
            normalised rows, inertia the sum of dist2 = 2 - 2 cos). Cosine runs on the torch
            engine ("auto" picks it; "faiss" is refused).

    Returns:
        :class:`KMeansResult` ``(centers, labels, inertia)``: centers in x's dtype (a tensor
        on x's device, or numpy for numpy x), labels int64 against the returned centers,
        inertia the float sum of squared distances of every row to its center. Empty
        clusters are re-seeded (faiss splits a large cluster, torch takes the farthest
        rows), so centers are never NaN.
    """
    rows = _data.Rows("x", x)
    k = _data.check_k("k", k, rows.n)
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter must be an int >= 0, got {niter!r}")
    seed = _data.check_seed(seed)
    chunk_size = _data.check_positive_int("chunk_size", chunk_size, allow_none=True)
    cosine = check_metric(metric)
    if cosine and backend == "faiss":
        raise ValueError("metric='cosine' runs on backend 'torch' (or 'auto'), not 'faiss'")
    backend = "torch" if cosine else _resolve(backend, rows)
    # Lloyd reads the data niter times: one more pass to reject NaN/Inf is cheap, and without
    # it faiss raises from C++ and the torch engine returns NaN centers.
    rows.check_finite(always=True)
    train = rows
    if subsample is not None:
        m = _data.check_positive_int("subsample", subsample)
        if m < k:
            raise ValueError(f"subsample must be >= k ({k}), got {m}")
        if m < rows.n:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(rows.n, generator=g)[:m].sort().values
            train = _data.Rows("x", rows.like_x(rows.take(idx.to(rows.device))))
    num_threads = _data.check_positive_int("num_threads", num_threads, allow_none=True)
    chunk = chunk_size or rows.default_chunk(k)
    centers = _initial_centers(init, train, k, seed, n_local_trials, chunk_size, num_threads, metric)
    if cosine:  # spherical k-means' centers are unit vectors from the start
        centers = unit(centers)
    with _data.cpu_threads(rows, num_threads, faiss_too=backend == "faiss"):
        if niter > 0:
            if backend == "faiss":
                centers = _lloyd_faiss(train, centers, niter, seed)
            else:
                centers = _lloyd_torch(train, centers, niter, chunk, metric)
        labels, inertia = _assign_all(rows, centers, chunk, metric)
    return KMeansResult(rows.like_x(centers), rows.index_like_x(labels), inertia)
