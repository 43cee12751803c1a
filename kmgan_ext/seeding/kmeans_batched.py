"""km.kmeans on B independent problems: x (B, N, d) -> centers (B, K, d).

Each Lloyd iteration is one batched km.assign (one kernel launch for all problems) and one
float64 segment sum over the flat (B*K, d) centers with labels b*K + l; the problems never
mix. Seeding is per problem (k-means++ is sequential over centers): problem b is seeded with
``seed + b``, so problem b gets the centers ``km.kmeans(x[b], k, seed=seed + b,
backend="torch")`` gets.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..assign import assign
from . import _data


def _initial_centers_batched(init, x: Tensor, k: int, seed: int, n_local_trials, chunk_size,
                             num_threads) -> Tensor:
    from .kmeans import _initial_centers  # the single-problem rule, problem by problem

    b, _, d = x.shape
    if isinstance(init, str):
        return torch.stack([
            _initial_centers(init, _data.Rows("x", x[i]), k, seed + i, n_local_trials, chunk_size,
                             num_threads)
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


def _lloyd_batched(x: Tensor, centers: Tensor, niter: int) -> Tensor:
    """_lloyd_torch (kmeans.py) for B problems at once, with the same empty-cluster rule per
    problem (the j-th empty cluster takes the j-th farthest row of its own problem)."""
    b, n, d = x.shape
    k = centers.shape[1]
    acc = torch.float64
    off = torch.arange(b, device=x.device)[:, None] * k
    rows64 = x.reshape(b * n, d).to(acc)
    for _ in range(niter):
        labels, d2 = assign(x, centers)
        flat = (labels + off).reshape(-1)
        sums = torch.zeros(b * k, d, dtype=acc, device=x.device).index_add_(0, flat, rows64)
        counts = torch.bincount(flat, minlength=b * k).view(b, k)
        empty = counts == 0
        far = torch.topk(d2.to(acc), k, dim=1).indices
        rank = (torch.cumsum(empty, 1) - 1).clamp_(min=0)
        moved = torch.gather(x, 1, far.gather(1, rank)[:, :, None].expand(b, k, d))
        means = (sums.view(b, k, d) / counts.clamp(min=1)[:, :, None]).to(x.dtype)
        centers = torch.where(empty[:, :, None], moved, means)
    return centers


def kmeans_batched(x: Tensor, k: int, *, init, niter: int, seed: int, backend: str,
                   n_local_trials, chunk_size, num_threads, subsample):
    """See km.kmeans (x 3-D). Returns KMeansResult with centers (B, K, d), labels (B, N) and
    inertia a (B,) float64 tensor on x's device."""
    from .kmeans import KMeansResult

    if backend not in ("auto", "torch"):
        raise ValueError(f"batched problems (x 3-D) run on backend 'torch' (km.assign), got {backend!r}")
    if subsample is not None:
        raise ValueError("subsample is not supported for batched problems (x 3-D)")
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
    centers = _initial_centers_batched(init, xc, k, seed, n_local_trials, chunk_size, num_threads)
    if niter > 0:
        centers = _lloyd_batched(xc, centers, niter)
    labels, d2 = assign(xc, centers)
    return KMeansResult(centers.to(x.dtype), labels, d2.sum(1, dtype=torch.float64))
