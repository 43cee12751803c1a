"""km.kmgan_losses / km.KMGANLosses: the loss block of one KM-GAN iteration (paper Eq. 4-7).

Given the discriminator features of a real and a generated batch and both center sets, it
returns the three label vectors and L_D, L_G, L_center (plus Eq. 7's L_intra and L_inter
when lambda > 0):

    assign(f_real, C), assign(f_fake, C)      labels for Eq. 5/6 (both batches to the real centers)
    assign(f_fake, C_hat)                     labels for Eq. 4 (generated batch to the fake centers)
    L_D      = ||f_real - C[l_real]|| - ||f_fake - C[l_fake]||   (+ lambda (L_intra - L_inter))
    L_G      = ||f_fake - C[l_fake]||                             (+ lambda L_inter)
    L_center = km.kmgan_center_loss(f_real, l_real, C, f_fake, l_fake_hat, C_hat)

All of Eq. 4-6 is ONE op, kmgan_ext::kmgan_losses (kmgan_losses_op.py): labels, pulls,
counts and Eq. 4 in one fused forward (one Triton launch at the paper's shape) and one backward
launch for any combination of the three losses, with no label-range check (the op makes the
labels). Eq. 7's terms (lam > 0) are added on top with km.pairwise_l1. Without a built
kmgan_ext._C that defines the op, the same block is composed of the single ops.

L_G shares its distance term with L_D (one node in the graph), so L_D and L_G are meant for
separate backward passes (the D step, then the G step), as in Algorithm 1; summing them first
works too. L_G's Eq. 7 term is taken against ``f_real.detach()``: the G step must not push
gradient into the real pass of D.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import _checks, _dispatch
from .assign import assign
from .assigned_distance import assigned_distance
from .center_loss import kmgan_center_loss
from .kmgan_losses_op import _FUSED, kmgan_losses_fused
from .pairwise_l1 import pairwise_l1

REDUCTIONS = ("fro", "mean", "sq_sum")
PAIRWISE_REDUCTIONS = ("sum", "mean")


class KMGANLossTerms(NamedTuple):
    labels_real: Tensor  # f_real -> centers_real (Eq. 4 and 5)
    labels_fake: Tensor  # f_fake -> centers_real (Eq. 5 and 6)
    labels_fake_hat: Tensor  # f_fake -> centers_fake (Eq. 4)
    loss_d: Tensor
    loss_g: Tensor
    loss_center: Tensor
    l_intra: Optional[Tensor]  # Eq. 7, None when lam == 0
    l_inter: Optional[Tensor]


def _check_options(reduction: str, lam: float, pairwise_reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if pairwise_reduction not in PAIRWISE_REDUCTIONS:
        raise ValueError(f"pairwise_reduction must be one of {PAIRWISE_REDUCTIONS}, got {pairwise_reduction!r}")
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0 or lam == float("inf"):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")


def _as_centers_dtype(name: str, f: Tensor, centers: Tensor) -> Tensor:
    # Features often come out of an autocast region in bf16 while centers stay float32; the
    # ops want one dtype, and the cast is differentiable.
    if not isinstance(f, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(f).__name__}")
    if f.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (N, d), got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {f.dtype}")
    return f if f.dtype == centers.dtype else f.to(centers.dtype)


def pairwise_terms(
    f_real: Tensor, f_fake: Tensor, *, pairwise_reduction: str = "sum", backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Eq. 7's (L_intra, L_inter): ordered pairs within each batch, and real x fake pairs.

    ``pairwise_reduction="mean"`` divides each sum by its own number of pairs."""
    intra_real = pairwise_l1(f_real, backend=backend)
    intra_fake = pairwise_l1(f_fake, backend=backend)
    inter = pairwise_l1(f_real, f_fake, backend=backend)
    if pairwise_reduction == "mean":
        nr, nf = f_real.shape[0], f_fake.shape[0]
        intra_real = intra_real / max(1, nr * (nr - 1))
        intra_fake = intra_fake / max(1, nf * (nf - 1))
        inter = inter / max(1, nr * nf)
    return intra_real + intra_fake, inter


def _inter(f_real: Tensor, f_fake: Tensor, pairwise_reduction: str, backend: str) -> Tensor:
    inter = pairwise_l1(f_real, f_fake, backend=backend)
    if pairwise_reduction == "mean":
        inter = inter / max(1, f_real.shape[0] * f_fake.shape[0])
    return inter


def kmgan_losses(
    f_real: Tensor,
    f_fake: Tensor,
    centers_real: Tensor,
    centers_fake: Tensor,
    *,
    reduction: str = "fro",
    lam: float = 0.0,
    pairwise_reduction: str = "sum",
    backend: str = "auto",
) -> KMGANLossTerms:
    """Labels and the losses of one KM-GAN iteration (Eq. 4-7) on the given features.

    Args:
        f_real, f_fake: (N_r, d), (N_f, d) discriminator features (any float dtype: cast to
            the centers' dtype).
        centers_real, centers_fake: (K, d), (K', d) buffers; no gradient reaches them.
        reduction: the norm of Eq. 5/6 (``km.assigned_distance``): "fro" (the paper),
            "mean", "sq_sum".
        lam: weight of Eq. 7's regularisers (the generalized KM-GAN); 0 skips them.
        pairwise_reduction: "sum" (Eq. 7 as written) or "mean" (per pair).

    Labels are computed without gradient, against the centers as they are now.
    """
    _check_options(reduction, lam, pairwise_reduction)
    centers_real = _checks.features("centers_real", centers_real)
    # The features are cast to centers_real's dtype below: centers_fake must share it.
    centers_fake = _checks.features("centers_fake", centers_fake, dtype=centers_real.dtype,
                                    ref="centers_real")
    f_real = _as_centers_dtype("f_real", f_real, centers_real)
    f_fake = _as_centers_dtype("f_fake", f_fake, centers_real)
    if _FUSED:
        centers_real = _checks.centers("centers_real", centers_real, f_real, "f_real")
        centers_fake = _checks.centers("centers_fake", centers_fake, f_real, "f_real")
        _checks.same_device("f_fake", f_fake, f_real, "f_real")
        if f_fake.shape[1] != f_real.shape[1]:
            raise ValueError(
                f"f_fake must have {f_real.shape[1]} columns (f_real.shape[1]), got shape {tuple(f_fake.shape)}"
            )
        for name, t in (("f_real", f_real), ("f_fake", f_fake), ("centers_real", centers_real),
                        ("centers_fake", centers_fake)):
            _checks.finite(name, t)
        be = _dispatch.resolve(backend, f_real.device, "kmgan_losses")
        out = kmgan_losses_fused(f_real, f_fake, centers_real.detach(), centers_fake.detach(), reduction, be)
        loss_d, loss_g, loss_center, labels_real, labels_fake, labels_fake_hat = out[:6]
    else:
        labels_real, labels_fake, labels_fake_hat, loss_d, loss_g, loss_center = _composed(
            f_real, f_fake, centers_real, centers_fake, reduction, backend
        )
    l_intra = l_inter = None
    if lam:
        l_intra, l_inter = pairwise_terms(f_real, f_fake, pairwise_reduction=pairwise_reduction, backend=backend)
        inter_g = _inter(f_real.detach(), f_fake, pairwise_reduction, backend)
        loss_d = loss_d + lam * (l_intra - l_inter)
        loss_g = loss_g + lam * inter_g
    return KMGANLossTerms(labels_real, labels_fake, labels_fake_hat, loss_d, loss_g, loss_center, l_intra, l_inter)


def _composed(f_real, f_fake, centers_real, centers_fake, reduction, backend):
    """The block from the single ops (when kmgan_ext._C lacks the fused op)."""
    with torch.no_grad():
        labels_real, _ = assign(f_real.detach(), centers_real, backend=backend)
        labels_fake, _ = assign(f_fake.detach(), centers_real, backend=backend)
        labels_fake_hat, _ = assign(f_fake.detach(), centers_fake, backend=backend)
    pull_real = assigned_distance(f_real, labels_real, centers_real, reduction, backend=backend)
    pull_fake = assigned_distance(f_fake, labels_fake, centers_real, reduction, backend=backend)
    loss_center = kmgan_center_loss(
        f_real, labels_real, centers_real, f_fake, labels_fake_hat, centers_fake, backend=backend
    )
    return labels_real, labels_fake, labels_fake_hat, pull_real - pull_fake, pull_fake, loss_center


class KMGANLosses(nn.Module):
    """The KM-GAN loss block with its options fixed; ``forward`` is :func:`kmgan_losses`.

    ``generator_loss`` is Eq. 6 (+ Eq. 7's lambda L_inter) on a fresh pass of the generated
    batch through the updated D, with the labels of the first pass, as Algorithm 1 does.
    """

    def __init__(self, reduction: str = "fro", lam: float = 0.0, pairwise_reduction: str = "sum", backend: str = "auto"):
        super().__init__()
        _check_options(reduction, lam, pairwise_reduction)
        self.reduction, self.lam, self.pairwise_reduction, self.backend = reduction, lam, pairwise_reduction, backend

    def forward(self, f_real: Tensor, f_fake: Tensor, centers_real: Tensor, centers_fake: Tensor) -> KMGANLossTerms:
        return kmgan_losses(
            f_real, f_fake, centers_real, centers_fake, reduction=self.reduction, lam=self.lam,
            pairwise_reduction=self.pairwise_reduction, backend=self.backend,
        )  # fmt: skip

    def generator_loss(self, f_fake: Tensor, labels_fake: Tensor, centers_real: Tensor, f_real: Tensor) -> Tensor:
        f_fake = _as_centers_dtype("f_fake", f_fake, centers_real)
        loss = assigned_distance(f_fake, labels_fake, centers_real, self.reduction, backend=self.backend)
        if self.lam:
            f_real = _as_centers_dtype("f_real", f_real, centers_real).detach()
            loss = loss + self.lam * _inter(f_real, f_fake, self.pairwise_reduction, self.backend)
        return loss

    def center_loss(self, f_real: Tensor, labels_real: Tensor, centers_real: Tensor, f_fake: Tensor,
                    labels_fake_hat: Tensor, centers_fake: Tensor) -> Tensor:  # fmt: skip
        """Eq. 4 on features of a fresh pass (the joint D+G step), with given labels."""
        f_real = _as_centers_dtype("f_real", f_real, centers_real)
        f_fake = _as_centers_dtype("f_fake", f_fake, centers_fake)
        return kmgan_center_loss(f_real, labels_real, centers_real, f_fake, labels_fake_hat, centers_fake, backend=self.backend)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, lam={self.lam}, pairwise_reduction={self.pairwise_reduction!r}, backend={self.backend!r}"
