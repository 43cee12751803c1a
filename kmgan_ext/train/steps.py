"""The optimizer-step mechanics every model's iteration shares: the non-finite stop, weight
clipping of D, one Adam step on a loss, the joint D+G center step and when it runs
(``d_round``, README, The KM-GAN trainer), and feature passes that leave the BN statistics alone.

Each function takes the Trainer ``tr`` (its config, networks, optimizers and rank info).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from . import dist as dist_mod


class StopTraining(Exception):
    """A clean stop inside an iteration (non-finite loss): checkpoint, summary, exit."""


@contextlib.contextmanager
def frozen_bn(*modules: nn.Module):
    """Batch-norm layers use batch statistics but leave their running statistics untouched
    (momentum 0: running = 1 * running + 0 * batch, bitwise the same)."""
    saved = []
    for m in modules:
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                saved.append((mod, mod.momentum, mod.num_batches_tracked.clone()))
                mod.momentum = 0.0
    try:
        yield
    finally:
        for mod, mom, nbt in saved:
            mod.momentum = mom
            mod.num_batches_tracked.copy_(nbt)


def check_finite(tr, name: str, value: Tensor) -> None:
    """StopTraining on every rank when ``value`` is non-finite on any rank."""
    bad = not bool(torch.isfinite(value.detach()).all())
    if dist_mod.any_rank(bad, tr.info):
        raise StopTraining(f"non-finite {name} at step {tr.step}")


def clip_weights(tr) -> None:
    """D's parameters clamped to [-clip, clip] (KM-GAN variants only; clip 0 = off)."""
    c = tr.cfg["clip"]
    if c > 0 and tr.cfg["model"] in ("kmgan", "generalized", "reduced"):
        with torch.no_grad():
            for p in tr.D_raw.parameters():
                p.clamp_(-c, c)


def optimizer_step(tr, opt: torch.optim.Optimizer, name: str, loss: Tensor, clip: bool = False) -> None:
    """Stop on a non-finite ``loss``, else one step of ``opt`` on it (then clip D's weights)."""
    check_finite(tr, name, loss)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if clip:
        clip_weights(tr)


def center_step(tr, loss: Tensor) -> None:
    """One joint D+G Adam step on the center loss (its own Adam, or the D and G ones)."""
    check_finite(tr, "L_center", loss)
    if tr.opt_C is not None:
        tr.opt_C.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt_C.step()
    else:
        tr.opt_D.zero_grad(set_to_none=True)
        tr.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt_D.step()
        tr.opt_G.step()
    clip_weights(tr)


def center_active_by_steps(tr) -> bool:
    """d_round_mode=steps: the center step runs in the first d_round iterations."""
    return tr.cfg["d_round_mode"] == "steps" and tr.step < tr.cfg["d_round"]


def center_floor_reached(tr, value: Tensor) -> bool:
    """d_round_mode=floor: the center step runs while the center loss (mean over ranks) is
    at least d_round."""
    v = value.detach().double().reshape(1).clone()
    if tr.world > 1:
        torch.distributed.all_reduce(v)
        v /= tr.world
    return float(v.item()) >= tr.cfg["d_round"]
