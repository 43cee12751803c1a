"""One training iteration of each model (README, The KM-GAN trainer); ``ITERATIONS[model](tr, x)``.

KM-GAN (``kmgan``, ``generalized``; Algorithm 1):

1. one forward of D on x and on G(z): features f_r, f_f, and their labels against the
   current centers (real features -> C; fake features -> C for Eq. 5/6 and -> Ĉ for Eq. 4);
2. D step on L_D (Eq. 5, + lambda (L_intra - L_inter) for Eq. 7), then weight clipping;
3. G step on L_G (Eq. 6, + lambda L_inter) through the updated D;
4. joint D+G step on L_center (Eq. 4) while d_round allows it, then weight clipping;
5. both center updates (mini-batch k-means) on features recomputed under the updated
   parameters (or the step-1 features with ``reuse_features``).

``reduced`` follows Algorithm 2 (centers in pixel space; center step, D step, G step) and
``dcgan`` is the usual non-saturating GAN on the same networks (D plus a linear head);
``gmgan`` (GM-GAN, gmgan.py) and ``slcgan`` (slcGAN, slcgan.py) live in their own files.

Each returns the iteration's losses (detached) and, for the clustering models, whether the
center step ran and the batch's labels (for the log).
"""
from __future__ import annotations

import torch
from torch import Tensor

import kmgan_ext as km

from . import centers as cset
from . import losses
from . import penalty
from .gmgan import gmgan_iteration
from .slcgan import slcgan_iteration
from .steps import (
    center_active_by_steps,
    center_floor_reached,
    center_step,
    frozen_bn,
    optimizer_step,
)


def kmgan_iteration(tr, x: Tensor) -> dict:
    cfg = tr.cfg
    eps, comp = tr.G_raw.prior.sample_noise(x.shape[0], tr.z_gen, tr.device)
    with tr.autocast():
        fake = tr.G(eps, comp)
        f_r = tr.D(x).float()
        f_f = tr.D(fake.detach()).float()
    terms = tr.losses(f_r, f_f, tr.C_real, tr.C_fake)
    l_r, l_g, l_h = terms.labels_real, terms.labels_fake, terms.labels_fake_hat
    # D step (Eq. 5 / Eq. 7)
    loss_d = terms.loss_d
    parts = {} if terms.l_intra is None else {"L_intra": terms.l_intra.detach(), "L_inter": terms.l_inter.detach()}
    if cfg["gp_weight"] > 0:
        x_hat = penalty.interpolate(x, fake, tr.z_gen)
        with tr.autocast():
            gp = penalty.gradient_penalty(penalty.kmgan_critic(tr.D, tr.C_real, cfg["backend"]), x_hat)
        parts["GP"] = gp.detach()
        loss_d = loss_d + cfg["gp_weight"] * gp
    optimizer_step(tr, tr.opt_D, "L_D", loss_d, clip=True)
    # G step (Eq. 6 / Eq. 7) through the updated D, labels of the first pass
    with tr.autocast():
        f_f2 = tr.D(fake).float()
    loss_g = tr.losses.generator_loss(f_f2, l_g, tr.C_real, f_r)
    optimizer_step(tr, tr.opt_G, "L_G", loss_g)
    # Center-loss step (Eq. 4); before it, its value on the first pass's features
    if cfg["d_round_mode"] == "steps":
        active = center_active_by_steps(tr)
    else:
        active = center_floor_reached(tr, terms.loss_center.detach())
    if active:
        with tr.autocast():
            fr3 = tr.D(x).float()
            ff3 = tr.D(tr.G(eps, comp)).float()
        loss_c = tr.losses.center_loss(fr3, l_r, tr.C_real, ff3, l_h, tr.C_fake)
        center_step(tr, loss_c)
    else:
        loss_c = terms.loss_center.detach()
    # Center updates
    if cfg["reuse_features"]:
        xr, xf = f_r.detach(), f_f.detach()
    else:
        with torch.no_grad(), frozen_bn(tr.D_raw, tr.G_raw), tr.autocast():
            xr = tr.D_raw.features(x).float()
            xf = tr.D_raw.features(tr.G_raw(eps, comp)).float()
    cset.update_(tr.C_real, tr.n_real, xr, cfg, tr.world)
    cset.update_(tr.C_fake, tr.n_fake, xf, cfg, tr.world)
    out = {"L_D": loss_d.detach(), "L_G": loss_g.detach(), "L_center": loss_c.detach(), "center_step": active}
    out.update(parts)
    out["labels_real"], out["labels_fake"] = l_r, l_h
    return out


def reduced_iteration(tr, x: Tensor) -> dict:
    """Algorithm 2: k-means in pixel space; center step, D step, G step, center update."""
    cfg = tr.cfg
    eps, comp = tr.G_raw.prior.sample_noise(x.shape[0], tr.z_gen, tr.device)
    center_imgs = tr.C_real.view(-1, *tr.model_shape())
    with tr.autocast():
        fake = tr.G(eps, comp)
    with torch.no_grad():
        l_r, _ = km.assign(x.flatten(1).float(), tr.C_real, backend=cfg["backend"])
        l_g, _ = km.assign(fake.detach().flatten(1).float(), tr.C_real, backend=cfg["backend"])
    if cfg["d_round_mode"] == "steps":
        active = center_active_by_steps(tr)
    else:
        with torch.no_grad(), frozen_bn(tr.D_raw), tr.autocast():
            fc0 = tr.D_raw.features(center_imgs).float()
        active = center_floor_reached(tr, losses.reduced_center_loss(fc0, l_r, l_g))
    if active:
        with tr.autocast():
            fc = tr.D(center_imgs).float()
        loss_c = losses.reduced_center_loss(fc, l_r, l_g)
        center_step(tr, loss_c)
    else:
        with torch.no_grad(), frozen_bn(tr.D_raw), tr.autocast():
            loss_c = losses.reduced_center_loss(tr.D_raw.features(center_imgs).float(), l_r, l_g)
    with tr.autocast():
        fc = tr.D(center_imgs).float()
        f_r = tr.D(x).float()
    loss_d = losses.reduced_pull(f_r, l_r, fc, cfg)
    optimizer_step(tr, tr.opt_D, "L_D", loss_d, clip=True)
    with torch.no_grad(), frozen_bn(tr.D_raw), tr.autocast():
        fc_g = tr.D_raw.features(center_imgs).float()
    with tr.autocast():
        f_f = tr.D(fake).float()
    loss_g = losses.reduced_pull(f_f, l_g, fc_g, cfg)
    optimizer_step(tr, tr.opt_G, "L_G", loss_g)
    cset.update_(tr.C_real, tr.n_real, x.flatten(1).float(), cfg, tr.world)
    return {
        "L_D": loss_d.detach(),
        "L_G": loss_g.detach(),
        "L_center": loss_c.detach(),
        "center_step": active,
        "labels_real": l_r,
        "labels_fake": l_g,
    }


def dcgan_iteration(tr, x: Tensor) -> dict:
    """The non-saturating GAN; D's output is a logit (``dcgan_head=linear``) or, without a
    head, its features whose mean is the probability of "real" (``dcgan_head=none``)."""
    cfg = tr.cfg
    logits = cfg["dcgan_head"] == "linear"
    eps, comp = tr.G_raw.prior.sample_noise(x.shape[0], tr.z_gen, tr.device)
    with tr.autocast():
        fake = tr.G(eps, comp)
        out_r = tr.D(x)
        out_f = tr.D(fake.detach())
    loss_d = losses.dcgan_d_loss(out_r, out_f, logits)
    out = {}
    if cfg["gp_weight"] > 0:
        x_hat = penalty.interpolate(x, fake, tr.z_gen)
        with tr.autocast():
            gp = penalty.gradient_penalty(lambda v: losses.dcgan_score(tr.D(v), logits), x_hat)
        out["GP"] = gp.detach()
        loss_d = loss_d + cfg["gp_weight"] * gp
    optimizer_step(tr, tr.opt_D, "L_D", loss_d)
    with tr.autocast():
        out_f2 = tr.D(fake)
    loss_g = losses.dcgan_g_loss(out_f2, logits)
    optimizer_step(tr, tr.opt_G, "L_G", loss_g)
    out.update({"L_D": loss_d.detach(), "L_G": loss_g.detach()})
    return out


ITERATIONS = {
    "kmgan": kmgan_iteration,
    "generalized": kmgan_iteration,
    "reduced": reduced_iteration,
    "dcgan": dcgan_iteration,
    "gmgan": gmgan_iteration,
    "slcgan": slcgan_iteration,
}
