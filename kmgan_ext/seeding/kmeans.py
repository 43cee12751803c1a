"""km.kmeans: k-means++ seeding, then Lloyd iterations over every row (or a subsample)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import _dispatch, _optional
from .._checks import metric as check_metric
from ..assign import assign
from ..minibatch_update import minibatch_step_, minibatch_update_
from . import _data, _relocate
from .kmeans_plusplus import check_weights, kmeans_plusplus, unit

BACKENDS = ("auto", "faiss", "torch")

# backend="auto" on CPU data is kmgan_ext's own engine at every K. It took faiss.Kmeans below
# K = 32 until the bounded kernel and the stop where the centers repeat (_cycle_ends); since
# then it is faster at every K measured (the calls of bench/bench_kmeans_plusplus.py's
# kmeans_lloyd rows: the same initial centers, 20 iterations over all N = 70,000 rows, d = 100,
# 2 threads, idle 2-core machine, best of 3; kmgan_ext vs faiss): the bench's blobs K=2 28 vs
# 41 ms, K=10 13 vs 35, K=16 116 vs 174, K=31 135 vs 267; uniform rows K=10 144 vs 169, K=24
# 196 vs 213; Gaussian rows K=10 131 vs 185, K=24 196 vs 213. faiss stays available by name,
# and is "auto"'s choice on a GPU it sees.

# The bounded Lloyd kernel (csrc/cpu/lloyd_cpu.cpp) up to this many clusters, km.minibatch_step_
# per iteration above. Up to K = 16 it keeps Yinyang bounds on its 16-center panels (N=70,000
# d=100: K=10 60 vs 136 ms, K=16 191 vs 212, measured in /tmp/h5/cross.py); above, it labels each
# cluster's rows against only the centers within reach (csrc/cpu/lloyd_local.cpp, with its
# measurements), which replaced Elkan's per-center bounds (csrc/cpu/lloyd_elkan.cpp, still there
# by name). 20 iterations from the same k-means++ centers, 2 threads of the 2-core Xeon, min of
# 2-3, kernel vs per iteration (km.minibatch_step_ + km.assign): the bench's blobs N=70,000
# d=100 K=256 147-153 vs 379-392 ms, K=512 267-288 vs 673-721; Gaussian rows N=70,000 d=100
# K=256 354 vs 376, d=32 K=512 306 vs 302; but N=20,000 K=1000 (20 rows per cluster: the K^2
# center bounds, the C_a lists and the packing of each cluster's centers per iteration weigh)
# 678 vs 375, hence the cap. Below it, at <= 40 rows per cluster and K = 256 the per-iteration
# path is still faster on rows without clusters (Gaussian, N = 2,560: d=16 7.7 vs 3.8 ms, d=100
# 11.0 vs 8.2; N = 5,000 d=100 33 vs 31), not on clustered ones (blobs d=64 N = 10,240: 27 vs
# 43), and the kernel is as fast or faster at every N / K >= 10 for K <= 128 (/tmp/t_nk.py);
# a choice by K and N alone cannot see the difference, so none is made.
_BOUNDED_MAX_K = 256


class KMeansResult(NamedTuple):
    """centers (K, d) in x's dtype and kind; labels (N,) int64, the nearest of the returned
    centers for every row of x; inertia = sum_i ||x_i - centers[labels_i]||^2 (a float)."""

    centers: Tensor | np.ndarray
    labels: Tensor | np.ndarray
    inertia: float


def _resolve(backend: str, rows: _data.Rows, k: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    faiss = _data.faiss_module()
    faiss_gpus = faiss.get_num_gpus() if faiss is not None else 0
    usable = faiss is not None and (rows.device.type == "cpu" or faiss_gpus > 0)
    if backend == "auto":
        if rows.device.type == "cpu":
            return "torch"
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
                     metric="euclidean", weights=None):
    """(K, d) compute-dtype tensor on rows.device."""
    if isinstance(init, str):
        if init == "k-means++":
            _, idx = kmeans_plusplus(
                rows.x, k, seed=seed, n_local_trials=n_local_trials, chunk_size=chunk_size,
                num_threads=num_threads, return_indices=True, metric=metric, sample_weight=weights,
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


def _whole(rows: _data.Rows) -> Tensor | None:
    """x itself when one op can read it whole (a contiguous compute-dtype tensor), else None."""
    x = rows.x
    if rows.is_numpy or x.dtype != rows.compute_dtype or not x.is_contiguous():
        return None
    return x


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """a and b hold the same bits (torch.equal calls -0.0 and 0.0 equal)."""
    ints = torch.int64 if a.dtype == torch.float64 else torch.int32
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def _cycle_ends(new: Tensor, centers: Tensor, before: Tensor | None, left: int) -> bool:
    """Whether Lloyd's loop can stop at ``new`` = F(centers), ``left`` iterations before its
    end, with the result of all of them bit for bit. An iteration F is a deterministic
    function of the centers (the same centers give the same labels, and the same labels and
    centers the same update), so centers it returns unchanged are returned forever, and a
    2-cycle (new == before) alternates: new is the result when an even number is left (an odd
    one stops an iteration later). Both happen once the labels stop changing (seen on blobs:
    float32 centers settle, float64 ones alternate by one ulp, as c + (S - m c) / m need not
    round back to c); a longer cycle runs to the end.
    """
    if _same_bits(new, centers):
        return True
    return before is not None and left % 2 == 0 and _same_bits(new, before)


def _relocate_empty(rows: _data.Rows, new: Tensor, counts: Tensor, labels: Tensor,
                    dist2: Tensor) -> Tensor:
    """scikit-learn's ``_relocate_empty_clusters_dense`` on the means ``new`` (K, d) of one
    iteration: the j-th empty cluster (counts == 0) takes the j-th farthest row from its
    center (``dist2``, against the iteration's centers), and that row leaves its old
    cluster (``labels``): the old mean becomes (m * mean - x_p) / (m - 1), in float64
    (scikit-learn's residual sum where no row is left). Device ops only (topk, index_add,
    where), no host sync; a cluster that lost no row keeps its mean bit for bit.
    """
    k, acc = new.shape[0], torch.float64
    empty = counts == 0
    pick = _relocate.far_rows(empty, dist2.to(acc))
    moved = rows.take(pick)
    taken = empty.to(acc)
    old = labels.index_select(0, pick)
    out = torch.zeros(k, rows.d, dtype=acc, device=new.device)
    out.index_add_(0, old, moved.to(acc) * taken[:, None])
    lost = torch.zeros(k, dtype=acc, device=new.device).index_add_(0, old, taken)
    cnt = counts.to(acc)
    left = cnt - lost
    shrunk = (new.to(acc) * cnt[:, None] - out) / torch.where(left > 0, left, 1.0)[:, None]
    means = torch.where((lost > 0)[:, None], shrunk.to(new.dtype), new)
    return torch.where(empty[:, None], moved, means)


def _lloyd_torch(rows: _data.Rows, centers: Tensor, niter: int, chunk: int) -> Tensor:
    """Lloyd's iterations on kmgan_ext's own ops, on x's device.

    An iteration is one km.minibatch_step_ (assign + update fused; from zero counts the
    Sculley update is the mean of the rows assigned, from float64 segment sums) when x can be
    read whole on CPU, else per chunk km.assign against the iteration's centers and
    km.minibatch_update_ into the new ones (from zero counts, chunk after chunk, the running
    mean of every row assigned). Both are deterministic (fixed-order sums), run to run.

    A cluster left empty is refilled as scikit-learn does (``_relocate_empty``), so no
    center is ever NaN. On CUDA that is done with device ops every iteration, no host sync;
    on CPU only in the iterations that leave a cluster empty (the labels and distances come
    from one more km.assign then). On CPU the loop ends early where the centers cycle
    (``_cycle_ends``), with the result of all ``niter`` iterations bit for bit.
    """
    k, dev = centers.shape[0], rows.device
    whole = _whole(rows) if dev.type == "cpu" else None
    before = None  # the centers of the iteration before
    for t in range(niter):
        new = centers.clone()
        counts = torch.zeros(k, dtype=torch.int64, device=dev)
        labels = dist2 = None
        if whole is not None:
            minibatch_step_(new, counts, whole, deterministic=True)
        else:
            labels = torch.empty(rows.n, dtype=torch.int64, device=dev)
            dist2 = torch.empty(rows.n, dtype=torch.float64, device=dev)
            for s, ch in rows.chunks(chunk):
                lab, d2 = assign(ch, centers)
                minibatch_update_(new, counts, ch, lab, deterministic=True)
                labels[s : s + ch.shape[0]] = lab
                dist2[s : s + ch.shape[0]] = d2
        if dev.type != "cpu" or bool((counts == 0).any()):
            if dist2 is None:
                labels, dist2 = assign(whole, centers)
            new = _relocate_empty(rows, new, counts, labels, dist2)
        if dev.type == "cpu" and _cycle_ends(new, centers, before, niter - t - 1):
            return new
        before, centers = centers, new
    return centers


def _lloyd_bounded(rows: _data.Rows, centers: Tensor, niter: int, chunk: int, labeler: str = "auto"):
    """Lloyd's iterations and the final labels in csrc/cpu/lloyd_cpu.cpp, for a contiguous
    float32 CPU tensor x: (centers, labels, dist2), or None where that kernel does not run
    (another x, an old build, no AVX2). labeler: how the kernel finds the labels ("auto";
    tests/test_lloyd_cpu.py runs each of "panels", "elkan", "local" too).

    The same labels, sums and update as ``_lloyd_torch`` (bitwise the same centers); bounds on
    the distances skip the rows and 16-center panels that cannot change label. An iteration
    whose update would leave a cluster empty runs in ``_lloyd_torch`` (its relocation), then
    the kernel resumes.
    """
    x = _whole(rows)
    if x is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if _dispatch._load_native() is not None or not torch._C._dispatch_has_kernel_for_dispatch_key(
        "kmgan_ext::lloyd_native", "CPU"
    ):
        return None
    left = niter
    while True:
        c, labels, dist2, done = torch.ops.kmgan_ext.lloyd_native(x.detach(), centers.detach(), left, labeler)
        if done < 0:
            return None
        if done == left:
            return c, labels, dist2
        centers = _lloyd_torch(rows, c, 1, chunk)
        left -= done + 1


def _lloyd_segments(rows: _data.Rows, centers: Tensor, niter: int, chunk: int,
                    metric: str = "euclidean", weights=None) -> Tensor:
    """Lloyd's iterations with km.assign and float64 segment sums on the device, for what
    ``_lloyd_torch`` does not take: sample weights (weighted sums and weight totals: the
    weighted means) and metric="cosine" (spherical k-means, Dhillon & Modha 2001: the sums
    are of the normalised rows, every center is renormalised to unit length, and a moved row
    is normalised). A cluster left empty takes the row farthest from its center, which
    leaves its old cluster's sum and weight (scikit-learn's relocation, as _lloyd_torch);
    device ops (topk + index_add + where), no host sync. On CPU the loop ends early where the
    centers cycle (``_cycle_ends``), with the result of all ``niter`` iterations.
    """
    k, n = centers.shape[0], rows.n
    acc = torch.float64
    cosine = metric == "cosine"
    before = None  # the centers of the iteration before
    for t in range(niter):
        sums = torch.zeros(k, rows.d, dtype=acc, device=rows.device)
        counts = torch.zeros(k, dtype=torch.int64 if weights is None else acc, device=rows.device)
        labels = torch.empty(n, dtype=torch.int64, device=rows.device)
        dist2 = torch.empty(n, dtype=acc, device=rows.device)
        for s, ch in rows.chunks(chunk):
            lab, d2 = assign(ch, centers, metric=metric)
            xs = unit(ch.to(acc)) if cosine else ch.to(acc)
            if weights is None:
                sums.index_add_(0, lab, xs)
                counts += torch.bincount(lab, minlength=k)
            else:
                wc = weights[s : s + ch.shape[0]].to(acc)
                sums.index_add_(0, lab, xs * wc[:, None])
                counts.index_add_(0, lab, wc)
            labels[s : s + ch.shape[0]] = lab
            dist2[s : s + ch.shape[0]] = d2
        empty = counts == 0
        pick = _relocate.far_rows(empty, dist2)
        moved = rows.take(pick)
        taken = empty.to(counts.dtype)
        if weights is not None:
            taken = taken * weights.index_select(0, pick.to(weights.device)).to(acc)
        moved64 = unit(moved.to(acc)) if cosine else moved.to(acc)
        _relocate.take_out_(sums, counts, labels.index_select(0, pick), moved64, taken)
        means = _relocate.residual_means(sums, counts)
        if cosine:
            moved, means = unit(moved), unit(means)
        new = torch.where(empty[:, None], moved, means.to(rows.compute_dtype))
        if rows.device.type == "cpu" and _cycle_ends(new, centers, before, niter - t - 1):
            return new
        before, centers = centers, new
    return centers


def _lloyd_faiss(rows: _data.Rows, centers: Tensor, niter: int, seed: int, weights=None) -> Tensor:
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
    w = None if weights is None else np.ascontiguousarray(weights.cpu().numpy(), dtype=np.float32)
    km.train(x, weights=w, init_centroids=np.ascontiguousarray(centers.cpu().numpy(), dtype=np.float32))
    return torch.from_numpy(km.centroids).to(device=rows.device, dtype=rows.compute_dtype)


def _assign_all(rows: _data.Rows, centers: Tensor, chunk: int, metric: str = "euclidean",
                weights=None) -> tuple[Tensor, float]:
    labels = torch.empty(rows.n, dtype=torch.int64, device=rows.device)
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    for s, ch in rows.chunks(chunk):
        lab, d2 = assign(ch, centers, metric=metric)
        labels[s : s + ch.shape[0]] = lab
        if weights is None:
            total += d2.sum(dtype=torch.float64)
        else:
            total += (d2.to(torch.float64) * weights[s : s + ch.shape[0]].to(torch.float64)).sum()
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
    sample_weight: Tensor | np.ndarray | None = None,
) -> KMeansResult:
    """k-means: seeding (``init``), then ``niter`` Lloyd iterations over all rows of x.

    Args:
        x: (N, d) floating tensor (any device) or numpy array / np.memmap; or a (B, N, d)
            tensor of B independent problems (as fast-pytorch-kmeans' MultiKMeans): every
            Lloyd iteration assigns all problems in one km.assign launch; problem b is
            seeded with ``seed + b`` (its result is that of ``km.kmeans(x[b], k,
            seed=seed + b, backend="torch")``, metric="cosine" included); ``init`` may be
            a (B, k, d) array; centers (B, k, d), labels (B, N) and inertia a (B,) float64
            tensor are returned; backend "torch" only, no subsample, no sample_weight.
        k: number of clusters, 1 <= k <= N.
        init: "k-means++" (:func:`kmeans_plusplus` over the training rows, greedy),
            "random" (k distinct rows) or a (k, d) array of initial centers.
        niter: Lloyd iterations (exactly this many; 0 returns the initial centers).
        seed: seeds the initialisation, the subsample and faiss's own randomness (it
            re-seeds an empty cluster by splitting a large one).
        subsample: None trains on every row. An int m < N trains (and seeds) on m rows drawn
            at random; labels and inertia still cover every row. Unlike ``faiss.Kmeans``'s
            default, no subsampling ever happens unless asked for here.
        backend: "auto": on CPU data "torch" (measured faster than faiss at every K, see
            the comment at the top of this file); on a GPU "faiss" when a faiss build sees the
            GPU, else "torch". "faiss" =
            ``faiss.Kmeans`` (its GPU implementation when faiss sees a GPU; data are copied
            to host float32, a memmap read whole); "torch" = kmgan_ext's own ops on x's
            device: per iteration one fused km.minibatch_step_ (assign + mean from float64
            segment sums) when x is a contiguous float32/float64 CPU tensor (for float32 and
            k <= 256 the bounded kernel of csrc/cpu/lloyd_cpu.cpp: the same labels, sums and centers, with
            the distances that cannot change a label skipped), else km.assign
            + km.minibatch_update_ per chunk (a np.memmap read in row chunks: its resident
            memory stays a few chunks); with sample_weight or metric="cosine", km.assign +
            float64 (weighted) segment sums per chunk.
        sample_weight: optional (N,) non-negative weights, as scikit-learn's: k-means++
            draws with probability proportional to ``w_i D(x_i)^2``, the centers are the
            weighted means, the inertia the weighted sum (subsampled rows keep their
            weights; "random" and explicit inits ignore them).
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
    if isinstance(x, Tensor) and x.dim() == 3:
        from .kmeans_batched import kmeans_batched

        return kmeans_batched(x, k, init=init, niter=niter, seed=seed, backend=backend,
                              n_local_trials=n_local_trials, chunk_size=chunk_size,
                              num_threads=num_threads, subsample=subsample, metric=metric,
                              sample_weight=sample_weight)
    rows = _data.Rows("x", x)
    k = _data.check_k("k", k, rows.n)
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter must be an int >= 0, got {niter!r}")
    seed = _data.check_seed(seed)
    chunk_size = _data.check_positive_int("chunk_size", chunk_size, allow_none=True)
    cosine = check_metric(metric)
    if cosine and backend == "faiss":
        raise ValueError("metric='cosine' runs on backend 'torch' (or 'auto'), not 'faiss'")
    backend = "torch" if cosine else _resolve(backend, rows, k)
    # Lloyd reads the data niter times: one more pass to reject NaN/Inf is cheap, and without
    # it faiss raises from C++ and the torch engine returns NaN centers.
    rows.check_finite(always=True)
    weights = check_weights(sample_weight, rows) if sample_weight is not None else None
    train, train_w = rows, weights
    if subsample is not None:
        m = _data.check_positive_int("subsample", subsample)
        if m < k:
            raise ValueError(f"subsample must be >= k ({k}), got {m}")
        if m < rows.n:
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(rows.n, generator=g)[:m].sort().values
            train = _data.Rows("x", rows.like_x(rows.take(idx.to(rows.device))))
            train_w = weights[idx.to(weights.device)] if weights is not None else None
    num_threads = _data.check_positive_int("num_threads", num_threads, allow_none=True)
    chunk = chunk_size or rows.default_chunk(k)
    centers = _initial_centers(init, train, k, seed, n_local_trials, chunk_size, num_threads,
                               metric, train_w)
    if cosine:  # spherical k-means' centers are unit vectors from the start
        centers = unit(centers)
    bounded = None
    with _data.cpu_threads(rows, num_threads, faiss_too=backend == "faiss"):
        if niter > 0:
            if backend == "faiss":
                centers = _lloyd_faiss(train, centers, niter, seed, train_w)
            elif cosine or train_w is not None:
                centers = _lloyd_segments(train, centers, niter, chunk, metric, train_w)
            else:
                if k <= _BOUNDED_MAX_K:
                    bounded = _lloyd_bounded(train, centers, niter, chunk)
                if bounded is None:
                    centers = _lloyd_torch(train, centers, niter, chunk)
                else:
                    centers, labels, dist2 = bounded
        if bounded is not None and train is rows:  # the labels against the final centers
            inertia = float(dist2.sum(dtype=torch.float64))
        else:
            labels, inertia = _assign_all(rows, centers, chunk, metric, weights)
    return KMeansResult(rows.like_x(centers), rows.index_like_x(labels), inertia)
