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
        shape = (*x.shape[:-1], k)  # (N, k), or (B, N, k) for batched problems
        return x.new_empty(shape, dtype=torch.int64), x.new_empty(shape, dtype=_out_dtype(x))

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
        # float64 x), rounded once. Batched problems take the (B*N, d) rows against the
        # (B*K, d) view of the centers with labels b*K + l (as assign's batched backward: each
        # row reads and feeds only its own problem's center).
        x, centers, labels = ctx.saved_tensors
        want_x, want_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        be = _dispatch.grad_backend(ctx.backend, want_c)
        acc = _out_dtype(x)
        k = labels.shape[-1]
        xf, cf = x, centers
        if x.dim() == 3:
            b, n, d = x.shape
            xf, cf = x.reshape(b * n, d), centers.reshape(-1, d)
            labels = _checks.batch_offsets(labels.reshape(b, n * k), centers.shape[1]).view(b * n, k)
            grad_dist2 = grad_dist2.reshape(b * n, k)
        gx = torch.zeros(xf.shape, dtype=acc, device=x.device)
        gc = torch.zeros(cf.shape, dtype=acc, device=x.device) if want_c else None
        for j in range(k if xf.shape[0] else 0):  # no rows (B or N = 0): zero gradients
            gxj, gcj = _registry.call("assign_backward", grad_dist2[:, j].contiguous(), xf, cf,
                                      labels[:, j].contiguous(), want_c, be, ctx.cosine)
            gx += gxj
            if want_c:
                gc += gcj
        gx = gx.view(x.shape).to(x.dtype) if want_x else None
        gc = gc.view(centers.shape).to(centers.dtype) if want_c else None
        return gx, gc, None, None, None

    _registry.register_autograd("assign_topk", _backward, _setup_context)


def topk_count(k: object, n_centers: int, where: str = "centers.shape[0]") -> int:
    """k as an int in [1, K], else an error naming k (and where K comes from)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int or None, got {type(k).__name__}")
    if not 1 <= int(k) <= n_centers:
        raise ValueError(f"k must lie in [1, K] = [1, {n_centers}] ({where}), got k = {int(k)}")
    return int(k)


def assign_topk(x: Tensor, centers: Tensor, k: int, *, cosine: bool = False,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The public entry is ``km.assign(x, centers, k=k, metric=...)`` (see its docstring),
    which has checked x and centers (its input forms).

    x (N, d) with centers (K, d) -> (N, k) outputs; x (B, N, d) with centers (B, K, d): B
    independent problems -> (B, N, k), one kernel launch for all."""
    if _checks.is_batched(centers):
        k = topk_count(k, centers.shape[1], "centers.shape[1]")
    else:
        k = topk_count(k, centers.shape[0])
    be = _dispatch.resolve(backend, x.device)
    if not _registry.registered():
        return reference.assign_topk(x, centers, k, cosine)
    return _registry.call("assign_topk", x, centers, k, be, cosine)
