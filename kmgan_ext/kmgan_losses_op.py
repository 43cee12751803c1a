"""kmgan_ext::kmgan_losses: the fused KM-GAN loss block (Eq. 4-6) as one op, forward and backward.

The public function is km.kmgan_losses (kmgan_losses.py); this file registers the op's routing,
fake kernels and autograd. Outputs, in schema order::

    loss_d, loss_g, loss_center                  0-d, float32 (float64 for float64 features)
    labels_real, labels_fake, labels_fake_hat    int64 (N_r,), (N_f,), (N_f,)
    pulls                                        (2,) (pull_real, pull_fake), for the backward
    u_diff                                       (d,) u_real - u_fake of Eq. 4
    counts_real, counts_fake                     int64 (K,), (K_hat,)

Only the three losses are differentiable, to f_real and f_fake (the centers are buffers). The
backward is one kmgan_losses_backward call for all three upstream gradients; grads are not
materialised: a loss that takes no part in the backward (the D step backpropagates L_D alone)
arrives as None and counts as 0 inside the kernel, instead of costing a zero fill each.
Labels are computed by the op itself, so no label-range check (a device sync) is needed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _registry

NAME = "kmgan_losses"


def available() -> bool:
    """True when the loaded kmgan_ext._C defines the op (an older build does not)."""
    return _registry.registered() and hasattr(torch.ops.kmgan_ext, NAME)


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_FUSED = available()

if _FUSED:
    _registry.route(NAME)
    _registry.route(NAME + "_backward")

    @torch.library.register_fake("kmgan_ext::kmgan_losses")
    def _(f_real, f_fake, centers_real, centers_fake, reduction, backend):
        dt = _out_dtype(f_real)
        nr, nf, d = f_real.shape[0], f_fake.shape[0], f_real.shape[1]
        i64 = dict(dtype=torch.int64)
        return (
            f_real.new_empty((), dtype=dt),
            f_real.new_empty((), dtype=dt),
            f_real.new_empty((), dtype=dt),
            f_real.new_empty(nr, **i64),
            f_real.new_empty(nf, **i64),
            f_real.new_empty(nf, **i64),
            f_real.new_empty(2, dtype=dt),
            f_real.new_empty(d, dtype=dt),
            f_real.new_empty(centers_real.shape[0], **i64),
            f_real.new_empty(centers_fake.shape[0], **i64),
        )

    @torch.library.register_fake("kmgan_ext::kmgan_losses_backward")
    def _(grad_d, grad_g, grad_center, f_real, f_fake, centers_real, labels_real, labels_fake,
          labels_fake_hat, pulls, u_diff, counts_real, counts_fake, reduction, backend):  # fmt: skip
        return f_real.new_empty(f_real.shape), f_fake.new_empty(f_fake.shape)

    def _setup_context(ctx, inputs, output):
        f_real, f_fake, centers_real, _, reduction, backend = inputs
        _, _, _, lr, lf, lh, pulls, u_diff, n_r, n_h = output
        ctx.save_for_backward(f_real, f_fake, centers_real, lr, lf, lh, pulls, u_diff, n_r, n_h)
        ctx.reduction, ctx.backend = reduction, backend
        ctx.mark_non_differentiable(lr, lf, lh, pulls, u_diff, n_r, n_h)
        ctx.set_materialize_grads(False)

    def _backward(ctx, g_d, g_g, g_c, *_non_differentiable):
        need = ctx.needs_input_grad
        if g_d is None and g_g is None and g_c is None:
            return None, None, None, None, None, None
        saved = ctx.saved_tensors
        gr, gf = _registry.call(NAME + "_backward", g_d, g_g, g_c, *saved, ctx.reduction, ctx.backend)
        return (gr if need[0] else None), (gf if need[1] else None), None, None, None, None

    _registry.register_autograd(NAME, _backward, _setup_context)


def kmgan_losses_fused(
    f_real: Tensor, f_fake: Tensor, centers_real: Tensor, centers_fake: Tensor, reduction: str, backend: str
) -> tuple[Tensor, ...]:
    """The op's ten outputs (module docstring); inputs validated, centers detached, backend resolved."""
    return _registry.call(NAME, f_real, f_fake, centers_real, centers_fake, reduction, backend)
