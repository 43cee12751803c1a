"""The device/dtype/backend matrix of the tests (only lists CUDA when a GPU is present).

On CPU the matrix includes ``cuda_emulated``: the CUDA C++ kernels of csrc/cuda compiled with
g++ and run on CPU threads (kmgan_ext/_cuda_emulated.py), marked ``emulated_gpu`` so that
``pytest -m emulated_gpu`` selects exactly them. The harness is built here, at collection,
from the source tree (cached by a hash of the sources); KMGAN_EMU=0 leaves it out (a visible
skip).
"""
from __future__ import annotations

import os

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _cuda_emulated

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

if os.environ.get("KMGAN_EMU", "1") != "0":
    try:
        _cuda_emulated.load()
    except Exception:  # the reason is in available_backends()["cuda_emulated"]: a visible skip
        pass

# The backends each device's tests run on (reference first).
_NAMES = {"cpu": ["reference", "cpu", "triton", "cuda_emulated"], "cuda": ["reference", "cuda", "triton"]}


def backends_for(device: str) -> list[str]:
    """Every backend that runs on ``device`` here, reference included."""
    # Not the CPU harness: it has its own marked matrix (backend_params).
    names = [b for b in _NAMES[device] if b != "cuda_emulated"]
    return [b for b in names if km.available_backends()[b] is None]


def backend_params() -> list:
    """(device, backend) pairs; a backend missing here is a visible skip, not a silent drop."""
    out = []
    for device in DEVICES:
        for b in _NAMES[device]:
            why = km.available_backends()[b]
            marks = [pytest.mark.skip(reason=f"{b}: {why}")] if why else []
            if b in ("triton", "cuda_emulated"):  # GPU kernel code run without a GPU
                marks.append(pytest.mark.emulated_gpu)
            out.append(pytest.param(device, b, id=f"{device}-{b}", marks=marks))
    return out


def fast_backend_params() -> list:
    """backend_params() without the reference (for comparisons against it)."""
    return [p for p in backend_params() if p.values[1] != "reference"]


def tol(dtype: torch.dtype) -> dict:
    """Tolerances against the float64 reference, per input dtype."""
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
    }[dtype]


def assert_grad_close(got: torch.Tensor, want64: torch.Tensor, dtype: torch.dtype, name: str = "grad") -> None:
    """A gradient of dtype ``dtype`` equals the float64 one up to the dtype's rounding of its
    largest entry (values, not only the dtype: a 16-bit backward can be wrong and well typed)."""
    assert got.dtype == dtype, (name, got.dtype)
    t = tol(dtype)
    scale = 1 + float(want64.abs().max()) if want64.numel() else 1
    torch.testing.assert_close(got.double().cpu(), want64.cpu(), rtol=t["rtol"], atol=t["atol"] * scale, msg=name)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as t in a strided (column-skipping) view."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    out = wide[:, ::2]
    assert not out.is_contiguous() or t.shape[1] <= 1
    return out


def distances64(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 squared distances of the inputs' exact values."""
    from kmgan_ext.reference import squared_distances

    return squared_distances(x, centers)


# A fast kernel computes distances in float32: sum((x - c)^2) carries a relative error of at
# most about (d + 2) * 2**-24 of the distance itself. Labels may differ from the float64
# reference only where the two candidates' exact distances are closer than that.
LABEL_RTOL = 2e-5


def assert_labels_match(x, centers, labels, dist2=None, rtol: float = LABEL_RTOL):
    """labels are the argmin up to float32 rounding; dist2 is the chosen center's distance."""
    ref_labels, _ = __import__("kmgan_ext").reference.assign(x, centers)
    assert labels.dtype == torch.int64 and labels.shape == (x.shape[0],)
    assert labels.device == x.device
    if x.shape[0] == 0:
        return
    labels = labels.cpu()
    assert int(labels.min()) >= 0 and int(labels.max()) < centers.shape[0]
    d = distances64(x.cpu(), centers.cpu())
    rows = torch.arange(x.shape[0])
    chosen, best = d[rows, labels], d[rows, ref_labels.cpu()]
    bad = chosen > best * (1 + rtol) + 1e-30
    assert not bad.any(), (
        f"{int(bad.sum())} rows not at the argmin: chosen {chosen[bad][:5].tolist()} "
        f"vs best {best[bad][:5].tolist()}"
    )
    if dist2 is not None:
        assert dist2.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(
            dist2.cpu().double(), chosen, rtol=rtol, atol=1e-6 * (1 + float(best.mean()))
        )


def cuda_kernel_params() -> list:
    """The backends that run csrc/cuda's kernels here: the CPU harness, and CUDA on a GPU."""
    return [p for p in backend_params() if p.values[1] in ("cuda", "cuda_emulated")]


def run_ranks(worker, out_dir: str, world: int) -> list:
    """Runs ``worker(rank, port, out_dir)`` in ``world`` processes (they join a gloo group on
    127.0.0.1:port) and returns what each saved as ``out_dir/rank{r}.pt``.

    Forked, not spawned: spawned children re-import torch and kmgan_ext, and the first call of
    a torch.library op imports ~900 more modules (measured 39 s for the spawn vs 12 s forked at
    load 8 on 2 cores). The op library is warmed up here so that the forked children inherit
    it. Workers must use CPU tensors only, so nothing of the parent's CUDA or OpenMP state is
    used.
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    km.assign(torch.zeros(2, 3), torch.zeros(1, 3))
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(port, out_dir), nprocs=world, join=True, start_method=method)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
