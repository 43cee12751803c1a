"""Fig. 5c: the class histogram of generated Fashion-MNIST images.

A 3-layer convolutional classifier is trained on Fashion-MNIST's training split (its test
accuracy is reported; the paper's had 91%), then classifies generated images of each run.
The paper's claim: KM-GAN gives every class ~10%, "shirt" 7.0%.

    python -m kmgan_ext.train.fig5c --runs RUN_KMGAN RUN_DCGAN --out DIR [--samples 5000]

writes DIR/fig5c.json and DIR/fig5c.png (the runs side by side).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from . import checkpoint as ckpt
from . import data as data_mod
from . import figures, metrics
from .evaluate import generate_images
from .config import DEFAULTS
from .models import build_networks

PAPER = {"per_class": 0.10, "shirt": 0.070, "classifier_test_acc": 0.91}


def get_classifier(data_root: str, epochs: int, path: str, device, seed: int = 0, n_train: int = 0):
    """The classifier at ``path`` if it exists, else trained on Fashion-MNIST and saved there.
    Returns (model, info) with its train/test accuracy."""
    if path and os.path.isfile(path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = metrics.SmallCNN(1, 10)
        model.load_state_dict(state["model"])
        return model.to(device), state["info"]
    x_tr, y_tr = data_mod.load_idx_split("fashion", data_root, "train")
    x_te, y_te = data_mod.load_idx_split("fashion", data_root, "test")
    if n_train:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    model, info = metrics.train_classifier(
        x_tr.float() / 255.0, y_tr, x_te.float() / 255.0, y_te, epochs=epochs, device=device, seed=seed
    )
    if path:
        ckpt.save_atomic({"model": model.state_dict(), "info": info}, path)
    return model, info


def uniformity(hist: list[float], n: int) -> dict:
    """How far a class histogram of n images is from uniform: the largest and smallest class
    share and their ratio, Pearson's chi-square against n/10 per class (with its p-value,
    9 degrees of freedom) and KL(histogram || uniform) in nats."""
    import math

    from scipy import stats

    k = len(hist)
    counts = [round(h * n) for h in hist]
    chi2, p = stats.chisquare(counts, [n / k] * k)
    kl = sum(h * math.log(h * k) for h in hist if h > 0)
    lo, hi = min(hist), max(hist)
    return {
        "max_share": hi,
        "min_share": lo,
        "max_min_ratio": hi / lo if lo > 0 else float("inf"),
        "chi2_uniform": float(chi2),
        "chi2_p": float(p),
        "kl_to_uniform": kl,
    }


def _result(hist: list[float], n: int) -> dict:
    names = data_mod.FASHION_CLASSES
    return {
        "fractions": dict(zip(names, hist)),
        "max_abs_dev_from_10pct": max(abs(h - 0.1) for h in hist),
        "shirt": hist[names.index("Shirt")],
        **uniformity(hist, n),
    }


def histogram_for_run(tr, fig_dir: str) -> dict:
    """The histogram of one finished run (called by the trainer's evaluation)."""
    cfg = tr.cfg
    path = cfg["classifier_path"] or os.path.join(tr.out, "classifier.pt")
    clf, info = get_classifier(
        cfg["data_root"], cfg["classifier_epochs"], path, tr.device, cfg["seed"], cfg["classifier_n_train"]
    )
    imgs = generate_images(tr.G_raw, cfg, cfg["hist_samples"], cfg["seed"] + 61, tr.device)
    hist = metrics.class_histogram(metrics.predict(clf, imgs, tr.device), 10)
    out = {"model": cfg["model"], "n_generated": cfg["hist_samples"], "classifier": info, "paper": PAPER}
    out.update(_result(hist, cfg["hist_samples"]))
    out["figure"] = figures.class_histogram_png(
        {cfg["model"]: hist}, data_mod.FASHION_CLASSES, os.path.join(fig_dir, "class_histogram.png"),
        f"Fig. 5c: {cfg['hist_samples']} generated images classified (classifier test acc "
        f"{info['test_acc']:.3f})",
    )  # fmt: skip
    return out


def load_generator(run_dir: str, device):
    """(G, config) of a run folder of any model family the trainer trains (KM-GAN, DCGAN,
    GM-GAN, slcGAN...: its config.json says which), from its newest intact checkpoint."""
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = {**DEFAULTS, **json.load(f)}  # keys a run older than them did not write
    arch, size = data_mod.resolve_arch(cfg)
    state = ckpt.load(ckpt.newest_good(os.path.join(run_dir, "checkpoints")))
    # the shape the trainer built G for (checkpoints before it was saved: 1-channel images,
    # the Fashion-MNIST runs this module was written for)
    shape = tuple(state.get("model_shape") or (1, size, size))
    with torch.random.fork_rng(devices=[]):  # the initial draw is overwritten by the checkpoint
        G, _, _ = build_networks(cfg, arch, shape)
    G.load_state_dict(state["G"])
    return G.to(device), cfg


def compare(run_dirs: list[str], out_dir: str, *, samples: int = 5000, classifier_epochs: int = 5,
            data_root: str = "", device="cpu", seed: int = 0, classifier_n_train: int = 0) -> dict:  # fmt: skip
    """Fig. 5c for several runs (e.g. KM-GAN and DCGAN) with one classifier: JSON + PNG."""
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(device)
    clf, info = get_classifier(
        data_root, classifier_epochs, os.path.join(out_dir, "classifier.pt"), device, seed, classifier_n_train
    )
    hists, result = {}, {"classifier": info, "n_generated": samples, "paper": PAPER, "runs": {}}
    for run in run_dirs:
        G, cfg = load_generator(run, device)
        if cfg["dataset"] != "fashion":
            raise ValueError(f"{run} was trained on {cfg['dataset']!r}, not fashion")
        label = cfg["model"] if cfg["model"] not in hists else f"{cfg['model']} ({os.path.basename(run)})"
        imgs = generate_images(G, cfg, samples, seed + 61, device)
        hists[label] = metrics.class_histogram(metrics.predict(clf, imgs, device), 10)
        result["runs"][label] = {"run": os.path.abspath(run), **_result(hists[label], samples)}
    result["figure"] = figures.class_histogram_png(
        hists, data_mod.FASHION_CLASSES, os.path.join(out_dir, "fig5c.png"),
        f"Fig. 5c: {samples} generated Fashion-MNIST images per model, classifier test acc {info['test_acc']:.3f}",
    )  # fmt: skip
    with open(os.path.join(out_dir, "fig5c.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kmgan_ext.train.fig5c", description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run folders trained on fashion")
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--classifier-epochs", type=int, default=5)
    p.add_argument("--classifier-n-train", type=int, default=0, help="0 = all 60,000 training images")
    p.add_argument("--data-root", default="")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    res = compare(
        a.runs, a.out, samples=a.samples, classifier_epochs=a.classifier_epochs, data_root=a.data_root,
        device=a.device, seed=a.seed, classifier_n_train=a.classifier_n_train,
    )  # fmt: skip
    print(f"classifier test accuracy {res['classifier']['test_acc']:.4f} (paper: 0.91)")
    for name, r in res["runs"].items():
        fr = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["fractions"].items())
        print(f"{name}: {fr}")
    print(f"figure: {res['figure']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
