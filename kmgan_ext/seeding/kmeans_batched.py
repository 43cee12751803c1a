"""km.kmeans on B independent problems: x (B, N, d) -> centers (B, K, d).

Each Lloyd iteration is one batched km.assign (one kernel launch for all problems) and one
float64 segment sum over the flat (B*K, d) centers with labels b*K + l; the problems never
mix. Seeding is per problem (k-means++ is sequential over centers): problem b is seeded with
``seed + b``, so problem b gets the centers ``km.kmeans(x[b], k, seed=seed + b,
backend="torch")`` gets (metric="cosine" included: spherical k-means as kmeans.py's
_lloyd_segments, per problem: sums of the normalised rows, renormalised means, a moved row
normalised).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ..assign import assign
from . import _data, _relocate
from .kmeans_plusplus import unit


def _initial_centers_batched(init, x: Tensor, k: int, seed: int, n_local_trials, chunk_size,
                             num_threads, metric: str) -> Tensor:
    from .kmeans import _initial_centers  # the single-problem rule, problem by problem

    b, _, d = x.shape
    if isinstance(init, str):
        return torch.stack([
            _initial_centers(init, _data.Rows("x", x[i]), k, seed + i, n_local_trials, chunk_size,
                             num_threads, metric)
            for i in range(b)
        ]) if b else x.new_empty(0, k, d)
    c = torch.tensor(init) if isinstance(init, np.ndarray) else init
    if not isinstance(c, Tensor):
        raise TypeError(f"init must be a string, a tensor or a numpy array, got {type(init).__name__}")
    if tuple(c.shape) != (b, k, d):
        raise ValueError(f"init must have shape ({b}, {k}, {d}) (B, k, d), got {tuple(c.shape)}")
    if not c.is_floating_point():
        raise TypeError(f"init must be floating, got {c.dtype}")
    c = c.detach().to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(c).all()):
        raise ValueError("init contains NaN or Inf")
    return c


def _lloyd_batched(x: Tensor, centers: Tensor, niter: int, metric: str = "euclidean") -> Tensor:
    """_lloyd_torch (kmeans.py) for B problems at once, with the same empty-cluster rule per
    problem (the j-th empty cluster takes the j-th farthest row of its own problem, which
    leaves its old cluster); with metric="cosine" _lloyd_segments' spherical rule."""
    b, n, d = x.shape
    k = centers.shape[1]
    acc = torch.float64
    cosine = metric == "cosine"
    off = torch.arange(b, device=x.device)[:, None] * k  # problem b's centers in the flat (B*K)
    row_off = torch.arange(b, device=x.device)[:, None] * n  # and its rows in the flat (B*N)
    rows64 = x.reshape(b * n, d).to(acc)
    if cosine:
        rows64 = unit(rows64)
    for _ in range(niter):
        labels, d2 = assign(x, centers, metric=metric)
        flat = (labels + off).reshape(-1)
        sums = torch.zeros(b * k, d, dtype=acc, device=x.device).index_add_(0, flat, rows64)
        counts = torch.bincount(flat, minlength=b * k).view(b, k)
        empty = counts == 0
        pick = _relocate.far_rows(empty, d2.to(acc))  # (B, K), rows of each problem
        moved = torch.gather(x, 1, pick[:, :, None].expand(b, k, d))
        old = (labels.gather(1, pick) + off).reshape(-1)
        leaving = rows64.index_select(0, (pick + row_off).reshape(-1))
        counts = counts.reshape(-1)
        _relocate.take_out_(sums, counts, old, leaving, empty.reshape(-1))
        means = _relocate.residual_means(sums, counts).view(b, k, d)
        if cosine:
            moved = unit(moved.reshape(b * k, d)).view(b, k, d)
            means = unit(means.reshape(b * k, d)).view(b, k, d)
        centers = torch.where(empty[:, :, None], moved, means.to(x.dtype))
    return centers


def kmeans_batched(x: Tensor, k: int, *, init, niter: int, seed: int, backend: str,
                   n_local_trials, chunk_size, num_threads, subsample, metric="euclidean",
                   sample_weight=None):
    """See km.kmeans (x 3-D). Returns KMeansResult with centers (B, K, d), labels (B, N) and
    inertia a (B,) float64 tensor on x's device."""
    from .kmeans import KMeansResult

    if backend not in ("auto", "torch"):
        raise ValueError(f"batched problems (x 3-D) run on backend 'torch' (km.assign), got {backend!r}")
    if subsample is not None:
        raise ValueError("subsample is not supported for batched problems (x 3-D)")
    if sample_weight is not None:
        raise ValueError("sample_weight is not supported for batched problems (x 3-D)")
    cosine = _checks.metric(metric)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    b, n, d = x.shape
    k = _data.check_k("k", k, n)
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter must be an int >= 0, got {niter!r}")
    seed = _data.check_seed(seed)
    xc = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(xc).all()):
        raise ValueError("x contains NaN or Inf")
    centers = _initial_centers_batched(init, xc, k, seed, n_local_trials, chunk_size, num_threads,
                                       metric)
    if cosine and b:  # spherical k-means' centers are unit vectors from the start
        centers = unit(centers.reshape(b * k, d)).view(b, k, d)
    if niter > 0:
        centers = _lloyd_batched(xc, centers, niter, metric)
    labels, d2 = assign(xc, centers, metric=metric)
    return KMeansResult(centers.to(x.dtype), labels, d2.sum(1, dtype=torch.float64))
