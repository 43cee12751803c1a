"""km.assign: fused nearest-center assignment (docs/ops.md, Assignment)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _data_checks(x: Tensor, centers: Tensor) -> None:
    _checks.finite("x", x)
    _checks.finite("centers", centers)


_registry.route("assign", _data_checks, flags=(False,))
_registry.route("assign_backward", flags=(False,))

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::assign")
    def _(x, centers, backend, cosine=False):
        lead = x.shape[:-1]  # (N,), or (B, N) for batched problems
        return x.new_empty(lead, dtype=torch.int64), x.new_empty(lead, dtype=_out_dtype(x))

    @torch.library.register_fake("kmgan_ext::assign_backward")
    def _(grad_dist2, x, centers, labels, centers_grad, backend, cosine=False):
        return torch.empty_like(x), centers.new_empty(centers.shape if centers_grad else (0,))

    def _setup_context(ctx, inputs, output):
        x, centers, backend, *flag = inputs
        labels, _ = output
        ctx.save_for_backward(x, centers, labels)
        ctx.backend = backend
        ctx.cosine = bool(flag and flag[0])
        ctx.mark_non_differentiable(labels)

    def _backward(ctx, grad_labels, grad_dist2):
        x, centers, labels = ctx.saved_tensors
        want_c = ctx.needs_input_grad[1]
        be = _dispatch.grad_backend(ctx.backend, want_c)
        if x.dim() == 3:
            gx, gc = _batched_backward(grad_dist2, x, centers, labels, want_c, be, ctx.cosine)
        else:
            gx, gc = _registry.call("assign_backward", grad_dist2, x, centers, labels, want_c, be, ctx.cosine)
        return (gx if ctx.needs_input_grad[0] else None), (gc if want_c else None), None, None

    _registry.register_autograd("assign", _backward, _setup_context)


def _batched_backward(grad_dist2, x, centers, labels, want_c, be, cosine):
    """The gradient of B problems is that of one problem over the (B*K, d) view of the
    centers with labels b*K + l (exact: each row reads and feeds only its own center)."""
    b, n, d = x.shape
    k = centers.shape[1]
    if b == 0:  # no problems: the flat (0, d) centers are no valid kernel input (K >= 1)
        return torch.zeros_like(x), (torch.zeros_like(centers) if want_c else centers.new_empty(0))
    flat = _checks.batch_offsets(labels, k)
    gx, gc = _registry.call("assign_backward", grad_dist2.reshape(b * n), x.reshape(b * n, d),
                            centers.reshape(b * k, d), flat, want_c, be, cosine)
    return gx.view(b, n, d), (gc.view(b, k, d) if want_c else gc)


def assign(
    x: Tensor,
    centers: Tensor,
    *,
    k: int | None = None,
    metric: str = "euclidean",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Nearest center of every row: ``labels[i] = argmin_k ||x_i - c_k||^2``.

    Args:
        x: (N, d) float32/float16/bfloat16/float64 features (N may be 0); any leading
            dimensions (..., d) with 2-D centers (flattened to rows; the outputs have shape
            (...), (..., k) with k); (B, N, d) with 3-D centers.
        centers: (K, d), K >= 1, same dtype and device as x (float16/bfloat16 x against
            float32 centers is computed in float32: x is converted, the centers are not
            copied). (B, K, d): B independent problems, one kernel launch for all, outputs
            (B, N) with labels in [0, K) of each problem.
        k: None for the nearest center; an int in [1, K] for the k nearest, sorted by
            distance (ties to the lowest index; NaN distances first, so column 0 is the
            k=None answer): then labels and dist2 are (N, k), exact as below, and the (N, K)
            matrix is still never written (a running top-k per row). k outside [1, K] is a
            ValueError naming k. With metric="cosine": the k largest cosines, in the order of
            the exact float64 key (ties to the lowest index, NaN first), dist2 = 2 - 2 cos;
            column 0 is the k=None answer. Batched problems (x (B, N, d), centers (B, K, d)):
            (B, N, k) outputs, k in [1, K] of each problem, every problem exactly as its own
            2-D call (one launch for all).
        metric: "euclidean" (default) or "cosine": ``labels[i] = argmax_k cos(x_i, c_k)``,
            cos = x.c / (||x|| ||c||) and 0 where ||x|| ||c|| == 0 (a zero row or center is
            orthogonal to everything: a zero row gets label 0 and dist2 2), ties to the lowest
            k, exact as the float64 cosine (near ties are re-checked); dist2 is then
            ``2 - 2 cos = ||x/||x|| - c/||c||||^2`` (clamped at 0), the squared distance of
            the points on the unit sphere, differentiable in x and centers. The row norms
            are formed inside the kernels; x is never normalised into a copy.
        backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns:
        ``(labels, dist2)``: labels int64 (N,), ties to the lowest k as ``torch.argmin``;
        dist2 float32 (N,) (float64 for float64 x) = ||x_i - c_{labels_i}||^2 clamped at 0,
        differentiable in x and centers (gradient 2 (x_i - c_{l_i}) and its negated
        segment sum), which makes it the k-means loss of DCN / Deep K-Means.

    The fused kernels never write the (N, K) distance matrix to memory and accumulate in
    float32 (float64 for float64 inputs).

    Non-finite and huge values: the distance to center k is sum_j (x_ij - c_kj)^2 as float64
    computes it (inf - inf = NaN). If any distance of a row is NaN, the label is the lowest k
    whose distance is NaN and dist2 is NaN (NaN propagates, as ``torch.argmin``); otherwise
    the lowest k among the minima. Labels stay exact where float32 squares overflow (finite
    values past ~1.8e19); dist2 is then the float64 minimum rounded, inf past float32's range.
    ``km.set_debug(True)`` rejects NaN/Inf in x and centers instead.
    """
    cosine = _checks.metric(metric)
    x = _checks.promote_x(x, centers)
    if _checks.is_batched(centers):
        x, centers = _checks.batched(x, centers)
        lead = None
    else:
        x, lead = _checks.flat_rows("x", x)
        x = _checks.features("x", x)
        centers = _checks.centers("centers", centers, x)
    if k is not None:  # the same input forms: (..., d) rows, or B problems
        from .assign_topk import assign_topk

        labels, dist2 = assign_topk(x, centers, k, cosine=cosine, backend=backend)
        if lead is not None and len(lead) != 1:
            return labels.view(*lead, -1), dist2.view(*lead, -1)
        return labels, dist2
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        labels, dist2 = reference.assign(x, centers, cosine)
    else:
        labels, dist2 = _registry.call("assign", x, centers, be, cosine)
    if lead is not None and len(lead) != 1:
        return labels.view(lead), dist2.view(lead)
    return labels, dist2
