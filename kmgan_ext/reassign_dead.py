"""km.reassign_dead_: move clusters that stopped receiving rows onto rows of the batch.

One op, two rules, the two that users of online k-means and VQ codebooks know:

* ``reassignment_ratio`` -- scikit-learn's MiniBatchKMeans (``_mini_batch_step``), transcribed.
* ``threshold`` -- vector-quantize-pytorch's ``threshold_ema_dead_code`` (``expire_codes_``).

It is a separate op rather than an option of ``minibatch_update_`` / ``ema_update_`` because
the callers decide *when* to look (scikit-learn every 10 K rows or on an empty cluster, a VQ
codebook every training step, a distributed module on one rank then broadcast) and what the
usage counts are (int64 row counts, weight sums, EMA cluster sizes): the op takes the counts
as they are and is called right after the update.

Deciding how many centers move and drawing the rows needs the (K,) counts on the host: the
op reads them once (one device sync). Everything is checked before anything is written.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from . import _checks

_GENERATORS = "None, a torch.Generator, a numpy RandomState or a numpy Generator"


def _usage_counts(counts: object, k: int, centers: Tensor) -> Tensor:
    counts = _checks.tensor("counts", counts)
    if counts.dtype != torch.int64 and not counts.is_floating_point():
        raise TypeError(f"counts must be int64 or floating (row counts, weight sums or EMA "
                        f"cluster sizes), got {counts.dtype}")
    if counts.dim() != 1 or counts.shape[0] != k:
        raise ValueError(f"counts must have shape ({k},) (K), got {tuple(counts.shape)}")
    _checks.same_device("counts", counts, centers, "centers")
    _checks.not_grad_leaf("counts", counts)
    return counts


def _nonneg_real(name: str, value: object, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not 0.0 <= float(value) <= upper or math.isinf(float(value)):
        bound = f"in [0, {upper:g}]" if upper != math.inf else "finite and >= 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def _check_generator(generator: object) -> None:
    if generator is None or isinstance(
            generator, (torch.Generator, np.random.RandomState, np.random.Generator)):
        return
    raise TypeError(f"generator must be {_GENERATORS}, got {type(generator).__name__}")


def _draw(population: int, size: int, generator, device: torch.device) -> Tensor:
    """``size`` distinct indices of range(population), uniformly, as int64 on ``device``.

    numpy generators draw as scikit-learn does (``choice(population, size, replace=False)``,
    a permutation's prefix); torch ones as vector-quantize-pytorch (``randperm``'s prefix;
    None = torch's default generator of ``device``)."""
    if isinstance(generator, np.random.RandomState):
        idx = torch.from_numpy(generator.choice(population, replace=False, size=size))
    elif isinstance(generator, np.random.Generator):
        idx = torch.from_numpy(generator.choice(population, size=size, replace=False))
    elif generator is None:
        idx = torch.randperm(population, device=device)[:size]
    else:
        idx = torch.randperm(population, generator=generator, device=generator.device)[:size]
    return idx.to(device=device, dtype=torch.int64)


def _ratio_rule(c: np.ndarray, ratio: float, n: int, generator, device):
    """scikit-learn's ``_mini_batch_step`` reassignment on host counts ``c`` (float64):
    (mask (K,) numpy bool, batch rows of the moved centers, count of the moved centers)."""
    to_reassign = c < ratio * c.max()
    # at most half the batch becomes new centers (the largest counts are kept)
    if to_reassign.sum() > 0.5 * n:
        to_reassign[np.argsort(c)[int(0.5 * n):]] = False
    moved = int(to_reassign.sum())
    rows = _draw(n, moved, generator, device) if moved else None
    # reset to the smallest kept count, not 0, which would reassign them again at once
    # (ratio <= 1 keeps the largest count, so there is one)
    floor = float(c[~to_reassign].min()) if moved else 0.0
    return to_reassign, rows, floor


def _threshold_rule(c: np.ndarray, threshold: float, n: int, generator, device):
    """vector-quantize-pytorch's ``expire_codes_``: every count below ``threshold``; when
    there are more than rows, a random subset of them now (the rest at later steps)."""
    dead = c < threshold
    n_dead = int(dead.sum())
    if n_dead > n:
        keep = _draw(n_dead, n, generator, device).cpu().numpy()
        idx = np.flatnonzero(dead)[keep]
        dead = np.zeros_like(dead)
        dead[idx] = True
        n_dead = n
    rows = _draw(n, n_dead, generator, device) if n_dead else None
    return dead, rows


def reassign_dead_(
    centers: Tensor,
    counts: Tensor,
    x: Tensor,
    *,
    reassignment_ratio: float | None = None,
    threshold: float | None = None,
    reset_count: float | None = None,
    embed_sum: Tensor | None = None,
    generator: torch.Generator | np.random.RandomState | np.random.Generator | None = None,
) -> Tensor:
    """Move dead centers onto rows of the batch ``x``, in place; returns the (K,) bool mask
    of the moved centers. Call it right after the update with the same batch.

    Exactly one rule:

    * ``reassignment_ratio=r`` (scikit-learn's MiniBatchKMeans, in [0, 1]): the centers
      with ``counts_k < r * max(counts)`` -- at most N/2 of them, the smallest counts first
      -- move to distinct rows of x drawn uniformly; their counts become the smallest count
      of the kept centers (not 0, which would move them again at once).
    * ``threshold=t`` (vector-quantize-pytorch's ``threshold_ema_dead_code``): the centers
      with ``counts_k < t`` move to distinct rows drawn uniformly (when more are dead than
      x has rows, a random subset of them now); their counts become ``reset_count``
      (default t) and, with ``embed_sum``, ``embed_sum_k = reset_count * row``, so that
      the next ``ema_update_`` keeps the new center.

    Args:
        centers: (K, d) floating, written in place.
        counts: (K,) per-cluster usage, written in place: int64 row counts
            (``minibatch_update_``), floating weight sums, or an EMA ``cluster_size``.
        x: (N, d) the batch, same dtype and device as centers; N = 0 moves nothing.
        embed_sum: optional (K, d) EMA state of ``ema_update_`` (float32; float64 for
            float64 centers), reset with the moved centers.
        generator: the draws. A numpy ``RandomState`` draws exactly as scikit-learn
            (``choice(N, n, replace=False)``, so a MiniBatchKMeans with the same random
            state follows scikit-learn's sequence); a ``torch.Generator`` or None (torch's
            default generator, seeded by ``torch.manual_seed``) as vector-quantize-pytorch
            (``randperm``); a numpy ``Generator`` with its ``choice``. The same generator
            state gives the same result on every backend and run.

    Reads the counts on the host (one sync). Every check runs before the first write: a
    failed call leaves every argument unchanged.
    """
    x = _checks.features("x", x)
    centers = _checks.centers("centers", centers, x)
    _checks.not_grad_leaf("centers", centers)
    k, d = centers.shape
    counts = _usage_counts(counts, k, centers)
    if (reassignment_ratio is None) == (threshold is None):
        raise ValueError("pass exactly one of reassignment_ratio (scikit-learn's rule) and "
                         "threshold (vector-quantize-pytorch's)")
    if reassignment_ratio is not None:
        reassignment_ratio = _nonneg_real("reassignment_ratio", reassignment_ratio, 1.0)
        if reset_count is not None:
            raise ValueError("reset_count belongs to the threshold rule; the "
                             "reassignment_ratio rule resets to the smallest kept count")
    else:
        threshold = _nonneg_real("threshold", threshold)
        reset_count = threshold if reset_count is None else _nonneg_real("reset_count", reset_count)
    outputs = {"centers": centers, "counts": counts}
    if embed_sum is not None:
        embed_sum = _checks.ema_state("embed_sum", embed_sum, (k, d), centers)
        _checks.not_grad_leaf("embed_sum", embed_sum)
        outputs["embed_sum"] = embed_sum
    _check_generator(generator)
    _checks.writable(outputs, {"x": x})
    _checks.finite("x", x)

    c = counts.detach().to("cpu", torch.float64).numpy()
    if not (np.isfinite(c).all() and (c >= 0).all()):
        raise ValueError("counts must be finite and non-negative")
    n = x.shape[0]
    none = torch.zeros(k, dtype=torch.bool, device=centers.device)
    if n == 0:
        return none
    if reassignment_ratio is not None:
        if reassignment_ratio == 0:
            return none
        mask, rows, reset = _ratio_rule(c, reassignment_ratio, n, generator, x.device)
    else:
        mask, rows = _threshold_rule(c, threshold, n, generator, x.device)
        reset = reset_count
    if rows is None:
        return none
    moved = torch.from_numpy(mask).to(centers.device)
    new = x.detach().index_select(0, rows)
    with torch.no_grad():
        centers[moved] = new
        counts[moved] = int(reset) if counts.dtype == torch.int64 else reset
        if embed_sum is not None:
            embed_sum[moved] = new.to(embed_sum.dtype) * reset
    return moved
