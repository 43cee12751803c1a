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


def dcgan_d_loss(logit_real: Tensor, logit_fake: Tensor) -> Tensor:
    ones, zeros = torch.ones_like(logit_real), torch.zeros_like(logit_fake)
    return F.binary_cross_entropy_with_logits(logit_real.float(), ones) + F.binary_cross_entropy_with_logits(
        logit_fake.float(), zeros
    )


def dcgan_g_loss(logit_fake: Tensor) -> Tensor:
    """The non-saturating generator loss of DCGAN."""
    return F.binary_cross_entropy_with_logits(logit_fake.float(), torch.ones_like(logit_fake))


# --------------------------------------------------------------------------- Algorithm 2
def reduced_center_loss(fc: Tensor, l_real: Tensor, l_gen: Tensor) -> Tensor:
    """Algorithm 2's ||D(C~_real) - D(C~_gen)||_1 with fc = D(pixel centers) (K, d):
    C~_real / C~_gen are the pixel centers of the batch's real / generated rows."""
    return (fc[l_real] - fc[l_gen]).abs().sum()


def reduced_pull(f: Tensor, labels: Tensor, fc: Tensor, cfg: dict) -> Tensor:
    """Algorithm 2's ||D(x) - D(C~_real)|| (and the generator's twin); the gradient also
    reaches D through D(C~) (km.assigned_distance's centers gradient)."""
    return km.assigned_distance(f.float(), labels, fc.float(), cfg["distance_reduction"], backend=cfg["backend"])
