"""km.MiniBatchKMeans: scikit-learn's MiniBatchKMeans (Sculley 2010) on the library's ops."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from .._progress import progress
from ..assign import assign
from ..minibatch_update import minibatch_update_
from ..reassign_dead import reassign_dead_
from ._base import (
    Data,
    EstimatorBase,
    check_int,
    check_random_state,
    initial_centers,
    is_int,
    probabilities,
    tolerance,
)


class MiniBatchKMeans(EstimatorBase):
    """Mini-batch k-means with scikit-learn's interface, step rule and random sequence.

    A scikit-learn user changes one import: ``from kmgan_ext import MiniBatchKMeans``. Each
    step assigns a batch with ``km.assign`` and applies scikit-learn's update
    ``counts_k += m_k; c_k += (S_k - m_k c_k) / counts_k`` with ``km.minibatch_update_``
    (weighted: the same rule with weight sums). Batches, validation rows, "random" seeds and
    low-count reassignments are drawn from a numpy RandomState exactly as scikit-learn draws
    them, so with the same ``random_state`` and explicit initial centers ``fit`` follows the
    same sequence as scikit-learn's, and ``partial_fit`` on the same batches does too.

    Args (scikit-learn's): n_clusters=8, init ("k-means++", "random", array, callable),
    max_iter (passes over the data), batch_size=1024, verbose, compute_labels, random_state,
    tol (0 = off; else scaled by the data's variance), max_no_improvement (steps without
    improvement of the smoothed batch inertia; None = off), init_size (rows the
    initialisation sees; None = 3 * batch_size), n_init ("auto" = 1 for k-means++ / arrays,
    3 otherwise), reassignment_ratio (a center whose count falls below this fraction of the
    largest count is moved to a random row of the batch; the per-cluster counts are
    ``counts_``).
    Args (ours): device, dtype, backend, metric, deterministic (as km.KMeans).

    Fitted attributes: ``cluster_centers_``, ``labels_`` and ``inertia_`` (when
    compute_labels), ``n_iter_``, ``n_steps_``, ``n_features_in_``, and ``counts_`` (the
    weight absorbed by each center; scikit-learn keeps it private as ``_counts``).
    """

    def __init__(
        self,
        n_clusters=8,
        *,
        init="k-means++",
        max_iter=100,
        batch_size=1024,
        verbose=0,
        compute_labels=True,
        random_state=None,
        tol=0.0,
        max_no_improvement=10,
        init_size=None,
        n_init="auto",
        reassignment_ratio=0.01,
        device=None,
        dtype=None,
        backend="auto",
        metric="euclidean",
        deterministic=False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.verbose = verbose
        self.compute_labels = compute_labels
        self.random_state = random_state
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.init_size = init_size
        self.n_init = n_init
        self.reassignment_ratio = reassignment_ratio
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.metric = metric
        self.deterministic = deterministic

    # ------------------------------------------------------------------ checks
    def _check_params(self, n: int) -> None:
        self._check_common_params()
        check_int("batch_size", self.batch_size)
        r = self.reassignment_ratio
        # scikit-learn accepts r > 1 and then fails at the first reassignment (every center
        # is below r * max, none is left to take the reset count from): refused up front
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 <= r <= 1:
            raise ValueError(f"reassignment_ratio should be in [0, 1], got {r!r}")
        m = self.max_no_improvement
        if m is not None and (not is_int(m) or m < 0):
            raise ValueError(f"max_no_improvement must be None or an int >= 0, got {m!r}")
        if n < self.n_clusters:
            raise ValueError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")
        self._batch_size = min(int(self.batch_size), n)
        init_size = self.init_size
        if init_size is not None:
            check_int("init_size", init_size)
        if init_size is None:
            init_size = 3 * self._batch_size
            if init_size < self.n_clusters:
                init_size = 3 * self.n_clusters
        elif init_size < self.n_clusters:
            init_size = 3 * self.n_clusters
        self._init_size = min(int(init_size), n)

    def _init(self, x: Data, w, rs, X_user) -> Tensor:
        """scikit-learn's ``_init_centroids`` with ``init_size``: a random subset first."""
        n = x.shape[0]
        if self._init_size < n:
            idx = torch.as_tensor(rs.randint(0, n, self._init_size), device=x.device)
            return initial_centers(self, x.take(idx), (w[idx] if w is not None else None), rs, X_user)
        return initial_centers(self, x if x.chunked else x.x, w, rs, X_user)

    # ------------------------------------------------------------------ one step
    def _random_reassign(self) -> bool:
        self._n_since_last_reassign += self._batch_size
        if bool((self._counts == 0).any()) or self._n_since_last_reassign >= 10 * self.n_clusters:
            self._n_since_last_reassign = 0
            return True
        return False

    def _step(self, xb: Tensor, wb: Tensor | None, rs, reassign: bool) -> float:
        """scikit-learn's ``_mini_batch_step`` on self._centers / self._counts, in place;
        returns the batch inertia (against the centers before the step)."""
        labels, dist2 = assign(xb, self._centers, metric=self.metric, backend=self.backend)
        d2 = dist2.to(torch.float64)
        inertia = float((d2 * wb.to(torch.float64)).sum() if wb is not None else d2.sum())
        # weighted (float64 counts): scikit-learn's c_k <- (c_k W_k + S_k) / (W_k + w_k) for
        # clusters with batch weight w_k > 0, in the update kernels
        minibatch_update_(self._centers, self._counts, xb, labels, sample_weight=wb,
                          metric=self.metric, deterministic=self.deterministic,
                          backend=self.backend)
        if reassign and self.reassignment_ratio > 0:
            self._reassign(xb, rs)
        return inertia

    def _reassign(self, xb: Tensor, rs) -> None:
        # km.reassign_dead_ transcribes scikit-learn's rule and, given this RandomState,
        # draws the same rows, so the sequence matches scikit-learn's
        moved = reassign_dead_(self._centers, self._counts, xb,
                               reassignment_ratio=self.reassignment_ratio, generator=rs)
        n_reassigns = int(moved.sum())
        if n_reassigns and self.verbose:
            print(f"[MiniBatchKMeans] Reassigning {n_reassigns} cluster centers.")
        if n_reassigns and self.metric == "cosine":  # spherical: unit centers
            from ..seeding.kmeans_plusplus import unit

            self._centers[moved] = unit(self._centers[moved])

    # ------------------------------------------------------------------ convergence
    def _converged(self, step, n_steps, n, shift, batch_inertia) -> bool:
        """scikit-learn's ``_mini_batch_convergence`` (smoothed inertia, no-improvement)."""
        batch_inertia /= self._batch_size
        step += 1
        if step == 1:
            if self.verbose:
                print(f"Minibatch step {step}/{n_steps}: mean batch inertia: {batch_inertia}")
            return False
        if self._ewa_inertia is None:
            self._ewa_inertia = batch_inertia
        else:
            alpha = min(self._batch_size * 2.0 / (n + 1), 1)
            self._ewa_inertia = self._ewa_inertia * (1 - alpha) + batch_inertia * alpha
        if self.verbose:
            print(f"Minibatch step {step}/{n_steps}: mean batch inertia: {batch_inertia}, "
                  f"ewa inertia: {self._ewa_inertia}")
        if self._tol > 0.0 and shift <= self._tol:
            if self.verbose:
                print(f"Converged (small centers change) at step {step}/{n_steps}")
            return True
        if self._ewa_inertia_min is None or self._ewa_inertia < self._ewa_inertia_min:
            self._no_improvement = 0
            self._ewa_inertia_min = self._ewa_inertia
        else:
            self._no_improvement += 1
        if self.max_no_improvement is not None and self._no_improvement >= self.max_no_improvement:
            if self.verbose:
                print(f"Converged (lack of improvement in inertia) at step {step}/{n_steps}")
            return True
        return False

    # ------------------------------------------------------------------ public
    def fit(self, X, y=None, sample_weight=None):
        """Compute the centers over X by mini-batches (scikit-learn's schedule); returns self.

        An np.memmap is never read whole: batches, validation and initialisation rows are
        gathered from it, the tolerance and the final labels computed chunk by chunk."""
        x = self._data(X)
        n = x.shape[0]
        w = self._weights(sample_weight, x)  # before _check_params sets anything
        self._check_params(n)
        rs = check_random_state(self.random_state)
        self._tol = tolerance(x, self.tol)
        n_init = self._n_init_for(default=3)

        valid = torch.as_tensor(rs.randint(0, n, self._init_size), device=x.device)
        x_valid, w_valid = x.take(valid), (w[valid] if w is not None else None)
        best = None
        for run in range(n_init):
            if self.verbose:
                print(f"Init {run + 1}/{n_init} with method {self.init}")
            c = self._init(x, w, rs, X)
            _, inertia = self._labels_inertia(x_valid, w_valid, c)
            if self.verbose:
                print(f"Inertia for init {run + 1}/{n_init}: {inertia}")
            if best is None or inertia < best[1]:
                best = (c, inertia)
        self._centers = best[0].contiguous()
        # fit steps with unit weights (batches are drawn by weight), so counts stay exact ints
        self._counts = torch.zeros(self.n_clusters, dtype=torch.int64, device=x.device)
        self._ewa_inertia = self._ewa_inertia_min = None
        self._no_improvement = 0
        self._n_since_last_reassign = 0

        n_steps = (self.max_iter * n) // self._batch_size
        # Batches are drawn with probability proportional to the weights and then stepped
        # with unit weights (scikit-learn >= 1.5), so weights are not counted twice.
        p = probabilities(w, x)
        i = 0
        # verbose: a progress of the steps on stderr beside scikit-learn's lines (a bar on a
        # terminal; elsewhere a line every KMGAN_EXT_PROGRESS_INTERVAL seconds)
        with progress(n_steps, desc="MiniBatchKMeans", unit="step", enabled=bool(self.verbose),
                      leave=False, summary=False) as bar:
            for i in range(n_steps):
                idx = torch.as_tensor(rs.choice(n, self._batch_size, p=p, replace=True), device=x.device)
                old = self._centers.clone() if self._tol > 0 else None
                batch_inertia = self._step(x.take(idx), None, rs, self._random_reassign())
                shift = float(((self._centers.to(torch.float64) - old.to(torch.float64)) ** 2).sum()) if old is not None else 0.0
                done = self._converged(i, n_steps, n, shift, batch_inertia)
                bar.update(1)
                if self.verbose and self._ewa_inertia is not None:
                    bar.set_postfix({"ewa_inertia": self._ewa_inertia})
                if done:
                    break

        self._set_fitted(X, x)
        self.n_steps_ = i + 1
        self.n_iter_ = int(np.ceil(((i + 1) * self._batch_size) / n))
        if self.compute_labels:
            labels, self.inertia_ = self._labels_inertia(x, w, self._centers)
            self.labels_ = self._labels_out(labels)
        else:
            self.inertia_ = self._ewa_inertia * (float(w.sum()) if w is not None else n)
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One mini-batch step with X as the batch (scikit-learn's partial_fit); returns self.

        The first call initialises the centers from X (with ``init``); later calls continue
        from the current state.
        """
        first = not hasattr(self, "_centers")
        if first:
            x = self._as_tensor(X)  # a batch: in memory
            self._weights(sample_weight, x)  # checked before _check_params sets anything
            self._check_params(x.shape[0])
            if not isinstance(self.init, str) and not callable(self.init):
                self._n_init_for(default=3)  # the explicit-array warning, as scikit-learn
        else:
            x = self._as_tensor(X, fitted=True)
            # continue from cluster_centers_ (a user may have set it), as scikit-learn does
            self._centers = self._centers_tensor().contiguous()
        w = self._weights(sample_weight, x)
        if not hasattr(self, "_random_state"):
            self._random_state = check_random_state(self.random_state)
        rs = self._random_state
        self.n_steps_ = getattr(self, "n_steps_", 0)
        if first:
            self._centers = self._init(Data(x), w, rs, X).contiguous()
            self._counts = (torch.zeros(self.n_clusters, dtype=torch.int64, device=x.device)
                            if w is None else
                            torch.zeros(self.n_clusters, dtype=torch.float64, device=x.device))
            self._n_since_last_reassign = 0
            self._set_fitted(X, x)
        # counts stay exact int64 until a weighted batch arrives, then hold weight sums
        if w is not None and self._counts.dtype == torch.int64:
            self._counts = self._counts.to(torch.float64)
        if w is None and self._counts.dtype != torch.int64:
            w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        self._step(x, w, rs, self._random_reassign())
        if self.compute_labels:
            labels, self.inertia_ = self._labels_inertia(x, w, self._centers)
            self.labels_ = self._labels_out(labels, X)
        self.n_steps_ += 1
        self.cluster_centers_ = self._out(self._centers)
        self.counts_ = self._out(self._counts.to(self._dtype))
        return self

    def _set_fitted(self, X, x) -> None:
        self._dtype, self._device = x.dtype, x.device
        self._remember_io(X)
        self.n_features_in_ = x.shape[1]
        self._n_features_out = self.n_clusters
        self.cluster_centers_ = self._out(self._centers)
        self.counts_ = self._out(self._counts.to(self._dtype))
