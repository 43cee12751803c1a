"""PNG figures: sample grids, the Fig. 2 feature scatter, the Fig. 5c class histogram."""
from __future__ import annotations

import os

import torch
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images: Tensor, path: str, nrow: int = 8) -> str:
    """Images in [0, 1] (N, C, H, W) as one grid PNG."""
    from torchvision.utils import save_image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image(images.detach().float().cpu().clamp(0, 1), path, nrow=nrow, padding=2)
    return path


def feature_scatter(panels: list[tuple[str, Tensor, Tensor]], path: str, suptitle: str = "") -> str:
    """One scatter panel per (title, points (N, 2), labels (N,)), colored by true label."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, pts, labels) in zip(axes[0], panels):
        pts = pts.detach().double().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=2, alpha=0.6, vmin=0, vmax=9)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def class_histogram_png(hists: dict[str, list[float]], class_names, path: str, title: str) -> str:
    """Side-by-side bars per class (one color per model), with the uniform 10% line."""
    plt = _plt()
    names = list(hists)
    n = len(class_names)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = ["tab:blue", "tab:gray", "tab:orange", "tab:green"]
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [100 * v for v in hists[name]], width, label=name, color=colors[j % len(colors)])
    ax.axhline(100.0 / n, color="k", lw=0.8, ls="--", label=f"uniform {100.0 / n:.0f}%")
    ax.set_xticks(range(n))
    ax.set_xticklabels(class_names, rotation=30, fontsize=8)
    ax.set_ylabel("% of generated images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def interpolation_rows(gen_net, z0: Tensor, z1: Tensor, steps: int) -> Tensor:
    """G(beta z0 + (1 - beta) z1) for beta from 1 to 0 (Fig. 8): rows of ``steps`` images."""
    betas = torch.linspace(1.0, 0.0, steps, device=z0.device)
    z = betas[None, :, None] * z0[:, None, :] + (1 - betas[None, :, None]) * z1[:, None, :]
    return gen_net(z.reshape(-1, z0.shape[1]))
