"""Checkpoints written atomically (temp file in the same folder, fsync, rename), and the
process-wide RNG states a bitwise resume needs."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any

import numpy as np
import torch


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
