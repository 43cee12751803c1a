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
def _weight_checks(counts, x, sample_weight) -> None:
    """sample_weight (N,) floating, finite, >= 0; with it the running counts are float64
    cumulative weights (finite, >= 0), without it int64 counts (below 2**63)."""
    if sample_weight is None:
        if counts is not None:
            if counts.dtype != torch.int64:
                raise TypeError(f"counts must be int64 without sample_weight, got {counts.dtype}")
            _checks.counts_range("counts", counts, x.shape[0])
        return
    _checks.sample_weight("sample_weight", sample_weight, x.shape[0], x)
    _checks.weight_range("sample_weight", sample_weight)
    if counts is not None:
        if counts.dtype != torch.float64:
            raise TypeError(f"counts must be float64 (cumulative weights) with sample_weight, "
                            f"got {counts.dtype}")
        _checks.weight_range("counts", counts)


def _update_checks(centers, counts, x, labels, deterministic, cosine=False, sample_weight=None):
    inputs = {"x": x, "labels": labels}
    if sample_weight is not None:
        inputs["sample_weight"] = sample_weight
    _checks.writable({"centers": centers, "counts": counts}, inputs)
    _checks.label_range("labels", labels, centers.shape[0])
    _weight_checks(counts, x, sample_weight)
    _checks.finite("x", x)
    _checks.finite("centers", centers)


def _step_checks(centers, counts, x, deterministic, cosine=False, sample_weight=None):
    inputs = {"x": x} if sample_weight is None else {"x": x, "sample_weight": sample_weight}
    _checks.writable({"centers": centers, "counts": counts}, inputs)
    _weight_checks(counts, x, sample_weight)
    _checks.finite("x", x)
    _checks.finite("centers", centers)


def _ema_checks(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic,
                cosine=False, sample_weight=None):
    inputs = {"x": x, "labels": labels}
    if sample_weight is not None:
        inputs["sample_weight"] = sample_weight
    _checks.writable(
        {"centers": centers, "cluster_size": cluster_size, "embed_sum": embed_sum}, inputs)
    # Batched problems, centers (B, K, d): labels lie in [0, K) of each problem and the
    # (B, N) weights are checked as the B * N rows' weights.
    _checks.label_range("labels", labels, centers.shape[-2])
    if sample_weight is not None and centers.dim() == 3:
        x, sample_weight = x.reshape(-1, x.shape[-1]), sample_weight.reshape(-1)
    _weight_checks(None, x, sample_weight)
    _checks.finite("x", x)
    _checks.finite("centers", centers)
    _checks.finite("cluster_size", cluster_size)
    _checks.finite("embed_sum", embed_sum)


# flags: the schema's `bool cosine=False, Tensor? sample_weight=None` after `backend`.
_registry.route("minibatch_update_", _update_checks, mutated=(0, 1), flags=(False, None),
                checks_flags=True)
_registry.route("minibatch_step_", _step_checks, mutated=(0, 1), flags=(False, None),
                checks_flags=True)
_registry.route("ema_update_", _ema_checks, mutated=(0, 1, 2), flags=(False, None),
                checks_flags=True)

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::minibatch_update_")
    def _(centers, counts, x, labels, deterministic, backend, cosine=False, sample_weight=None):
        return None

    @torch.library.register_fake("kmgan_ext::minibatch_step_")
    def _(centers, counts, x, deterministic, backend, cosine=False, sample_weight=None):
        return x.new_empty(x.shape[0], dtype=torch.int64)

    @torch.library.register_fake("kmgan_ext::ema_update_")
    def _(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, backend,
          cosine=False, sample_weight=None):
        return None


def _check_update_args(centers, counts, x, labels=None, sample_weight=None):
    lead = tuple(x.shape[:-1]) if isinstance(x, Tensor) and x.dim() >= 1 else None
    x, labels = _checks.rows_and_labels("x", _checks.promote_x(x, centers), "labels", labels)
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    _checks.not_grad_leaf("centers", centers)
    if sample_weight is not None:
        # x (..., d) with sample_weight (...): the weights of the flattened rows.
        sample_weight = _checks.tensor("sample_weight", sample_weight)
        if lead is not None and tuple(sample_weight.shape) == lead and len(lead) != 1:
            sample_weight = sample_weight.reshape(-1)
        sample_weight = _checks.sample_weight("sample_weight", sample_weight, x.shape[0], x)
    if counts is not None:
        counts = (_checks.counts("counts", counts, centers.shape[0], x) if sample_weight is None
                  else _checks.weighted_counts("counts", counts, centers.shape[0], x))
        _checks.not_grad_leaf("counts", counts)  # float64 counts can require grad
    if labels is not None:
        labels = _checks.labels("labels", labels, x.shape[0], x)
    return centers, counts, x, labels, sample_weight


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
    sample_weight: Tensor | None = None,
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
        counts: (K,) int64 running counts, updated in place (exact past 2**24); float64
            cumulative weights when sample_weight is given.
        x: (N, d) same dtype/device as centers; N = 0 is a no-op.
        labels: (N,) int64 (or int32) in [0, K).
        sample_weight: None, or (N,) floating weights (finite, >= 0; read in float64), as
            scikit-learn's ``_mini_batch_step``: with w_k the batch weight of cluster k and
            S_k the weighted sum of its rows, for every k with w_k > 0 (zero-weight rows
            change nothing)::

                c_k <- (c_k counts_k + S_k) / (counts_k + w_k);  counts_k += w_k

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
        return _batched_update_(centers, counts, x, labels, deterministic, backend, metric,
                                sample_weight)
    centers, counts, x, labels, w = _check_update_args(centers, counts, x, labels, sample_weight)
    cosine = _checks.metric(metric)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    w = w.detach() if w is not None else None
    if not _registry.registered():
        _update_checks(centers, counts, x, labels, deterministic, cosine, w)
        return reference.minibatch_update_(centers, counts, x, labels, deterministic, cosine, w)
    _registry.call("minibatch_update_", centers, counts, x, labels, deterministic, be, cosine, w)


def minibatch_step_(
    centers: Tensor,
    counts: Tensor,
    x: Tensor,
    *,
    sample_weight: Tensor | None = None,
    deterministic: bool = False,
    metric: str = "euclidean",
    backend: str = "auto",
) -> Tensor:
    """assign + minibatch_update_ fused: labels against the pre-update centers, returned.

    Same arguments (sample_weight included) and determinism contract as
    :func:`minibatch_update_`; with
    metric="cosine" the labels are assign(..., metric="cosine")'s. Labels have x's leading
    shape: (...) for x (..., d), (B, N) for batched problems (one assign launch and one
    update launch for all problems).
    """
    if _checks.is_batched(centers):
        x, centers = _checks.batched(x, centers)
        _batched_state("counts", counts, centers.shape[:2],
                       torch.int64 if sample_weight is None else torch.float64, x)
        if sample_weight is not None:
            _batched_weights(sample_weight, x)
        labels, _ = assign(x.detach(), centers.detach(), metric=metric, backend=backend)
        _batched_update_(centers, counts, x, labels, deterministic, backend, metric,
                         sample_weight)
        return labels
    lead = tuple(x.shape[:-1]) if isinstance(x, Tensor) and x.dim() >= 1 else None
    centers, counts, x, _, w = _check_update_args(centers, counts, x, None, sample_weight)
    cosine = _checks.metric(metric)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    w = w.detach() if w is not None else None
    if not _registry.registered():
        _step_checks(centers, counts, x, deterministic, cosine, w)
        labels = reference.minibatch_step_(centers, counts, x, deterministic, cosine, w)
    else:
        labels = _registry.call("minibatch_step_", centers, counts, x, deterministic, be, cosine, w)
    return labels.view(lead) if lead is not None and len(lead) != 1 else labels


def ema_update_(
    centers: Tensor,
    cluster_size: Tensor,
    embed_sum: Tensor,
    x: Tensor,
    labels: Tensor,
    *,
    sample_weight: Tensor | None = None,
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
        sample_weight: None, or (N,) floating weights (finite, >= 0; read in float64): n_k
            becomes the weight of cluster k's rows and S_k their weighted sum.
        decay: in [0, 1]; eps: >= 0.
        Batched problems: centers (B, K, d), cluster_size (B, K), embed_sum (B, K, d), x
        (B, N, d), labels (B, N) in [0, K) of each problem, sample_weight (B, N): one call
        of the op and one launch sequence for all problems (the smoothing's total n is each
        problem's own), each problem bitwise its own 2-D call (on GPU backends with
        deterministic=True: float atomics may add in another order); everything is checked
        before the first write.
        metric: "euclidean" or "cosine": S_k sums x_i / ||x_i|| and c_k = M_k / N'_k is
            renormalised to unit length, as vector-quantize-pytorch's cosine codebook.
        deterministic, backend: as in :func:`minibatch_update_`.
    """
    if _checks.is_batched(centers):
        return _batched_ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps,
                                    deterministic, backend, metric, sample_weight)
    centers, _, x, labels, w = _check_update_args(centers, None, x, labels, sample_weight)
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
    w = w.detach() if w is not None else None
    if not _registry.registered():
        _ema_checks(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, cosine, w)
        return reference.ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps,
                                     deterministic, cosine, w)
    _registry.call("ema_update_", centers, cluster_size, embed_sum, x, labels, decay, eps,
                   deterministic, be, cosine, w)


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


def _batched_weights(sample_weight: object, x: Tensor) -> Tensor:
    w = _checks.tensor("sample_weight", sample_weight)
    if tuple(w.shape) != tuple(x.shape[:2]):
        raise ValueError(f"sample_weight must have shape {tuple(x.shape[:2])} (B, N), got {tuple(w.shape)}")
    return _checks.sample_weight("sample_weight", w.reshape(-1), w.numel(), x).view(w.shape)


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


def _batched_update_(centers, counts, x, labels, deterministic, backend, metric="euclidean",
                     sample_weight=None) -> None:
    """The B problems' updates as one update of the flat (B*K, d) centers with labels
    b*K + l: exact (each cluster's sum and count only see its own problem's rows) and one
    launch on every backend."""
    x, centers = _checks.batched(_checks.promote_x(x, centers), centers)
    b, k, d = centers.shape
    n = x.shape[1]
    _checks.not_grad_leaf("centers", centers)
    counts = _batched_state("counts", counts, (b, k),
                            torch.int64 if sample_weight is None else torch.float64, x)
    labels = _batched_labels(labels, x, k)
    w = _batched_weights(sample_weight, x).reshape(b * n) if sample_weight is not None else None
    flat_c, flat_n = _Flat(centers, (b * k, d)), _Flat(counts, (b * k,))
    minibatch_update_(flat_c.flat, flat_n.flat, x.reshape(b * n, d),
                      _checks.batch_offsets(labels, k), sample_weight=w, metric=metric,
                      deterministic=deterministic, backend=backend)
    flat_c.write_back()
    flat_n.write_back()


def _batched_ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic,
                         backend, metric="euclidean", sample_weight=None) -> None:
    """B problems in one call of the op with the (B, K, d) / (B, N, d) tensors as they are:
    the Laplace smoothing normalises by each problem's own total (n = sum_k N_k over its K
    clusters), so the kernels take the problem as a grid axis (or loop, on cpu) rather than
    the flat (B*K) view of minibatch_update_. Everything is checked first, for every
    problem, so a failed call writes nothing."""
    x, centers = _checks.batched(_checks.promote_x(x, centers), centers)
    b, k, d = centers.shape
    want = _checks.ema_state_dtype(centers.dtype)
    cluster_size = _batched_state("cluster_size", cluster_size, (b, k), want, x)
    embed_sum = _batched_state("embed_sum", embed_sum, (b, k, d), want, x)
    labels = _batched_labels(labels, x, k)
    w = _batched_weights(sample_weight, x) if sample_weight is not None else None
    for name, t in (("centers", centers), ("cluster_size", cluster_size), ("embed_sum", embed_sum)):
        _checks.not_grad_leaf(name, t)
    cosine = _checks.metric(metric)
    decay = _checks.decay(decay)
    eps = _checks.eps(eps)
    be = _dispatch.resolve(backend, x.device)
    deterministic = _check_deterministic(deterministic, be)
    x = x.detach()
    w = w.detach() if w is not None else None
    if not _registry.registered():
        _ema_checks(centers, cluster_size, embed_sum, x, labels, decay, eps, deterministic, cosine, w)
        return reference.ema_update_(centers, cluster_size, embed_sum, x, labels, decay, eps,
                                     deterministic, cosine, w)
    _registry.call("ema_update_", centers, cluster_size, embed_sum, x, labels, decay, eps,
                   deterministic, be, cosine, w)
