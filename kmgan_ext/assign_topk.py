"""km.assign(x, centers, k=...): the k nearest centers of every row (docs/ops.md, Top-k)."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference
from .assign import _data_checks, _out_dtype

_registry.route("assign_topk", lambda x, centers, k: _data_checks(x, centers), flags=(False,))

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::assign_topk")
    def _(x, centers, k, backend, cosine=False):
        n = x.shape[0]
        return x.new_empty(n, k, dtype=torch.int64), x.new_empty(n, k, dtype=_out_dtype(x))

    def _setup_context(ctx, inputs, output):
        x, centers, k, backend, *flag = inputs
        labels, _ = output
        ctx.save_for_backward(x, centers, labels)
        ctx.backend = backend
        ctx.cosine = bool(flag and flag[0])
        ctx.mark_non_differentiable(labels)

    def _backward(ctx, grad_labels, grad_dist2):
        # dist2[i, j] = ||x_i - c_{l_ij}||^2 (2 - 2 cos with metric="cosine"): column j is
        # assign's dist2 with labels l_:j, so each column's gradient is assign's fused backward
        # (no (N, k, d) intermediate); the k columns are summed in float32 (float64 for
        # float64 x), rounded once.
        x, centers, labels = ctx.saved_tensors
        want_x, want_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        be = _dispatch.grad_backend(ctx.backend, want_c)
        acc = _out_dtype(x)
        gx = torch.zeros(x.shape, dtype=acc, device=x.device)
        gc = torch.zeros(centers.shape, dtype=acc, device=x.device) if want_c else None
        for j in range(labels.shape[1]):
            gxj, gcj = _registry.call("assign_backward", grad_dist2[:, j].contiguous(), x, centers,
                                      labels[:, j].contiguous(), want_c, be, ctx.cosine)
            gx += gxj
            if want_c:
                gc += gcj
        return (gx.to(x.dtype) if want_x else None), (gc.to(centers.dtype) if want_c else None), None, None, None

    _registry.register_autograd("assign_topk", _backward, _setup_context)


def topk_count(k: object, n_centers: int) -> int:
    """k as an int in [1, K], else an error naming k."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int or None, got {type(k).__name__}")
    if not 1 <= int(k) <= n_centers:
        raise ValueError(f"k must lie in [1, K] = [1, {n_centers}] (centers.shape[0]), got k = {int(k)}")
    return int(k)


def assign_topk(x: Tensor, centers: Tensor, k: int, *, cosine: bool = False,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The public entry is ``km.assign(x, centers, k=k, metric=...)`` (see its docstring)."""
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    k = topk_count(k, centers.shape[0])
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        return reference.assign_topk(x, centers, k, cosine)
    return _registry.call("assign_topk", x, centers, k, be, cosine)
