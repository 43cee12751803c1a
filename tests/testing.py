"""The device/dtype/backend matrix of the tests (only lists CUDA when a GPU is present)."""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def backends_for(device: str) -> list[str]:
    """Every backend that runs on ``device`` here, reference included."""
    if device == "cpu":
        names = ["reference", "cpu", "triton"]
    else:
        names = ["reference", "cuda", "triton"]
    return [b for b in names if km.available_backends()[b] is None]


def backend_params() -> list:
    """(device, backend) pairs; a backend missing here is a visible skip, not a silent drop."""
    out = []
    for device in DEVICES:
        names = ["reference", "cpu", "triton"] if device == "cpu" else ["reference", "cuda", "triton"]
        for b in names:
            why = km.available_backends()[b]
            marks = [pytest.mark.skip(reason=f"{b}: {why}")] if why else []
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


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as t in a strided (column-skipping) view."""
    wide = torch.empty(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)
    wide[:, ::2] = t
    out = wide[:, ::2]
    assert not out.is_contiguous() or t.shape[1] <= 1
    return out
