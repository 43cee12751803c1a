"""Unsupervised GM-GAN (Ben-Yosef & Weinshall 2018): a GAN whose latent prior is a mixture of
K Gaussians (``prior.py``: static or dynamic), and its clustering method (section 5.1).

Training is their Algorithm 1, unsupervised branch: the usual GAN losses (lines 14-16 and
25-26; the non-saturating -log D(G(z)) for G) on z drawn from the mixture, the discriminator
on b_D = ``batch_size`` real and fake rows, the generator on b_G = ``g_batch_size`` fresh
samples (the paper: b_D = 64, b_G = 128). D is the same network as DCGAN's (a linear head on
the feature layer), so GM-GAN differs from the ``dcgan`` model only by its prior and b_G.

Clustering (Algorithm 2): M latents from each Gaussian k (z ~ N(mu_k, Sigma_k)), G's images of
them labelled k train a K-way classifier (``metrics.SmallCNN`` on images, an MLP on vectors);
every real row goes to the classifier's argmax. Scored by ACC (best one-to-one matching,
``metrics.cluster_accuracy``) and NMI against the ground truth. The paper does not say which
classifier or M it used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as data_mod
from . import losses, metrics
from .steps import optimizer_step


def gmgan_iteration(tr, x: Tensor) -> dict:
    """Algorithm 1 (unsupervised): one D step on b_D real + b_D generated rows, then one G
    step on b_G freshly generated rows."""
    cfg = tr.cfg
    prior = tr.G_raw.prior
    eps, comp = prior.sample_noise(x.shape[0], tr.z_gen, tr.device)
    with tr.autocast():
        fake = tr.G(eps, comp).detach()
        out_r, out_f = tr.D(x), tr.D(fake)
    # line 16: (1 / 2 b_D) sum_j [-log D(x_j) - log(1 - D(x^_j))]
    loss_d = 0.5 * losses.dcgan_d_loss(out_r, out_f)
    optimizer_step(tr, tr.opt_D, "L_D", loss_d)
    eps_g, comp_g = prior.sample_noise(cfg["g_batch_size"] or x.shape[0], tr.z_gen, tr.device)
    with tr.autocast():
        out_g = tr.D(tr.G(eps_g, comp_g))
    loss_g = losses.dcgan_g_loss(out_g)  # lines 25-26: (1 / b_G) sum_j -log D(x^_j)
    optimizer_step(tr, tr.opt_G, "L_G", loss_g)
    return {"L_D": loss_d.detach(), "L_G": loss_g.detach()}


# --------------------------------------------------------------------------- Algorithm 2
@torch.no_grad()
def samples_per_gaussian(G_raw, cfg: dict, m: int, seed: int, device, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Algorithm 2, lines 2-6: M samples G(z), z ~ N(mu_k, scale * Sigma_k), for each k; the
    rows (K * M, ...) on the CPU in the data's range, and their Gaussian k. G in eval mode
    (BN running statistics), as every other sample the trainer draws."""
    prior = G_raw.prior
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = G_raw.training
    G_raw.eval()
    xs, ks = [], []
    try:
        for k in range(prior.components):
            for i in range(0, m, 500):
                n = min(500, m - i)
                eps = torch.randn(n, prior.z_dim, generator=gen, device=device)
                comp = torch.full((n,), k, dtype=torch.int64, device=device)
                out = G_raw(eps, comp, scale)
                xs.append((data_mod.from_model_output(out, cfg) if out.dim() == 4 else out.float()).cpu())
                ks.append(comp.cpu())
    finally:
        G_raw.train(was_training)
    return torch.cat(xs), torch.cat(ks)


def _vector_classifier(dim: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, classes))


def train_gaussian_classifier(x: Tensor, k: Tensor, classes: int, epochs: int, device, seed: int) -> nn.Module:
    """Algorithm 2, line 7: a K-way classifier on the generated rows labelled by Gaussian
    (Adam 1e-3, batches of 128, cross-entropy)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = metrics.SmallCNN(x.shape[1], classes) if x.dim() == 4 else _vector_classifier(x.shape[1], classes)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            loss = F.cross_entropy(model(x[idx].to(device)), k[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def real_rows(data: data_mod.TrainData, order: Tensor) -> Tensor:
    """The training rows ``order`` as the classifier sees them: images in [0, 1] at their
    stored size (what ``from_model_output`` gives for G's images of the 28x28 arch), vectors
    unchanged."""
    rows = torch.cat([data.dataset[c.tolist()] for c in torch.split(order, 1000)])
    return rows.float() / 255.0 if rows.dtype == torch.uint8 else rows.float()


def gmgan_clustering(tr, order: Tensor) -> dict:
    """Algorithm 2 on the trained run ``tr``: ACC / NMI of the real rows ``order``."""
    cfg = tr.cfg
    K = tr.G_raw.prior.components
    xs, ks = samples_per_gaussian(tr.G_raw, cfg, cfg["gm_cluster_samples"], cfg["seed"] + 61, tr.device)
    real = real_rows(tr.data, order)
    if xs.shape[1:] != real.shape[1:]:
        raise ValueError(f"GM-GAN clustering: generated rows {tuple(xs.shape[1:])} vs real {tuple(real.shape[1:])}")
    clf = train_gaussian_classifier(xs, ks, K, cfg["gm_cluster_epochs"], tr.device, cfg["seed"] + 67)
    with torch.no_grad():
        logits = torch.cat([clf(c.to(tr.device)).float().cpu() for c in torch.split(real, 500)])
    pred = logits.argmax(1)  # line 8
    out = {"clusters_used": int(pred.unique().numel())}
    if tr.data.labels is not None:
        out.update(metrics.assignment_clustering(pred, tr.data.labels[order]))
    out["method"] = (
        f"GM-GAN Algorithm 2: {cfg['gm_cluster_samples']} samples x {K} Gaussians, "
        f"{'SmallCNN' if xs.dim() == 4 else 'MLP'} classifier {cfg['gm_cluster_epochs']} epochs, argmax on "
        f"{len(order)} training rows"
    )
    return out
