"""The hardware limits a row is compared with (``pct_of_roofline``).

On CPU the float32 GEMM rate and the copy bandwidth are measured on the spot at the start
of the run; on a known GPU they are the vendor's datasheet figures (table below, with the
source); on an unknown GPU they are measured like on CPU. ``pct_of_roofline`` = the time the
bound allows (bytes / bandwidth or flops / peak, whichever is larger) over the measured median.
"""
from __future__ import annotations

import dataclasses
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
