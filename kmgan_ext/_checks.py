"""Input validation shared by every op (docs/ops.md, Bad input).

Every check runs before anything is written, so a failed call leaves centers and counts
bitwise unchanged. Shape/dtype/device checks are static and run in the public wrappers
(they trace cleanly under torch.compile); checks that read data (label range, NaN/Inf) run
inside the op's kernel, where the values exist.
"""
from __future__ import annotations

import numbers

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
    c = features(name, c)
    same_dtype(name, c, x, ref)
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


def labels(name: str, lab: object, n: int, x: Tensor, ref: str = "x") -> Tensor:
    """(N,) int64 or int32 on x's device, returned as it is: every backend reads int32 labels
    directly (docs/ops.md), so they are never copied to int64. The value range [0, K) is
    checked by label_range."""
    lab = tensor(name, lab)
    if lab.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be int64 or int32, got {lab.dtype}")
    if lab.dim() != 1 or lab.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(lab.shape)}")
    same_device(name, lab, x, ref)
    return lab


def counts(name: str, cnt: object, k: int, x: Tensor, ref: str = "x") -> Tensor:
    cnt = tensor(name, cnt)
    if cnt.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 (exact past 2**24), got {cnt.dtype}")
    if cnt.dim() != 1 or cnt.shape[0] != k:
        raise ValueError(f"{name} must have shape ({k},), got {tuple(cnt.shape)}")
    same_device(name, cnt, x, ref)
    return cnt


def weighted_counts(name: str, cnt: object, k: int, x: Tensor, ref: str = "x") -> Tensor:
    """The running counts of a weighted update: (K,) float64 cumulative weights, as
    scikit-learn's ``weight_sums`` (an int64 count cannot hold a fractional weight)."""
    cnt = tensor(name, cnt)
    if cnt.dtype != torch.float64:
        raise TypeError(f"{name} must be float64 (cumulative weights) when sample_weight is "
                        f"given, got {cnt.dtype}")
    if cnt.dim() != 1 or cnt.shape[0] != k:
        raise ValueError(f"{name} must have shape ({k},), got {tuple(cnt.shape)}")
    same_device(name, cnt, x, ref)
    return cnt


def sample_weight(name: str, w: object, n: int, x: Tensor, ref: str = "x") -> Tensor:
    """(N,) floating on x's device; the values (finite, >= 0) are checked by weight_range."""
    w = tensor(name, w)
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {w.dtype}")
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (a weight per row of {ref}), got "
                         f"{tuple(w.shape)}")
    same_device(name, w, x, ref)
    return w


def weight_range(name: str, w: Tensor) -> None:
    """Finite and >= 0 (every element, NaN included): a ValueError on CPU before any write; on
    a GPU a device-side assert (no host sync), as for labels."""
    if w.numel() == 0:
        return
    ok = (w >= 0) & torch.isfinite(w)
    if _host_checkable(w):
        if not bool(ok.all()):
            bad = int(torch.nonzero(~ok)[0, 0])
            raise ValueError(f"{name} must be finite and non-negative, found {float(w[bad])} "
                             f"at position {bad}")
        return
    torch._assert_async(ok.all(), f"{name} must be finite and non-negative")


def _host_checkable(t: Tensor) -> bool:
    """Values can be read without a device sync (CPU); elsewhere checks run on the device."""
    return t.device.type == "cpu"


def label_range(name: str, lab: Tensor, k: int) -> None:
    """Values in [0, K).

    On CPU: a ValueError naming the argument and the values found, before anything is
    written. On a GPU, reading the values back would sync the host (and break CUDA-graph
    capture), so the check is a device-side assert (torch._assert_async): it raises at the
    next sync. Until then the GPU kernels must not index out of bounds with such a label
    (minibatch_update_cuda.cu skips it; every GPU kernel that reads labels must do the same)."""
    if lab.numel() == 0:
        return
    if _host_checkable(lab):
        lo, hi = torch.aminmax(lab)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= k:
            raise ValueError(f"{name} must lie in [0, {k}) (K), found values in [{lo}, {hi}]")
        return
    torch._assert_async(((lab >= 0) & (lab < k)).all(), f"{name} must lie in [0, {k}) (K)")


_INT64_MAX = (1 << 63) - 1


def counts_range(name: str, cnt: Tensor, new_rows: int) -> None:
    """Running counts are >= 0 and stay below 2**63 after adding up to ``new_rows`` rows (a
    count near 2**63 would wrap negative). On CPU a ValueError before any write; on a GPU a
    device-side assert (no host sync), as for labels."""
    if cnt.numel() == 0:
        return
    limit = _INT64_MAX - new_rows
    if _host_checkable(cnt):
        lo, hi = torch.aminmax(cnt)
        lo, hi = int(lo), int(hi)
        if lo < 0:
            raise ValueError(f"{name} must be non-negative, found {lo}")
        if hi > limit:
            raise ValueError(f"{name} would overflow int64: found {hi}, plus up to {new_rows} rows")
        return
    torch._assert_async(((cnt >= 0) & (cnt <= limit)).all(),
                        f"{name} must be non-negative and below 2**63 - {new_rows} (rows of x)")


def writable(outputs: dict[str, Tensor], inputs: dict[str, Tensor]) -> None:
    """What PyTorch's own in-place ops refuse, refused up front with the argument named:
    an output with a stride-0 (expanded) dimension or internally overlapping memory, and an
    output sharing memory with another output or with an input (PyTorch's index_add_ refuses
    the same). Runs where tensors have storage (eager, or the compiled graph at run time)."""
    if torch.compiler.is_compiling():
        return
    spans = []  # (name, span, is_output)
    for name, t in outputs.items():
        if t.numel() > 1:
            for size, stride in zip(t.shape, t.stride()):
                if stride == 0 and size > 1:
                    raise ValueError(
                        f"{name} must not be expanded (a dimension of size {size} has stride 0): "
                        f"the update would write one element several times; pass {name}.clone()"
                    )
            if _internally_overlapping(t):
                raise ValueError(
                    f"{name} has internally overlapping memory (strides {t.stride()} for shape "
                    f"{tuple(t.shape)}); pass {name}.clone()"
                )
        spans.append((name, _span(t), True))
    spans += [(name, _span(t), False) for name, t in inputs.items() if t is not None]
    for i, (a, sa, out_a) in enumerate(spans):
        for b, sb, out_b in spans[i + 1 :]:
            if (out_a or out_b) and _overlap(sa, sb):
                raise ValueError(
                    f"{a} shares memory with {b}: an in-place op's outputs must not alias each "
                    f"other or an input; pass a clone"
                )


def _internally_overlapping(t: Tensor) -> bool:
    """Two indices of t reach one memory element (t has no stride-0 dimension of size > 1).

    Dimensions sorted by stride each step past the extent of the smaller ones: then no two
    indices meet. A layout that fails this may still be disjoint (shape (2, 3), strides
    (3, 2)): its offsets are enumerated (torch._debug_has_internal_overlap says "too hard"
    for such layouts and for the overlapping as_strided((4, 3), (1, 1)) alike)."""
    dims = sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size > 1)
    reach = 0
    for stride, size in dims:
        if stride <= reach:
            break
        reach += (size - 1) * stride
    else:
        return False
    offsets = torch.zeros((), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = (offsets[..., None] + torch.arange(size) * stride)
    flat = offsets.flatten()
    return flat.unique().numel() != flat.numel()


def _span(t: Tensor):
    """(storage pointer, first byte, end byte) of the memory t can touch; None when empty."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    item = t.element_size()
    first = t.storage_offset()
    last = first + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return (t.device, t.untyped_storage().data_ptr(), first * item, (last + 1) * item)


def _overlap(a, b) -> bool:
    return a is not None and b is not None and a[:2] == b[:2] and a[2] < b[3] and b[2] < a[3]


def not_grad_leaf(name: str, t: Tensor) -> None:
    """PyTorch refuses to write a leaf that requires grad while grad mode is on (a parameter
    updated under torch.no_grad() is fine): the same, naming the argument."""
    if t.requires_grad and t.is_leaf and torch.is_grad_enabled():
        raise ValueError(
            f"{name} is a leaf tensor that requires grad: an in-place update would bypass "
            f"autograd; call under torch.no_grad() or pass {name}.detach()"
        )


def finite(name: str, t: Tensor) -> None:
    """NaN/Inf check, only under set_debug(True)."""
    if _debug and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf (found with km.set_debug(True))")


def decay(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"decay must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {value}")
    return float(value)


def eps(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"eps must be a float >= 0, got {type(value).__name__}")
    if not 0.0 <= float(value) < float("inf"):
        raise ValueError(f"eps must be a finite float >= 0, got {value}")
    return float(value)


def real(name: str, value: object, *, minimum: float | None = None,
         maximum: float | None = None) -> float:
    """A finite real number (not a bool) in [minimum, maximum]: a constructor argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")) or (minimum is not None and v < minimum) or (
            maximum is not None and v > maximum):
        lo = "" if minimum is None else f" >= {minimum}"
        hi = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{name} must be a finite number{lo}{' and' if lo and hi else ''}{hi}, got {value!r}")
    return v


def integer(name: str, value: object, *, minimum: int | None = None) -> int:
    """An int (not a bool; numpy integers too) >= minimum: a constructor argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def boolean(name: str, value: object) -> bool:
    """A bool (a string such as 'no' is not silently true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


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


METRICS = ("euclidean", "cosine")


def metric(value: object) -> bool:
    """The ``metric`` argument of assign and the updates: True for "cosine"."""
    if not isinstance(value, str):
        raise TypeError(f"metric must be a string in {METRICS}, got {type(value).__name__}")
    if value not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {value!r}")
    return value == "cosine"


# ----------------------------------------------------------------------------- input forms
# The rule between the two multi-dimensional forms (docs/ops.md, "Input forms"): centers
# (K, d) are one problem, and x may carry any leading dimensions (..., d), flattened to rows;
# centers (B, K, d) are B independent problems, and x must then be (B, N, d).
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def promote_x(x: Tensor, centers: object) -> Tensor:
    """The autocast case: float16/bfloat16 features against float32 centers are computed in
    float32. x is converted (exact); the centers are used as they are, never copied."""
    if (isinstance(x, Tensor) and isinstance(centers, Tensor) and x.dtype in _HALF_DTYPES
            and centers.dtype == torch.float32):
        return x.float()
    return x


def same_dtype(name: str, t: Tensor, x: Tensor, ref: str = "x") -> None:
    """t (centers) shares x's dtype, or x is 16-bit against float32 t (see promote_x); the
    message names both arguments with their dtypes."""
    if t.dtype != x.dtype:
        raise TypeError(
            f"{ref} and {name} must share one dtype (or {ref} float16/bfloat16 with float32 "
            f"{name}): got {ref} {x.dtype}, {name} {t.dtype}"
        )


def flat_rows(name: str, x: object) -> tuple[Tensor, tuple[int, ...]]:
    """x (..., d) as (M, d) rows (a view where the layout allows), and its leading shape."""
    x = tensor(name, x)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a feature dimension (..., d), got a 0-d tensor")
    lead = tuple(x.shape[:-1])
    return (x if x.dim() == 2 else x.reshape(-1, x.shape[-1])), lead


def is_batched(centers: object) -> bool:
    """centers (B, K, d): B independent problems."""
    return isinstance(centers, Tensor) and centers.dim() == 3


def batched(x: object, centers: object, x_name: str = "x", c_name: str = "centers") -> tuple[Tensor, Tensor]:
    """x (B, N, d) and centers (B, K, d): same B, d, dtype and device, K >= 1."""
    x = tensor(x_name, x)
    c = tensor(c_name, centers)
    if x.dim() != 3:
        raise ValueError(
            f"{x_name} must be 3-D (B, N, d) with 3-D {c_name} (B, K, d) (B batched problems), "
            f"got shape {tuple(x.shape)}; for leading dimensions of one problem pass 2-D {c_name}"
        )
    features(x_name, x[0] if x.shape[0] else x.reshape(0, x.shape[-1]))
    features(c_name, c[0] if c.shape[0] else c.reshape(0, c.shape[-1]))
    if c.shape[0] != x.shape[0]:
        raise ValueError(
            f"{c_name} must hold {x.shape[0]} problems ({x_name}.shape[0]), got shape {tuple(c.shape)}"
        )
    same_dtype(c_name, c, x, x_name)
    if c.shape[1] == 0:
        raise ValueError(f"{c_name} must hold at least one center per problem (K >= 1), got K = 0")
    if c.shape[2] != x.shape[2]:
        raise ValueError(
            f"{c_name} must have {x.shape[2]} features ({x_name}.shape[2]), got shape {tuple(c.shape)}"
        )
    same_device(c_name, c, x, x_name)
    return x, c


def batch_offsets(labels: Tensor, k: int) -> Tensor:
    """Labels (B, N) in [0, K) of B problems as flat labels b * K + l into the (B * K, d) view
    of the centers. A label outside [0, K) maps to -1 (outside every problem: the GPU kernels
    skip it and the device-side range check raises), never into a neighbouring problem."""
    b = labels.shape[0]
    # int32 labels stay int32 while every flat label b * K + l fits (read natively, no int64
    # tensor of B * N labels).
    dtype = torch.int32 if labels.dtype == torch.int32 and b * k <= 2**31 - 1 else torch.int64
    off = torch.arange(b, device=labels.device, dtype=dtype)[:, None] * k
    ok = (labels >= 0) & (labels < k)
    return torch.where(ok, labels + off, -1).reshape(-1)


def rows_and_labels(x_name: str, x: object, l_name: str, lab: object) -> tuple[object, object]:
    """x (..., d) with labels (...) as (M, d) rows and (M,) labels; 2-D x (and anything
    malformed, for the checks that follow to name) passes unchanged."""
    if not (isinstance(x, Tensor) and x.dim() != 2 and x.dim() >= 1):
        return x, lab
    rows, lead = flat_rows(x_name, x)
    if isinstance(lab, Tensor):
        if tuple(lab.shape) != lead:
            raise ValueError(
                f"{l_name} must have shape {lead} ({x_name}.shape[:-1]), got {tuple(lab.shape)}"
            )
        lab = lab.reshape(-1)
    return rows, lab
