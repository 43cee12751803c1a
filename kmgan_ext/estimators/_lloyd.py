"""One Lloyd run as scikit-learn's ``_kmeans_single_lloyd``, on the library's ops.

Per iteration: ``km.assign`` (labels + squared distances, exact float64 argmin, ties to the
lowest index), the per-cluster means through the segmented-sum kernels (``_cluster_stats``),
empty clusters relocated as scikit-learn does (the rows farthest from their center become
the empty clusters' centers and leave their old cluster), then the convergence tests:
strict (labels unchanged) or the squared center shift below ``tol`` (already scaled by the
data's variance). Without strict convergence the labels are recomputed against the final
centers, so ``labels_`` always matches ``cluster_centers_``.

Sample weights: the sums of ``w_i x_i`` and of ``w_i`` are formed by the same kernels over
``[w x, w]`` (one extra column) and divided: the weighted means scikit-learn computes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._cluster_stats import cluster_means
from ..assign import assign
from ..minibatch_update import minibatch_update_


def weighted_rows(x: Tensor, w: Tensor | None) -> Tensor | None:
    """[w x, w] (N, d + 1), whose per-cluster means give the weighted sums; None for w None."""
    if w is None:
        return None
    return torch.cat([x * w[:, None], w[:, None]], dim=1)


def m_step(x, xw, w, labels, k, *, deterministic, backend) -> tuple[Tensor, Tensor]:
    """(new centers (K, d) in x.dtype, 0 for empty clusters; weight per cluster float64)."""
    if xw is None:
        means, n = cluster_means(x, labels, k, deterministic=deterministic, backend=backend)
        return means, n.to(torch.float64)
    means, n = cluster_means(xw, labels, k, deterministic=deterministic, backend=backend)
    nf = n.to(torch.float64)
    wsum = means[:, -1].to(torch.float64) * nf
    sums = means[:, :-1].to(torch.float64) * nf[:, None]
    centers = torch.where((wsum > 0)[:, None], sums / wsum.clamp_min(1e-300)[:, None], sums)
    return centers.to(x.dtype), wsum


def relocate_empty(x, w, labels, dist2, centers_new, weight) -> None:
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
        xp = x[p].to(torch.float64)
        total = c[old] * weight[old] - wp * xp
        weight[old] -= wp
        c[old] = total / weight[old] if weight[old] > 0 else total
        c[new_id] = xp
        weight[new_id] = wp
    centers_new.copy_(c.to(centers_new.dtype))


def spherical_m_step(x, labels, k, *, deterministic, backend) -> tuple[Tensor, Tensor]:
    """metric="cosine": the renormalised sums of the normalised rows (0 for empty clusters),
    by the update kernel itself: from zero centers and counts, Sculley's rule with cosine
    sets every hit c_k to normalise(S_k / m_k) = normalise(S_k) and leaves the others 0."""
    centers = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    counts = torch.zeros(k, dtype=torch.int64, device=x.device)
    minibatch_update_(centers, counts, x, labels, deterministic=deterministic, metric="cosine",
                      backend=backend)
    return centers, counts.to(torch.float64)


def relocate_empty_spherical(x, labels, dist2, centers_new, weight) -> None:
    """The empty clusters take the rows farthest from their center (farthest first),
    normalised; unlike the Euclidean rule the old clusters keep their directions."""
    empty = torch.nonzero(weight == 0).flatten()
    if not empty.numel():
        return
    far = torch.sort(dist2.to(torch.float64), descending=True, stable=True).indices[: empty.numel()]
    rows = x[far].to(torch.float64)
    n = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    centers_new[empty] = torch.where(n == 0, rows, rows / torch.where(n == 0, torch.ones_like(n), n)).to(centers_new.dtype)
    weight[empty] = 1.0


def lloyd(x, w, centers, *, max_iter, tol, verbose, deterministic, backend, metric="euclidean"):
    """Returns (labels int64 (N,), inertia float, centers (K, d), n_iter)."""
    k = centers.shape[0]
    cosine = metric == "cosine"
    if cosine and w is not None:
        raise NotImplementedError("metric='cosine' with sample_weight is not supported yet")
    xw = weighted_rows(x, w)
    labels_old = None
    i = 0
    for i in range(max_iter):
        labels, dist2 = assign(x, centers, metric=metric, backend=backend)
        if cosine:
            centers_new, weight = spherical_m_step(x, labels, k, deterministic=deterministic, backend=backend)
            relocate_empty_spherical(x, labels, dist2, centers_new, weight)
        else:
            centers_new, weight = m_step(x, xw, w, labels, k, deterministic=deterministic, backend=backend)
            relocate_empty(x, w, labels, dist2, centers_new, weight)
        if verbose:
            d2 = dist2.to(torch.float64)
            print(f"Iteration {i}, inertia {float((d2 * w).sum() if w is not None else d2.sum())}.")
        shift = float(((centers_new.to(torch.float64) - centers.to(torch.float64)) ** 2).sum())
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
    labels, dist2 = assign(x, centers, metric=metric, backend=backend)
    d2 = dist2.to(torch.float64)
    inertia = float((d2 * w.to(torch.float64)).sum() if w is not None else d2.sum())
    return labels, inertia, centers, i + 1
