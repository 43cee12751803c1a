"""What every bench_<op>.py shares: providers, correctness-then-timing, rows, roofline, output.

One benchmark = one op x one shape x one provider x one mode, measured on the same tensors
as every other provider of that shape, after its answer was checked against
``kmgan_ext.reference``. A row is written for every provider asked for, also when it is
absent (not installed, not built, wrong device), skipped (a stated reason: time budget, a
size it cannot hold) or wrong (``correct`` False, not timed): nothing is dropped silently.

Timing (see ``measure``):
* CUDA: CUDA events around each call, the L2 cache flushed (a 256 MB memset) before each,
  as ``triton.testing.do_bench`` does; median, 20th and 80th percentile.
* CPU: ``time.perf_counter`` around each call, after a warm-up call; median, p20, p80.
Gradients are set to None before each timed call, outside the timed region.

Roofline (see ``Roofline``): on CPU the memory bandwidth (a STREAM-like copy) and the float32
GEMM rate are measured on the spot at the start of the run; on a known GPU they are the
vendor's datasheet figures (table below, with the source); on an unknown GPU they are
measured like on CPU. ``pct_of_roofline`` = the time the bound allows (bytes / bandwidth or
flops / peak, whichever is larger) over the measured median.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Sequence

import torch

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


# --------------------------------------------------------------------------- timing
@dataclasses.dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int
    peak_mem_mb: float | None = None
    peak_mem_kind: str = ""


def _quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _clear(grads: Iterable[torch.Tensor] | None) -> None:
    for t in grads or ():
        t.grad = None


def _budget(ctx: Ctx) -> tuple[int, float, int]:
    """(min runs, target seconds of timed calls, max runs) per provider and mode."""
    if ctx.tiny:  # a schema and correctness test, not a measurement
        return 2, 0.0, 2
    if ctx.cuda:  # CUDA-event timings are steady: a quarter second of calls is plenty
        return (3, 0.1, 200) if ctx.quick else (5, 0.25, 1000)
    if ctx.quick:
        return 3, 0.3, 200
    return 5, 1.0, 1000


def _timing(ms: list[float], peak: tuple[float | None, str]) -> Timing:
    return Timing(statistics.median(ms), _quantile(ms, 0.2), _quantile(ms, 0.8), len(ms), *peak)


def measure(
    fn: Callable[[], Any],
    ctx: Ctx,
    grads: Sequence[torch.Tensor] | None = None,
    warm: bool = False,
) -> Timing:
    """Median/p20/p80 of ``fn()`` in ms, and the peak extra memory of the first timed call.

    ``grads`` are set to None before each call, outside the timed region. ``warm``: the
    caller's last call was slow enough (> 0.2 s) to count as the warm-up.
    """
    min_runs, target_s, max_runs = _budget(ctx)
    if ctx.cuda:
        return _measure_cuda(fn, ctx, grads, min_runs, target_s, max_runs)
    # Warm-up: one call (the correctness check already made the first one), more for fast ops.
    t_end = time.perf_counter() + min(0.05, target_s / 4)
    while not (ctx.tiny or warm):
        _clear(grads)
        fn()
        if time.perf_counter() >= t_end:
            break
    times: list[float] = []
    peak: tuple[float | None, str] = (None, "")
    t_start = time.perf_counter()
    while True:
        _clear(grads)
        first = not times
        if first:
            rss = _rss_peak_reset()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if first:
            peak = _rss_peak_read(rss)
        elapsed = time.perf_counter() - t_start
        if len(times) >= max_runs or (len(times) >= min_runs and elapsed >= target_s):
            break
    return _timing([t * 1e3 for t in times], peak)


_L2_FLUSH: dict[torch.device, torch.Tensor] = {}


def _measure_cuda(fn, ctx, grads, min_runs, target_s, max_runs) -> Timing:
    dev = ctx.device
    flush = _L2_FLUSH.setdefault(dev, torch.empty(64 * 1024 * 1024, dtype=torch.int32, device=dev))
    # Warm-up and a first estimate of the time per call.
    t0 = time.perf_counter()
    n_warm = 0
    while n_warm < 2 or time.perf_counter() - t0 < 0.025:
        _clear(grads)
        fn()
        n_warm += 1
        torch.cuda.synchronize(dev)
        if time.perf_counter() - t0 > 2.0:
            break
    per_call = (time.perf_counter() - t0) / n_warm
    n = int(min(max_runs, max(min_runs, target_s / max(per_call, 1e-6))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    _clear(grads)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    for i in range(n):
        _clear(grads)
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(dev)
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return _timing(ms, (peak, "torch.cuda.max_memory_allocated over the timed calls"))


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if not m:
        raise OSError(f"no {field} in /proc/self/status")
    return int(m.group(1))


# tracemalloc does not see torch's allocations; the process's peak resident set does. Writing
# 5 to clear_refs resets VmHWM (Linux >= 4.0). Memory the allocator keeps cached from earlier
# calls is not counted again, so on CPU this is a lower bound for small buffers.
def _rss_peak_reset() -> int | str:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_kb("VmRSS")
    except OSError as e:
        return f"not measured on CPU: /proc peak RSS unavailable ({e})"


def _rss_peak_read(base: int | str) -> tuple[float | None, str]:
    if isinstance(base, str):
        return None, base
    try:
        return max(_vm_kb("VmHWM") - base, 0) / 1024, "peak RSS increase over one call (/proc VmHWM)"
    except OSError as e:
        return None, f"not measured on CPU: {e}"


# --------------------------------------------------------------------------- roofline
# NVIDIA datasheet peaks (dense: half of the "with sparsity" tensor figures). Sources:
# "NVIDIA H100 Tensor Core GPU" datasheet (SXM5, PCIe, NVL columns) and the NVIDIA H200
# product page / datasheet (SXM, NVL columns). Keys are matched against
# torch.cuda.get_device_name(); first match wins, so the specific names come first.
# (name substring, HBM GB/s, FP32 (CUDA cores) TFLOP/s, TF32 tensor TFLOP/s, BF16 tensor TFLOP/s)
GPU_PEAKS = (
    ("H200 NVL", 4800, 60.0, 417.5, 835.5, "NVIDIA H200 datasheet, NVL"),
    ("H200", 4800, 67.0, 494.5, 989.5, "NVIDIA H200 datasheet, SXM"),
    ("H100 NVL", 3900, 60.0, 417.5, 835.5, "NVIDIA H100 datasheet, NVL"),
    ("H100 PCIe", 2000, 51.0, 378.0, 756.0, "NVIDIA H100 datasheet, PCIe"),
    ("H100", 3350, 67.0, 494.5, 989.5, "NVIDIA H100 datasheet, SXM5"),
)


@dataclasses.dataclass
class Roofline:
    bandwidth_gbps: float
    gflops: dict  # flop kind ("fp32", "tf32", "bf16") -> GFLOP/s
    source: str

    def bound(self, bytes_: float, flops: float, flop_kind: str) -> tuple[float, str]:
        """(the time in ms the roofline allows, a description of the binding limit)."""
        t_mem = bytes_ / (self.bandwidth_gbps * 1e9) * 1e3
        peak = self.gflops.get(flop_kind) or self.gflops["fp32"]
        t_flop = flops / (peak * 1e9) * 1e3 if flops else 0.0
        if t_flop > t_mem:
            return t_flop, f"compute: {flops / 1e9:.3g} GFLOP at {peak:.4g} GFLOP/s {flop_kind}"
        return t_mem, f"memory: {bytes_ / 1e6:.3g} MB at {self.bandwidth_gbps:.4g} GB/s"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _measure_roofline(device: torch.device, small: bool) -> Roofline:
    """A STREAM-like copy (bytes read + written) and a square float32 GEMM, median of runs."""
    n_copy = (8 if small else 64) * 2**20  # float32 elements: 32 MB / 256 MB, beyond the caches
    a = torch.ones(n_copy, device=device)
    b = torch.empty_like(a)

    def best_of(fn, reps):
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]) if len(times) > 2 else min(times)

    t_copy = best_of(lambda: b.copy_(a), 6 if small else 12)
    bw = 2 * a.numel() * 4 / t_copy / 1e9
    n = 512 if small else 2048
    x = torch.randn(n, n, device=device)
    y = torch.randn(n, n, device=device)
    t_mm = best_of(lambda: torch.mm(x, y), 4 if small else 6)
    gf = 2 * n**3 / t_mm / 1e9
    what = f"measured on the spot: copy of {n_copy * 4 >> 20} MB (read+write), sgemm {n}^3"
    return Roofline(bw, {"fp32": gf}, what + (" (tiny run: small sizes)" if small else ""))


def roofline_for(device: torch.device, small: bool = False) -> Roofline:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, bw, fp32, tf32, bf16, src in GPU_PEAKS:
            if key in name:
                gf = {"fp32": fp32 * 1e3, "tf32": tf32 * 1e3, "bf16": bf16 * 1e3, "fp16": bf16 * 1e3}
                return Roofline(float(bw), gf, f"{src} (peak figures, not measured)")
        r = _measure_roofline(device, small)
        r.source = f"{name} not in the datasheet table; " + r.source
        return r
    return _measure_roofline(device, small)


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
        row["pct_of_roofline"] = 100.0 * t_roof / t.median_ms
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
        ok, detail = check(out)
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
    ctx: Ctx, op: str, shapes: Sequence[dict], case: Callable[[Ctx, int, dict], list[dict]], baseline: str
) -> list[dict]:
    """The rows of ``case(ctx, i, shape)`` for each shape (logged as it starts), with
    speedups against the ``baseline`` provider: the ``run(ctx)`` of a one-op benchmark."""
    rows: list[dict] = []
    for i, shape in enumerate(shapes):
        ctx.log(f"  {op} {shape}")
        rows += case(ctx, i, shape)
    add_speedups(rows, baseline)
    return rows


def add_speedups(rows: list[dict], baseline: str) -> None:
    """speedup_vs_torch = baseline median / row median, within (op, shape, mode)."""
    base = {}
    for r in rows:
        if r["provider"] == baseline and r["median_ms"] and r["correct"]:
            base[(r["op"], json.dumps(r["shape"], sort_keys=True), r["mode"])] = r["median_ms"]
    for r in rows:
        r["baseline"] = baseline
        b = base.get((r["op"], json.dumps(r["shape"], sort_keys=True), r["mode"]))
        if b and r["median_ms"]:
            r["speedup_vs_torch"] = b / r["median_ms"]


def skipped_case(op: str, shape: dict, providers: Iterable[str], modes, reason: str) -> list[dict]:
    rows = []
    for p in providers:
        for m in modes:
            r = empty_row(op, shape, p, m)
            r["skipped"] = reason
            rows.append(r)
    return rows


# --------------------------------------------------------------------------- checks
class Lazy:
    """A value computed on first use: a case whose rows are all skipped never pays for it."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn, self._done, self._value = fn, False, None

    def __call__(self):
        if not self._done:
            self._value, self._done = self._fn(), True
        return self._value


def close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> tuple[bool, str]:
    """allclose with the worst offender in the message (float64 comparison)."""
    if got is None:
        return False, f"{name}: no value (None)"
    if tuple(got.shape) != tuple(want.shape):
        return False, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g = got.detach().to("cpu", torch.float64)
    w = want.detach().to("cpu", torch.float64)
    if not torch.isfinite(g).all():
        return False, f"{name}: non-finite values"
    err = (g - w).abs()
    allowed = atol + rtol * w.abs()
    if (err <= allowed).all():
        rel = float((err / (w.abs() + atol)).max()) if err.numel() else 0.0
        return True, f"{name} ok (max rel err {rel:.1e})"
    i = int((err - allowed).argmax())
    return False, (
        f"{name}: {int((err > allowed).sum())}/{err.numel()} values off, worst got "
        f"{g.flatten()[i].item():.6g} want {w.flatten()[i].item():.6g} (rtol={rtol}, atol={atol})"
    )


def row_dist64(x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||x_i - c_{labels_i}||^2 in float64 from the differences (exact up to float64)."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    for s in range(0, x.shape[0], step):
        d = x[s : s + step].double() - c.double()[labels[s : s + step]]
        out[s : s + step] = (d * d).sum(1)
    return out


def nearest64(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, their float64 squared distances): the ground truth of every assignment check.

    Small problems use ``kmgan_ext.reference.assign`` itself. Its (rows, K, d) float64
    differences cost minutes at N*K*d ~ 1e10, so larger ones take the float64 argmin of the
    expanded form ||x||^2 - 2 x.c + ||c||^2, whose rounding (~1e-16 of the norms) is eight
    orders below the float32 tolerance the providers are held to; the distances of the
    chosen labels are then recomputed from differences either way.
    """
    from kmgan_ext import reference

    n, k, d = x.shape[0], c.shape[0], x.shape[1]
    if n * k * d <= 2e8:
        labels = reference.assign(x, c)[0]
    else:
        xd, cd = x.double(), c.double()
        cc = (cd * cd).sum(1)
        labels = torch.empty(n, dtype=torch.int64, device=x.device)
        step = max(1, (1 << 26) // max(1, k))
        for s in range(0, n, step):
            xs = xd[s : s + step]
            dist = (xs * xs).sum(1, keepdim=True) - 2.0 * xs @ cd.T + cc
            labels[s : s + step] = dist.argmin(1)
    return labels, row_dist64(x, c, labels)


def check_labels(
    x: torch.Tensor,
    c: torch.Tensor,
    truth: tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    dist2: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Labels equal to the truth except near-ties; dist2 (when given) the chosen distance.

    A float32 kernel may pick another center only when the two exact distances are closer
    than float32 can tell apart: about d * 2^-24 relative for the difference form and
    about 2^-24 (|x|^2 + |c|^2) for the expanded GEMM form (FAISS, cuBLAS, torch matmul).
    The allowance is 3e-5 of the distance plus 1e-6 of |x_i|^2 + |c|^2.
    """
    ref_labels, best = truth
    n, k = x.shape[0], c.shape[0]
    if labels is None or tuple(labels.shape) != (n,):
        return False, f"labels shape {None if labels is None else tuple(labels.shape)} != ({n},)"
    labels = labels.to(x.device, torch.int64)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        return False, "labels out of [0, K)"
    chosen = row_dist64(x, c, labels)
    xx = row_dist64(x, torch.zeros_like(c[:1]), torch.zeros_like(labels))
    cc = (c.double() ** 2).sum(1)
    scale = xx + torch.maximum(cc[labels], cc[ref_labels])
    allow = 3e-5 * best + 1e-6 * scale
    bad = chosen - best > allow
    differ = int((labels != ref_labels).sum())
    if bad.any():
        i = int(bad.nonzero()[0])
        return False, (
            f"{int(bad.sum())}/{n} labels not the argmin beyond float32 near-ties (row {i}: "
            f"chosen {chosen[i].item():.8g} vs best {best[i].item():.8g})"
        )
    msg = f"labels = reference ({differ} near-ties differ)"
    if dist2 is not None:
        if tuple(dist2.shape) != (n,):
            return False, f"dist2 shape {tuple(dist2.shape)} != ({n},)"
        d2 = dist2.to(x.device, torch.float64)
        err = (d2 - chosen).abs()
        tol = 1e-4 * chosen + 1e-6 * scale + 1e-6
        if not torch.isfinite(d2).all() or (err > tol).any():
            i = int((err - tol).argmax())
            return False, msg + f"; dist2 off at row {i}: {d2[i].item():.8g} vs {chosen[i].item():.8g}"
        msg += "; dist2 ok"
    return True, msg


def loss_and_grads(fn: Callable[..., torch.Tensor], leaves: Sequence[torch.Tensor]):
    """fn(*copies of leaves) and the gradients of its value w.r.t. those copies."""
    copies = [t.detach().clone().requires_grad_() for t in leaves]
    loss = fn(*copies)
    loss.backward()
    return loss.detach(), [c.grad for c in copies]


def tolerances(plain, want, floors: Sequence[float]) -> list[float]:
    """Absolute tolerances for (value, grad...): twice plain float32 torch's own error
    against the float64 truth, or the floor when larger (flash-attention's rule; DESIGN.md:
    never less exact than what the user would write). ``plain`` None: the floors."""
    if plain is None:
        return list(floors)
    (pl, pg), (wl, wg) = plain, want
    errs = [(pl.double() - wl.double()).abs().max()]
    errs += [(g.double() - w.double()).abs().max() for g, w in zip(pg, wg)]
    return [max(f, 2.0 * float(e)) for f, e in zip(floors, errs)]


def check_loss(out, want, tols: Sequence[float], names: Sequence[str]) -> tuple[bool, str]:
    """Value and gradients within ``tols`` (absolute, see ``tolerances``) of the truth."""
    (loss, grads), (wl, wg) = out, want
    got = [loss] + list(grads)
    exp = [wl] + list(wg)
    return all_ok(*(close(nm, g, w, rtol=0.0, atol=t) for nm, g, w, t in zip(names, got, exp, tols)))


def all_ok(*results: tuple[bool, str]) -> tuple[bool, str]:
    return all(r[0] for r in results), "; ".join(r[1] for r in results)


# --------------------------------------------------------------------------- run metadata
def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
    except Exception:
        return None


def git_commit() -> str:
    head = _git("rev-parse", "HEAD")
    if head is None:
        return "unknown (no git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if dirty else "")


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "multiprocessors": p.multi_processor_count,
            "memory_gb": round(p.total_memory / 1e9, 1),
            "cuda": torch.version.cuda,
            "host_cpu": _cpu_name(),
        }
    mem_gb = None
    try:
        mem_gb = round(_meminfo_kb("MemTotal") / 1e6, 1)
    except OSError:
        pass
    return {
        "type": "cpu",
        "name": f"{_cpu_name()} ({os.cpu_count()} cores)",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "machine": platform.machine(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if not m:
        raise OSError(field)
    return int(m.group(1))


def _version(mod: str) -> str | None:
    try:
        return getattr(__import__(mod), "__version__", "unknown")
    except Exception:
        return None


def run_metadata(ctx: Ctx, args: dict) -> dict:
    import kmgan_ext as km

    return {
        "device": device_info(ctx.device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "faiss": _version("faiss"),
        "sklearn": _version("sklearn"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "kmgan_ext": km.__version__,
        "available_backends": km.available_backends(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": args,
        "timing": (
            "CUDA events per call, L2 flushed before each; median, p20, p80"
            if ctx.cuda
            else "time.perf_counter per call after warm-up; median, p20, p80"
        ),
        "roofline": ctx.roof.as_dict() if ctx.roof else None,
        # Other processes on the machine distort CPU timings (OpenMP threads wait for
        # descheduled peers): the 1-minute load average at the start says how quiet it was.
        "load_avg_start": _loadavg(),
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def now() -> float:
    return time.monotonic()


def eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)
