"""The "AE + K-Means" baseline of GM-GAN's Table 3 (their own implementation, no details
given): an autoencoder trained on the pixels, then k-means (``km.kmeans``) on its codes.

The network is DEC's (Xie, Girshick & Farhadi 2016, the source of Table 3's MNIST AE + K-Means
row): d-500-500-2000-10 with ReLU, the mirror as decoder, trained end to end on the squared
error (no layer-wise pretraining), Adam 1e-3, batches of 256.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kmgan_ext as km

HIDDEN = (500, 500, 2000)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    def __init__(self, dim: int, code: int = 10):
        super().__init__()
        self.encoder = _mlp([dim, *HIDDEN, code])
        self.decoder = _mlp([code, *reversed(HIDDEN), dim])

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(x: Tensor, epochs: int, seed: int, code: int = 10, batch: int = 256) -> AutoEncoder:
    """An AutoEncoder fitted to the rows of x (N, d) float for ``epochs`` epochs."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = AutoEncoder(x.shape[1], code).to(x.device)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        for i in range(0, x.shape[0], batch):
            xb = x[perm[i : i + batch]]
            loss = F.mse_loss(ae(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ae.eval()


def ae_kmeans(x: Tensor, k: int, epochs: int, seed: int) -> tuple[Tensor, float]:
    """(k-means labels of the codes, final reconstruction MSE) for rows x (N, d) in [0, 1]."""
    ae = train_autoencoder(x, epochs, seed)
    with torch.no_grad():
        codes = torch.cat([ae.encoder(c) for c in torch.split(x, 1000)])
        mse = float(torch.cat([((ae.decoder(c) - r) ** 2).mean(1) for c, r in
                               zip(torch.split(codes, 1000), torch.split(x, 1000))]).mean())  # fmt: skip
    labels = km.kmeans(codes.float().contiguous(), k, seed=seed, niter=KMEANS_ITERS).labels
    return labels.cpu(), mse


KMEANS_ITERS = 50  # Lloyd iterations of every k-means baseline (one k-means++ seeding each)
