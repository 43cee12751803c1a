"""Input validation shared by every op (DESIGN.md 4.8).

Every check runs before anything is written, so a failed call leaves centers and counts
bitwise unchanged. Shape/dtype/device checks are static and run in the public wrappers
(they trace cleanly under torch.compile); checks that read data (label range, NaN/Inf) run
inside the op's kernel, where the values exist.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

_debug = False


def set_debug(enabled: bool) -> None:
    """Check inputs for NaN/Inf in every op (costs a device sync per call, so it is opt-in)."""
    global _debug
    _debug = bool(enabled)


def debug_enabled() -> bool:
    return _debug


def tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def features(name: str, t: object, *, dtype: torch.dtype | None = None, ref: str | None = None) -> Tensor:
    """A 2-D floating tensor (N, d); with ``dtype``, it must have that dtype (that of ``ref``)."""
    t = tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, d), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}"
        )
    if dtype is not None and t.dtype != dtype:
        as_ref = f" (as {ref})" if ref else ""
        raise TypeError(f"{name} must have dtype {dtype}{as_ref}, got {t.dtype}")
    return t


def centers(name: str, c: object, x: Tensor, ref: str = "x") -> Tensor:
    """(K, d) with K >= 1, same d, dtype and device as x (named ``ref`` in messages)."""
    c = features(name, c, dtype=x.dtype, ref=ref)
    if c.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one center (K >= 1), got K = 0")
    if c.shape[1] != x.shape[1]:
        raise ValueError(
            f"{name} must have {x.shape[1]} columns ({ref}.shape[1]), got shape {tuple(c.shape)}"
        )
    same_device(name, c, x, ref)
    return c


def same_device(name: str, t: Tensor, x: Tensor, ref: str = "x") -> None:
    if t.device != x.device:
        raise ValueError(f"{name} must be on {x.device} (as {ref}), got {t.device}")


def labels(name: str, lab: object, n: int, x: Tensor) -> Tensor:
    """(N,) int64 on x's device. The value range [0, K) is checked by label_range."""
    lab = tensor(name, lab)
    if lab.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {lab.dtype}")
    if lab.dim() != 1 or lab.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(lab.shape)}")
    same_device(name, lab, x)
    return lab


def counts(name: str, cnt: object, k: int, x: Tensor) -> Tensor:
    cnt = tensor(name, cnt)
    if cnt.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 (exact past 2**24), got {cnt.dtype}")
    if cnt.dim() != 1 or cnt.shape[0] != k:
        raise ValueError(f"{name} must have shape ({k},), got {tuple(cnt.shape)}")
    same_device(name, cnt, x)
    return cnt


def label_range(name: str, lab: Tensor, k: int) -> None:
    """Values in [0, K). Reads the data: on a GPU this is one sync."""
    if lab.numel() == 0:
        return
    lo, hi = torch.aminmax(lab)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= k:
        raise ValueError(f"{name} must lie in [0, {k}) (K), found values in [{lo}, {hi}]")


def finite(name: str, t: Tensor) -> None:
    """NaN/Inf check, only under set_debug(True)."""
    if _debug and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf (found with km.set_debug(True))")


def decay(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"decay must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {value}")
    return float(value)


def eps(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"eps must be a float >= 0, got {type(value).__name__}")
    if not 0.0 <= float(value) < float("inf"):
        raise ValueError(f"eps must be a finite float >= 0, got {value}")
    return float(value)


def ema_state_dtype(centers_dtype: torch.dtype) -> torch.dtype:
    """The EMA state (cluster_size, embed_sum) is float32, float64 for float64 centers."""
    return torch.float64 if centers_dtype == torch.float64 else torch.float32


def ema_state(name: str, t: object, shape: tuple[int, ...], centers: Tensor) -> Tensor:
    """cluster_size (K,) / embed_sum (K, d): float32 (float64 for float64 centers), on the
    centers' device."""
    t = tensor(name, t)
    want = ema_state_dtype(centers.dtype)
    if t.dtype != want:
        raise TypeError(
            f"{name} must be {want} (the EMA state dtype for {centers.dtype} centers), got {t.dtype}"
        )
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    same_device(name, t, centers, "centers")
    return t
