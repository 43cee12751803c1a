"""Timing of one provider and mode (bench/_harness.run_provider calls ``measure``).

* CUDA: CUDA events around each call, the L2 cache flushed (a 256 MB memset) before each,
  as ``triton.testing.do_bench`` does; median, 20th and 80th percentile.
* CPU: ``time.perf_counter`` around each call, after a warm-up call; median, p20, p80.
Gradients are set to None before each timed call, outside the timed region. The peak extra
memory of the first timed call is recorded (CUDA allocator peak; on CPU the process's peak
resident set, /proc VmHWM).
"""
from __future__ import annotations

import dataclasses
import math
import re
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import torch


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


def _budget(ctx: Any) -> tuple[int, float, int]:
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
    ctx: Any,
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
