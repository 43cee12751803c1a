"""km.kmgan_center_loss: KM-GAN Eq. 4, fused forward and backward (docs/ops.md, KM-GAN losses).

Named for what it is: KM-GAN's loss between the real and fake center sets, not Wen et al.'s
face-recognition center loss (that one is the module ``km.CenterLoss``). The op keeps its
registered name ``kmgan_ext::center_loss``; ``km.center_loss`` still works, with a
DeprecationWarning.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _data_checks(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake):
    _checks.label_range("labels_real", labels_real, centers_real.shape[0])
    _checks.label_range("labels_fake", labels_fake, centers_fake.shape[0])
    for name, t in (("x_real", x_real), ("x_fake", x_fake), ("centers_real", centers_real),
                    ("centers_fake", centers_fake)):
        _checks.finite(name, t)


_registry.route("center_loss", _data_checks, impl_name="center_loss_forward")
_registry.route("center_loss_backward")

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::center_loss")
    def _(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake, backend):
        dt = _out_dtype(x_real)
        return (
            x_real.new_empty((), dtype=dt),
            x_real.new_empty(x_real.shape[1], dtype=dt),
            x_real.new_empty(centers_real.shape[0], dtype=torch.int64),
            x_real.new_empty(centers_fake.shape[0], dtype=torch.int64),
        )

    @torch.library.register_fake("kmgan_ext::center_loss_backward")
    def _(grad, u_diff, x_real, labels_real, counts_real, x_fake, labels_fake, counts_fake, backend):
        return torch.empty_like(x_real), torch.empty_like(x_fake)

    def _setup_context(ctx, inputs, output):
        x_real, labels_real, _, x_fake, labels_fake, _, backend = inputs
        _, u_diff, counts_real, counts_fake = output
        ctx.save_for_backward(x_real, labels_real, counts_real, x_fake, labels_fake, counts_fake, u_diff)
        ctx.backend = backend
        ctx.mark_non_differentiable(u_diff, counts_real, counts_fake)

    def _backward(ctx, grad, _g_diff, _g_cr, _g_cf):
        x_real, labels_real, counts_real, x_fake, labels_fake, counts_fake, u_diff = ctx.saved_tensors
        gr, gf = _registry.call(
            "center_loss_backward",
            grad, u_diff, x_real, labels_real, counts_real, x_fake, labels_fake, counts_fake, ctx.backend,
        )  # fmt: skip
        need = ctx.needs_input_grad
        return (gr if need[0] else None), None, None, (gf if need[3] else None), None, None, None

    _registry.register_autograd("center_loss", _backward, _setup_context)


def kmgan_center_loss(
    x_real: Tensor,
    labels_real: Tensor,
    centers_real: Tensor,
    x_fake: Tensor,
    labels_fake: Tensor,
    centers_fake: Tensor,
    *,
    backend: str = "auto",
) -> Tensor:
    """KM-GAN's center loss (Eq. 4)::

        u      = sum_m (c_m + S_m) / (1 + n_m)        over all K real clusters
        u_hat  = sum_m (ĉ_m + Ŝ_m) / (1 + n̂_m)        over all K fake clusters
        L      = || u - u_hat ||_1

    where S_m, n_m are the sum and number of the batch's rows labelled m (a cluster without
    rows contributes its center). The gradient flows to x_real and x_fake only (centers are
    buffers): dL/dx_real_i = sign(u - u_hat) / (1 + n_{m(i)}), negated with the fake side's
    counts for x_fake; sign(0) = 0.

    Args:
        x_real, x_fake: (N_r, d), (N_f, d) features, same dtype and device.
        labels_real, labels_fake: int64 (or int32) labels in [0, K) of each side.
        Leading dimensions: x (..., d) with labels (...) are flattened to rows; float16 /
        bfloat16 features with float32 centers are computed in float32.
        centers_real, centers_fake: (K_r, d), (K_f, d) center sets.
    Returns a 0-d float32 tensor (float64 for float64 inputs).
    """
    x_real, labels_real = _checks.rows_and_labels(
        "x_real", _checks.promote_x(x_real, centers_real), "labels_real", labels_real)
    x_fake, labels_fake = _checks.rows_and_labels(
        "x_fake", _checks.promote_x(x_fake, centers_real), "labels_fake", labels_fake)
    x_real = _checks.features("x_real", x_real)
    x_fake = _checks.features("x_fake", x_fake, dtype=x_real.dtype, ref="x_real")
    _checks.same_device("x_fake", x_fake, x_real, "x_real")
    if x_fake.shape[1] != x_real.shape[1]:
        raise ValueError(
            f"x_fake must have {x_real.shape[1]} columns (x_real.shape[1]), got shape {tuple(x_fake.shape)}"
        )
    centers_real = _checks.centers("centers_real", centers_real, x_real, "x_real")
    centers_fake = _checks.centers("centers_fake", centers_fake, x_real, "x_real")
    labels_real = _checks.labels("labels_real", labels_real, x_real.shape[0], x_real, "x_real")
    labels_fake = _checks.labels("labels_fake", labels_fake, x_fake.shape[0], x_real, "x_real")
    be = _dispatch.resolve(backend, x_real.device)
    centers_real, centers_fake = centers_real.detach(), centers_fake.detach()
    if not _registry.registered():
        return reference.center_loss(x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake)
    loss, _, _, _ = _registry.call(
        "center_loss", x_real, labels_real, centers_real, x_fake, labels_fake, centers_fake, be
    )
    return loss


def center_loss(*args, **kwargs) -> Tensor:
    """Deprecated name of :func:`kmgan_center_loss` (KM-GAN Eq. 4). Face-recognition center
    loss (Wen et al.) is the module ``km.CenterLoss``."""
    warnings.warn(
        "km.center_loss is KM-GAN's Eq. 4 and is now named km.kmgan_center_loss; "
        "for Wen et al.'s face-recognition center loss use the module km.CenterLoss",
        DeprecationWarning,
        stacklevel=2,
    )
    return kmgan_center_loss(*args, **kwargs)
