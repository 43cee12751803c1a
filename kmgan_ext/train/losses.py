"""The objectives of reduced KM-GAN (Algorithm 2) and the DCGAN baseline, written with
kmgan_ext's ops (the ``backend`` config key picks their implementation). KM-GAN's own loss
block (Eq. 4-7) is ``km.KMGANLosses``.

Features enter as float32 (under bf16 autocast they are cast up: the ops want x and centers
of one dtype, and the centers are kept in float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import kmgan_ext as km


def dcgan_score(d_out: Tensor, logits: bool = True) -> Tensor:
    """D's per-row output as one number: the logit (with a head), else the probability of
    "real" as the mean of D's sigmoid features (``dcgan_head=none``)."""
    return d_out.float() if logits else d_out.float().mean(1)


def _bce(d_out: Tensor, target: float, logits: bool) -> Tensor:
    s = dcgan_score(d_out, logits)
    t = torch.full_like(s, target)
    if logits:
        return F.binary_cross_entropy_with_logits(s, t)
    # probabilities of sigmoid features: clamped as BCELoss would clamp log(0) at -100
    return F.binary_cross_entropy(s.clamp(1e-7, 1 - 1e-7), t)


def dcgan_d_loss(out_real: Tensor, out_fake: Tensor, logits: bool = True) -> Tensor:
    """-log D(x) - log(1 - D(G(z)))."""
    return _bce(out_real, 1.0, logits) + _bce(out_fake, 0.0, logits)


def dcgan_g_loss(out_fake: Tensor, logits: bool = True) -> Tensor:
    """The non-saturating generator loss of DCGAN: -log D(G(z))."""
    return _bce(out_fake, 1.0, logits)


# --------------------------------------------------------------------------- Algorithm 2
def reduced_center_loss(fc: Tensor, l_real: Tensor, l_gen: Tensor) -> Tensor:
    """Algorithm 2's ||D(C~_real) - D(C~_gen)||_1 with fc = D(pixel centers) (K, d):
    C~_real / C~_gen are the pixel centers of the batch's real / generated rows."""
    return (fc[l_real] - fc[l_gen]).abs().sum()


def reduced_pull(f: Tensor, labels: Tensor, fc: Tensor, cfg: dict) -> Tensor:
    """Algorithm 2's ||D(x) - D(C~_real)|| (and the generator's twin); the gradient also
    reaches D through D(C~) (km.assigned_distance's centers gradient)."""
    return km.assigned_distance(f.float(), labels, fc.float(), cfg["distance_reduction"], backend=cfg["backend"])
