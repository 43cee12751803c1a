"""Center sets of KM-GAN: seeding by k-means++ (``seed``: the trainer's real and fake sets)
and the per-iteration mini-batch update, also across DDP ranks.

With a process group, the per-cluster sums and counts of every rank's batch are all-reduced
and the same Sculley update is applied on every rank, so all ranks hold bitwise-identical
centers (the all-reduced numbers are identical everywhere) and the result equals
``km.minibatch_update_`` on the concatenated batch up to float rounding.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

import kmgan_ext as km


def kmeans_pp(x: Tensor, k: int, seed: int) -> Tensor:
    """k-means++ centers (k, d) float32 over all rows of x (kmgan_ext.seeding)."""
    if x.shape[0] < k:
        raise ValueError(f"k-means++ needs at least k={k} rows to seed from, got {x.shape[0]}")
    return km.kmeans_plusplus(x.float(), k, seed=seed).float()


def broadcast_(t: Tensor, world_size: int) -> Tensor:
    if world_size > 1:
        dist.broadcast(t, src=0)
    return t


def seed(tr) -> None:
    """The center sets of Trainer ``tr``: real centers by k-means++ over D(X) of the whole
    training set, fake centers over D(G(z)) of a generated pool (``fake_pool``); pixel
    centers over X for ``reduced``; none for ``dcgan``, ``gmgan`` and ``slcgan``. Rank 0 seeds, every rank receives
    the same centers."""
    cfg, k = tr.cfg, tr.cfg["k"]
    if cfg["model"] in ("dcgan", "gmgan", "slcgan"):
        return
    n = len(tr.data)
    if cfg["model"] == "reduced":
        dim = int(torch.tensor(tr.model_shape()).prod())
        c = torch.zeros(k, dim, device=tr.device)
        if tr.info.main:
            pixels = tr.dataset_features(lambda x: x.flatten(1), torch.arange(n))
            c = kmeans_pp(pixels, k, cfg["seed"]).to(tr.device)
        tr.C_real = broadcast_(c.contiguous(), tr.world)
        tr.n_real = torch.zeros(k, dtype=torch.int64, device=tr.device)
        return
    fdim = tr.D_raw.feature_dim
    c_real = torch.zeros(k, fdim, device=tr.device)
    c_fake = torch.zeros(k, fdim, device=tr.device)
    if tr.info.main:
        feats = tr.dataset_features(tr.D_raw.features, tr.feature_order(n, 11))
        c_real = kmeans_pp(feats, k, cfg["seed"]).to(tr.device)
        pool_gen = torch.Generator(device=tr.device).manual_seed(cfg["seed"] + 17)
        pool = tr.generated_features(max(k, cfg["fake_pool"]), pool_gen)
        c_fake = kmeans_pp(pool, k, cfg["seed"] + 1).to(tr.device)
    tr.C_real = broadcast_(c_real.contiguous(), tr.world)
    tr.C_fake = broadcast_(c_fake.contiguous(), tr.world)
    tr.n_real = torch.zeros(k, dtype=torch.int64, device=tr.device)
    tr.n_fake = torch.zeros(k, dtype=torch.int64, device=tr.device)


def _cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (K, d) float64 and counts (K,) int64 of a batch, as a one-hot matmul:
    deterministic on GPU too (torch.bincount has no deterministic CUDA kernel, and
    deterministic=true must hold under DDP); a batch's (N, K) one-hot is small."""
    onehot = torch.nn.functional.one_hot(labels, k).double()
    return onehot.T @ x.double(), onehot.sum(0).round().long()


def update_(centers: Tensor, counts: Tensor, x: Tensor, cfg: dict, world_size: int) -> Tensor:
    """Label x against the current centers, then apply the mini-batch k-means update (over
    every rank's rows when world_size > 1). Returns the labels of x."""
    x = x.detach().float()
    labels, _ = km.assign(x, centers, backend=cfg["backend"])
    if world_size == 1:
        km.minibatch_update_(centers, counts, x, labels, deterministic=cfg["deterministic"], backend=cfg["backend"])
        return labels
    sums, m = _cluster_sums(x, labels, centers.shape[0])
    dist.all_reduce(sums)
    dist.all_reduce(m)
    # docs/ops.md's center update on the all-reduced numbers (float64 as the reference does);
    # km.minibatch_update_ cannot be fed sums, only rows.
    hit = m > 0
    new_counts = counts + m
    c = centers.double()
    upd = c + (sums - m[:, None].double() * c) / new_counts.clamp_min(1)[:, None].double()
    centers.copy_(torch.where(hit[:, None], upd, c).to(centers.dtype))
    counts.copy_(new_counts)
    return labels


def rank_max_abs_diff(tensors: list[Tensor], world_size: int) -> float:
    """max over ranks and entries of |t - t_rank0| (0.0 on one process)."""
    if world_size == 1:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        ref = t.detach().clone()
        dist.broadcast(ref, src=0)
        worst = torch.maximum(worst, (t.detach().double() - ref.double()).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())
