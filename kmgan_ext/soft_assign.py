"""km.soft_assign: DEC's Student-t and softmax responsibilities, fused (docs/ops.md)."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference
from .assign import _data_checks, _out_dtype

KINDS = ("student_t", "softmax")

_registry.route("soft_assign", lambda x, centers, *params: _data_checks(x, centers))
_registry.route("soft_assign_backward")

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::soft_assign")
    def _(x, centers, kind, alpha, temperature, backend):
        return x.new_empty(x.shape[0], centers.shape[0], dtype=_out_dtype(x))

    @torch.library.register_fake("kmgan_ext::soft_assign_backward")
    def _(grad_q, q, x, centers, kind, alpha, temperature, centers_grad, backend):
        return torch.empty_like(x), centers.new_empty(centers.shape if centers_grad else (0,))

    def _setup_context(ctx, inputs, output):
        x, centers, kind, alpha, temperature, backend = inputs
        ctx.save_for_backward(x, centers, output)
        ctx.params = (kind, alpha, temperature)
        ctx.backend = backend

    def _backward(ctx, grad_q):
        x, centers, q = ctx.saved_tensors
        want_c = ctx.needs_input_grad[1]
        be = _dispatch.grad_backend(ctx.backend, want_c)
        gx, gc = _registry.call("soft_assign_backward", grad_q.contiguous(), q, x, centers,
                                *ctx.params, want_c, be)
        return (gx if ctx.needs_input_grad[0] else None), (gc if want_c else None), None, None, None, None

    _registry.register_autograd("soft_assign", _backward, _setup_context)


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a float > 0, got {type(v).__name__}")
    if not (float(v) > 0.0 and math.isfinite(float(v))):
        raise ValueError(f"{name} must be a finite float > 0, got {v}")
    return float(v)


def soft_assign(
    x: Tensor,
    centers: Tensor,
    *,
    kind: str = "student_t",
    alpha: float = 1.0,
    temperature: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """Soft assignment of every row to every center: (N, K) responsibilities, rows sum to 1.

    With D_ij = ||x_i - c_j||^2:

    * ``kind="student_t"`` (DEC, Xie et al. 2016, eq. 1):
      ``q_ij = (1 + D_ij / alpha)^(-(alpha + 1) / 2) / sum_l (1 + D_il / alpha)^(-(alpha + 1) / 2)``;
    * ``kind="softmax"`` (soft k-means): ``q_ij = softmax_j(-D_ij / temperature)``.

    Args:
        x: (N, d) float32/float16/bfloat16/float64; centers: (K, d), K >= 1, same dtype/device.
        alpha: Student-t degrees of freedom (> 0; only used by "student_t").
        temperature: softmax temperature (> 0; only used by "softmax").

    Returns:
        q, float32 (float64 for float64 x), differentiable in x and centers.

    Fused: the fast kernels form distances a tile at a time, keep each row's running max and
    sum of exp (online softmax, computed in log space for Student-t, so large distances do
    not underflow to 0/0), and write only q; the backward recomputes what it needs from x,
    centers and q (never storing the distances). Rows whose scores are all equal get uniform
    q (no NaN). A NaN in a row makes that row NaN.
    """
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    alpha = _positive("alpha", alpha)
    temperature = _positive("temperature", temperature)
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        return reference.soft_assign(x, centers, kind, alpha, temperature)
    return _registry.call("soft_assign", x, centers, kind, alpha, temperature, be)
