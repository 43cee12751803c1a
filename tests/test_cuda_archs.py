"""The CUDA backend is usable only on GPUs its kernel images run on (issue 11, 3.4).

setup.py builds 8.0;9.0+PTX by default and records the architectures in _C
(kmgan_ext::cuda_archs); available_backends() compares them with the GPU's capability, and
backend="auto" falls back to triton where none runs. Checked here with fake capabilities.
"""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _dispatch

DEFAULT = (("80", "90"), ("90",))  # setup.py's default: sm_80, sm_90 SASS + compute_90 PTX


@pytest.mark.parametrize(
    "capability,runs",
    [((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), True),
     ((10, 0), True), ((12, 0), True),  # through the compute_90 PTX
     ((7, 5), False), ((7, 0), False)],
)
def test_default_build_against_capabilities(capability, runs):
    why = _dispatch.cuda_arch_mismatch(capability, *DEFAULT)
    assert (why is None) == runs, why
    if not runs:
        assert f"sm_{capability[0]}{capability[1]}" in why and "TORCH_CUDA_ARCH_LIST" in why


def test_sass_only_build_refuses_newer_majors():
    sass_only = (("80", "90"), ())  # the old default, without +PTX
    assert _dispatch.cuda_arch_mismatch((9, 0), *sass_only) is None
    for cap in [(10, 0), (12, 0), (7, 5)]:
        assert "none of which runs" in _dispatch.cuda_arch_mismatch(cap, *sass_only)


def test_arch_specific_sass_runs_on_that_gpu_only():
    assert _dispatch.cuda_arch_mismatch((9, 0), ("90a",), ()) is None
    assert _dispatch.cuda_arch_mismatch((9, 1), ("90a",), ()) is not None


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible GPU of a chosen capability and a _C with CUDA kernels of DEFAULT's archs."""
    state = {"capability": (7, 5)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: state["capability"])
    monkeypatch.setattr(_dispatch, "native_has_cuda", lambda: True)
    monkeypatch.setattr(_dispatch, "compiled_cuda_archs", lambda: DEFAULT)
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    yield state
    _dispatch._RESOLVED.clear()


def test_available_backends_names_the_mismatch(fake_gpu):
    fake_gpu["capability"] = (7, 5)
    why = km.available_backends()["cuda"]
    assert why is not None and "sm_75" in why
    with pytest.raises(RuntimeError, match="sm_75"):
        _dispatch.resolve("cuda", torch.device("cuda"), "assign")
    fake_gpu["capability"] = (9, 0)
    assert km.available_backends()["cuda"] is None


def test_auto_falls_back_to_triton_on_an_unsupported_gpu(fake_gpu, monkeypatch):
    monkeypatch.setattr(_dispatch, "_triton_import_error", lambda: None)
    fake_gpu["capability"] = (7, 5)
    assert _dispatch.resolve("auto", torch.device("cuda"), "assign") == "triton"
    _dispatch._RESOLVED.clear()
    fake_gpu["capability"] = (9, 0)
    assert _dispatch.resolve("auto", torch.device("cuda"), "assign") == "cuda"


def test_built_archs_are_recorded():
    if not _dispatch.native_has_cuda():
        pytest.skip("kmgan_ext._C has no CUDA kernels here")
    if not hasattr(torch.ops.kmgan_ext, "cuda_archs"):
        pytest.skip("kmgan_ext._C predates the architecture record: rebuild")
    sass, ptx = _dispatch.compiled_cuda_archs()
    assert sass and all(a[:2].isdigit() for a in sass + ptx)
