"""km.kmeans_parallel: k-means|| (Bahmani et al., 2012) over a torch.distributed process group.

Each rank holds a shard of the data. k-means|| replaces k-means++'s k sequential passes by a
few rounds of independent sampling:

1. one center drawn uniformly from all rows of all ranks; phi = sum_i D(x_i)^2 (all_reduce);
2. ``rounds`` times: every row joins the candidates independently with probability
   ``min(1, l D(x)^2 / phi)`` (l = ``oversampling``, 2k by default, so ~l rows per round);
   the new candidates are all_gathered (every rank then holds them in rank order), D and
   phi are updated;
3. each candidate is weighted by the number of rows, over all ranks, closer to it than to
   any other candidate (bincount of km.assign, all_reduced);
4. weighted greedy k-means++ on the ~1 + rounds * l candidates picks the k centers, on the
   group's rank 0, broadcast to all: every rank returns identical centers.

The collectives run on tensors on x_local's device (CUDA for NCCL, CPU for gloo).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from ..assign import assign
from . import _data
from .kmeans_plusplus import _loop_settings, greedy_kmeans_plusplus, uniforms


class _Group:
    """The collectives k-means|| needs, and a world of one when no group is initialised."""

    def __init__(self, group):
        self.active = dist.is_available() and dist.is_initialized()
        if group is not None and not self.active:
            raise ValueError("group was given but torch.distributed is not initialized")
        self.group = group
        self.rank = dist.get_rank(group) if self.active else 0
        self.size = dist.get_world_size(group) if self.active else 1

    def all_reduce(self, t: Tensor) -> Tensor:
        if self.size > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def broadcast(self, t: Tensor, src_group_rank: int = 0) -> Tensor:
        if self.size > 1:
            g = self.group if self.group is not None else dist.group.WORLD
            dist.broadcast(t, src=dist.get_global_rank(g, src_group_rank), group=self.group)
        return t

    def all_gather_rows(self, t: Tensor) -> Tensor:
        """Concatenate every rank's (n_r, d) rows in rank order (n_r may differ)."""
        if self.size == 1:
            return t
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        sizes = [torch.empty_like(n) for _ in range(self.size)]
        dist.all_gather(sizes, n, group=self.group)
        sizes = [int(s) for s in sizes]
        top = max(sizes)
        if top == 0:
            return t
        padded = t.new_zeros(top, t.shape[1])
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _update_min(rows: _data.Rows, closest: Tensor, cands: Tensor, chunk: int) -> None:
    """closest = min(closest, squared distance to the nearest of ``cands``), via km.assign."""
    for s, ch in rows.chunks(chunk):
        _, d2 = assign(ch, cands)
        e = s + ch.shape[0]
        torch.minimum(closest[s:e], d2.to(closest.dtype), out=closest[s:e])


def kmeans_parallel(
    x_local: Tensor | np.ndarray,
    k: int,
    *,
    oversampling: float | None = None,
    rounds: int = 5,
    seed: int = 0,
    group=None,
    n_local_trials: int | None = None,
    chunk_size: int | None = None,
):
    """k-means|| seeding of the union of every rank's ``x_local`` (Bahmani et al., 2012).

    Args:
        x_local: this rank's (n_r, d) shard: floating tensor or numpy array; shards may
            differ in length (even be empty) but not in d or dtype.
        k: number of centers, 1 <= k <= total rows over the group.
        oversampling: l, the expected number of candidates per round; default 2k.
        rounds: sampling rounds (Bahmani et al. find ~5 enough). When fewer than k
            candidates were found, up to ``rounds`` more rounds are run.
        seed: the same seed and the same sharding give the same centers. Each rank samples
            its own rows with a generator seeded from (seed, rank).
        group: the process group; None = the default group when torch.distributed is
            initialized, else a single process (then this is k-means|| on x_local alone).
        n_local_trials: candidates per center of the final weighted greedy k-means++.
        chunk_size: rows per chunk of x_local.

    Returns:
        centers (k, d), identical on every rank: rows of the union of the shards, in
        x_local's dtype (a tensor on x_local's device, or numpy for numpy x_local).
    """
    rows = _data.Rows("x_local", x_local)
    pg = _Group(group)
    dev, cdt = rows.device, rows.compute_dtype
    if _checks.debug_enabled():
        # Every rank must raise, or the others would wait in the next collective forever.
        try:
            rows.check_finite()
            bad = torch.zeros(1, dtype=torch.int64, device=dev)
        except ValueError:
            bad = torch.ones(1, dtype=torch.int64, device=dev)
        if int(pg.all_reduce(bad)[0]):
            raise ValueError("x_local contains NaN or Inf on at least one rank "
                             "(found with km.set_debug(True))")
    # Arguments first (the same on every rank), then the one check that needs all ranks.
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if oversampling is not None and not (
        isinstance(oversampling, (int, float, np.number)) and oversampling > 0
    ):
        raise ValueError(f"oversampling must be > 0, got {oversampling!r}")
    seed = _data.check_seed(seed)
    trials = _data.check_positive_int("n_local_trials", n_local_trials, allow_none=True)
    chunk = _data.check_positive_int("chunk_size", chunk_size, allow_none=True)
    sizes = torch.zeros(pg.size, dtype=torch.int64, device=dev)
    sizes[pg.rank] = rows.n
    sizes = pg.all_reduce(sizes).cpu()
    n_total = int(sizes.sum())
    k = _data.check_k("k", k, n_total, what="x_local over all ranks")
    ell = float(2 * k if oversampling is None else oversampling)
    chunk = chunk or rows.default_chunk(int(ell) + 1)

    # 1. the first center: one row drawn uniformly from all ranks (same draw everywhere).
    shared = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n_total, (1,), generator=shared))
    owner = int(torch.searchsorted(torch.cumsum(sizes, 0), torch.tensor(first), right=True))
    c0 = torch.zeros(1, rows.d, dtype=cdt, device=dev)
    if pg.rank == owner:
        local = first - int(sizes[:owner].sum())
        c0[0] = rows.take(torch.tensor([local], device=dev))[0]
    cands = pg.broadcast(c0, owner)

    closest = torch.full((rows.n,), float("inf"), dtype=torch.float64, device=dev)
    _update_min(rows, closest, cands, chunk)
    local_gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (pg.rank + 1))

    # 2. oversampling rounds.
    done = 0
    while done < rounds or (cands.shape[0] < k and done < 2 * rounds):
        phi = float(pg.all_reduce(closest.sum().reshape(1))[0])
        if phi <= 0:  # every row coincides with a candidate: nothing left to sample
            break
        u = torch.rand(rows.n, generator=local_gen, dtype=torch.float64).to(dev)
        picked = torch.nonzero(u < ell * closest / phi).view(-1)
        new = pg.all_gather_rows(rows.take(picked))
        if new.shape[0]:
            _update_min(rows, closest, new, chunk)
            cands = torch.cat([cands, new])
        done += 1

    # 3. weights: rows (over all ranks) nearest to each candidate.
    weights = torch.zeros(cands.shape[0], dtype=torch.int64, device=dev)
    for _, ch in rows.chunks(chunk):
        labels, _ = assign(ch, cands)
        weights += torch.bincount(labels, minlength=cands.shape[0])
    weights = pg.all_reduce(weights)

    # 4. weighted greedy k-means++ on the candidates, on rank 0, broadcast.
    centers = torch.empty(k, rows.d, dtype=cdt, device=dev)
    if pg.rank == 0:
        cand_rows = _data.Rows("candidates", cands)
        kk = min(k, cands.shape[0])
        trials = trials or _data.default_trials(kk)
        with _loop_settings(cand_rows, None, "torch"):
            idx, _ = greedy_kmeans_plusplus(
                cand_rows, kk, trials, uniforms(seed, kk, trials), weights=weights.to(cdt)
            )
        chosen = cands.index_select(0, idx)
        if kk < k:  # fewer distinct rows than k in the whole dataset: repeat some
            chosen = torch.cat([chosen, chosen[torch.arange(k - kk, device=dev) % kk]])
        centers.copy_(chosen)
    pg.broadcast(centers, 0)
    return rows.like_x(centers)
