"""km.MiniBatchKMeansModule: mini-batch k-means as an nn.Module for training loops (README,
"Modules for training loops")."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer

from .. import _checks
from .._cluster_stats import cluster_sums, cluster_unit_sums
from ..assign import assign
from ..minibatch_update import minibatch_step_
from ..reassign_dead import reassign_dead_
from ..seeding import kmeans_parallel, kmeans_plusplus
from ..seeding.kmeans_plusplus import unit
from ._distributed import world
from ._state_dict import check_state_shapes

_INIT_METHODS = ("auto", "k-means++", "k-means||")
_UPDATE = ("never", "train", "always")


def _positive(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


class MiniBatchKMeansModule(LazyModuleMixin, nn.Module):
    """Mini-batch k-means (Sculley, 2010) as a module, with scikit-learn's update rule.

    Buffers (so ``state_dict``, ``.to()``, DDP's buffer broadcast and checkpoints carry them):
    ``centers`` (K, d) in ``dtype`` and ``counts`` (K,) int64, the rows each center has
    absorbed. Per update, with m_k rows labelled k and S_k their sum::

        counts_k += m_k;   c_k += (S_k - m_k c_k) / counts_k      (clusters with m_k > 0)

    * d is inferred from the first tensor the module sees (``n_features`` is optional; the
      buffers stay uninitialized until then, and loading a state_dict fills them).
    * ``init_(x)`` seeds the centers (greedy k-means++ over all rows of x; under
      torch.distributed, k-means|| over every rank's x) and zeroes the counts.
    * Centers you set are kept: the module seeds itself from the first batch it updates
      with only while its centers are as constructed (uninitialized or all zero); centers
      copied in, assigned or loaded from a state_dict are never overwritten.
    * Updating is a visible choice, never a side effect of ``model.train()``:
      ``partial_fit(x)`` and ``forward(x, update=True)`` update; plain ``forward(x)``
      updates according to ``update``: "never" (the default: forward = predict), "train"
      (update when the module is in training mode: the behaviour of the old
      ``km.MiniBatchKMeans`` module) or "always".
    * Distributed: when torch.distributed is initialized and the group (default: WORLD) has
      more than one rank, each update all-reduces the per-cluster sums (float64) and counts
      (int64) formed by the library's segmented-sum kernels (no one-hot matmul, no bincount
      host sync), then applies the same formula on every rank: all ranks keep identical
      centers, equal to one process fed the concatenation of their batches.

    Args:
        n_clusters: K >= 1. n_features: d, or None to infer it at the first call.
        dtype: of ``centers`` (and of the x it accepts): float32, float16, bfloat16, float64.
        device: where the buffers start.
        update: "never", "train" or "always" (see above).
        deterministic: bitwise-reproducible updates on a GPU (no float atomics).
        backend: passed to km.assign / km.minibatch_step_.
        group: the process group of the distributed update; None = WORLD when initialized.
        reassignment_ratio: dead clusters (scikit-learn's rule, 0 = off): after an update,
            when a cluster has count 0 or 10 K rows arrived since the last check, the
            centers whose count is below this fraction of the largest move to random rows
            of the batch (``km.reassign_dead_``, drawn from a generator seeded with
            ``seed``; on rank 0 and broadcast under DDP) and their count becomes the
            smallest remaining one. The usage counts are the ``counts`` buffer.
        seed: of the reassignment draws.
        metric: "euclidean" (default) or "cosine": spherical mini-batch k-means (labels by
            the largest cosine similarity, k-means++ on the sphere, the updates sum the
            normalised rows and keep the centers at unit length: km.minibatch_step_'s
            metric="cosine"); under torch.distributed the sums of the unit rows are
            all-reduced (the ranks keep one codebook, that of one process fed the
            concatenated batch) and init_'s k-means|| runs on the unit rows.
    """

    centers: Tensor
    counts: Tensor
    cls_to_become = None

    def __init__(
        self,
        n_clusters: int,
        n_features: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        update: str = "never",
        deterministic: bool = False,
        backend: str = "auto",
        group=None,
        reassignment_ratio: float = 0.0,
        seed: int = 0,
        metric: str = "euclidean",
    ):
        super().__init__()
        k = _positive("n_clusters", n_clusters)
        _checks.metric(metric)
        self.metric = metric
        # <= 1: above it every center can fall below the ratio, leaving no count to reset to
        reassignment_ratio = _checks.real("reassignment_ratio", reassignment_ratio,
                                          minimum=0.0, maximum=1.0)
        seed = _checks.integer("seed", seed)
        if dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
        if update not in _UPDATE:
            raise ValueError(f"update must be one of {_UPDATE}, got {update!r}")
        self._k = k
        if n_features is None:
            self.register_buffer("centers", UninitializedBuffer(device=device, dtype=dtype))
            self.register_buffer("counts", UninitializedBuffer(device=device, dtype=torch.int64))
        else:
            d = _positive("n_features", n_features)
            self.register_buffer("centers", torch.zeros(k, d, dtype=dtype, device=device))
            self.register_buffer("counts", torch.zeros(k, dtype=torch.int64, device=device))
        self.update = update
        self.deterministic = deterministic
        self.backend = backend
        self.group = group
        self.reassignment_ratio = float(reassignment_ratio)
        self._gen = torch.Generator().manual_seed(int(seed))
        # total count at the last reassignment check (identical on every rank: counts are)
        self._checked_at = 0
        # Whether the centers hold a seeding; loading a state_dict counts as seeded.
        self._seeded = False
        self.register_load_state_dict_post_hook(MiniBatchKMeansModule._mark_seeded)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # before anything is copied (and before the lazy hook materializes the buffers from
        # the state_dict's shapes): K must match n_clusters, d the module's n_features, and
        # counts must be non-negative (they divide the update)
        k, d = self._k, self.n_features
        check_state_shapes(state_dict, prefix, {"centers": (k, d), "counts": (k,)})
        cnt = state_dict.get(prefix + "counts")
        if isinstance(cnt, Tensor) and cnt.device.type != "meta" and bool((cnt < 0).any()):
            raise RuntimeError(f"{prefix}counts must be non-negative, got {cnt.tolist()}; nothing was loaded")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _mark_seeded(module, incompatible_keys) -> None:
        module._seeded = True

    def initialize_parameters(self, x, *args, **kwargs) -> None:
        """Materialize the buffers as (K, d) zeros and (K,) zeros from x's last dimension."""
        if self.has_uninitialized_params():
            d = _positive("n_features (x.shape[-1])", int(x.shape[-1]))
            self.centers.materialize((self._k, d))
            self.centers.zero_()
            self.counts.materialize((self._k,))
            self.counts.zero_()

    @property
    def n_clusters(self) -> int:
        return self._k

    @property
    def n_features(self) -> int | None:
        return None if self.has_uninitialized_params() else self.centers.shape[1]

    @property
    def cluster_centers_(self) -> Tensor:
        """A detached copy of the centers (K, d): writing to it never changes the module."""
        return self.centers.detach().clone()

    def extra_repr(self) -> str:
        return (
            f"n_clusters={self.n_clusters}, n_features={self.n_features}, "
            f"dtype={self.centers.dtype}, update={self.update!r}, "
            f"deterministic={self.deterministic}"
            + (f", metric={self.metric!r}" if self.metric != "euclidean" else "")
        )

    # ------------------------------------------------------------------ seeding
    @torch.no_grad()
    def init_(
        self,
        x: Tensor | np.ndarray,
        *,
        seed: int = 0,
        n_local_trials: int | None = None,
        method: str = "auto",
    ) -> "MiniBatchKMeansModule":
        """Seed the centers from x and zero the counts; returns self.

        ``method``: "k-means++" (greedy, over all rows of x), "k-means||" (over every
        rank's x, see km.kmeans_parallel) or "auto" = k-means|| when distributed, else
        k-means++. Distributed "k-means++" seeds on the group's rank 0 from its own x and
        broadcasts. Every rank ends with identical centers.
        """
        if method not in _INIT_METHODS:
            raise ValueError(f"method must be one of {_INIT_METHODS}, got {method!r}")
        if not isinstance(x, (Tensor, np.ndarray)):
            raise TypeError(f"x must be a torch.Tensor or a numpy array, got {type(x).__name__}")
        shape = tuple(x.shape)
        if len(shape) != 2:
            raise ValueError(f"x must have shape (N, d), got {shape}")
        self.initialize_parameters(x)
        if shape[1] != self.n_features:
            raise ValueError(f"x must have shape (N, {self.n_features}), got {shape}")
        g = world(self.group)
        if g is not None and method in ("auto", "k-means||"):
            xt = torch.as_tensor(x)
            if self.metric == "cosine" and xt.is_floating_point():
                # k-means|| on the sphere: on unit rows its D^2 is 2 - 2 cos, k-means++'s
                # cosine distance, and the centers it returns are unit rows
                x = unit(xt.to(torch.float64)).to(xt.dtype)
            c = kmeans_parallel(x, self.n_clusters, seed=seed, group=g,
                                n_local_trials=n_local_trials)
        elif g is not None:
            c = self.centers.new_zeros(self.centers.shape)
            if dist.get_rank(g) == 0:
                c = kmeans_plusplus(x, self.n_clusters, seed=seed, n_local_trials=n_local_trials,
                                    metric=self.metric)
            c = torch.as_tensor(c).to(self.centers)
            dist.broadcast(c, src=dist.get_global_rank(g, 0), group=g)
        else:
            c = kmeans_plusplus(x, self.n_clusters, seed=seed, n_local_trials=n_local_trials,
                                metric=self.metric)
        c = torch.as_tensor(c).to(self.centers)
        if self.metric == "cosine":  # spherical: unit centers
            c = unit(c.to(torch.float64)).to(self.centers.dtype)
        self.centers.copy_(c)
        self.counts.zero_()
        self._seeded = True
        return self

    # ------------------------------------------------------------------ use
    def _check_x(self, x: object) -> tuple[Tensor, tuple]:
        """x (..., d) as (N, d) rows in the centers' dtype, and the leading shape.

        16-bit features against float32 centers (the autocast case) are computed in the
        centers' precision; a wider x than the centers is refused (it would be rounded)."""
        x = _checks.tensor("x", x)
        if x.dim() < 2:
            raise ValueError(f"x must be 2-D or more (..., d), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating (float16, bfloat16, float32, float64), got {x.dtype}")
        self.initialize_parameters(x)
        want = self.centers.dtype
        if torch.finfo(x.dtype).bits > torch.finfo(want).bits or (
                x.dtype != want and torch.finfo(x.dtype).bits == torch.finfo(want).bits):
            raise TypeError(f"x must have dtype {want} (the centers' dtype) or a 16-bit dtype to "
                            f"compute in {want}, got {x.dtype}")
        if x.shape[-1] != self.n_features:
            raise ValueError(f"x must have {self.n_features} columns (n_features), got {x.shape[-1]}")
        _checks.same_device("x", x, self.centers, ref="the module's centers")
        lead = tuple(x.shape[:-1])
        return x.reshape(-1, x.shape[-1]).to(want), lead

    def _ensure_seeded(self, x: Tensor) -> None:
        if self._seeded:
            return
        # Centers the user set (copied in, assigned) are kept; only the constructed all-zero
        # centers are replaced by a k-means++ seeding of this batch. One host sync, once.
        if bool(self.centers.any()):
            self._seeded = True
        else:
            self.init_(x)

    @torch.no_grad()
    def _update(self, x: Tensor) -> Tensor:
        labels = self._step(x)
        if self.reassignment_ratio > 0 and x.shape[0]:
            self._reassign(x)
        return labels

    def _reassign(self, x: Tensor) -> None:
        """scikit-learn's low-count reassignment (km.reassign_dead_), deterministic given the
        seed. When to look is decided from the counts alone, which every rank shares; the
        draws happen on rank 0 and are broadcast."""
        total = int(self.counts.sum())
        if not (bool((self.counts == 0).any()) or total - self._checked_at >= 10 * self.n_clusters):
            return
        self._checked_at = total
        g = world(self.group)
        if g is None or dist.get_rank(g) == 0:
            moved = reassign_dead_(self.centers, self.counts, x,
                                   reassignment_ratio=self.reassignment_ratio, generator=self._gen)
            if self.metric == "cosine" and bool(moved.any()):  # spherical: unit centers
                self.centers[moved] = unit(self.centers[moved])
        if g is not None:
            src = dist.get_global_rank(g, 0)
            dist.broadcast(self.centers, src=src, group=g)
            dist.broadcast(self.counts, src=src, group=g)

    def _step(self, x: Tensor) -> Tensor:
        self._ensure_seeded(x)
        g = world(self.group)
        if g is None:
            return minibatch_step_(
                self.centers, self.counts, x, deterministic=self.deterministic,
                metric=self.metric, backend=self.backend,
            )
        cosine = self.metric == "cosine"
        labels, _ = assign(x, self.centers, metric=self.metric, backend=self.backend)
        # spherical: S_k sums the unit rows (normalised inside the kernels)
        stats = cluster_unit_sums if cosine else cluster_sums
        sums, m = stats(x, labels, self.n_clusters, deterministic=self.deterministic,
                        backend=self.backend)
        dist.all_reduce(sums, group=g)
        dist.all_reduce(m, group=g)
        new_counts = self.counts + m
        c = self.centers.to(torch.float64)
        upd = c + (sums - m[:, None].to(torch.float64) * c) / new_counts.clamp_min(1)[:, None]
        if cosine:  # km.minibatch_update_'s metric="cosine": unit centers (zero stays zero)
            upd = unit(upd)
        self.centers.copy_(torch.where((m > 0)[:, None], upd, c))
        self.counts.copy_(new_counts)
        return labels

    def forward(self, x: Tensor, *, update: bool | None = None) -> Tensor:
        """Labels (...) int64 of x (..., d) (nearest center). ``update=True`` also applies the
        update, ``False`` never does; None follows the module's ``update`` setting."""
        rows, lead = self._check_x(x)
        if update is None:
            update = self.update == "always" or (self.update == "train" and self.training)
        labels = self._update(rows) if update else self._predict(rows)
        return labels.reshape(lead)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Labels (...) int64 of x (..., d) against the current centers; never updates."""
        rows, lead = self._check_x(x)
        return self._predict(rows).reshape(lead)

    def _predict(self, rows: Tensor) -> Tensor:
        if not self._seeded:
            if not bool(self.centers.any()):
                raise RuntimeError(
                    "MiniBatchKMeansModule has no centers yet: call init_(x) or partial_fit(x), "
                    "or copy centers into .centers"
                )
            self._seeded = True  # centers the user set: checked once, then kept
        labels, _ = assign(rows, self.centers, metric=self.metric, backend=self.backend)
        return labels

    def partial_fit(self, x: Tensor) -> "MiniBatchKMeansModule":
        """One update with the batch x (..., d), whatever the training mode; returns self."""
        self._update(self._check_x(x)[0])
        return self


class LegacyMiniBatchKMeans(MiniBatchKMeansModule):
    """The module formerly exported as ``km.MiniBatchKMeans`` (training-mode forwards update).

    ``km.MiniBatchKMeans`` is now the scikit-learn-style estimator; this alias keeps old code
    that imported ``kmgan_ext.modules.MiniBatchKMeans`` working, with a DeprecationWarning.
    """

    def __init__(self, n_clusters: int, n_features: int | None = None, **kwargs):
        warnings.warn(
            "kmgan_ext.modules.MiniBatchKMeans is deprecated: use km.MiniBatchKMeansModule "
            "(update='train' keeps the old behaviour of updating in training mode) or the "
            "scikit-learn-style estimator km.MiniBatchKMeans",
            DeprecationWarning,
            stacklevel=2,
        )
        kwargs.setdefault("update", "train")
        super().__init__(n_clusters, n_features, **kwargs)
