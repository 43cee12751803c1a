"""The WGAN-GP-style gradient penalty on D (config key ``gp_weight``; beyond the paper: its
sections 4.4-4.5 name WGAN-GP's penalty as compatible future work, against the weight
clipping the paper uses).

Gulrajani et al. penalise ``(||grad_x critic(x_hat)||_2 - 1)^2`` at points ``x_hat`` on random
lines between real and generated rows. KM-GAN's D has no scalar critic; what L_D (Eq. 5)
contrasts between real and generated rows is the distance of D's features to the assigned
real center, so that distance is the critic here: ``||D(x_hat) - C[l(x_hat)]||_2`` with
``l`` the nearest real center (held fixed: labels carry no gradient). For DCGAN the critic is
D's output (the logit, or the probability without a head).
"""
from __future__ import annotations

import torch
from torch import Tensor

import kmgan_ext as km


def interpolate(x_real: Tensor, x_fake: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """x_hat = a x_real + (1 - a) x_fake, one a ~ U[0, 1] per row; requires grad."""
    shape = (x_real.shape[0],) + (1,) * (x_real.dim() - 1)
    a = torch.rand(shape, generator=gen, device=x_real.device, dtype=x_real.dtype)
    return (a * x_real.detach() + (1 - a) * x_fake.detach()).requires_grad_(True)


def gradient_penalty(critic, x_hat: Tensor) -> Tensor:
    """mean over rows of (||grad critic(x_hat)_i||_2 - 1)^2; differentiable in D's parameters."""
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return ((norms - 1.0) ** 2).mean()


def kmgan_critic(D, centers: Tensor, backend: str = "auto"):
    """The distance of D(x) to its nearest real center, per row (labels held fixed)."""

    def critic(x: Tensor) -> Tensor:
        f = D(x).to(centers.dtype)
        with torch.no_grad():
            labels, _ = km.assign(f.detach(), centers, backend=backend)
        return (f - centers[labels]).norm(dim=1)

    return critic
