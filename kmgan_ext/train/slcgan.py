"""slcGAN, self-labeled conditional GAN (Noroozi 2020, section 3.2, Eq. 3-6, Algorithm 1):
a clustering network C, a conditional generator G(z, c) and a joint discriminator
D(x, y) -> (u, s), trained as a three-player game.

Losses (``lambda_i`` = 1 in the paper, keys ``slc_lambda_mi`` / ``slc_lambda_aug``; p_c uniform,
p_z = N(0, I)), each a function below transcribing Algorithm 1's line:

* D (lines 12-15, hinge loss, unary u + joint s):
  mean[max(0, 1 - u_r) + max(0, 1 - s_r) + max(0, 1 + u_f) + max(0, 1 + s_f)], real pairs
  (x, softmax(C(x))), fake pairs (G(z, c), 1_K(c));
* G (lines 18-21): mean[-u_f - s_f] + L_mi, L_mi = mean[-log softmax(C(G(z, c)))_c] (Eq. 4);
  L_mi updates only G ("we obtained better performance by training this loss only for G");
* C (lines 24-28): mean[s_r] + L_aug, L_aug = mean[sum_j -q_j log p_j] (Eq. 5), p = softmax(C(x)),
  q = softmax(C(T(x))) with T a random augmentation; C is updated only through real images.

A loss "updates only X" literally: the other players' parameters do not require grad while it
is built (``grads_off``), so their ``.grad`` stays None and nothing is computed for them.

Networks (the paper: BigGAN G and D, ResNet18 C): here the run's architecture (``arch``, the
DCGAN 28x28 one for MNIST / Fashion-MNIST) as for the other models, so that all compare on
the same networks: G's batch norms become class-conditional (gain and bias linear in the
one-hot c), D is the KM-GAN/DCGAN feature network plus a unary head and a projection joint
head s = w^T f + <V y, f> (the "linear transformation" of y, Miyato & Koyama's projection),
C is the same feature network with K logits. Spectral normalisation of C and G as the paper
states (``spectral_norm``). C's clustering of real rows is its argmax.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from . import metrics
from .models import Generator, build_models
from .prior import LatentPrior
from .steps import frozen_bn, optimizer_step

# No horizontal flip where it changes the class (digits); "flipping" is in the paper's T.
NO_FLIP = ("mnist", "mnist5k", "synthetic")
SHIFT = 2  # random crop of the image padded by 2 pixels: translations of up to +-2 pixels
CONTRAST, BRIGHTNESS = 0.2, 0.1  # "color jittering" of grey images: x -> (x - mid) * a + mid + b
VECTOR_JITTER = 0.02  # vectors (synthetic data): additive N(0, 0.02^2) noise


# --------------------------------------------------------------------------- losses
def d_loss(u_r: Tensor, s_r: Tensor, u_f: Tensor, s_f: Tensor) -> Tensor:
    """Algorithm 1, lines 14-15 (the hinge loss over unary and joint terms)."""
    return (F.relu(1 - u_r) + F.relu(1 - s_r) + F.relu(1 + u_f) + F.relu(1 + s_f)).mean()


def g_adv_loss(u_f: Tensor, s_f: Tensor) -> Tensor:
    """Algorithm 1, line 20."""
    return (-u_f - s_f).mean()


def mi_loss(logits_fake: Tensor, c: Tensor) -> Tensor:
    """Eq. 4 / line 21: mean over rows of -log p(y = c | G(z, c)), p = softmax(C(.))."""
    return F.cross_entropy(logits_fake.float(), c)


def c_adv_loss(s_r: Tensor) -> Tensor:
    """Algorithm 1, line 27: C plays against D on the joint term of the real pairs."""
    return s_r.mean()


def aug_loss(logits_x: Tensor, logits_xt: Tensor) -> Tensor:
    """Eq. 5 / line 28: mean over rows of sum_c -p(c | x_t) log p(c | x) (both through C)."""
    q = torch.softmax(logits_xt.float(), 1)
    return -(q * torch.log_softmax(logits_x.float(), 1)).sum(1).mean()


# --------------------------------------------------------------------------- networks
class ConditionalPrior(LatentPrior):
    """z ~ N(0, I) and the conditioning label c ~ p_c = uniform over K (the component)."""

    def __init__(self, z_dim: int, k: int):
        super().__init__("normal", z_dim, k, 0.0, 1.0)

    def sample_noise(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        eps = torch.randn(n, self.z_dim, generator=generator, device=device)
        return eps, torch.randint(self.components, (n,), generator=generator, device=device)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are linear in the class vector y (K,): at
    initialisation gain 1 and bias 0 for every one-hot y, the plain batch norm."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: int):
        super().__init__()
        self.bn = type(bn)(bn.num_features, affine=False)
        self.gain = nn.Linear(k, bn.num_features, bias=False)
        self.bias = nn.Linear(k, bn.num_features, bias=False)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        return self.bn(x) * self.gain(y).view(shape) + self.bias(y).view(shape)


class ConditionalNet(nn.Module):
    """A sequential generator network with every batch norm made class-conditional."""

    def __init__(self, net: nn.Sequential, k: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ConditionalBatchNorm(m, k) if isinstance(m, nn.modules.batchnorm._BatchNorm) else m for m in net
        )

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = z
        for m in self.layers:
            h = m(h, y) if isinstance(m, ConditionalBatchNorm) else m(h)
        return h


class ConditionalGenerator(Generator):
    """G(z, c): ``forward(eps, comp)`` with comp the label c (one-hot inside)."""

    def forward(self, eps: Tensor, comp: Tensor, scale: float = 1.0) -> Tensor:
        y = F.one_hot(comp, self.prior.components).to(eps.dtype)
        return self.net(self.prior(eps, comp, scale), y)


class JointDiscriminator(nn.Module):
    """D(x, y) -> (u, s): u = w_u^T f(x) + b_u (unary), s = w_s^T f(x) + b_s + <V y, f(x)>
    (joint, projection), f = the feature network (``features``)."""

    def __init__(self, body: nn.Module, feature_dim: int, k: int):
        super().__init__()
        self.body, self.feature_dim = body, feature_dim
        self.unary = nn.Linear(feature_dim, 1)
        self.joint = nn.Linear(feature_dim, 1)
        self.embed = nn.Linear(k, feature_dim, bias=False)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        f = self.body(x)
        return self.unary(f).squeeze(1), self.joint(f).squeeze(1) + (self.embed(y.to(f.dtype)) * f).sum(1)


def _spectral_norm_(layers) -> None:
    """Spectral norm on the weight layers of a flat network (not on the conditional batch
    norms' maps of y, which are inside ConditionalBatchNorm)."""
    for m in layers:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.utils.parametrizations.spectral_norm(m)


def build(cfg: dict, arch: str, sample_shape: tuple[int, ...]) -> tuple[ConditionalGenerator, JointDiscriminator, nn.Module]:
    """(G, D, C) for ``arch``; parameters drawn from the global RNG."""
    k = cfg["k"]
    g0, d0 = build_models(cfg, arch, sample_shape, head=False)
    _, c0 = build_models({**cfg, "feature_dim": k}, arch, sample_shape, head=False)
    body = c0.body
    if not isinstance(body[-1], nn.Sigmoid):
        raise ValueError(f"arch {arch}: the feature network does not end in a sigmoid")
    clusterer = body[:-1]  # K logits
    net = ConditionalNet(g0.net, k)
    if cfg["spectral_norm"]:
        _spectral_norm_(net.layers)
        _spectral_norm_(clusterer)
    G = ConditionalGenerator(ConditionalPrior(cfg["z_dim"], k), net)
    return G, JointDiscriminator(d0.body, d0.feature_dim, k), clusterer


# --------------------------------------------------------------------------- augmentation
def augment(x: Tensor, gen: torch.Generator, lo: float, hi: float, flip: bool) -> Tensor:
    """T(x) of Eq. 5: images -- a random crop of the image padded by SHIFT pixels, a
    horizontal flip with probability 1/2 (``flip``), contrast and brightness jitter, clamped
    to [lo, hi]; vectors -- additive Gaussian noise."""
    n = x.shape[0]
    if x.dim() != 4:
        return x + VECTOR_JITTER * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    h, w = x.shape[-2:]
    pad = F.pad(x, (SHIFT,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, x.shape[1], h, pad.shape[-1])
    out = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    if flip:
        f = torch.rand(n, generator=gen, device=x.device) < 0.5
        out = torch.where(f[:, None, None, None], out.flip(-1), out)
    u = torch.rand(n, 2, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
    mid = (lo + hi) / 2
    a = (1 + CONTRAST * u[:, 0]).view(n, 1, 1, 1)
    b = (BRIGHTNESS * (hi - lo) * u[:, 1]).view(n, 1, 1, 1)
    return ((out - mid) * a + mid + b).clamp(lo, hi)


# --------------------------------------------------------------------------- one iteration
@contextlib.contextmanager
def grads_off(*modules: nn.Module):
    """The modules' parameters do not require grad inside (restored after)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def slcgan_iteration(tr, x: Tensor) -> dict:
    """Algorithm 1: ``d_steps`` D steps, one G step (adversarial + L_mi), one C step
    (adversarial + L_aug), all on the iteration's real batch x (the paper samples a fresh real
    batch for C's step; here every real row is seen once per epoch, as in the other models).

    Under torchrun each step runs the player it updates through its DDP wrapper (``tr.D``,
    ``tr.G``, ``tr.C``: its gradient is averaged over the ranks) and the frozen players
    through their raw modules: a wrapper whose parameters do not require grad would wait for
    gradients that never come. With one process the wrappers are the raw modules. Forward
    passes run under ``tr.autocast()`` (config ``amp``), the losses in float32."""
    cfg, prior = tr.cfg, tr.G_raw.prior
    k = prior.components
    n = x.shape[0]
    for _ in range(cfg["d_steps"]):  # lines 11-15
        eps, c = prior.sample_noise(n, tr.z_gen, tr.device)
        with tr.autocast():
            with torch.no_grad():
                fake = tr.G(eps, c)
                p_real = torch.softmax(tr.C(x).float(), 1)
            u_r, s_r = tr.D(x, p_real)
            u_f, s_f = tr.D(fake, F.one_hot(c, k).float())
        loss_d = d_loss(u_r.float(), s_r.float(), u_f.float(), s_f.float())
        optimizer_step(tr, tr.opt_D, "L_D", loss_d)
    eps, c = prior.sample_noise(n, tr.z_gen, tr.device)  # lines 16-21
    with grads_off(tr.D_raw, tr.clusterer):
        with tr.autocast():
            fake = tr.G(eps, c)
            u_f, s_f = tr.D_raw(fake, F.one_hot(c, k).float())
            logits_fake = tr.clusterer(fake)
        l_adv_g = g_adv_loss(u_f.float(), s_f.float())
        l_mi = mi_loss(logits_fake, c)
        loss_g = l_adv_g + cfg["slc_lambda_mi"] * l_mi
        optimizer_step(tr, tr.opt_G, "L_G", loss_g)
    lo, hi = data_mod.ARCH_RANGE.get(tr.arch, (0.0, 1.0))  # lines 22-28
    x_t = augment(x, tr.z_gen, lo, hi, cfg["dataset"] not in NO_FLIP)
    with grads_off(tr.D_raw, tr.G_raw):
        with tr.autocast():
            logits = tr.C(x)
            _, s_r = tr.D_raw(x, torch.softmax(logits.float(), 1))
            logits_t = tr.C(x_t)
        l_adv_c = c_adv_loss(s_r.float())
        l_aug = aug_loss(logits, logits_t)
        loss_c = l_adv_c + cfg["slc_lambda_aug"] * l_aug
        optimizer_step(tr, tr.opt_cluster, "L_C", loss_c)
    return {
        "L_D": loss_d.detach(),
        "L_G": loss_g.detach(),
        "L_C": loss_c.detach(),
        "L_mi": l_mi.detach(),
        "L_aug": l_aug.detach(),
        "labels_real": logits.detach().argmax(1),
    }


def slcgan_clustering(tr, order: Tensor) -> dict:
    """C's argmax on the training rows ``order``: ACC / NMI (the paper's Table 3)."""
    with frozen_bn(tr.clusterer):
        logits = tr.dataset_features(tr.clusterer, order)
    pred = logits.argmax(1).cpu()
    out = {"clusters_used": int(pred.unique().numel()), "method": f"argmax of slcGAN's C on {len(order)} training rows"}
    if tr.data.labels is not None:
        out.update(metrics.assignment_clustering(pred, tr.data.labels[order]))
    return out
