"""Process-group setup for ``torchrun`` (NCCL on GPU, gloo on CPU) and the device choice."""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # we created the process group (and destroy it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


class CollectiveError(RuntimeError):
    """A collective failed or timed out (another rank stalled or died)."""


def setup(device_pref: str, timeout_s: float = 300.0) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), and pick the device:
    ``auto`` = this rank's GPU when one is visible, else the CPU. Collectives wait at most
    ``timeout_s`` seconds for the other ranks (the config key ``dist_timeout``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return DistInfo(0, 1, 0, device, False)


def rank_from_env() -> int:
    """This process's rank as torchrun sets it (0 without torchrun), before any group exists."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def phase(info: DistInfo, name: str, step: int | None = None):
    """Name what this rank is doing, so that a failed or timed-out collective inside says
    which rank and which phase (a stalled peer otherwise shows as a bare gloo/NCCL error)."""
    if info.world_size == 1:
        yield
        return
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as e:  # gloo / NCCL errors (DistBackendError is a RuntimeError)
        where = name if step is None else f"{name} (step {step})"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CollectiveError(
            f"rank {info.rank} of {info.world_size}: a collective failed during {where}; another rank "
            f"stalled or died, or dist_timeout is too short: {first}"
        ) from e


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on any rank (for stopping together)."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_object(obj, info: DistInfo) -> list:
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
