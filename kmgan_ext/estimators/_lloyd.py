"""One Lloyd run as scikit-learn's ``_kmeans_single_lloyd``, on the library's ops.

Per iteration: ``km.assign`` (labels + squared distances, exact float64 argmin, ties to the
lowest index), the per-cluster means through the segmented-sum kernels (``_cluster_stats``),
empty clusters relocated as scikit-learn does (the rows farthest from their center become
the empty clusters' centers and leave their old cluster), then the convergence tests:
strict (labels unchanged) or the squared center shift below ``tol`` (already scaled by the
data's variance). Without strict convergence the labels are recomputed against the final
centers, so ``labels_`` always matches ``cluster_centers_``.

Sample weights: ``km.minibatch_update_(..., sample_weight=w)`` from zero centers and zero
float64 counts leaves ``c_k = sum w_i x_i / w_k`` and ``counts_k = w_k`` (the kernels' weighted
sums, no weighted copy of x): the weighted means scikit-learn computes; with metric="cosine"
the renormalised weighted sums of the unit rows.

A memmap (``Data.chunked``) is read chunk by chunk: per chunk the labels and the per-cluster
sums (float64), summed over the chunks; in memory the whole of X is one call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._cluster_stats import cluster_means
from .._progress import progress
from ..assign import assign
from ..minibatch_update import minibatch_update_
from ..seeding.kmeans_plusplus import unit
from ._base import Data, assign_all


def m_step(x, w, labels, k, *, deterministic, backend) -> tuple[Tensor, Tensor]:
    """(new centers (K, d) in x.dtype, 0 for empty (zero-weight) clusters; weight per cluster
    float64)."""
    if w is None:
        means, n = cluster_means(x, labels, k, deterministic=deterministic, backend=backend)
        return means, n.to(torch.float64)
    means = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    wsum = torch.zeros(k, dtype=torch.float64, device=x.device)
    minibatch_update_(means, wsum, x, labels, sample_weight=w, deterministic=deterministic,
                      backend=backend)
    return means, wsum


def e_m_step(data: Data, w, centers, *, deterministic, backend, metric="euclidean"):
    """(labels (N,), dist2 (N,), new centers (K, d), weight per cluster float64)."""
    k = centers.shape[0]
    cosine = metric == "cosine"
    if not data.chunked:
        x = data.x
        labels, dist2 = assign(x, centers, metric=metric, backend=backend)
        if cosine:
            new, weight = spherical_m_step(x, labels, k, w, deterministic=deterministic,
                                           backend=backend)
        else:
            new, weight = m_step(x, w, labels, k, deterministic=deterministic, backend=backend)
        return labels, dist2, new, weight
    n = data.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=data.device)
    dist2 = torch.empty(n, dtype=data.dtype, device=data.device)
    sums = torch.zeros(k, data.shape[1], dtype=torch.float64, device=data.device)
    weight = torch.zeros(k, dtype=torch.float64, device=data.device)
    for s, x in data.chunks():
        e = s + x.shape[0]
        lab, d2 = assign(x, centers, metric=metric, backend=backend)
        labels[s:e], dist2[s:e] = lab, d2
        wc = w[s:e] if w is not None else None
        if cosine:  # the (weighted) sums of the chunk's unit rows (a chunk is a copy already)
            u = unit(x.to(torch.float64))
            sums.index_add_(0, lab, u if wc is None else u * wc.to(torch.float64)[:, None])
            weight += (torch.bincount(lab, minlength=k).to(torch.float64) if wc is None else
                       torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
                           0, lab, wc.to(torch.float64)))
            continue
        means, wk = m_step(x, wc, lab, k, deterministic=deterministic, backend=backend)
        sums += means.to(torch.float64) * wk[:, None]
        weight += wk
    if cosine:
        return labels, dist2, unit(sums).to(data.dtype), weight
    new = torch.where((weight > 0)[:, None], sums / weight.clamp_min(1e-300)[:, None], sums)
    return labels, dist2, new.to(data.dtype), weight


def relocate_empty(data: Data, w, labels, dist2, centers_new, weight) -> None:
    """scikit-learn's ``_relocate_empty_clusters_dense``, in place on centers_new / weight.

    The rows farthest from their (old) center, farthest first, become the centers of the
    empty clusters and are taken out of their old cluster's mean (labels stay as they are).
    """
    empty = torch.nonzero(weight == 0).flatten().tolist()
    if not empty:
        return
    far = torch.sort(dist2.to(torch.float64), descending=True, stable=True).indices[: len(empty)]
    c = centers_new.to(torch.float64)
    for new_id, p in zip(empty, far.tolist()):
        wp = 1.0 if w is None else float(w[p])
        old = int(labels[p])
        xp = data.take(torch.tensor([p]))[0].to(torch.float64)
        total = c[old] * weight[old] - wp * xp
        weight[old] -= wp
        c[old] = total / weight[old] if weight[old] > 0 else total
        c[new_id] = xp
        weight[new_id] = wp
    centers_new.copy_(c.to(centers_new.dtype))


def spherical_m_step(x, labels, k, w=None, *, deterministic, backend) -> tuple[Tensor, Tensor]:
    """metric="cosine": the renormalised (weighted) sums of the normalised rows (0 for empty
    clusters), by the update kernel itself: from zero centers and counts, Sculley's rule with
    cosine sets every hit c_k to normalise(S_k / m_k) = normalise(S_k) and leaves the others
    0; with sample_weight, S_k = sum w_i x_i / ||x_i|| and the counts are the weights."""
    centers = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64 if w is None else torch.float64, device=x.device)
    minibatch_update_(centers, counts, x, labels, sample_weight=w, deterministic=deterministic,
                      metric="cosine", backend=backend)
    return centers, counts.to(torch.float64)


def relocate_empty_spherical(data: Data, labels, dist2, centers_new, weight) -> None:
    """The empty clusters take the rows farthest from their center (farthest first),
    normalised; unlike the Euclidean rule the old clusters keep their directions."""
    empty = torch.nonzero(weight == 0).flatten()
    if not empty.numel():
        return
    far = torch.sort(dist2.to(torch.float64), descending=True, stable=True).indices[: empty.numel()]
    rows = data.take(far).to(torch.float64)
    n = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    centers_new[empty] = torch.where(n == 0, rows, rows / torch.where(n == 0, torch.ones_like(n), n)).to(centers_new.dtype)
    weight[empty] = 1.0


def lloyd(data: Data, w, centers, *, max_iter, tol, verbose, deterministic, backend,
          metric="euclidean", desc="KMeans"):
    """Returns (labels int64 (N,), inertia float, centers (K, d), n_iter).

    ``verbose``: scikit-learn's per-iteration lines on stdout, and a progress of the
    iterations on stderr (kmgan_ext._progress: a bar on a terminal; elsewhere a line every
    KMGAN_EXT_PROGRESS_INTERVAL seconds, so only long fits print one)."""
    with progress(max_iter, desc=desc, unit="it", enabled=bool(verbose), leave=False,
                  summary=False) as bar:
        return _lloyd(data, w, centers, max_iter=max_iter, tol=tol, verbose=verbose,
                      deterministic=deterministic, backend=backend, metric=metric, bar=bar)


def _lloyd(data, w, centers, *, max_iter, tol, verbose, deterministic, backend, metric, bar):
    labels_old = None
    i = 0
    for i in range(max_iter):
        labels, dist2, centers_new, weight = e_m_step(
            data, w, centers, deterministic=deterministic, backend=backend, metric=metric)
        if metric == "cosine":
            relocate_empty_spherical(data, labels, dist2, centers_new, weight)
        else:
            relocate_empty(data, w, labels, dist2, centers_new, weight)
        shift = float(((centers_new.to(torch.float64) - centers.to(torch.float64)) ** 2).sum())
        if verbose:
            d2 = dist2.to(torch.float64)
            inertia = float((d2 * w).sum() if w is not None else d2.sum())
            print(f"Iteration {i}, inertia {inertia}.")
            bar.set_postfix({"inertia": inertia, "shift": shift})
        bar.update(1)
        centers = centers_new
        if labels_old is not None and torch.equal(labels, labels_old):
            if verbose:
                print(f"Converged at iteration {i}: strict convergence.")
            break
        if shift <= tol:
            if verbose:
                print(f"Converged at iteration {i}: center shift {shift} within tolerance {tol}.")
            break
        labels_old = labels
    # After strict convergence the last M-step reproduced the same means, so these labels
    # are the last E-step's (as scikit-learn keeps); otherwise they are its re-run E-step.
    labels, dist2 = assign_all(data, centers, backend, metric)
    d2 = dist2.to(torch.float64)
    inertia = float((d2 * w.to(torch.float64)).sum() if w is not None else d2.sum())
    return labels, inertia, centers, i + 1
