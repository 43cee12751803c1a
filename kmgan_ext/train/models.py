"""The paper's networks: Table 2 (synthetic), DCGAN for 28x28 MNIST / Fashion-MNIST,
Table 3 (CIFAR-10) and Table 7 (CelebA).

The discriminator is a feature extractor: ``D.features(x)`` is its top layer (FC d Sigmoid),
on which k-means runs. The DCGAN baseline uses the *same* network, by default plus a linear
head on those features (``Discriminator(head=True)``, config ``dcgan_head=linear``), or with
no head at all (``dcgan_head=none``: the paper's literal "same structure"; the mean of the
sigmoid features is then D's probability), so its top-layer features can be compared with
KM-GAN's (Fig. 2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .prior import LatentPrior

LRELU = 0.2  # DCGAN's leaky slope


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(LRELU)


def _upconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    # "5x5 Upconv stride 2": doubles H and W (TensorFlow's SAME padding).
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    # "5x5 Conv stride 2": halves H and W.
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) weights, BN scale N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Reshape(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Discriminator(nn.Module):
    """``body`` maps inputs to features in [0, 1]^d; ``head`` (DCGAN only) maps them to a logit.

    ``forward`` returns what the loss uses: the logit with a head, else the features.
    """

    def __init__(self, body: nn.Module, feature_dim: int, head: bool):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, 1) if head else None

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        f = self.body(x)
        return self.head(f).squeeze(1) if self.head is not None else f


class Generator(nn.Module):
    """The latent prior and the network together, so a learned prior (GM-GAN dynamic) is
    part of G's parameters (one optimizer, one DDP gradient all-reduce)."""

    def __init__(self, prior: LatentPrior, net: nn.Module):
        super().__init__()
        self.prior = prior
        self.net = net

    def forward(self, eps: Tensor, comp: Tensor, scale: float = 1.0) -> Tensor:
        """G(z) for z = prior(eps, comp); ``scale`` multiplies the prior's covariance
        (GM-GAN's quality-diversity control; 1 in training)."""
        return self.net(self.prior(eps, comp, scale))


# --------------------------------------------------------------------------- Table 2
def table2(z_dim: int, data_dim: int, feature_dim: int) -> tuple[nn.Module, nn.Module]:
    g = nn.Sequential(
        nn.Linear(z_dim, 10), nn.BatchNorm1d(10), nn.ReLU(),
        nn.Linear(10, 50), nn.BatchNorm1d(50), nn.ReLU(),
        nn.Linear(50, data_dim), nn.BatchNorm1d(data_dim), nn.ReLU(),
    )  # fmt: skip
    d = nn.Sequential(
        nn.Linear(data_dim, 100), nn.BatchNorm1d(100), nn.ReLU(),
        nn.Linear(100, 50), nn.BatchNorm1d(50), nn.ReLU(),
        nn.Linear(50, 10), nn.BatchNorm1d(10), nn.ReLU(),
        nn.Linear(10, feature_dim), nn.Sigmoid(),
    )  # fmt: skip
    return g, d


# --------------------------------------------------------------------------- DCGAN 28x28
def dcgan28(z_dim: int, channels: int, feature_dim: int) -> tuple[nn.Module, nn.Module]:
    """DCGAN's MNIST networks (Radford et al.; the TensorFlow DCGAN the paper builds on),
    without the label inputs: 7x7x128 -> 14x14x64 -> 28x28, and back."""
    g = nn.Sequential(
        nn.Linear(z_dim, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
        nn.Linear(1024, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        Reshape(128, 7, 7),
        _upconv(128, 64), nn.BatchNorm2d(64), nn.ReLU(),
        _upconv(64, channels), nn.Sigmoid(),
    )  # fmt: skip
    d = nn.Sequential(
        _conv(channels, 64), _lrelu(),
        _conv(64, 128), nn.BatchNorm2d(128), _lrelu(),
        nn.Flatten(),
        nn.Linear(128 * 7 * 7, 1024), nn.BatchNorm1d(1024), _lrelu(),
        nn.Linear(1024, feature_dim), nn.Sigmoid(),
    )  # fmt: skip
    return g, d


# --------------------------------------------------------------------------- Tables 3 and 7
def _stages(size: int) -> int:
    n = int(round(math.log2(size / 4)))
    if size < 8 or 4 * 2**n != size:
        raise ValueError(f"image_size must be 4 * 2^n >= 8 for Tables 3/7, got {size}")
    return n


def conv_gan(arch: str, z_dim: int, channels: int, size: int, feature_dim: int) -> tuple[nn.Module, nn.Module]:
    """Table 3 (CIFAR-10) or Table 7 (CelebA), for 4 * 2^n sized images (64 in the paper:
    4 up-convolutions in G, 4 convolutions in D; fewer for smaller images)."""
    n = _stages(size)
    if arch == "table3":
        g_ch, g_act, out_act = [512, 256, 128, 64], _lrelu, nn.Sigmoid
    else:
        g_ch, g_act, out_act = [512, 256, 128, 128], nn.ReLU, nn.Tanh
    g_ch = (g_ch + [64] * n)[:n]
    layers: list[nn.Module] = [nn.Linear(z_dim, 4 * 4 * g_ch[0]), nn.BatchNorm1d(4 * 4 * g_ch[0]), g_act()]
    layers.append(Reshape(g_ch[0], 4, 4))
    for cin, cout in zip(g_ch[:-1], g_ch[1:]):
        layers += [_upconv(cin, cout), nn.BatchNorm2d(cout), g_act()]
    layers += [_upconv(g_ch[-1], channels), out_act()]
    g = nn.Sequential(*layers)

    d_ch = ([64, 128, 256, 512] + [512] * n)[:n]
    layers = []
    cin = channels
    for i, cout in enumerate(d_ch):
        layers.append(_conv(cin, cout))
        # Table 3 has no BN after D's first convolution; Table 7 has one.
        if i > 0 or arch == "table7":
            layers.append(nn.BatchNorm2d(cout))
        layers.append(_lrelu())
        cin = cout
    layers.append(nn.Flatten())
    flat = d_ch[-1] * 4 * 4
    if arch == "table3":
        layers += [nn.Linear(flat, 4096), nn.BatchNorm1d(4096), _lrelu()]
        flat = 4096
    layers += [nn.Linear(flat, feature_dim), nn.Sigmoid()]
    return g, nn.Sequential(*layers)


def build_models(cfg: dict, arch: str, sample_shape: tuple[int, ...], head: bool) -> tuple[Generator, Discriminator]:
    """G (with its latent prior) and D for ``arch``; parameters drawn from the global RNG."""
    z_dim = cfg["z_dim"]
    fdim = cfg["feature_dim"] or (2 if arch == "table2" else 100)
    if arch == "table2":
        g, d = table2(z_dim, sample_shape[0], fdim)
    elif arch == "dcgan28":
        if tuple(sample_shape[1:]) != (28, 28) and cfg["image_size"] not in (0, 28):
            raise ValueError("arch dcgan28 takes 28x28 images")
        g, d = dcgan28(z_dim, sample_shape[0], fdim)
        dcgan_init_(g)
        dcgan_init_(d)
    else:
        size = cfg["image_size"] or 64
        g, d = conv_gan(arch, z_dim, sample_shape[0], size, fdim)
        dcgan_init_(g)
        dcgan_init_(d)
    prior = LatentPrior(cfg["prior"], z_dim, cfg["gm_components"] or cfg["k"], cfg["gm_c"], cfg["gm_sigma"])
    disc = Discriminator(d, fdim, head)
    if head and arch != "table2":
        dcgan_init_(disc.head)
    return Generator(prior, g), disc


def build_networks(
    cfg: dict, arch: str, sample_shape: tuple[int, ...]
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """(G, D, C) of the model family ``cfg["model"]`` for ``arch``, as the trainer builds them
    (C: slcGAN's clustering network, None for the others); parameters drawn from the global
    RNG. One place, so that whatever rebuilds a run's networks from its config.json
    (``fig5c.load_generator``) builds the trainer's."""
    if cfg["model"] == "slcgan":
        from . import slcgan  # imports this module

        return slcgan.build(cfg, arch, sample_shape)
    # GM-GAN's D is DCGAN's (a linear head on the features)
    head = (cfg["model"] == "dcgan" and cfg.get("dcgan_head", "linear") == "linear") or cfg["model"] == "gmgan"
    G, D = build_models(cfg, arch, sample_shape, head=head)
    return G, D, None
