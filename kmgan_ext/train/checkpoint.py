"""Checkpoints written atomically (temp file in the same folder, fsync, rename), the
process-wide RNG states a bitwise resume needs, and the Trainer's whole state (``state`` /
``load_state``: networks, optimizers, centers, counters, every rank's RNG states).

A run keeps its newest ``keep_checkpoints`` checkpoints as ``checkpoints/step-NNNNNNNN.pt``.
Loading verifies a file before trusting it: torch.save writes a zip whose members carry
CRC-32s, so a truncated, empty or bit-flipped file is detected (``verify``); ``newest_good``
falls back to the newest checkpoint that passes, saying which ones it skipped and why.
"""
from __future__ import annotations

import glob
import os
import random
import re
import sys
import tempfile
import zipfile
from typing import Any

import numpy as np
import torch

from . import dist as dist_mod


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to ``path`` so that a crash leaves either the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    # Our own files: they hold numpy RNG states and Python objects besides tensors.
    return torch.load(path, map_location=map_location, weights_only=False)


class CheckpointError(ValueError):
    """No usable checkpoint (none written yet, or every one fails its integrity check)."""


TMP_PREFIX = ".tmp-"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step-{step:08d}.pt")


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoints in ``folder``, newest first."""
    out = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = _STEP_FILE.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(out, reverse=True)


def verify(path: str) -> str | None:
    """None when ``path`` is an intact torch.save zip (every member's CRC-32 checks), else
    the reason it is not."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # reads every member and checks its CRC-32
        if bad is not None:
            return f"CRC mismatch in {bad}"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a complete checkpoint ({type(e).__name__}: {e})"
    return None


def newest_good(folder: str, say=None) -> str:
    """The newest checkpoint in ``folder`` that passes ``verify``; each one skipped is
    reported through ``say`` (stderr by default). CheckpointError when there is none."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(f"no checkpoint in {folder}: the run stopped before its first checkpoint was written")
    for step, path in found:
        why = verify(path)
        if why is None:
            return path
        say(f"kmgan-train: skipping corrupt checkpoint {path} (step {step}): {why}; trying an older one")
    raise CheckpointError(f"every checkpoint in {folder} is corrupt ({len(found)} tried): nothing to resume from")


def remove_stale_temp(folder: str) -> list[str]:
    """Delete temp files a killed writer left behind (one writer per run folder: any temp
    file present before a save starts is stale)."""
    stale = glob.glob(os.path.join(folder, TMP_PREFIX + "*"))
    for p in stale:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    return stale


def save_rotating(obj: Any, folder: str, step: int, keep: int) -> str:
    """Write checkpoint ``step`` atomically into ``folder`` and keep only the newest ``keep``."""
    remove_stale_temp(folder)
    path = checkpoint_path(folder, step)
    save_atomic(obj, path)
    for _, old in list_checkpoints(folder)[max(1, keep) :]:
        os.unlink(old)
    return path


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state(tr) -> dict:
    """Everything a bitwise resume of Trainer ``tr`` needs. Collective: all ranks gather
    their RNG states (call it on every rank)."""
    per_rank = {"z_gen": tr.z_gen.get_state(), "rng": rng_state()}
    return {
        "format": 1,
        "config": tr.cfg,
        "G": tr.G_raw.state_dict(),
        "D": tr.D_raw.state_dict(),
        "opt_D": tr.opt_D.state_dict(),
        "opt_G": tr.opt_G.state_dict(),
        "opt_C": tr.opt_C.state_dict() if tr.opt_C is not None else None,
        # slcGAN's clustering network and its optimizer
        "clusterer": tr.clusterer.state_dict() if tr.clusterer is not None else None,
        "opt_cluster": tr.opt_cluster.state_dict() if tr.opt_cluster is not None else None,
        "centers": {
            "real": tr.C_real,
            "real_counts": tr.n_real,
            "fake": tr.C_fake,
            "fake_counts": tr.n_fake,
        },
        "step": tr.step,
        "epoch": tr.epoch,
        "batch_in_epoch": tr.batch_in_epoch,
        "seconds": tr.seconds,
        "center_rank_max_abs_diff": tr.rank_diff,
        "status": tr.status,
        "fixed_noise": [t.cpu() for t in tr.fixed_noise],
        "rank_states": dist_mod.all_gather_object(per_rank, tr.info),
        "world_size": tr.world,
        "model_shape": list(tr.model_shape()),  # what the networks were built for (fig5c.load_generator)
    }


def config_mismatch(saved: dict, stored: dict, mutable) -> list[str]:
    """Keys (not resume-mutable) whose value in config.json differs from the checkpoint's own."""
    from .config import DEFAULTS

    keys = (set(saved) | set(stored)) - set(mutable) - {"config"}
    # a key missing on one side (a checkpoint older than the key) has its default there
    return sorted(k for k in keys if saved.get(k, DEFAULTS.get(k)) != stored.get(k, DEFAULTS.get(k)))


def load_state(tr, path: str) -> None:
    """Restore Trainer ``tr`` (built from the same config) from the checkpoint at ``path``,
    this rank's RNG states included."""
    from .config import RESUME_MUTABLE

    st = load(path, map_location="cpu")
    bad = config_mismatch(tr.cfg, st["config"], RESUME_MUTABLE)
    if bad:
        diffs = ", ".join(f"{k}: config.json {tr.cfg.get(k)!r} vs checkpoint {st['config'].get(k)!r}" for k in bad)
        raise CheckpointError(
            f"--resume: {os.path.dirname(os.path.dirname(path))}/config.json disagrees with its checkpoint "
            f"({diffs}); restore config.json or start a new run"
        )
    if st["world_size"] != tr.world:
        raise ValueError(
            f"--resume: the checkpoint was written by {st['world_size']} processes, this run has "
            f"{tr.world}; an exact resume needs the same number"
        )
    tr.G_raw.load_state_dict(st["G"])
    tr.D_raw.load_state_dict(st["D"])
    tr.opt_D.load_state_dict(st["opt_D"])
    tr.opt_G.load_state_dict(st["opt_G"])
    if tr.opt_C is not None:
        tr.opt_C.load_state_dict(st["opt_C"])
    if tr.clusterer is not None:
        tr.clusterer.load_state_dict(st["clusterer"])
        tr.opt_cluster.load_state_dict(st["opt_cluster"])
    c = st["centers"]

    def dev(t):
        return None if t is None else t.to(tr.device)

    tr.C_real, tr.n_real = dev(c["real"]), dev(c["real_counts"])
    tr.C_fake, tr.n_fake = dev(c["fake"]), dev(c["fake_counts"])
    tr.step, tr.epoch, tr.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
    tr.seconds = st["seconds"]
    tr.rank_diff = st["center_rank_max_abs_diff"]
    tr.fixed_noise = tuple(t.to(tr.device) for t in st["fixed_noise"])
    mine = st["rank_states"][tr.info.rank]
    tr.z_gen.set_state(mine["z_gen"])
    set_rng_state(mine["rng"])
    tr.resumed = True
