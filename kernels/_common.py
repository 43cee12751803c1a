"""Helpers shared by the Triton kernels of kmgan_ext.

Block sizes follow one rule: on a GPU, tiles sized for the SM (and autotuned where a kernel
has no side effects); under ``TRITON_INTERPRET=1`` (CPU tensors) few, large program
instances, because the interpreter runs each instance as a sequence of numpy calls and its
cost is dominated by the number of calls, not by their size.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl


def _version(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _interpreter_defect() -> str | None:
    """Why this triton's interpreter cannot run these kernels here, or None.

    Triton before 3.7 turns a scalar kernel argument used as a loop bound into a Python int
    with ``int()`` of a 1-element array, which numpy 2.4 made an error: every kernel with a
    run-time loop bound fails (triton-lang/triton#9171). Compiled kernels are not affected.
    """
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return None
    import numpy as np  # the interpreter's dependency, not the compiled kernels'

    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
        return (f"the interpreter of triton {triton.__version__} (TRITON_INTERPRET=1) cannot run "
                f"kernels with run-time loop bounds under numpy {np.__version__} "
                "(triton-lang/triton#9171): use triton >= 3.7 or numpy < 2.4")
    return None


# Raised at import so that km.available_backends() names the cause instead of every launch
# failing with numpy's "only 0-dimensional arrays can be converted to Python scalars".
if (_why := _interpreter_defect()) is not None:
    raise ImportError(_why)


# Test support: launch with the GPU's block sizes and configs on CPU tensors too, so that the
# interpreter runs the launch geometry a GPU runs (tests/triton_emulation.gpu_launch_params).
# Never set by the library.
GPU_LAUNCH_ON_CPU = False


def interpreting(t: torch.Tensor) -> bool:
    """True when launches take the interpreter's parameters (few, large programs).

    That is: CPU tensors (the Triton interpreter), unless a test asked for the GPU's launch
    parameters (``GPU_LAUNCH_ON_CPU``).
    """
    return t.device.type == "cpu" and not GPU_LAUNCH_ON_CPU


# ---- autotuning (issue 11, 3.6) ----------------------------------------------------------
# triton.autotune benchmarks every config on the first call per key: many launches and host
# syncs, which CUDA-graph capture forbids. So the autotuner runs only on a GPU, outside
# capture, unless switched off; otherwise a launch takes the config the autotuner chose for
# the same key earlier in this process (a warm-up call outside capture), or else the
# kernel's fixed default config.
AUTOTUNE_ENV = "KMGAN_TRITON_AUTOTUNE"
_autotune: bool | None = None


def set_autotune(enabled: bool | None) -> None:
    """Switch Triton autotuning on (True), off (False: fixed configs, no benchmarking, same
    launches every run), or back to the default (None: on, unless the environment variable
    ``KMGAN_TRITON_AUTOTUNE=0``). Capture always uses fixed or warmed-up configs."""
    global _autotune
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune: enabled must be True, False or None, got {enabled!r}")
    _autotune = enabled


def autotune_allowed(t: torch.Tensor) -> bool:
    """May a launch on ``t`` benchmark configs now? (GPU, not capturing, not switched off)."""
    if t.device.type != "cuda":
        return False
    if _autotune is not None and not _autotune:
        return False
    if _autotune is None and os.environ.get(AUTOTUNE_ENV, "1").strip() == "0":
        return False
    return not torch.cuda.is_current_stream_capturing()


def config_kwargs(cfg) -> dict:
    """A triton.Config as launch keyword arguments (meta-parameters, warps, stages)."""
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def device_guard(t: torch.Tensor):
    """Launch on ``t``'s GPU even when another one is current (Triton uses the current device)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise (docs/ops.md)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def out_dtype(t: torch.Tensor) -> torch.dtype:
    """dist2 and losses are float32, float64 for float64 inputs."""
    return acc_dtype(t)


def pow2(n: int, lo: int = 1, hi: int | None = None) -> int:
    """next_power_of_2(n) clamped to [lo, hi]."""
    p = max(lo, triton.next_power_of_2(max(1, int(n))))
    return min(p, hi) if hi is not None else p


def zeros_pair(k: int, d: int, dtype: torch.dtype, device: torch.device):
    """Zeroed (K, d) sums in ``dtype`` and (K,) int32 counts from ONE fill launch.

    Both live in one integer buffer of the sums' width (a zero bit pattern is 0.0), so
    the segmented-sum kernels need a single memset instead of two.
    """
    int_t = torch.int64 if dtype == torch.float64 else torch.int32
    buf = torch.zeros(k * d + (k * 4 + int_t.itemsize - 1) // int_t.itemsize, dtype=int_t, device=device)
    sums = buf[: k * d].view(dtype).view(k, d)
    counts = buf[k * d :].view(torch.int32)[:k]
    return sums, counts


# Correctly rounded square root and division (issue 11, 3.5). On sm_80/sm_90, tl.sqrt of
# float32 compiles to sqrt.approx.ftz.f32 and float32 `/` to div.full.f32: approximate, and
# subnormals flushed to zero (a row at distance < 2^-126 would give 0 where the reference
# gives a unit vector). The interpreter computes both exactly, so only the PTX shows it
# (tests/test_triton_aot.py checks it has none). float64 sqrt and `/` are IEEE already.
@triton.jit
def sqrt_rn(x):
    """sqrt(x) rounded to nearest, no flush to zero (float32 or float64)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def div_rn(a, b):
    """a / b rounded to nearest, no flush to zero (float32 or float64; a may be a constant)."""
    q = a / b
    if q.dtype == tl.float32:
        return tl.div_rn(tl.cast(a, tl.float32), tl.cast(b, tl.float32))
    else:
        return q


# 64-bit offsets (issue 11, 3.7): a row index times D, or lo + hi of a binary search, passes
# 2^31 on inputs a 141 GB GPU holds ((N + M) / 2 * d >= 2^31, N > 2^30); int32 wraps there.
@triton.jit
def row_offset(row, D):
    """row * D as int64 (row: int32 or int64 scalar or tensor)."""
    return row.to(tl.int64) * D


@triton.jit
def midpoint(lo, hi):
    """(lo + hi) // 2 without forming lo + hi (0 <= lo <= hi < 2^31 in int32)."""
    return lo + (hi - lo) // 2


@triton.jit
def cast_for(v, ptr):
    """v (float32/float64) in ptr's element type; 16-bit targets via float32 (Triton's
    interpreter cannot convert float64 to bfloat16 directly: NaN). Double rounding there
    can move a result by one 16-bit ulp in rare ties, within the 16-bit tolerance."""
    ty = ptr.dtype.element_ty
    if ty.primitive_bitwidth == 16:
        return v.to(tl.float32).to(ty)
    else:
        return v.to(ty)


@triton.jit
def finish(total, div, SQRT: tl.constexpr, MUL: tl.constexpr):
    """The last step of a reduction: (sqrt(total) if SQRT else total) * MUL / div."""
    if SQRT:
        total = sqrt_rn(total)
    return div_rn(total * MUL, div)


@triton.jit
def _finalize_sum_kernel(part_ptr, n, out_ptr, div, SQRT: tl.constexpr, MUL: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Sum per-program partials in a fixed order in their dtype, then ``finish``, rounded to
    out's dtype (float64 partials may feed a float32 out)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), part_ptr.dtype.element_ty)
    for p0 in range(0, n, BLOCK):
        acc += tl.load(part_ptr + p0 + offs, mask=p0 + offs < n, other=0.0)
    tl.store(out_ptr, finish(tl.sum(acc, axis=0), div, SQRT, MUL).to(out_ptr.dtype.element_ty))


def finalize_sum(parts: torch.Tensor, out: torch.Tensor, div: int = 1, sqrt: bool = False,
                 mul: float = 1.0) -> None:
    """Reduce per-program partial sums into the 0-d ``out`` (same dtype, or float64 partials
    for a float32 out) deterministically."""
    block = pow2(parts.numel(), 16, 4096 if interpreting(parts) else 1024)
    _finalize_sum_kernel[(1,)](parts, parts.numel(), out, max(1, div), SQRT=sqrt, MUL=mul,
                               BLOCK=block)
