"""Checkpoints written atomically (temp file in the same folder, fsync, rename), the
process-wide RNG states a bitwise resume needs, and the Trainer's whole state (``state`` /
``load_state``: networks, optimizers, centers, counters, every rank's RNG states)."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch

from . import dist as dist_mod


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to ``path`` so that a crash leaves either the old file or the new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
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
    }


def load_state(tr, path: str) -> None:
    """Restore Trainer ``tr`` (built from the same config) from the checkpoint at ``path``,
    this rank's RNG states included."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    st = load(path, map_location="cpu")
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
