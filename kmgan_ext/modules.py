"""nn.Module wrappers of the ops (DESIGN.md 4.7)."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _checks
from .assign import assign
from .minibatch_update import minibatch_step_
from .seeding.kmeans_parallel import kmeans_parallel
from .seeding.kmeans_plusplus import kmeans_plusplus

_INIT_METHODS = ("auto", "k-means++", "k-means||")


def _positive(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


class MiniBatchKMeans(nn.Module):
    """Mini-batch k-means (Sculley, 2010) as a module, with scikit-learn's update rule.

    Buffers (so ``state_dict``, ``.to()``, DDP's buffer broadcast and checkpoints carry them):
    ``centers`` (K, d) in ``dtype`` and ``counts`` (K,) int64, the rows each center has
    absorbed. Per batch, with m_k rows labelled k and S_k their sum::

        counts_k += m_k;   c_k += (S_k - m_k c_k) / counts_k      (clusters with m_k > 0)

    * ``init_(x)`` seeds the centers (greedy k-means++ over all rows of x; under
      torch.distributed, k-means|| over every rank's x) and zeroes the counts.
    * ``forward(x)`` returns the labels (int64, nearest center); in training mode it also
      applies the update (``km.minibatch_step_``: assign + update fused). ``predict(x)``
      never updates; ``partial_fit(x)`` always does and returns self. A module that was
      never seeded seeds itself from its first training batch (as scikit-learn's
      ``partial_fit``); ``predict`` before any seeding is an error.
    * Distributed: when torch.distributed is initialized and the group (default: WORLD) has
      more than one rank, each update all-reduces the per-cluster sums (float32, float64 for
      float64 centers) and counts before applying the same formula on every rank: all ranks
      keep identical centers, equal to one process fed the concatenation of their batches.

    Args:
        n_clusters: K >= 1. n_features: d >= 1.
        dtype: of ``centers`` (and of the x it accepts): float32, float16, bfloat16, float64.
        device: where the buffers start.
        deterministic: bitwise-reproducible updates on a GPU (no float atomics).
        backend: passed to km.assign / km.minibatch_step_.
        group: the process group of the distributed update; None = WORLD when initialized.
    """

    centers: Tensor
    counts: Tensor

    def __init__(
        self,
        n_clusters: int,
        n_features: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        deterministic: bool = False,
        backend: str = "auto",
        group=None,
    ):
        super().__init__()
        k = _positive("n_clusters", n_clusters)
        d = _positive("n_features", n_features)
        if dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
        self.register_buffer("centers", torch.zeros(k, d, dtype=dtype, device=device))
        self.register_buffer("counts", torch.zeros(k, dtype=torch.int64, device=device))
        self.deterministic = deterministic
        self.backend = backend
        self.group = group
        # Whether the centers hold a seeding; loading a state_dict counts as seeded.
        self._seeded = False
        self.register_load_state_dict_post_hook(MiniBatchKMeans._mark_seeded)

    @staticmethod
    def _mark_seeded(module, incompatible_keys) -> None:
        module._seeded = True

    @property
    def n_clusters(self) -> int:
        return self.centers.shape[0]

    @property
    def n_features(self) -> int:
        return self.centers.shape[1]

    @property
    def cluster_centers_(self) -> Tensor:
        """A detached copy of the centers (K, d): writing to it never changes the module."""
        return self.centers.detach().clone()

    def extra_repr(self) -> str:
        return (
            f"n_clusters={self.n_clusters}, n_features={self.n_features}, "
            f"dtype={self.centers.dtype}, deterministic={self.deterministic}"
        )

    # ------------------------------------------------------------------ distributed
    def _world(self):
        """The process group when the update must be all-reduced, else None."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        g = self.group if self.group is not None else dist.group.WORLD
        return g if dist.get_world_size(g) > 1 else None

    # ------------------------------------------------------------------ seeding
    @torch.no_grad()
    def init_(
        self,
        x: Tensor | np.ndarray,
        *,
        seed: int = 0,
        n_local_trials: int | None = None,
        method: str = "auto",
    ) -> "MiniBatchKMeans":
        """Seed the centers from x and zero the counts; returns self.

        ``method``: "k-means++" (greedy, over all rows of x), "k-means||" (over every
        rank's x, see km.kmeans_parallel) or "auto" = k-means|| when distributed, else
        k-means++. Distributed "k-means++" seeds on the group's rank 0 from its own x and
        broadcasts. Every rank ends with identical centers.
        """
        if method not in _INIT_METHODS:
            raise ValueError(f"method must be one of {_INIT_METHODS}, got {method!r}")
        shape = tuple(x.shape)
        if len(shape) != 2 or shape[1] != self.n_features:
            raise ValueError(f"x must have shape (N, {self.n_features}), got {shape}")
        world = self._world()
        if world is not None and method in ("auto", "k-means||"):
            c = kmeans_parallel(x, self.n_clusters, seed=seed, group=world,
                                n_local_trials=n_local_trials)
        elif world is not None:
            c = self.centers.new_zeros(self.centers.shape)
            if dist.get_rank(world) == 0:
                c = kmeans_plusplus(x, self.n_clusters, seed=seed, n_local_trials=n_local_trials)
            c = torch.as_tensor(c).to(self.centers)
            dist.broadcast(c, src=dist.get_global_rank(world, 0), group=world)
        else:
            c = kmeans_plusplus(x, self.n_clusters, seed=seed, n_local_trials=n_local_trials)
        self.centers.copy_(torch.as_tensor(c).to(self.centers))
        self.counts.zero_()
        self._seeded = True
        return self

    # ------------------------------------------------------------------ use
    def _check_x(self, x: object) -> Tensor:
        x = _checks.features("x", x, dtype=self.centers.dtype)
        if x.shape[1] != self.n_features:
            raise ValueError(f"x must have {self.n_features} columns (n_features), got {x.shape[1]}")
        _checks.same_device("x", x, self.centers, ref="the module's centers")
        return x

    @torch.no_grad()
    def _update(self, x: Tensor) -> Tensor:
        if not self._seeded:
            self.init_(x)
        world = self._world()
        if world is None:
            return minibatch_step_(
                self.centers, self.counts, x, deterministic=self.deterministic, backend=self.backend
            )
        labels, _ = assign(x, self.centers, backend=self.backend)
        sums, m = self._cluster_sums(x, labels)
        dist.all_reduce(sums, group=world)
        dist.all_reduce(m, group=world)
        new_counts = self.counts + m
        c = self.centers.to(sums.dtype)
        upd = c + (sums - m[:, None].to(sums.dtype) * c) / new_counts.clamp_min(1)[:, None]
        self.centers.copy_(torch.where((m > 0)[:, None], upd, c))
        self.counts.copy_(new_counts)
        return labels

    def _cluster_sums(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-cluster sums (K, d), float32 (float64 for float64 x), and counts (K,) int64."""
        k = self.n_clusters
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xa = x.detach().to(acc)
        if self.deterministic and x.is_cuda:
            # index_add_ uses float atomics on CUDA and bincount has no deterministic CUDA
            # kernel; a one-hot GEMM reduces in a fixed order (counts exact below 2**24 rows).
            onehot = torch.zeros(k, x.shape[0], dtype=acc, device=x.device)
            onehot.scatter_(0, labels[None, :], 1.0)
            return onehot @ xa, onehot.sum(1).to(torch.int64)
        sums = torch.zeros(k, x.shape[1], dtype=acc, device=x.device).index_add_(0, labels, xa)
        return sums, torch.bincount(labels, minlength=k)

    def forward(self, x: Tensor) -> Tensor:
        """Labels (N,) int64 of x; in training mode the centers are updated too."""
        x = self._check_x(x)
        if self.training:
            return self._update(x)
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Labels (N,) int64 of x against the current centers; never updates."""
        x = self._check_x(x)
        if not self._seeded:
            raise RuntimeError("MiniBatchKMeans has no centers yet: call init_(x) or partial_fit(x)")
        labels, _ = assign(x, self.centers, backend=self.backend)
        return labels

    def partial_fit(self, x: Tensor) -> "MiniBatchKMeans":
        """One update with the batch x (whatever the training mode); returns self."""
        self._update(self._check_x(x))
        return self
