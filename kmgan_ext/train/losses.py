"""The objectives of KM-GAN (Eq. 4-7), reduced KM-GAN (Algorithm 2) and the DCGAN baseline,
written with kmgan_ext's ops (the ``backend`` config key picks their implementation).

Features enter as float32 (under bf16 autocast they are cast up: the ops want x and centers
of one dtype, and the centers are kept in float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import kmgan_ext as km


def pull(x: Tensor, labels: Tensor, centers: Tensor, cfg: dict) -> Tensor:
    """||x - C[labels]||, the paper's ||.||_2 of a batch matrix (``distance_reduction``)."""
    return km.assigned_distance(x.float(), labels, centers, cfg["distance_reduction"], backend=cfg["backend"])


def regularisers(f_real: Tensor, f_fake: Tensor, cfg: dict) -> tuple[Tensor, Tensor]:
    """Eq. 7's (L_intra, L_inter) with km.pairwise_l1 (exact, O(N log N) per dimension).

    L_intra sums ||a_i - a_j||_1 over the ordered pairs of each batch, L_inter over real x fake
    pairs. ``pairwise_reduction="mean"`` divides each by its number of pairs instead.
    """
    be = cfg["backend"]
    r, f = f_real.float(), f_fake.float()
    intra_r = km.pairwise_l1(r, backend=be)
    intra_f = km.pairwise_l1(f, backend=be)
    inter = km.pairwise_l1(r, f, backend=be)
    if cfg["pairwise_reduction"] == "mean":
        nr, nf = r.shape[0], f.shape[0]
        intra_r = intra_r / max(1, nr * (nr - 1))
        intra_f = intra_f / max(1, nf * (nf - 1))
        inter = inter / max(1, nr * nf)
    return intra_r + intra_f, inter


def kmgan_d_loss(f_real, l_real, f_fake, l_fake, centers, cfg) -> tuple[Tensor, dict]:
    """Eq. 5: ||D(x) - C_real|| - ||D(G(z)) - C_gen||, both against the *real* centers;
    Eq. 7 adds lambda (L_intra - L_inter) for the generalized model."""
    loss = pull(f_real, l_real, centers, cfg) - pull(f_fake, l_fake, centers, cfg)
    parts = {}
    if cfg["model"] == "generalized" and cfg["lambda"] != 0:
        intra, inter = regularisers(f_real, f_fake, cfg)
        loss = loss + cfg["lambda"] * (intra - inter)
        parts = {"L_intra": intra.detach(), "L_inter": inter.detach()}
    return loss, parts


def kmgan_g_loss(f_fake, l_fake, centers, f_real_detached, cfg) -> Tensor:
    """Eq. 6: ||D(G(z)) - C_gen||; Eq. 7 adds lambda L_inter for the generalized model."""
    loss = pull(f_fake, l_fake, centers, cfg)
    if cfg["model"] == "generalized" and cfg["lambda"] != 0:
        inter = km.pairwise_l1(f_real_detached.float(), f_fake.float(), backend=cfg["backend"])
        if cfg["pairwise_reduction"] == "mean":
            inter = inter / max(1, f_real_detached.shape[0] * f_fake.shape[0])
        loss = loss + cfg["lambda"] * inter
    return loss


def center_loss(f_real, l_real, centers_real, f_fake, l_fake_hat, centers_fake, cfg) -> Tensor:
    """Eq. 4: the L1 distance between the batch-updated mean of real centers and of fake centers."""
    return km.center_loss(
        f_real.float(), l_real, centers_real, f_fake.float(), l_fake_hat, centers_fake, backend=cfg["backend"]
    )


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
