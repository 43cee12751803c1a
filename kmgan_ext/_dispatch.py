"""Backends: what is usable here, which one ``backend="auto"`` picks, and the routing.

Nothing here runs at import time beyond defining functions: the C++ extension, triton and
the GPU are looked at lazily, on the first call that needs them (STYLE.md rule 4).

A backend is a module-like object exposing the backend interface (see
``kmgan_ext/reference.py``): ``assign``, ``assign_backward``, ``assign_topk``,
``soft_assign``, ``soft_assign_backward``, ``minibatch_update_``,
``minibatch_step_``, ``ema_update_``, ``center_loss_forward``, ``center_loss_backward``,
``assigned_distance``, ``assigned_distance_backward``, ``pairwise_l1``,
``pairwise_l1_backward``, ``kmgan_losses``, ``kmgan_losses_backward``, each taking
validated, contiguous tensors. ``assign``, ``assign_backward``, ``assign_topk`` and the three
updates take a trailing ``cosine`` flag (metric="cosine"); a backend without a cosine kernel raises
NotImplementedError for it.
"""
from __future__ import annotations

import contextlib
import functools
import os
import types

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda", "cuda_emulated")

# backend="auto" on CUDA tensors. One entry per op; the choice must come from a GPU run of
# bench/ (bench/results/*.json) — see README, "Backends".
# TODO(gpu): no GPU run has been made yet; until one is, auto prefers the CUDA C++ kernels
# (no JIT warm-up) and falls back to triton, then reference.
_AUTO_CUDA_ORDER = ("cuda", "triton", "reference")
# Per-op exceptions to that order. kmgan_losses: the Triton kernel is the fused one (one
# launch forward, one backward at the paper's shape; kernels/kmgan_losses.py), the CUDA
# backend composes the single ops' launchers (~7 launches forward); the fused path is what
# the op exists for (issue 4), so auto prefers it on launch count until bench/ says otherwise.
_AUTO_CUDA_ORDER_BY_OP = {"kmgan_losses": ("triton", "cuda", "reference")}
# On CPU tensors the C++ kernels are the fast path; triton on CPU only runs through the
# (slow) interpreter and is never chosen automatically.
_AUTO_CPU_ORDER = ("cpu", "reference")


@functools.lru_cache(maxsize=None)
def _load_native() -> str | None:
    """Load kmgan_ext._C (registers the C++ kernels); None on success, else why not."""
    try:
        from . import _C  # noqa: F401
    except Exception as e:  # any failure: the package still imports, reference still works
        return f"kmgan_ext._C could not be loaded ({type(e).__name__}: {e}); reinstall with a C++ compiler"
    return None


def native_has_cuda() -> bool:
    """True when the built _C carries CUDA kernels (compiled with nvcc), GPU or not."""
    if _load_native() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("kmgan_ext::assign_native", "CUDA")


def native_has_cpu() -> bool:
    if _load_native() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("kmgan_ext::assign_native", "CPU")


@functools.lru_cache(maxsize=None)
def compiled_cuda_archs() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(SASS archs, PTX archs) the CUDA kernels of _C were built for, e.g. (("80", "90"),
    ("90",)); None when _C has no CUDA kernels or predates the record (kmgan_ext::cuda_archs)."""
    if not native_has_cuda() or not hasattr(torch.ops.kmgan_ext, "cuda_archs"):
        return None
    token = torch.ops.kmgan_ext.cuda_archs()
    parts = token.split("_")
    sass = tuple(p[2:] for p in parts if p.startswith("sm"))
    ptx = tuple(p[3:] for p in parts if p.startswith("ptx"))
    return (sass, ptx) if sass or ptx else None


def _arch_number(arch: str) -> tuple[int, int, bool]:
    """"90" -> (9, 0, False); "90a" -> (9, 0, True) (arch-specific: that exact GPU only)."""
    specific = arch.endswith("a")
    digits = arch.rstrip("a")
    return int(digits[:-1]), int(digits[-1]), specific


def cuda_arch_mismatch(
    capability: tuple[int, int], sass: tuple[str, ...], ptx: tuple[str, ...]
) -> str | None:
    """None when a kernel image of the build runs on a GPU of ``capability`` (major, minor),
    else the reason. SASS for sm_XY runs on X.Y' with Y' >= Y (same major; an "a" arch only on
    X.Y itself); PTX for compute_XY is JIT-compiled by the driver for any GPU >= X.Y."""
    major, minor = capability
    for a in sass:
        m, n, specific = _arch_number(a)
        if m == major and (n == minor if specific else n <= minor):
            return None
    for a in ptx:
        m, n, _ = _arch_number(a)
        if (m, n) <= (major, minor):
            return None
    built = ", ".join([f"sm_{a}" for a in sass] + [f"compute_{a} (PTX)" for a in ptx])
    return (
        f"kmgan_ext._C's CUDA kernels were built for {built}, none of which runs on this GPU "
        f"(sm_{major}{minor}); rebuild with TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" (or add "
        f"+PTX to the newest architecture)"
    )


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401

        from . import kernels  # noqa: F401
    except Exception as e:
        return f"triton is not importable ({type(e).__name__}: {e}); pip install triton"
    return None


def _why_not(backend: str) -> str | None:
    """None when ``backend`` is usable in this process, else the reason (with the fix)."""
    if backend == "reference":
        return None
    if backend == "cpu":
        err = _load_native()
        if err:
            return err
        if not native_has_cpu():
            return "kmgan_ext._C has no CPU kernels (build is incomplete); reinstall"
        return None
    if backend == "cuda":
        err = _load_native()
        if err:
            return err
        if not native_has_cuda():
            return (
                "kmgan_ext._C was built without CUDA kernels (no nvcc or a CPU build of torch at "
                "build time, or KMGAN_EXT_NO_CUDA=1); rebuild with CUDA_HOME set"
            )
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        archs = compiled_cuda_archs()
        if archs is not None:
            return cuda_arch_mismatch(torch.cuda.get_device_capability(), *archs)
        return None
    if backend == "triton":
        err = _load_native()
        if err:
            return f"the ops are registered by kmgan_ext._C, which is missing: {err}"
        err = _triton_import_error()
        if err:
            return err
        if not (torch.cuda.is_available() or _triton_interpret()):
            return (
                "triton needs a CUDA GPU, or TRITON_INTERPRET=1 set before triton is imported "
                "to run its kernels on CPU tensors through the interpreter"
            )
        return None
    if backend == "cuda_emulated":
        # The CUDA C++ kernels on CPU threads: a test harness, loaded by the tests only.
        from . import _cuda_emulated

        return _cuda_emulated.why_not()
    raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to None when usable here, or to the reason it is not."""
    return {b: _why_not(b) for b in BACKENDS}


# (backend, device type, op) -> the resolved name. Availability does not change within a
# process (the extension, triton and the interpreter setting are fixed once loaded), and the
# probes cost ~15 us a call (torch._C queries), as much as a small kernel.
_RESOLVED: dict[tuple[str, str, str | None], str] = {}


# Under torch.compile the answer is a constant of the graph: dynamo calls this eagerly
# instead of tracing the availability probes (torch._C queries, imports) inside it.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str | None = None) -> str:
    """The concrete backend for tensors on ``device``: validated, never a silent fallback.

    ``op`` names the op for its own auto order on CUDA (``_AUTO_CUDA_ORDER_BY_OP``)."""
    key = (backend, device.type, op) if isinstance(backend, str) else None
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _resolve(backend, device, op)
    return name


def _resolve(backend: str, device: torch.device, op: str | None = None) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        if device.type == "cuda":
            order = _AUTO_CUDA_ORDER_BY_OP.get(op, _AUTO_CUDA_ORDER)
        else:
            order = _AUTO_CPU_ORDER
        for b in order:
            if _why_not(b) is None:
                return b
        raise RuntimeError(f"no backend available for {device}: {available_backends()}")
    why = _why_not(backend)  # raises ValueError for unknown names
    if why is not None:
        raise RuntimeError(f"backend {backend!r} is not available: {why}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' runs on CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' runs on CUDA tensors, got tensors on {device}")
    if backend == "cuda_emulated" and device.type != "cpu":
        raise ValueError(f"backend 'cuda_emulated' runs on CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type == "cpu" and not _triton_interpret():
        raise ValueError(
            "backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 before importing triton, "
            "or move the tensors to a GPU"
        )
    return backend


# Backends whose fast paths sum with float atomics (order varies run to run): the center
# updates without deterministic=True, and the centers' gradient of assign/assigned_distance.
_ATOMIC_BACKENDS = ("cuda", "triton", "cuda_emulated")


def deterministic_for(backend: str, deterministic: bool) -> bool:
    """The ``deterministic`` flag a center update passes to ``backend``: True when asked, and
    under torch.use_deterministic_algorithms(True) on a backend whose fast path uses atomics
    (as PyTorch's own ops switch to their deterministic kernels there)."""
    return deterministic or (backend in _ATOMIC_BACKENDS and torch.are_deterministic_algorithms_enabled())


def grad_backend(backend: str, centers_grad: bool) -> str:
    """The backend that computes a backward with a centers' gradient: the float atomics of the
    GPU kernels' segment sum are not deterministic, so under
    torch.use_deterministic_algorithms(True) that backward runs on the reference (float64
    index_add_, which PyTorch makes deterministic in that mode)."""
    if centers_grad and backend in _ATOMIC_BACKENDS and torch.are_deterministic_algorithms_enabled():
        return "reference"
    return backend


_INTERFACE = (
    "assign",
    "assign_backward",
    "assign_topk",
    "soft_assign",
    "soft_assign_backward",
    "minibatch_update_",
    "minibatch_step_",
    "ema_update_",
    "center_loss",
    "center_loss_backward",
    "assigned_distance",
    "assigned_distance_backward",
    "pairwise_l1",
    "pairwise_l1_backward",
    "kmgan_losses",
    "kmgan_losses_backward",
)


@functools.lru_cache(maxsize=None)
def _native_module() -> types.SimpleNamespace:
    """The C++/CUDA kernels as a backend module (torch.ops.kmgan_ext.<op>_native)."""
    _load_native()
    ops = torch.ops.kmgan_ext
    fns = {}
    for name in _INTERFACE:
        native = name[:-1] + "_native_" if name.endswith("_") else name + "_native"
        # An _C built before an op existed lacks it: the other ops must keep working.
        if hasattr(ops, native):
            fns[name] = getattr(ops, native)
    fns["center_loss_forward"] = fns.pop("center_loss")
    return types.SimpleNamespace(**fns)


def implementation(backend: str):
    """The module implementing the backend interface for a resolved backend name."""
    if backend == "reference":
        from . import reference

        return reference
    if backend in ("cpu", "cuda"):
        return _native_module()
    if backend == "triton":
        from . import kernels

        return kernels
    if backend == "cuda_emulated":
        from . import _cuda_emulated

        return _cuda_emulated
    raise ValueError(f"unknown backend {backend!r}")


# What ran, for tests that must prove a backend's own code ran rather than only that its answer
# matches (a backend silently served by the reference passes every answer check). None outside
# recording(): the routing path then pays one global read.
_RECORD: list[tuple[str, str]] | None = None


@contextlib.contextmanager
def recording():
    """Record ``(interface function, implementer(fn))`` for every routed call in the block."""
    global _RECORD
    prev, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = prev


def implementer(fn) -> str:
    """Where ``fn``'s code lives: the qualified name of a torch op (``kmgan_ext::assign_native``,
    whose registered kernels ``torch._C._dispatch_dump`` lists with their source files), else
    the Python module that defines ``fn`` (``kmgan_ext.kernels.assign``, ``kmgan_ext.reference``)."""
    name = getattr(fn, "_qualified_op_name", None) or getattr(getattr(fn, "_schema", None), "name", None)
    if name:
        return name
    return getattr(fn, "__module__", None) or type(fn).__module__


def record(function: str, fn) -> None:
    if _RECORD is not None:
        _RECORD.append((function, implementer(fn)))
