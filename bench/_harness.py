"""What every bench_<op>.py shares: providers, correctness-then-timing, rows, roofline, output.

One benchmark = one op x one shape x one provider x one mode, measured on the same tensors
as every other provider of that shape, after its answer was checked against
``kmgan_ext.reference``. A row is written for every provider asked for, also when it is
absent (not installed, not built, wrong device), skipped (a stated reason: time budget, a
size it cannot hold) or wrong (``correct`` False, not timed): nothing is dropped silently.

The parts live by job: timing in _timing.py, hardware limits in _roofline.py, the
correctness checks in _correctness.py, run metadata in _metadata.py; their names are
re-exported here, so a benchmark needs ``import _harness as H`` only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import torch

import _correctness
from _correctness import (  # noqa: F401  (re-exported for the benchmarks)
    YARDSTICK_RTOL,
    Lazy,
    all_ok,
    check_faiss_lloyd,
    check_labels,
    check_lloyd,
    check_loss,
    close,
    lloyd,
    loss_and_grads,
    nearest64,
    row_dist64,
    tolerances,
    yardstick_tols,
)
from _metadata import (  # noqa: F401
    _loadavg, _meminfo_kb, core_scaling, core_scaling_runs, device_info, git_commit, run_metadata, set_threads,
    wait_for_cores,
)
from _roofline import GPU_PEAKS, Roofline, roofline_for  # noqa: F401
from _timing import Timing, _clear, measure  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The modes of an op with a backward (see run_provider).
MODES_ALL = ("forward", "backward", "full")

# Every row carries every key (None where it does not apply), in this order.
ROW_KEYS = (
    "op",
    "shape",
    "provider",
    "mode",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "runs",
    "correct",
    "check",
    "baseline",
    "speedup_vs_torch",
    "throughput",
    "throughput_unit",
    "gbps",
    "gflops",
    "pct_of_roofline",
    "roofline",
    "peak_mem_mb",
    "peak_mem_kind",
    "absent",
    "skipped",
    "error",
    "note",
)


class Absent(Exception):
    """The provider does not exist here (not installed, not built, other device)."""


class Skipped(Exception):
    """The provider exists but is deliberately not run for this case (the reason says why)."""


# --------------------------------------------------------------------------- the run context
@dataclasses.dataclass
class Ctx:
    device: torch.device
    quick: bool = False
    tiny: bool = False
    compile: bool = True
    deadline: float | None = None  # time.monotonic() after which cases are skipped
    roof: "Roofline | None" = None
    log: Callable[[str], None] = print

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def size(self, tiny, quick, full, gpu=None):
        """Pick the shape list for this run: tiny (tests), quick (CPU, minutes), full."""
        if self.tiny:
            return tiny
        if self.cuda and gpu is not None:
            return gpu
        return quick if self.quick else full

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def kmgan_backends(ctx: Ctx, shape_index: int = 0) -> list[tuple[str, str | None]]:
    """(backend, why not) for every kmgan_ext backend that can run on the ctx's device.

    Read from ``km.available_backends()`` at run time, so a newly built backend shows up
    without touching the benchmarks. Triton on CPU tensors only runs through its
    interpreter, which is a correctness tool, not a performance path. In a quick run the
    (slow, float64) reference backend is timed on the first shape of each op only; a reason
    starting with "skipped:" makes a skipped row rather than an absent one.
    """
    import kmgan_ext as km

    avail = km.available_backends()
    if ctx.cuda:
        names = [b for b in km.BACKENDS if b != "cpu"]
    else:
        names = [b for b in km.BACKENDS if b != "cuda"]
    out = []
    for b in names:
        why = avail.get(b)
        if b == "triton" and not ctx.cuda:
            why = "interpreter only (TRITON_INTERPRET=1): not a performance path on CPU"
        if b == "reference" and ctx.quick and shape_index > 0:
            why = "skipped: quick run times the reference backend on the first shape only"
        out.append((b, why))
    return out


def compiled(fn: Callable, ctx: Ctx, **kw) -> Callable:
    """torch.compile(fn), or Absent/Skipped with the reason (never a crash)."""
    if not ctx.compile:
        raise Skipped("torch.compile disabled for this run (--no-compile or --tiny)")
    try:
        # Dynamo caches compiled graphs per code object and, past its recompile limit, falls
        # back to eager without a word; a sweep over many shapes must not hit that limit.
        cfg = torch._dynamo.config
        for name in (
            "recompile_limit",
            "cache_size_limit",
            "accumulated_recompile_limit",
            "accumulated_cache_size_limit",
        ):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 512))
        # The "backward" mode re-runs backward on a retained graph; AOTAutograd's donated
        # buffers forbid retain_graph=True, so they are switched off for the benchmarks.
        fcfg = getattr(torch._functorch, "config", None)
        if fcfg is not None and hasattr(fcfg, "donated_buffer"):
            fcfg.donated_buffer = False
        kw.setdefault("dynamic", False)
        return torch.compile(fn, **kw)
    except Exception as e:  # compile is lazy; this only catches a missing/broken dynamo
        raise Absent(f"torch.compile unavailable: {type(e).__name__}: {e}") from e


def skip(reason: str) -> Callable[[], Any]:
    """A provider factory that reports ``reason`` as a skipped row."""

    def make():
        raise Skipped(reason)

    return make


def compile_last(entry: tuple) -> bool:
    """Sort key putting torch-compile (seconds of compiling per shape) after the others, so
    a run short of time budget loses it first: ``providers.sort(key=compile_last)``."""
    return entry[0] == "torch-compile"


def eager(fn: Callable, *args, skip: str | None = None) -> Callable[[], Callable[[], Any]]:
    """A provider factory timing ``fn(*args)`` as written (Skipped with ``skip`` when set)."""

    def make():
        if skip:
            raise Skipped(skip)
        return lambda: fn(*args)

    return make


def compiled_eager(fn: Callable, ctx: Ctx, *args, skip: str | None = None) -> Callable[[], Callable[[], Any]]:
    """A provider factory timing ``torch.compile(fn)(*args)`` (compiled when the provider
    starts, so a skipped or absent row never pays for it)."""

    def make():
        if skip:
            raise Skipped(skip)
        f = compiled(fn, ctx)
        return lambda: f(*args)

    return make


def torch_providers(fn: Callable, ctx: Ctx, *args, skip: str | None = None) -> list[tuple]:
    """The naive provider ``torch`` (fn as written, the usual baseline) and ``torch-compile``."""
    return [
        ("torch", eager(fn, *args, skip=skip), None),
        ("torch-compile", compiled_eager(fn, ctx, *args, skip=skip), None),
    ]


def kmgan_providers(ctx: Ctx, shape_index: int, make_for: Callable[[str], Callable[[], Any]]) -> list[tuple]:
    """(``kmgan_ext-<b>``, factory, why absent) for every backend of ``kmgan_backends``;
    ``make_for(b)`` returns the callable to time for backend b (or raises Skipped)."""
    return [(f"kmgan_ext-{b}", lambda b=b: make_for(b), why) for b, why in kmgan_backends(ctx, shape_index)]


def kmgan_function(name: str, module: str = "kmgan_ext.seeding") -> Callable:
    """``km.<name>`` (else ``<module>.<name>``), or Absent while that part is not built."""
    try:
        import kmgan_ext as km

        fn = getattr(km, name, None)
        if fn is None:
            fn = getattr(__import__(module, fromlist=[name]), name)
    except Exception as e:
        raise Absent(f"not built yet: {module}.{name} ({type(e).__name__}: {e})") from e
    return fn


def optional_import(name: str, pip_name: str | None = None):
    """Import an optional provider's module or raise Absent naming the package."""
    try:
        return __import__(name, fromlist=["_"])
    except Exception as e:
        raise Absent(f"{pip_name or name} not installed ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- rows
@dataclasses.dataclass
class Work:
    """What one call of a mode must move and compute at least, for throughput and roofline."""

    bytes: float
    flops: float = 0.0
    items: float = 0.0
    item_unit: str = "rows"
    flop_kind: str = "fp32"


def empty_row(op: str, shape: dict, provider: str, mode: str) -> dict:
    r = {k: None for k in ROW_KEYS}
    r.update(op=op, shape=dict(shape), provider=provider, mode=mode, correct=False)
    return r


def _fill_timing(row: dict, t: Timing, work: Work | None, ctx: Ctx) -> None:
    row.update(median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, runs=t.runs)
    if work is None:
        return
    s = t.median_ms / 1e3
    if work.items:
        row["throughput"] = work.items / s
        row["throughput_unit"] = f"{work.item_unit}/s"
    row["gbps"] = work.bytes / s / 1e9 if work.bytes else None
    row["gflops"] = work.flops / s / 1e9 if work.flops else None
    if ctx.roof is not None and (work.bytes or work.flops):
        t_roof, what = ctx.roof.bound(work.bytes, work.flops, work.flop_kind)
        row["pct_of_roofline"] = 100.0 * t_roof / t.median_ms if t_roof else None
        row["roofline"] = what


def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    return msg if len(msg) < 400 else msg[:400] + "..."


def run_provider(
    ctx: Ctx,
    op: str,
    shape: dict,
    provider: str,
    make: Callable[[], Callable[[], Any]] | None,
    check: Callable[[Any], tuple[bool, str]],
    work: dict[str, Work] | Work | None = None,
    modes: Sequence[str] = ("forward",),
    leaves: Sequence[torch.Tensor] | None = None,
    absent: str | None = None,
    note: str | None = None,
    time_if_wrong: bool = False,
) -> list[dict]:
    """Rows for one provider on one case: check once, then time each mode.

    ``make()`` returns the callable to time (or raises Absent/Skipped). Without ``leaves``
    the op has no backward: ``fn()`` returns the output, ``check(output)`` judges it, and the
    only mode is "forward". With ``leaves`` (tensors requiring grad), ``fn()`` returns a
    scalar loss; ``check((loss, [leaf.grad ...]))`` judges value and gradients, and the modes
    are "forward" (the loss, recording the graph), "backward" (backward of a retained graph)
    and "full" (both). A provider whose check fails is not timed, unless ``time_if_wrong``
    (for quality bars, such as a clustering's inertia, rather than exact answers): then it is
    timed and stays flagged ``correct`` False.
    """
    rows = [empty_row(op, shape, provider, m) for m in modes]

    def fail_all(**kw):
        for r in rows:
            r.update(kw)
        return rows

    if note:
        for r in rows:
            r["note"] = note
    if absent and absent.startswith("skipped: "):
        return fail_all(skipped=absent[len("skipped: "):])
    if absent:
        return fail_all(absent=absent)
    if ctx.time_left() <= 0:
        return fail_all(skipped="time budget of the run exhausted")
    try:
        fn = make()
    except Absent as e:
        return fail_all(absent=str(e))
    except Skipped as e:
        return fail_all(skipped=str(e))
    except Exception as e:
        return fail_all(error=f"setup failed: {_short(e)}")

    # Correctness first: the first call (also the compile/JIT warm-up) is the one checked.
    t_check = time.perf_counter()
    try:
        if leaves:
            _clear(leaves)
            loss = fn()
            loss.backward()
            ctx.sync()
            out = (loss.detach(), [None if t.grad is None else t.grad.detach().clone() for t in leaves])
        else:
            out = fn()
            ctx.sync()
        t_check = time.perf_counter() - t_check
        _correctness.checking["provider"] = provider  # plain torch's own rows: see YARDSTICKS
        try:
            ok, detail = check(out)
        finally:
            _correctness.checking["provider"] = None
    except Absent as e:
        return fail_all(absent=str(e))
    except Skipped as e:
        return fail_all(skipped=str(e))
    except torch.OutOfMemoryError as e:
        if ctx.cuda:
            torch.cuda.empty_cache()
        return fail_all(error=f"out of memory: {_short(e)}")
    except Exception as e:
        ctx.log(f"    {op} {provider}: {traceback.format_exc(limit=3)}")
        return fail_all(error=f"failed: {_short(e)}")
    for r in rows:
        r.update(correct=bool(ok), check=detail)
    if not ok and not time_if_wrong:
        # A wrong answer is reported, never timed: its time would mean nothing.
        return rows

    for r in rows:
        mode = r["mode"]
        try:
            if not leaves:
                call, grads = fn, None
            elif mode == "forward":
                call, grads = fn, None
            elif mode == "full":

                def call():
                    fn().backward()

                grads = leaves
            elif mode == "backward":
                _clear(leaves)
                held = fn()

                def call(held=held):
                    held.backward(retain_graph=True)

                grads = leaves
            else:
                raise ValueError(f"unknown mode {mode!r}")
            t = measure(call, ctx, grads, warm=t_check > 0.2 and mode != "backward")
            w = work.get(mode) if isinstance(work, dict) else work
            _fill_timing(r, t, w, ctx)
            r["peak_mem_mb"], r["peak_mem_kind"] = t.peak_mem_mb, t.peak_mem_kind
        except torch.OutOfMemoryError as e:
            if ctx.cuda:
                torch.cuda.empty_cache()
            r["error"] = f"out of memory while timing: {_short(e)}"
        except Exception as e:
            r["error"] = f"timing failed: {_short(e)}"
    _clear(leaves)
    return rows


def run_providers(ctx: Ctx, op: str, shape: dict, providers: list[tuple], check, **kw) -> list[dict]:
    """``run_provider`` for each (name, factory, why absent) of one case, torch-compile last
    (``compile_last``); ``kw`` (work, modes, leaves, ...) as run_provider takes them."""
    rows: list[dict] = []
    for name, make, why in sorted(providers, key=compile_last):
        rows += run_provider(ctx, op, shape, name, make, check, absent=why, **kw)
    return rows


def run_cases(
    ctx: Ctx, op: str, shapes: Sequence[dict], case: Callable[[Ctx, int, dict], list[dict]], baseline: str,
    cpu_targets: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """The rows of ``case(ctx, i, shape)`` for each shape (logged as it starts), with
    speedups against the ``baseline`` provider: the ``run(ctx)`` of a one-op benchmark.
    ``cpu_targets(rows)`` notes the op's CPU targets (note_cpu_targets)."""
    rows: list[dict] = []
    for i, shape in enumerate(shapes):
        ctx.log(f"  {op} {shape}")
        rows += case(ctx, i, shape)
    add_speedups(rows, baseline)
    if cpu_targets is not None:
        note_cpu_targets(ctx, rows, cpu_targets)
    return rows


def add_speedups(rows: list[dict], baseline: str | Sequence[str]) -> None:
    """speedup_vs_torch = baseline median / row median, within (op, shape, mode).

    ``baseline`` names the naive provider, or several naive forms of the same computation
    (e.g. torch.cdist and the x @ c.T expansion): then the fastest correct one of each case
    is the baseline, and each row's ``baseline`` names the one its speedup is against."""
    names = (baseline,) if isinstance(baseline, str) else tuple(baseline)
    base: dict = {}
    for r in rows:
        if r["provider"] in names and r["median_ms"] and r["correct"]:
            key = (r["op"], json.dumps(r["shape"], sort_keys=True), r["mode"])
            if key not in base or r["median_ms"] < base[key][0]:
                base[key] = (r["median_ms"], r["provider"])
    for r in rows:
        b = base.get((r["op"], json.dumps(r["shape"], sort_keys=True), r["mode"]))
        r["baseline"] = b[1] if b else " or ".join(names)
        if b and r["median_ms"]:
            r["speedup_vs_torch"] = b[0] / r["median_ms"]


def note_cpu_targets(ctx: Ctx, rows: list[dict], note_targets: Callable[[list[dict]], None]) -> None:
    """``note_targets(rows)`` (an op's note_target calls) where its targets apply: issue 15's
    table is the CPU's at the quick and full sizes, so not on a GPU and not in --tiny."""
    if not ctx.cuda and not ctx.tiny:
        note_targets(rows)


def add_note(row: dict, text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row.get("note") else text


def note_target(
    rows: list[dict], op: str, provider: str, mode: str, where: Callable[[dict], bool], target: str,
    measure: Callable[[dict, list[dict]], tuple[str, bool] | None],
) -> None:
    """A performance target (issue 15's CPU table) in the note of each row of ``op`` by
    ``provider`` in ``mode`` whose shape ``where`` accepts: ``measure(row, rows)`` gives what
    this run measured, as text, and whether it met ``target``; None (or a row not timed) says
    "not timed". Called after add_speedups, so measure may read speedup_vs_torch."""
    for r in rows:
        if r["op"] != op or r["provider"] != provider or r["mode"] != mode or not where(r["shape"]):
            continue
        got = measure(r, rows) if r["median_ms"] else None
        if got is None:
            add_note(r, f"target {target}: not timed")
        else:
            text, met = got
            add_note(r, f"{text} (target {target}: {'met' if met else 'MISSED'})")


def note_full_vs_torch(rows: list[dict], op: str, shape: dict, goal: float) -> None:
    """note_target for "forward + backward >= goal x torch" on the kmgan_ext-cpu rows whose
    shape holds every item of ``shape``."""
    note_target(rows, op, "kmgan_ext-cpu", "full", lambda s: all(s.get(k) == v for k, v in shape.items()),
                f">= {goal:g}x torch", speedup_at_least(goal))


def speedup_at_least(goal: float) -> Callable[[dict, list[dict]], tuple[str, bool] | None]:
    """note_target's measure for "x torch >= goal"."""
    def measure(r: dict, _rows: list[dict]):
        sp = r.get("speedup_vs_torch")
        return None if sp is None else (f"{sp:.2f}x {r['baseline']}", sp >= goal)
    return measure


def skipped_case(op: str, shape: dict, providers: Iterable[str], modes, reason: str) -> list[dict]:
    rows = []
    for p in providers:
        for m in modes:
            r = empty_row(op, shape, p, m)
            r["skipped"] = reason
            rows.append(r)
    return rows


def now() -> float:
    return time.monotonic()


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)
