"""Latent priors: N(0, I), and GM-GAN's mixture of Gaussians (Ben-Yosef & Weinshall 2018).

* ``gm_static``: K components, means mu_k ~ U[-c, c]^d drawn once, covariance sigma * I, fixed.
* ``gm_dynamic``: the same start, then mu_k and A_k (z = A_k eps + mu_k, so Sigma_k = A_k A_k^T)
  are learned with the generator through the reparameterisation trick (their section 2).

The randomness (eps ~ N(0, I), component k ~ uniform) is drawn by ``sample_noise`` from the
caller's generator; ``forward`` is deterministic, so a fixed noise gives a fixed z.

``forward(eps, comp, scale)``: GM-GAN's post-training quality-diversity control (their
section 4.3): z | k ~ N(mu_k, scale * Sigma_k), i.e. the noise term times sqrt(scale) (for the
normal prior z ~ N(0, scale * I)). scale < 1 samples nearer the modes (higher quality, lower
diversity), scale > 1 the opposite; training always uses scale 1.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LatentPrior(nn.Module):
    def __init__(self, kind: str, z_dim: int, components: int, c: float, sigma: float):
        super().__init__()
        if kind not in ("normal", "gm_static", "gm_dynamic"):
            raise ValueError(f"prior must be normal, gm_static or gm_dynamic, got {kind!r}")
        self.kind, self.z_dim, self.components = kind, z_dim, components
        self.sigma = float(sigma)
        if kind == "normal":
            return
        mu = (torch.rand(components, z_dim) * 2.0 - 1.0) * c
        if kind == "gm_static":
            self.register_buffer("mu", mu)
        else:
            self.mu = nn.Parameter(mu)
            eye = torch.eye(z_dim).expand(components, z_dim, z_dim)
            self.A = nn.Parameter(math.sqrt(self.sigma) * eye.clone())

    def sample_noise(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(eps (n, z_dim), component (n,) int64) drawn from ``generator``."""
        eps = torch.randn(n, self.z_dim, generator=generator, device=device)
        if self.kind == "normal":
            comp = torch.zeros(n, dtype=torch.int64, device=device)
        else:
            comp = torch.randint(self.components, (n,), generator=generator, device=device)
        return eps, comp

    def forward(self, eps: Tensor, comp: Tensor, scale: float = 1.0) -> Tensor:
        if scale != 1.0:
            eps = math.sqrt(scale) * eps  # Sigma_k -> scale * Sigma_k, since Sigma_k = A_k A_k^T
        if self.kind == "normal":
            return eps
        if self.kind == "gm_static":
            return self.mu[comp] + math.sqrt(self.sigma) * eps
        return self.mu[comp] + torch.einsum("nij,nj->ni", self.A[comp], eps)
