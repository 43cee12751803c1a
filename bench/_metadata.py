"""What a benchmark run records about itself: device, versions, commit, date, threads, load;
and the one thread setting every provider runs with (``set_threads``)."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time
from typing import Any

import torch

from kmgan_ext._show_config import _cpu_model as _cpu_name  # the one /proc/cpuinfo reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_metadata(ctx: Any, args: dict, core_scaling_start: dict | None = None) -> dict:
    """The run's record; core_scaling_start measured here unless given (wait_for_cores)."""
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
        "threads": thread_settings(),
        # Other processes on the machine distort CPU timings (OpenMP threads wait for
        # descheduled peers): the 1-minute load average at the start says how quiet it was.
        "load_avg_start": _loadavg(),
        "core_scaling_start": None if ctx.cuda else core_scaling_start or core_scaling(),
    }


def core_scaling(n: int = 1024, reps: int = 5) -> dict | None:
    """sgemm n^3 on one thread and on all of the run's threads, best of reps each.

    Why: on a VM a quiet load average does not mean the cores are there: the host can
    deschedule a vCPU, and every parallel kernel then runs at one core's speed (measured on the
    2-vCPU bench machine: this ratio between 1.09 and 2.5 across six processes a minute
    apart). A ratio well below the thread count says the run's parallel timings are slow for
    that reason."""
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    a, b = torch.randn(n, n), torch.randn(n, n)

    def best() -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        return 2 * n**3 / min(times) / 1e9

    try:
        torch.set_num_threads(1)
        one = best()
    finally:
        torch.set_num_threads(threads)
    every = best()
    return {"threads": threads, "gflops_1": round(one, 1), "gflops_all": round(every, 1),
            "ratio": round(every / one, 2)}


def wait_for_cores(wait_s: float = 60.0, pause_s: float = 5.0, log=None) -> dict | None:
    """core_scaling before a CPU run's first timing, measured again every pause_s seconds
    while the machine does not give the run its cores (ratio below 0.75x the thread count),
    for at most wait_s. Why: on the 2-vCPU bench machine the second vCPU comes and goes at
    the scale of a minute (core_scaling's ratio between 1.09 and 2.5 in processes a minute
    apart), and a run started without it times every parallel kernel at one core's speed.
    The record says how long the run waited ("waited_s"); one that never got its cores
    starts anyway, and results.md flags it."""
    t0 = time.monotonic()
    while True:
        cs = core_scaling()
        if cs is None or cs["ratio"] >= 0.75 * cs["threads"] or time.monotonic() - t0 + pause_s > wait_s:
            break
        if log is not None:
            log(f"bench: sgemm on {cs['threads']} threads only {cs['ratio']}x one thread's: "
                f"waiting {pause_s:g} s for the machine's cores")
        time.sleep(pause_s)
    if cs is not None:
        cs["waited_s"] = round(time.monotonic() - t0, 1)
    return cs


def core_scaling_runs(result: dict) -> list[tuple[str, dict]]:
    """The run's core_scaling records that were taken, as (when, record), "start" first."""
    return [(when, result[f"core_scaling_{when}"]) for when in ("start", "end") if result.get(f"core_scaling_{when}")]


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# The threadpoolctl limiter must stay referenced for its limits to hold for the whole run.
_POOL_LIMITS: list = []


def set_threads(n: int | None) -> dict:
    """One thread count for every provider, recorded by ``thread_settings``: torch's intra-op
    pool, faiss's OpenMP, and every BLAS/OpenMP pool loaded in the process (numpy's and
    scikit-learn's, through threadpoolctl). None: torch's current setting (its default is
    the machine's cores). The libraries are imported first: threadpoolctl limits the pools
    that are loaded when it is called."""
    n = n or torch.get_num_threads()
    torch.set_num_threads(n)
    for mod in ("numpy", "sklearn.cluster", "faiss"):
        try:
            __import__(mod)
        except Exception:  # an absent provider: its rows say so
            pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except Exception:
        pass
    try:
        import threadpoolctl

        _POOL_LIMITS.append(threadpoolctl.threadpool_limits(limits=n))
    except Exception:
        pass
    return thread_settings()


def thread_settings() -> dict:
    """The thread count each provider's runtime reports now."""
    out: dict = {"torch": torch.get_num_threads()}
    try:
        import faiss

        out["faiss_omp"] = faiss.omp_get_max_threads()
    except Exception:
        out["faiss_omp"] = None
    try:
        import threadpoolctl

        out["threadpools"] = [
            f"{p.get('internal_api')} ({os.path.basename(p.get('filepath', ''))}): {p.get('num_threads')}"
            for p in threadpoolctl.threadpool_info()
        ]
    except Exception as e:
        out["threadpools"] = f"threadpoolctl unavailable: {type(e).__name__}"
    return out
