"""What a run writes as it goes (rank 0 only): config.json, one metrics.jsonl line per
``log_every`` steps (also as TensorBoard scalars), and each epoch's figure under samples/."""
from __future__ import annotations

import json
import os

import torch

from kmgan_ext import _progress

from . import centers as cset
from . import data as data_mod
from . import figures, metrics


def start(tr) -> None:
    """The run folder's config.json, a fresh metrics.jsonl for a fresh run, and the
    TensorBoard writer (``tr.writer``) when asked for."""
    if not tr.info.main:
        return
    log = os.path.join(tr.out, "metrics.jsonl")
    if not tr.resumed and os.path.exists(log):
        os.remove(log)  # a fresh run starts a fresh log
    if tr.resumed:
        truncate_log(log, tr.step)
    with open(os.path.join(tr.out, "config.json"), "w") as f:
        json.dump(tr.cfg, f, indent=2, sort_keys=True)
    if tr.cfg["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        # on a resume, TensorBoard drops the events the interrupted run logged after the
        # checkpoint (they are logged again)
        purge = tr.step + 1 if tr.resumed else None
        tr.writer = SummaryWriter(os.path.join(tr.out, "tensorboard"), purge_step=purge)


def truncate_log(path: str, step: int) -> int:
    """Drop the records of steps after ``step`` (the checkpoint a resume starts from: the
    resumed run logs those steps again). Rewritten atomically; returns how many were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill mid-write
        if rec.get("step", 0) <= step:
            keep.append(json.dumps(rec) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)
    return len(lines) - len(keep)


def progress_bar(tr, total: int, desc: str):
    """The trainer's progress over an epoch's iterations (kmgan_ext/_progress.py): a bar when
    stderr is a terminal, one summary line per epoch when it is a log file or a pipe; nothing
    with ``progress=false`` or on other ranks than 0."""
    return _progress.progress(total, initial=tr.batch_in_epoch, desc=desc, unit="steps",
                              enabled=tr.info.main and tr.cfg["progress"], leave=False)  # fmt: skip


def update_rank_diff(tr) -> float:
    """max |center - rank 0's center| over ranks now (0.0 on one process); also folded into
    the run's maximum ``tr.rank_diff``."""
    tensors = [tr.C_real, tr.n_real] + ([tr.C_fake, tr.n_fake] if tr.C_fake is not None else [])
    diff = cset.rank_max_abs_diff(tensors, tr.world)
    tr.rank_diff = max(tr.rank_diff, diff)
    return diff


def log_record(tr, out: dict, window_seconds: float, window_steps: int) -> dict:
    """One metrics.jsonl line: the iteration's losses, center statistics, time per step."""
    rec = {"step": tr.step, "epoch": tr.epoch, "batch_in_epoch": tr.batch_in_epoch}
    for key in ("L_D", "L_G", "L_center", "L_intra", "L_inter", "GP", "L_C", "L_mi", "L_aug"):
        if key in out:
            rec[key] = float(out[key])
    if "center_step" in out:
        rec["center_step"] = bool(out["center_step"])
    if tr.C_real is not None:
        k = tr.C_real.shape[0]
        rec["real_counts_min"] = int(tr.n_real.min())
        rec["real_counts_max"] = int(tr.n_real.max())
        rec["batch_clusters_real"] = int(torch.unique(out["labels_real"]).numel())
        rec["batch_clusters_fake"] = int(torch.unique(out["labels_fake"]).numel())
        if k > 1:
            rec["real_center_spread"] = float(torch.pdist(tr.C_real.double()).mean())
        if tr.C_fake is not None:
            rec["center_sum_l1_gap"] = float((tr.C_real.sum(0) - tr.C_fake.sum(0)).abs().sum())
        rec["center_rank_max_abs_diff"] = update_rank_diff(tr)
    rec["sec_per_step"] = window_seconds / max(1, window_steps)
    rec["seconds"] = tr.seconds
    return rec


def write_log(tr, rec: dict) -> None:
    if not tr.info.main:
        return
    with open(os.path.join(tr.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    if tr.writer is not None:
        for key, v in rec.items():
            if key not in ("step", "epoch", "batch_in_epoch") and isinstance(v, (int, float)):
                tr.writer.add_scalar(key, float(v), tr.step)


@torch.no_grad()
def epoch_figure(tr) -> str | None:
    """Every ``sample_every`` epochs: a grid of G's samples of the fixed noise, or (vector
    data) Fig. 2's panel of D's features. The path, or None."""
    if not tr.info.main or not tr.cfg["sample_every"] or tr.epoch % tr.cfg["sample_every"]:
        return None
    path = os.path.join(tr.out, "samples", f"epoch_{tr.epoch:04d}.png")
    if not tr.data.is_image:
        # Vectors cannot be shown as images: the epoch's figure is Fig. 2's panel, D's
        # features of the training set colored by the hidden label.
        order = tr.feature_order(len(tr.data), 11)
        feats = tr.dataset_features(tr.D_raw.features, order)
        labels = tr.data.labels[order]
        title = f"D features, epoch {tr.epoch}"
        if labels is not None:
            # Fig. 2 shows the features "in the training process": score them per epoch.
            fc = metrics.feature_clustering(feats, labels, int(labels.max()) + 1, tr.cfg["seed"])
            write_log(tr, {"step": tr.step, "epoch": tr.epoch, "feature_acc": fc["acc"], "feature_nmi": fc["nmi"]})
            title += f": k-means acc {fc['acc']:.3f}, NMI {fc['nmi']:.3f}"
        figures.feature_scatter(
            [(title, metrics.pca2(feats), labels)], path,
            f"{tr.cfg['model']}: discriminator features (PCA if d > 2)",
        )  # fmt: skip
        return path
    tr.G_raw.eval()
    try:
        imgs = data_mod.from_model_output(tr.G_raw(*tr.fixed_noise, tr.cfg["sample_sigma"]), tr.cfg)
    finally:
        tr.G_raw.train()
    figures.save_grid(imgs, path, nrow=8)
    if tr.writer is not None:
        from torchvision.utils import make_grid

        tr.writer.add_image("samples", make_grid(imgs.cpu(), nrow=8), tr.step)
    return path
