"""km.assigned_distance: the pull term of KM-GAN Eq. 5/6 and Wen's center loss (docs/ops.md)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference

REDUCTIONS = ("fro", "mean", "sq_sum")


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _data_checks(x, labels, centers, reduction):
    _checks.label_range("labels", labels, centers.shape[0])
    _checks.finite("x", x)
    _checks.finite("centers", centers)


_registry.route("assigned_distance", _data_checks)
_registry.route("assigned_distance_backward")

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::assigned_distance")
    def _(x, labels, centers, reduction, backend):
        return x.new_empty((), dtype=_out_dtype(x))

    @torch.library.register_fake("kmgan_ext::assigned_distance_backward")
    def _(grad, out, x, labels, centers, reduction, centers_grad, backend):
        return torch.empty_like(x), centers.new_empty(centers.shape if centers_grad else (0,))

    def _setup_context(ctx, inputs, output):
        x, labels, centers, reduction, backend = inputs
        ctx.save_for_backward(x, labels, centers, output)
        ctx.reduction, ctx.backend = reduction, backend

    def _backward(ctx, grad):
        x, labels, centers, out = ctx.saved_tensors
        want_c = ctx.needs_input_grad[2]
        gx, gc = _registry.call(
            "assigned_distance_backward", grad, out, x, labels, centers, ctx.reduction, want_c,
            _dispatch.grad_backend(ctx.backend, want_c),
        )
        return (gx if ctx.needs_input_grad[0] else None), None, (gc if want_c else None), None, None

    _registry.register_autograd("assigned_distance", _backward, _setup_context)


def assigned_distance(
    x: Tensor, labels: Tensor, centers: Tensor, reduction: str = "fro", *, backend: str = "auto"
) -> Tensor:
    """``|| x - C[labels] ||``, the pull term of KM-GAN Eq. 5/6.

    reduction:
        ``"fro"`` (default): Euclidean norm of the whole (N, d) difference, the paper's
        ||.||_2 of a batch matrix (as TensorFlow's tf.norm computes it);
        ``"mean"``: mean of the per-row L2 norms;
        ``"sq_sum"``: 0.5 sum_i ||x_i - c_{l_i}||^2, Wen et al.'s face-recognition center loss.

    Gradient to x, and to centers when ``centers.requires_grad`` (a segment sum). The
    gradient where the distance is 0 is 0, never NaN. Returns a 0-d float32 tensor
    (float64 for float64 inputs).

    Input forms: x (..., d) with labels (...) (flattened to rows); labels int64 or int32;
    float16/bfloat16 x with float32 centers is computed in float32 (x converted).
    """
    x, labels = _checks.rows_and_labels("x", _checks.promote_x(x, centers), "labels", labels)
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    labels = _checks.labels("labels", labels, x.shape[0], x)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        return reference.assigned_distance(x, labels, centers, reduction)
    return _registry.call("assigned_distance", x, labels, centers, reduction, be)
