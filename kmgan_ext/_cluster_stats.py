"""Per-cluster means and counts of a batch through the public update op.

The layer above the ops (estimators, modules) needs the per-cluster statistics of a batch
(Lloyd's M-step, the all-reduced sums of a distributed update). The library's segmented-sum
kernels are reached through ``km.minibatch_update_``: applied to zero centers and zero
counts it leaves ``counts_k = n_k`` (int64, exact) and ``c_k = S_k / n_k`` (the kernels'
blocked accumulation, whose error does not grow with N), on every backend and in its
deterministic mode, with no one-hot matmul and no ``bincount`` host sync.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .minibatch_update import minibatch_update_


def cluster_means(
    x: Tensor, labels: Tensor, k: int, *, deterministic: bool = False, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """(means (K, d) in x.dtype, 0 where a cluster has no row; counts (K,) int64)."""
    means = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    minibatch_update_(means, counts, x, labels, deterministic=deterministic, backend=backend)
    return means, counts


def cluster_sums(
    x: Tensor, labels: Tensor, k: int, *, deterministic: bool = False, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """(sums (K, d) float64 = mean_k * n_k, counts (K,) int64).

    The sum is rebuilt from the kernel's mean in float64, so it carries the mean's rounding
    (half an ulp of x's dtype, relative) and nothing more.
    """
    means, counts = cluster_means(x, labels, k, deterministic=deterministic, backend=backend)
    return means.to(torch.float64) * counts.to(torch.float64)[:, None], counts
