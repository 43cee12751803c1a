"""km.minibatch_update_, km.minibatch_step_, km.ema_update_: center updates (docs/ops.md).

All three share one segmented-sum kernel per backend (per-cluster sums and counts), then a
per-cluster apply. Centers are buffers: x is detached, no gradient flows through an update.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference
from .assign import assign


# The routing kernels' checks (every backend, also for direct torch.ops calls): all of them
# run before the first write, so a failed call leaves every argument bitwise unchanged.
def _update_checks(centers, counts, x, labels, deterministic):
    _checks.writable({"centers": centers, "counts": counts}, {"x": x, "labels": labels})
    _checks.label_range("labels", labels, centers.shape[0])
    _checks.counts_range("counts", counts, x.shape[0])
    _checks.finite("x", x)
    _checks.finite("centers", centers)


def _step_checks(centers, counts, x, deterministic):
    _checks.writable({"centers": centers, "counts": counts}, {"x": x})
    _checks.counts_range("counts", counts, x.shape[0])
    _checks.finite("x", x)
    _checks.finite("centers", centers)


def _ema_checks(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic):
    _checks.writable(
        {"centers": centers, "cluster_size": cluster_size, "embed_sum": embed_sum},
        {"x": x, "labels": labels},
    )
    _checks.label_range("labels", labels, centers.shape[0])
    _checks.finite("x", x)
    _checks.finite("centers", centers)
    _checks.finite("cluster_size", cluster_size)
    _checks.finite("embed_sum", embed_sum)


_registry.route("minibatch_update_", _update_checks, mutated=(0, 1), flags=(False,))
_registry.route("minibatch_step_", _step_checks, mutated=(0, 1), flags=(False,))
_registry.route("ema_update_", _ema_checks, mutated=(0, 1, 2), flags=(False,))

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::minibatch_update_")
    def _(centers, counts, x, labels, deterministic, backend, cosine=False):
        return None

    @torch.library.register_fake("kmgan_ext::minibatch_step_")
    def _(centers, counts, x, deterministic, backend, cosine=False):
        return x.new_empty(x.shape[0], dtype=torch.int64)

    @torch.library.register_fake("kmgan_ext::ema_update_")
    def _(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, backend, cosine=False):
        return None


def _check_update_args(centers, counts, x, labels=None):
    x, labels = _checks.rows_and_labels("x", _checks.promote_x(x, centers), "labels", labels)
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    _checks.not_grad_leaf("centers", centers)
    counts = _checks.counts("counts", counts, centers.shape[0], x) if counts is not None else None
    if labels is not None:
        labels = _checks.labels("labels", labels, x.shape[0], x)
    return centers, counts, x, labels


def _check_deterministic(deterministic: object, backend: str) -> bool:
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    return _dispatch.deterministic_for(backend, deterministic)


def minibatch_update_(
    centers: Tensor,
    counts: Tensor,
    x: Tensor,
    labels: Tensor,
    *,
    deterministic: bool = False,
    metric: str = "euclidean",
    backend: str = "auto",
) -> None:
    """Sculley's mini-batch k-means update, in place, as scikit-learn's MiniBatchKMeans.

    With m_k rows of x labelled k and S_k their sum, for every k with m_k > 0::

        counts_k += m_k
        c_k += (S_k - m_k c_k) / counts_k

    Clusters without rows are left untouched (never NaN). ``labels`` must have been computed
    against the centers before this update.

    Args:
        centers: (K, d) floating, updated in place.
        counts: (K,) int64 running counts, updated in place (exact past 2**24).
        x: (N, d) same dtype/device as centers; N = 0 is a no-op.
        labels: (N,) int64 (or int32) in [0, K).

    Input forms (docs/ops.md): x (..., d) with labels (...) are flattened to rows;
    float16/bfloat16 x with float32 centers is read in float32. Batched problems: centers
    (B, K, d), counts (B, K), x (B, N, d), labels (B, N) in [0, K) of each problem, updated
    in one launch over the flat (B*K, d) view of the centers.
        deterministic: False (default) lets GPU kernels use float atomics for the sums, so
            the last bits may differ run to run; True gives bitwise-identical results run to
            run (fixed-order reduction). The CPU kernels are deterministic either way, and
            under torch.use_deterministic_algorithms(True) the GPU backends are too.
        metric: "euclidean" (default) or "cosine": spherical k-means. S_k then sums the
            normalised rows x_i / ||x_i|| (a zero row adds nothing to S_k but counts in m_k)
            and every updated center is renormalised to unit length (a zero result stays
            zero); labels should come from ``assign(..., metric="cosine")``. The norms are
            formed inside the kernels, never as a normalised copy of x.
        backend: "auto", "reference", "cpu", "triton" or "cuda".
    """
    if _checks.is_batched(centers):
        return _batched_update_(centers, counts, x, labels, deterministic, backend, metric)
    centers, counts, x, labels = _check_update_args(centers, counts, x, labels)
    cosine = _checks.metric(metric)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    if not _registry.registered():
        _update_checks(centers, counts, x, labels, deterministic)
        return reference.minibatch_update_(centers, counts, x, labels, deterministic, cosine)
    _registry.call("minibatch_update_", centers, counts, x, labels, deterministic, be, cosine)


def minibatch_step_(
    centers: Tensor,
    counts: Tensor,
    x: Tensor,
    *,
    deterministic: bool = False,
    metric: str = "euclidean",
    backend: str = "auto",
) -> Tensor:
    """assign + minibatch_update_ fused: labels against the pre-update centers, returned.

    Same arguments and determinism contract as :func:`minibatch_update_`; with
    metric="cosine" the labels are assign(..., metric="cosine")'s. Labels have x's leading
    shape: (...) for x (..., d), (B, N) for batched problems (one assign launch and one
    update launch for all problems).
    """
    if _checks.is_batched(centers):
        x, centers = _checks.batched(x, centers)
        _batched_state("counts", counts, centers.shape[:2], torch.int64, x)
        labels, _ = assign(x.detach(), centers.detach(), metric=metric, backend=backend)
        _batched_update_(centers, counts, x, labels, deterministic, backend, metric)
        return labels
    lead = tuple(x.shape[:-1]) if isinstance(x, Tensor) and x.dim() >= 1 else None
    centers, counts, x, _ = _check_update_args(centers, counts, x)
    cosine = _checks.metric(metric)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    if not _registry.registered():
        _step_checks(centers, counts, x, deterministic)
        labels = reference.minibatch_step_(centers, counts, x, deterministic, cosine)
    else:
        labels = _registry.call("minibatch_step_", centers, counts, x, deterministic, be, cosine)
    return labels.view(lead) if lead is not None and len(lead) != 1 else labels


def ema_update_(
    centers: Tensor,
    cluster_size: Tensor,
    embed_sum: Tensor,
    x: Tensor,
    labels: Tensor,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    deterministic: bool = False,
    metric: str = "euclidean",
    backend: str = "auto",
) -> None:
    """The VQ-VAE codebook EMA (van den Oord et al. 2017, appendix A.1), in place.

    With n_k rows of x labelled k and S_k their sum, every k (also those without rows)::

        cluster_size_k <- decay cluster_size_k + (1 - decay) n_k
        embed_sum_k    <- decay embed_sum_k    + (1 - decay) S_k
        n    = sum_k cluster_size_k
        N'_k = (cluster_size_k + eps) / (n + K eps) * n        (Laplace smoothing)
        c_k  = embed_sum_k / N'_k

    computed from the state as stored, as vector-quantize-pytorch's EMA codebook does. Where
    N'_k == 0 (e.g. nothing was ever assigned and the state is zero) the center is left
    unchanged, never NaN.

    Args:
        centers: (K, d) floating, written in place.
        cluster_size: (K,) EMA of the cluster sizes, updated in place; float32 (float64 for
            float64 centers). A fresh state is zeros.
        embed_sum: (K, d) EMA of the per-cluster sums, same dtype as cluster_size; a fresh
            state is zeros (or the centers with cluster_size ones).
        x: (N, d) same dtype/device as centers; labels: (N,) int64 in [0, K).
        decay: in [0, 1]; eps: >= 0.
        Batched problems: centers (B, K, d), cluster_size (B, K), embed_sum (B, K, d), x
        (B, N, d), labels (B, N); one problem at a time (B launches: the smoothing's total n
        is each problem's own), everything checked before the first write.
        metric: "euclidean" or "cosine": S_k sums x_i / ||x_i|| and c_k = M_k / N'_k is
            renormalised to unit length, as vector-quantize-pytorch's cosine codebook.
        deterministic, backend: as in :func:`minibatch_update_`.
    """
    if _checks.is_batched(centers):
        return _batched_ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps,
                                    deterministic, backend, metric)
    centers, _, x, labels = _check_update_args(centers, None, x, labels)
    cosine = _checks.metric(metric)
    k, d = centers.shape
    cluster_size = _checks.ema_state("cluster_size", cluster_size, (k,), centers)
    embed_sum = _checks.ema_state("embed_sum", embed_sum, (k, d), centers)
    _checks.not_grad_leaf("cluster_size", cluster_size)
    _checks.not_grad_leaf("embed_sum", embed_sum)
    decay = _checks.decay(decay)
    eps = _checks.eps(eps)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    if not _registry.registered():
        _ema_checks(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic)
        return reference.ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, cosine)
    _registry.call("ema_update_", centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, be, cosine)


# ----------------------------------------------------------------------------- batched problems
# centers (B, K, d) with x (B, N, d): B independent problems (docs/ops.md, "Input forms").


def _batched_state(name: str, t: object, shape: tuple[int, ...], dtype: torch.dtype, x: Tensor) -> Tensor:
    t = _checks.tensor(name, t)
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    _checks.same_device(name, t, x)
    return t


def _batched_labels(labels: object, x: Tensor, k: int) -> Tensor:
    labels = _checks.tensor("labels", labels)
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 or int32, got {labels.dtype}")
    if tuple(labels.shape) != tuple(x.shape[:2]):
        raise ValueError(f"labels must have shape {tuple(x.shape[:2])} (B, N), got {tuple(labels.shape)}")
    _checks.same_device("labels", labels, x)
    labels = _checks.index_labels("labels", labels)
    # Each problem's own range, before the offsets (a label K of problem b is not center 0
    # of problem b + 1).
    _checks.label_range("labels", labels, k)
    return labels


class _Flat:
    """The (B*K, ...) view of a batched in-place argument; a contiguous copy written back
    after a successful update when the layout has no such view."""

    def __init__(self, t: Tensor, shape: tuple[int, ...]):
        self.t = t
        self.copied = not t.is_contiguous()
        self.flat = t.contiguous().view(shape)

    def write_back(self) -> None:
        if self.copied:
            self.t.copy_(self.flat.view(self.t.shape))


def _batched_update_(centers, counts, x, labels, deterministic, backend, metric="euclidean") -> None:
    """The B problems' updates as one update of the flat (B*K, d) centers with labels
    b*K + l: exact (each cluster's sum and count only see its own problem's rows) and one
    launch on every backend."""
    x, centers = _checks.batched(_checks.promote_x(x, centers), centers)
    b, k, d = centers.shape
    n = x.shape[1]
    _checks.not_grad_leaf("centers", centers)
    counts = _batched_state("counts", counts, (b, k), torch.int64, x)
    labels = _batched_labels(labels, x, k)
    flat_c, flat_n = _Flat(centers, (b * k, d)), _Flat(counts, (b * k,))
    minibatch_update_(flat_c.flat, flat_n.flat, x.reshape(b * n, d),
                      _checks.batch_offsets(labels, k), metric=metric,
                      deterministic=deterministic, backend=backend)
    flat_c.write_back()
    flat_n.write_back()


def _batched_ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic,
                         backend, metric="euclidean") -> None:
    """One problem at a time: the Laplace smoothing normalises by each problem's own total
    (n = sum_k N_k over its K clusters), so the flat (B*K) reuse of the single-problem
    kernels would not be exact. Everything is checked first, for every problem, so a failed
    call still writes nothing."""
    x, centers = _checks.batched(_checks.promote_x(x, centers), centers)
    b, k, d = centers.shape
    want = _checks.ema_state_dtype(centers.dtype)
    cluster_size = _batched_state("cluster_size", cluster_size, (b, k), want, x)
    embed_sum = _batched_state("embed_sum", embed_sum, (b, k, d), want, x)
    labels = _batched_labels(labels, x, k)
    for name, t in (("centers", centers), ("cluster_size", cluster_size), ("embed_sum", embed_sum)):
        _checks.not_grad_leaf(name, t)
    decay = _checks.decay(decay)
    eps = _checks.eps(eps)
    _checks.writable({"centers": centers, "cluster_size": cluster_size, "embed_sum": embed_sum},
                     {"x": x, "labels": labels})
    _check_deterministic(deterministic, _dispatch.resolve(backend, x.device))
    for i in range(b):
        ema_update_(centers[i], cluster_size[i], embed_sum[i], x[i], labels[i], decay=decay,
                    eps=eps, metric=metric, deterministic=deterministic, backend=backend)
