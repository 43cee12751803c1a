"""``km.show_config()`` / ``python -m kmgan_ext``: what a bug report needs, in one printout.

Versions (kmgan_ext, python, torch, numpy, triton, faiss), what kmgan_ext._C was built with
(CPU / CUDA kernels, the GPU architectures in its CUDA fat binary), each backend and why it is
not usable, the CPU features the C++ kernels use, and the thread settings.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import struct
import sys
from typing import IO

from ._version import __version__

# The CUDA fat binary (.nv_fatbin) in a shared library: a header, then one entry per compiled
# object. Layout as written by nvcc's fatbinary (also read by cuobjdump):
#   header  u32 magic 0xBA55ED50, u16 version (1), u16 header size, u64 size of the entries
#   entry   u16 kind (1 = PTX, 2 = ELF/SASS), u16 -, u32 header size, u64 payload size,
#           ... u32 arch (sm_XY as X*10+Y) at byte 28
_FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_KINDS = {1: "ptx", 2: "sass"}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_version(module: str, dist: str | None = None) -> str:
    """The module's version, "not installed", or the import error (a broken install)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return "not installed"
        return f"import fails ({type(e).__name__}: {e})"
    except Exception as e:  # a broken install must be reported, not crash the report
        return f"import fails ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", None) or _dist_version(dist or module) or "unknown version")


def fatbin_archs(path: str) -> dict[str, list[str]]:
    """{"sass": ["sm_80", ...], "ptx": ["compute_90", ...]} found in the CUDA fat binaries of the library at
    ``path`` (empty lists when it has none)."""
    with open(path, "rb") as f:
        data = f.read()
    found: dict[str, set[int]] = {"sass": set(), "ptx": set()}
    i = data.find(_FATBIN_MAGIC)
    while i != -1 and i + 16 <= len(data):
        _, version, header, size = struct.unpack_from("<IHHQ", data, i)
        end = i + header + size
        if version != 1 or header < 16 or end > len(data):  # these bytes only look like a header
            i = data.find(_FATBIN_MAGIC, i + 4)
            continue
        p = i + header
        while p + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            if entry_header < 32:
                break
            (arch,) = struct.unpack_from("<I", data, p + 28)
            if kind in _FATBIN_KINDS:
                found[_FATBIN_KINDS[kind]].add(arch)
            p += entry_header + payload
        i = data.find(_FATBIN_MAGIC, end)
    return {"sass": [f"sm_{a}" for a in sorted(found["sass"])], "ptx": [f"compute_{a}" for a in sorted(found["ptx"])]}


def _native() -> dict:
    """What kmgan_ext._C is: its file, whether it loads, its kernels and CUDA architectures."""
    from . import _dispatch

    spec = importlib.util.find_spec("kmgan_ext._C")
    out: dict = {"path": spec.origin if spec else None}
    err = _dispatch._load_native()
    out["loaded"] = err is None
    if err:
        out["error"] = err
        return out
    out["cpu_kernels"] = _dispatch.native_has_cpu()
    out["cuda_kernels"] = _dispatch.native_has_cuda()
    if out["cuda_kernels"]:
        # what the build recorded (kmgan_ext::cuda_archs, read by _dispatch), and what the
        # library's fat binary holds: the two agree unless the build was tampered with
        recorded = getattr(_dispatch, "compiled_cuda_archs", lambda: None)()
        if recorded is not None:
            sass, ptx = recorded
            out["cuda_archs (recorded)"] = {"sass": [f"sm_{a}" for a in sass], "ptx": [f"compute_{a}" for a in ptx]}
        else:
            out["cuda_archs (recorded)"] = "unknown (this _C predates the kmgan_ext::cuda_archs record)"
        try:
            archs = fatbin_archs(out["path"])
        except OSError as e:
            archs = {"error": f"{type(e).__name__}: {e}"}
        if archs.get("sass") or archs.get("ptx") or "error" in archs:
            out["cuda_archs (in the binary)"] = archs.get("error") or archs
        else:
            out["cuda_archs (in the binary)"] = "unknown (no CUDA fat binary found in the library)"
    return out


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _switched_off(name: str) -> bool:
    """Whether the environment turns a CPU kernel off, as csrc/cpu/common.h not_switched_off
    reads it (negated): set, not empty, not starting with '0'."""
    value = os.environ.get(name, "")
    return value != "" and not value.startswith("0")


def _cpu() -> dict:
    import torch

    flags = _cpu_flags()
    machine = platform.machine()
    out = {
        "machine": machine,
        "model": _cpu_model(),
        "torch_cpu_capability": _call(lambda: torch.backends.cpu.get_cpu_capability()),
    }
    if flags:
        out["avx2"] = "avx2" in flags
        out["fma"] = "fma" in flags
        out["avx512f"] = "avx512f" in flags
    x86 = machine in ("x86_64", "AMD64")
    # csrc/cpu/assign_avx2.cpp: compiled on x86-64 (function target attributes), used only
    # after a runtime check for both AVX2 and FMA; elsewhere assign uses at::mm and loops.
    if not x86:
        out["assign_avx2_fma_kernel"] = "not built (not x86-64): at::mm and plain loops"
    elif not flags:
        out["assign_avx2_fma_kernel"] = "built; unknown whether used (no /proc/cpuinfo)"
    elif out["avx2"] and out["fma"]:
        out["assign_avx2_fma_kernel"] = "used (this CPU has AVX2 and FMA)"
    else:
        out["assign_avx2_fma_kernel"] = "not used (this CPU lacks AVX2 or FMA): at::mm and plain loops"
    # csrc/cpu/assign_avx512.cpp: the same tile with AVX-512F (the same bits), used where the
    # AVX2 kernel is and the CPU has AVX-512F, unless KMGAN_EXT_CPU_NO_AVX512=1.
    if x86 and flags and out["avx2"] and out["fma"]:
        off = _switched_off("KMGAN_EXT_CPU_NO_AVX512")
        if not out["avx512f"]:
            out["assign_avx512_tile"] = "not used (this CPU lacks AVX-512F)"
        else:
            out["assign_avx512_tile"] = "not used (KMGAN_EXT_CPU_NO_AVX512)" if off else "used (this CPU has AVX-512F)"
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _call(fn):
    try:
        return fn()
    except Exception as e:
        return f"unknown ({type(e).__name__}: {e})"


def _threads() -> dict:
    import torch

    out = {
        "os.cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch.get_num_threads": torch.get_num_threads(),
        "torch.get_num_interop_threads": torch.get_num_interop_threads(),
    }
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            out[var] = os.environ[var]
    if importlib.util.find_spec("faiss") is not None:
        out["faiss.omp_get_max_threads"] = _call(lambda: importlib.import_module("faiss").omp_get_max_threads())
    return out


def _gpus() -> dict:
    import torch

    out: dict = {"torch.cuda.is_available": _call(torch.cuda.is_available)}
    if out["torch.cuda.is_available"] is True:
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            out[f"cuda:{i}"] = f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"
    return out


def report() -> dict:
    """The configuration as a dict (``show_config`` prints it; ``python -m kmgan_ext --json``)."""
    import numpy
    import torch

    from . import _dispatch

    versions = {
        "kmgan_ext": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "numpy": numpy.__version__,
        "triton": _module_version("triton"),
        "faiss": _module_version("faiss", "faiss-cpu"),
    }
    env = {
        k: os.environ[k]
        for k in ("KMGAN_EXT_PROGRESS", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "CUDA_HOME")
        if k in os.environ
    }
    return {
        "versions": versions,
        "platform": platform.platform(),
        "package": os.path.dirname(os.path.abspath(__file__)),
        "native (kmgan_ext._C)": _native(),
        "backends (None = usable)": _dispatch.available_backends(),
        "gpus": _gpus(),
        "cpu": _cpu(),
        "threads": _threads(),
        "environment": env,
    }


def _format(value) -> str:
    if isinstance(value, dict) and set(value) == {"sass", "ptx"}:
        parts = [f"{a} (SASS)" for a in value["sass"]] + [f"{a} (PTX)" for a in value["ptx"]]
        return ", ".join(parts) or "none"
    if value is None:
        return "usable"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return str(value)


def show_config(file: IO | None = None, as_json: bool = False) -> None:
    """Print what a bug report needs: versions, how kmgan_ext._C was built (kernels, CUDA
    architectures), each backend and why not, CPU features the kernels use, thread counts."""
    file = sys.stdout if file is None else file
    rep = report()
    if as_json:
        json.dump(rep, file, indent=2, default=str)
        file.write("\n")
        return
    for section, body in rep.items():
        if not isinstance(body, dict):
            print(f"{section}: {body}", file=file)
            continue
        print(f"{section}:", file=file)
        if not body:
            print("  (none set)", file=file)
        width = max((len(k) for k in body), default=0)
        for key, value in body.items():
            print(f"  {key:<{width}}  {_format(value)}", file=file)
