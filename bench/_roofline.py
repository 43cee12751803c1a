"""The hardware limits a row is compared with (``pct_of_roofline``).

On CPU the float32 GEMM rate and the copy bandwidth are measured on the spot at the start
of the run; on a known GPU they are the vendor's datasheet figures (table below, with the
source); on an unknown GPU they are measured like on CPU. ``pct_of_roofline`` = the time the
bound allows (bytes / bandwidth or flops / peak, whichever is larger) over the measured median.

The memory bound models the level the data lives in. On CPU, bytes that fit the last-level
cache (32 MB of L3 on the EPYC CI machine) stay there between the timed calls, and are read
at the cache's bandwidth, not DRAM's: a 28 MB array "at 140% of DRAM bandwidth" is no bound
at all. So two copy bandwidths are measured, one of an array far beyond the LLC (DRAM) and
one of an array a quarter of its size (LLC), and a row is held to the level its bytes fit.
GPU timings flush L2 before every call (_timing.py), so HBM is the level there.
"""
from __future__ import annotations

import dataclasses
import glob
import statistics
import time

import torch


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
    bandwidth_gbps: float  # DRAM (CPU) or HBM (GPU)
    gflops: dict  # flop kind ("fp32", "tf32", "bf16") -> GFLOP/s
    source: str
    cache_bytes: int = 0  # last-level cache; 0 where not modelled (GPU)
    cache_gbps: float | None = None  # copy bandwidth of an LLC-resident array
    inner_cache_bytes: int = 0  # the level below the LLC (L2): not modelled

    def bound(self, bytes_: float, flops: float, flop_kind: str) -> tuple[float, str]:
        """(the time in ms the roofline allows, a description of the binding limit); 0 ms
        when no bound is modelled for the case (bytes within L2 and no flops counted)."""
        if bytes_ <= self.inner_cache_bytes:
            # Data within L1/L2: no copy of that size times reliably (per-call overhead
            # dominates), so no memory bound is claimed; only the compute bound, if any.
            peak = self.gflops.get(flop_kind) or self.gflops["fp32"]
            if not flops:
                return 0.0, f"none: {bytes_ / 1e6:.3g} MB fits L2 (memory bound not modelled)"
            return flops / (peak * 1e9) * 1e3, f"compute: {flops / 1e9:.3g} GFLOP at {peak:.4g} GFLOP/s {flop_kind} (data in L2)"
        if self.cache_gbps and bytes_ <= self.cache_bytes:
            bw, level = self.cache_gbps, f"LLC-resident (fits the {self.cache_bytes >> 20} MB last-level cache)"
        else:
            bw, level = self.bandwidth_gbps, "DRAM" if self.cache_bytes else "device memory"
        t_mem = bytes_ / (bw * 1e9) * 1e3
        peak = self.gflops.get(flop_kind) or self.gflops["fp32"]
        t_flop = flops / (peak * 1e9) * 1e3 if flops else 0.0
        if t_flop > t_mem:
            return t_flop, f"compute: {flops / 1e9:.3g} GFLOP at {peak:.4g} GFLOP/s {flop_kind}"
        return t_mem, f"memory, {level}: {bytes_ / 1e6:.3g} MB at {bw:.4g} GB/s"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0 (sysfs), 0 when unknown."""
    return cache_levels()[-1][1] if cache_levels() else 0


def cache_levels() -> list[tuple[int, int]]:
    """[(level, bytes)] of cpu0's data/unified caches (sysfs), by level."""
    out = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{d}/level") as f:
                level = int(f.read())
            with open(f"{d}/size") as f:
                size = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        out[level] = max(out.get(level, 0), int(size.rstrip("KMG")) * mult)
    return sorted(out.items())


def _copy_gbps(device: torch.device, n_bytes: int, reps: int) -> float:
    a = torch.ones(max(1, n_bytes // 4), device=device)
    b = torch.empty_like(a)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        b.copy_(a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / (statistics.median(times[1:]) if reps > 2 else min(times)) / 1e9


def _measure_roofline(device: torch.device, small: bool) -> Roofline:
    """Copy bandwidths (bytes read + written) beyond and within the LLC, and a square
    float32 GEMM, median of runs."""
    levels = cache_levels() if device.type == "cpu" else []
    llc = levels[-1][1] if levels else 0
    inner = levels[-2][1] if len(levels) >= 2 else 0
    # DRAM: 8x the LLC at least (a quarter of the array could still hit it otherwise).
    dram_bytes = max(8 * llc, (64 if small else 256) << 20)
    bw = _copy_gbps(device, dram_bytes, 4 if small else 12)
    cache_gbps = _copy_gbps(device, llc // 4, 10 if small else 50) if llc else None
    n = 512 if small else 2048
    x = torch.randn(n, n, device=device)
    y = torch.randn(n, n, device=device)
    times = []
    for _ in range(4 if small else 6):
        t0 = time.perf_counter()
        torch.mm(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    gf = 2 * n**3 / statistics.median(times[1:]) / 1e9
    what = f"measured on the spot: copy of {dram_bytes >> 20} MB (DRAM, read+write)"
    if llc:
        what += f" and of {llc >> 22} MB (within the {llc >> 20} MB LLC)"
    what += f", sgemm {n}^3"
    return Roofline(bw, {"fp32": gf}, what + (" (tiny run: fewer repetitions)" if small else ""), llc, cache_gbps,
                    inner)  # fmt: skip


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
