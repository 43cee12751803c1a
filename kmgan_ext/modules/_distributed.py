"""The process group a module's update must be all-reduced over (None when not distributed)."""
from __future__ import annotations

import torch.distributed as dist


def world(group):
    """``group`` (default WORLD) when torch.distributed is initialized with > 1 rank, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    g = group if group is not None else dist.group.WORLD
    return g if dist.get_world_size(g) > 1 else None
