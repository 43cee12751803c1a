"""Triton's interpreter made as hostile as a GPU: program order and tensor-core rounding.

Test support only (never imported by the library). Triton's interpreter (``TRITON_INTERPRET=1``)
runs the programs of a launch one after another in grid order and computes ``tl.dot`` exactly
in float32, so a race between programs, a merge that depends on program order, or an
exactness guard that never fires would pass unseen. ``emulate()`` changes both:

* Program order (``schedule``): ``forward`` (the interpreter's own), ``reverse``, ``random``
  (a seeded shuffle of the grid), and ``interleaved``: every program is a coroutine (a
  greenlet) that yields to a seeded random scheduler before each load, store and atomic, so
  programs of one launch see each other's memory half-written, as concurrent CTAs do.
  (Triton has no barrier across programs, so this is every interleaving a GPU may produce at
  the granularity of one memory instruction of a whole block.)
* TF32 (``tf32=True``): ``tl.dot(input_precision="tf32")`` on float32 operands first drops
  both operands to TF32, as the tensor cores do. Which rounding: Triton 3.8 emits no
  conversion before ``mma.sync ... .tf32`` / ``wgmma ... .tf32`` for "tf32" (checked in the
  PTX for sm_80 and sm_90), so the tensor core reads the float32 bit pattern and ignores its
  13 low mantissa bits: truncation toward zero, ``"trunc"`` here (``tf32_rounding="rna"``
  models a ``cvt.rna.tf32.f32`` instead, cuBLAS's choice). ``"tf32x3"`` is lowered by Triton
  with ``cvt.rna.tf32.f32`` (round to nearest, ties away): ``hi = rna(a)``, ``lo = rna(a -
  hi)``, and ``a.b ~ hi.hi' + (hi.lo' + lo.hi')`` (the ``lo.lo'`` term dropped), emulated so.
  Products of TF32 values are exact in float32; the accumulate is float32.

What it does not model: the GPU memory model (weak ordering, caches), FMA contraction and
the exact summation trees of the compiled code, flush-to-zero, speed. See README.

The patches replace ``GridExecutor.__call__`` (same structure in Triton 3.6 and 3.8) and wrap
``InterpreterBuilder``'s memory and dot ops for the duration of the ``with`` block only.
``incompatible()`` says why this Triton cannot be patched (callers skip with that reason).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import random
import zlib
from dataclasses import dataclass, field

import numpy as np

SCHEDULES = ("forward", "reverse", "random", "interleaved")
# The three hostile ones (the interpreter's own order is what CI ran before).
ADVERSARIAL = ("reverse", "random", "interleaved")

_MEMORY_OPS = ("create_load", "create_store", "create_masked_load", "create_masked_store",
               "create_tensor_pointer_load", "create_tensor_pointer_store", "create_atomic_rmw",
               "create_atomic_cas", "create_descriptor_load", "create_descriptor_store",
               "create_descriptor_gather", "create_descriptor_scatter")


@dataclass
class _State:
    schedule: str = "forward"
    seed: int = 0
    tf32: bool = True
    tf32_rounding: str = "trunc"
    launches: int = 0  # launches run under the emulation (tests assert they ran)
    programs: int = 0
    switches: int = 0  # interleaved: yields that handed over to another program
    dots: int = 0  # tl.dot calls whose operands were rounded to TF32
    kernels: set = field(default_factory=set)  # names of the kernels launched
    float_atomics: int = 0  # float atomic adds executed (their result depends on the order)


_STATE: _State | None = None
_SCHEDULER = None  # the greenlet of the running interleaved launch, when there is one


def _interp():
    from triton.runtime import interpreter

    return interpreter


def incompatible() -> str | None:
    """Why the emulation cannot patch this Triton (None when it can)."""
    try:
        import greenlet  # noqa: F401
    except ImportError:
        return "greenlet is not installed (requirements.txt)"
    try:
        interp = _interp()
    except Exception as e:  # noqa: BLE001 - any import failure means: no interpreter here
        return f"triton's interpreter does not import: {e!r}"
    need = [("GridExecutor", "_init_args_hst"), ("GridExecutor", "_restore_args_dev"),
            ("InterpreterBuilder", "create_dot"), ("InterpreterBuilder", "set_grid_idx")]
    missing = [f"{c}.{m}" for c, m in need if not hasattr(getattr(interp, c, None), m)]
    missing += [n for n in ("_patch_lang", "_implicit_cvt", "interpreter_builder",
                            "InterpreterError") if not hasattr(interp, n)]
    if missing:
        import triton

        return f"triton {triton.__version__}'s interpreter lacks {', '.join(missing)}"
    return None


# ------------------------------------------------------------------------------ scheduling
def _yield_point():
    """Called before every memory op: hand control back to the interleaving scheduler."""
    if _SCHEDULER is not None:
        import greenlet

        if greenlet.getcurrent() is not _SCHEDULER:
            _SCHEDULER.switch()


def _run_grid(fn, args, grid):
    interp = _interp()
    st = _STATE
    builder = interp.interpreter_builder
    order = list(itertools.product(range(grid[0]), range(grid[1]), range(grid[2])))
    rng = random.Random(hash((st.seed, st.launches, tuple(grid))) & 0xFFFFFFFF)
    st.launches += 1
    st.programs += len(order)
    if st.schedule == "reverse":
        order.reverse()
    elif st.schedule in ("random", "interleaved"):
        rng.shuffle(order)
    if st.schedule != "interleaved":
        for idx in order:
            builder.set_grid_idx(*idx)
            fn(**args)
        return
    import greenlet

    global _SCHEDULER
    outer = _SCHEDULER
    _SCHEDULER = greenlet.getcurrent()
    try:
        live = [(greenlet.greenlet(lambda: fn(**args)), idx) for idx in order]
        while live:
            i = rng.randrange(len(live))
            g, idx = live[i]
            builder.set_grid_idx(*idx)
            g.switch()  # runs the program to its next memory op (or its end); raises its error
            if g.dead:
                live[i] = live[-1]
                live.pop()
            else:
                st.switches += 1
    finally:
        _SCHEDULER = outer


def _grid_call(self, *args_dev, **kwargs):
    """GridExecutor.__call__ of Triton 3.6/3.8 with the grid loop replaced by ``_run_grid``."""
    import triton

    interp = _interp()
    _STATE.kernels.add(getattr(self.fn, "__name__", "?"))
    argspec = inspect.getfullargspec(self.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}
    args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
    for hook in getattr(self, "pre_run_hooks", ()):
        hook(*args_hst, **kwargs_hst)
    patch_scope = interp._patch_lang(self.fn)
    try:
        args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
        constexprs = getattr(self, "constexprs", ())
        args = {name: arg if name in constexprs else interp._implicit_cvt(arg)
                for name, arg in args.items()}
        grid = self.grid(args) if callable(self.grid) else self.grid
        assert len(grid) <= 3, "grid must have at most 3 dimensions"
        grid = tuple(grid) + (1,) * (3 - len(grid))
        interp.interpreter_builder.set_grid_dim(*grid)
        try:
            _run_grid(self.fn, args, grid)
        except Exception as e:
            knobs = getattr(triton, "knobs", None)
            if knobs is not None and knobs.compilation.front_end_debugging:
                raise
            raise interp.InterpreterError(repr(e)) from e
    finally:
        patch_scope.restore()
    self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)


def _yielding(op):
    def wrapped(self, *a, **k):
        _yield_point()
        if op.__name__ == "create_atomic_rmw" and _STATE is not None:
            rmw_op, val = a[0], a[2]
            if getattr(rmw_op, "name", str(rmw_op)).upper().endswith("FADD") or \
                    np.issubdtype(np.asarray(val.data).dtype, np.floating):
                _STATE.float_atomics += 1
        return op(self, *a, **k)

    wrapped.__name__ = op.__name__
    return wrapped


# ------------------------------------------------------------------------------ TF32
def to_tf32(a: np.ndarray, rounding: str = "trunc") -> np.ndarray:
    """float32 values rounded to TF32 (1 + 8 + 10 bits), kept in float32 storage.

    ``trunc``: the 13 low mantissa bits dropped (what the tensor core does with a raw float32
    operand). ``rna``: round to nearest, ties away from zero (``cvt.rna.tf32.f32``). Inf and
    NaN pass through.
    """
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    if rounding == "rna":
        # Adding half an ulp of TF32 to the magnitude bits rounds ties away; a carry into the
        # exponent is the correct rounding up (to inf past the largest TF32 value).
        bits = np.where(finite, bits + np.uint32(0x1000), bits)
    elif rounding != "trunc":
        raise ValueError(f"tf32_rounding must be 'trunc' or 'rna', got {rounding!r}")
    out = np.where(finite, bits & np.uint32(0xFFFFE000), bits)
    return out.astype(np.uint32).view(np.float32).reshape(np.shape(a))


def _dot(orig):
    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        st = _STATE
        name = getattr(input_precision, "name", str(input_precision)).upper()
        if (st is None or not st.tf32 or name not in ("TF32", "TF32X3")
                or a.data.dtype != np.float32 or b.data.dtype != np.float32
                or d.data.dtype != np.float32):
            return orig(self, a, b, d, input_precision, max_num_imprecise_acc)
        interp = _interp()
        st.dots += 1
        with np.errstate(invalid="ignore", over="ignore"):  # Inf/NaN operands, as on a GPU
            return interp.TensorHandle(_tf32_dot(a.data, b.data, d.data, name, st), d.dtype.scalar)

    create_dot.__name__ = "create_dot"
    return create_dot


def _tf32_dot(a, b, d, name, st):
    """a @ b + d with both operands rounded to TF32 (tf32) or split hi + lo (tf32x3)."""
    f32 = np.float32
    if name == "TF32":
        ah, bh = to_tf32(a, st.tf32_rounding), to_tf32(b, st.tf32_rounding)
        return (np.matmul(ah, bh, dtype=f32) + d).astype(f32)
    ah, bh = to_tf32(a, "rna"), to_tf32(b, "rna")
    al = to_tf32((a - ah).astype(f32), "rna")
    bl = to_tf32((b - bh).astype(f32), "rna")
    small = np.matmul(ah, bl, dtype=f32) + np.matmul(al, bh, dtype=f32)
    return ((np.matmul(ah, bh, dtype=f32) + small) + d).astype(f32)


# ------------------------------------------------------------------------------ the switch
@contextlib.contextmanager
def emulate(schedule: str = "forward", seed: int = 0, tf32: bool = True,
            tf32_rounding: str = "trunc"):
    """Run every interpreted launch inside the block under ``schedule`` (and TF32 rounding).

    Yields the live ``_State`` (counters of launches, programs, switches, TF32 dots). Nested
    use replaces the settings for the inner block.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    why = incompatible()
    if why is not None:
        raise RuntimeError(why)
    global _STATE
    interp = _interp()
    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    outer = _STATE
    _STATE = _State(schedule=schedule, seed=seed, tf32=tf32, tf32_rounding=tf32_rounding)
    try:
        if outer is None:
            patch(interp.GridExecutor, "__call__", _grid_call)
            builder = interp.InterpreterBuilder
            for name in _MEMORY_OPS:
                if name in builder.__dict__:
                    patch(builder, name, _yielding(builder.__dict__[name]))
            patch(builder, "create_dot", _dot(builder.__dict__["create_dot"]))
        yield _STATE
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
        _STATE = outer


def schedule_for(test_id: str) -> str:
    """The schedule a parametrised test runs under: rotated by a stable hash of its id."""
    return SCHEDULES[zlib.crc32(test_id.encode()) % len(SCHEDULES)]


def seed_for(test_id: str) -> int:
    """A stable per-test seed (the same test sees the same shuffles on every run)."""
    return zlib.crc32(test_id.encode()[::-1])


@contextlib.contextmanager
def gpu_launch_params():
    """Inside the block, launches on CPU tensors take the GPU's block sizes, grids and fixed
    autotune configs instead of the interpreter's few large programs."""
    from kmgan_ext.kernels import _common

    saved = _common.GPU_LAUNCH_ON_CPU
    _common.GPU_LAUNCH_ON_CPU = True
    try:
        yield
    finally:
        _common.GPU_LAUNCH_ON_CPU = saved
