"""km.assign: fused nearest-center assignment (DESIGN.md 4.1)."""
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
        n = x.shape[0]
        return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=_out_dtype(x))

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
        gx, gc = _registry.call("assign_backward", grad_dist2, x, centers, labels, want_c, be, ctx.cosine)
        return (gx if ctx.needs_input_grad[0] else None), (gc if want_c else None), None, None

    _registry.register_autograd("assign", _backward, _setup_context)


def assign(
    x: Tensor, centers: Tensor, *, metric: str = "euclidean", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Nearest center of every row: ``labels[i] = argmin_k ||x_i - c_k||^2``.

    Args:
        x: (N, d) float32/float16/bfloat16/float64 features (N may be 0).
        centers: (K, d), K >= 1, same dtype and device as x.
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
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    cosine = _checks.metric(metric)
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        return reference.assign(x, centers, cosine)
    return _registry.call("assign", x, centers, be, cosine)
