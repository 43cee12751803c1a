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

from .minibatch_update import ema_update_, minibatch_update_


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


# cluster_size counts in float32 (for float32 and 16-bit x): exact up to 2**24 rows
_EXACT_FLOAT32_COUNT = 1 << 24


def cluster_unit_sums(
    x: Tensor, labels: Tensor, k: int, *, deterministic: bool = False, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Spherical k-means' statistics: (sums (K, d) float64 of the unit rows x_i / ||x_i||
    (a zero row adds 0), counts (K,) int64).

    The rows are normalised inside the kernels, never as a normalised copy of x: the cosine
    EMA update with decay 0 stores exactly ``embed_sum_k = S_k`` and ``cluster_size_k = n_k``
    (its centers output is scratch; eps only smooths that scratch). cluster_size is float32 for float32 and 16-bit x, exact
    for counts up to 2**24, so x is taken 2**24 rows at a time.
    """
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], _EXACT_FLOAT32_COUNT):
        e = s + _EXACT_FLOAT32_COUNT
        scratch = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
        size = torch.zeros(k, dtype=sdt, device=x.device)
        embed = torch.zeros(k, x.shape[1], dtype=sdt, device=x.device)
        ema_update_(scratch, size, embed, x[s:e], labels[s:e], decay=0.0,
                    deterministic=deterministic, metric="cosine", backend=backend)
        sums += embed.to(torch.float64)
        counts += size.round().to(torch.int64)
    return sums, counts
