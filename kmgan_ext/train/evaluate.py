"""End-of-run evaluation: clustering metrics against ground truth, the paper's figures
(Fig. 2 features, Fig. 5c histogram, Fig. 8 interpolation), IS / FID. Writes figures under
``figures/`` of the run folder and returns the summary dict."""
from __future__ import annotations

import os
import time

import torch

import kmgan_ext as km

from . import data as data_mod
from . import figures, metrics

KM_MODELS = ("kmgan", "generalized")


@torch.no_grad()
def generate_images(G_raw, cfg: dict, n: int, seed: int, device, batch: int = 500) -> torch.Tensor:
    """n generated samples in [0, 1] (G in eval mode: running BN statistics), on the CPU;
    z drawn with the prior's covariance times ``sample_sigma`` (GM-GAN's quality-diversity
    control)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = G_raw.training
    G_raw.eval()
    out = []
    try:
        for i in range(0, n, batch):
            eps, comp = G_raw.prior.sample_noise(min(batch, n - i), gen, device)
            out.append(data_mod.from_model_output(G_raw(eps, comp, cfg.get("sample_sigma", 1.0)), cfg).cpu())
    finally:
        G_raw.train(was_training)
    return torch.cat(out)


def real_images(data: data_mod.TrainData, n: int, seed: int) -> torch.Tensor:
    """n training images in [0, 1] at their stored size (a seeded random subset)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.cat([data.dataset[c.tolist()].float() / 255.0 for c in torch.split(idx, 500)])


def evaluate(tr, ckpt_path: str) -> dict:
    """Metrics and figures of a finished (or stopped) run ``tr`` (a Trainer)."""
    cfg, data = tr.cfg, tr.data
    t0 = time.perf_counter()
    fig_dir = os.path.join(tr.out, "figures")
    s = {
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "config": cfg.get("config"),
        "status": tr.status,
        "epochs": tr.epoch,
        "epochs_planned": cfg["epochs"],
        "steps": tr.step,
        "seconds": round(tr.seconds, 3),
        "seed_seconds": round(getattr(tr, "seed_seconds", 0.0), 3),
        "world_size": tr.world,
        "device": str(tr.device),
        "backend": cfg["backend"],
        "n_train": len(data),
        "checkpoint": ckpt_path,
        "center_rank_max_abs_diff": tr.rank_diff,
    }
    for key in ("L_D", "L_G", "L_center", "L_intra", "L_inter", "L_C", "L_mi", "L_aug"):
        if key in tr.last:
            s[f"final_{key}"] = float(tr.last[key])
    figs: dict[str, str] = {}

    order = tr.feature_order(len(data), 11)
    if cfg["eval_samples"]:
        order = order[: cfg["eval_samples"]]
    feats = tr.dataset_features(tr.D_raw.features, order)
    finite = bool(torch.isfinite(feats).all())
    if not finite:
        s["features_nonfinite"] = True  # a diverged run: no clustering metrics to compute
    if data.labels is not None and finite:
        y = data.labels[order]
        k_eval = int(data.labels.max()) + 1
        fc = metrics.feature_clustering(feats, y, k_eval, cfg["seed"])
        s["feature_acc"], s["feature_nmi"] = fc["acc"], fc["nmi"]
        s["feature_eval"] = f"scikit-learn KMeans(k={k_eval}, n_init=10) on D's features of {len(order)} training rows"
        if cfg["model"] in KM_MODELS and tr.C_real is not None:
            pred, _ = km.assign(feats.float(), tr.C_real, backend=cfg["backend"])
            c = metrics.assignment_clustering(pred.cpu(), y)
            s["center_acc"], s["center_nmi"] = c["acc"], c["nmi"]
        elif cfg["model"] == "reduced" and tr.C_real is not None:
            pixels = tr.dataset_features(lambda x: x.flatten(1), order)
            pred, _ = km.assign(pixels.float(), tr.C_real, backend=cfg["backend"])
            c = metrics.assignment_clustering(pred.cpu(), y)
            s["center_acc"], s["center_nmi"] = c["acc"], c["nmi"]
            s["center_space"] = "pixels"
    if cfg["model"] in ("gmgan", "slcgan") and finite:
        # each model's own clustering: GM-GAN's Algorithm 2, slcGAN's C
        if cfg["model"] == "gmgan":
            from .gmgan import gmgan_clustering as clustering
        else:
            from .slcgan import slcgan_clustering as clustering
        c = clustering(tr, order)
        s["cluster_method"] = c.pop("method")
        s.update({f"cluster_{key}": v for key, v in c.items()})
    if cfg["dataset"] == "synthetic" and finite:
        panels = [
            ("(a) hidden 2-D structure", data.extra["h"][order], data.labels[order]),
            (f"{cfg['model']} D features, epoch {tr.epoch} (acc {s.get('feature_acc', float('nan')):.3f})",
             metrics.pca2(feats), data.labels[order]),
        ]  # fmt: skip
        figs["features"] = figures.feature_scatter(panels, os.path.join(fig_dir, "features.png"))
        s["features_2d"] = os.path.join(fig_dir, "features.pt")
        torch.save({"features": feats.cpu(), "labels": data.labels[order], "h": data.extra["h"][order]}, s["features_2d"])
    if data.is_image and cfg["interpolation"] and cfg["model"] != "slcgan":  # G(z, c): no plain z line
        figs["interpolation"] = _interpolation(tr, os.path.join(fig_dir, "interpolation.png"))
    if cfg["fashion_hist"]:
        from .fig5c import histogram_for_run

        s["class_histogram"] = histogram_for_run(tr, fig_dir)
        figs["class_histogram"] = s["class_histogram"]["figure"]
    if (cfg["eval_is"] or cfg["eval_fid"]) and data.is_image:
        s["inception"] = _inception(tr)
    s["figures"] = figs
    s["samples_dir"] = os.path.join(tr.out, "samples")
    s["eval_seconds"] = round(time.perf_counter() - t0, 3)
    return s


@torch.no_grad()
def _interpolation(tr, path: str, rows: int = 8, steps: int = 10) -> str:
    """Fig. 8: G(beta z0 + (1 - beta) z1), rows of ``steps`` images."""
    gen = torch.Generator(device=tr.device).manual_seed(tr.cfg["seed"] + 41)
    prior = tr.G_raw.prior
    z0 = prior(*prior.sample_noise(rows, gen, tr.device))
    z1 = prior(*prior.sample_noise(rows, gen, tr.device))
    tr.G_raw.eval()
    try:
        imgs = figures.interpolation_rows(tr.G_raw.net, z0, z1, steps)
    finally:
        tr.G_raw.train()
    return figures.save_grid(data_mod.from_model_output(imgs, tr.cfg), path, nrow=steps)


def _inception(tr) -> dict:
    cfg = tr.cfg
    net, label = metrics.build_inception(cfg["inception_weights"], tr.device)
    n = cfg["inception_samples"]
    fake = generate_images(tr.G_raw, cfg, n, cfg["seed"] + 53, tr.device)
    f_fake, p_fake = metrics.inception_outputs(net, fake, tr.device)
    out = {"backbone": label, "n_generated": n}
    if cfg["eval_is"]:
        mean, std = metrics.inception_score(p_fake)
        out["inception_score"], out["inception_score_std"] = mean, std
    if cfg["eval_fid"]:
        real = real_images(tr.data, min(n, len(tr.data)), cfg["seed"] + 59)
        f_real, _ = metrics.inception_outputs(net, real, tr.device)
        out["fid"] = metrics.frechet_distance(f_real, f_fake)
        out["n_real"] = int(real.shape[0])
    return out
