"""scikit-learn's relocation of empty clusters (``_relocate_empty_clusters_dense``), shared by
km.kmeans' Lloyd loops (kmeans.py) and the batched one (kmeans_batched.py): the j-th empty
cluster of a problem takes the j-th farthest row from its center, and that row leaves its old
cluster. Device ops only (topk, gather, index_add, where): no host sync."""
from __future__ import annotations

import torch
from torch import Tensor


def far_rows(empty: Tensor, dist2: Tensor) -> Tensor:
    """(..., K) row indices: for every cluster the row it would take, the j-th empty cluster
    of a problem the row of that problem's j-th largest ``dist2`` (..., N); read only where
    ``empty`` (..., K)."""
    k = empty.shape[-1]
    far = torch.topk(dist2, k, dim=-1).indices
    rank = (torch.cumsum(empty, -1) - 1).clamp_(min=0)
    return far.gather(-1, rank)


def take_out_(sums: Tensor, counts: Tensor, old: Tensor, leaving: Tensor, taken: Tensor) -> None:
    """The moved rows leave their old clusters, in place: sums[old] -= leaving * taken and
    counts[old] -= taken (sums (K, d), counts (K,), old / taken (M,), leaving (M, d)); a row
    whose cluster was not empty has taken 0 and changes nothing."""
    sums.index_add_(0, old, -leaving * taken.to(sums.dtype)[:, None])
    counts.index_add_(0, old, -taken.to(counts.dtype))


def residual_means(sums: Tensor, counts: Tensor) -> Tensor:
    """sums / counts per cluster; where no row is left, scikit-learn's residual sum (the
    division by 1)."""
    return sums / torch.where(counts == 0, 1, counts)[:, None]
