"""Package-level contract: imports, backend selection, build, torch.compile."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _dispatch
from testing import backend_params


def test_available_backends_explains_every_missing_one():
    avail = km.available_backends()
    assert set(avail) == {"reference", "cpu", "triton", "cuda", "cuda_emulated"}
    assert avail["reference"] is None
    for name, why in avail.items():
        assert why is None or (isinstance(why, str) and len(why) > 10), name


def test_unknown_backend_is_a_clear_error():
    x, c = torch.randn(3, 2), torch.randn(2, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        km.assign(x, c, backend="fast")
    with pytest.raises(TypeError, match="backend must be a string"):
        km.assign(x, c, backend=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_unavailable_backend_is_an_error_not_a_fallback():
    x, c = torch.randn(3, 2), torch.randn(2, 2)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        km.assign(x, c, backend="cuda")


def test_cpu_backend_rejects_cuda_tensors_and_vice_versa(monkeypatch):
    """The device checks of routing, exercised with or without a GPU (no tensor is needed to
    resolve a backend for a device; availability is stubbed so the device check is reached)."""
    monkeypatch.setattr(_dispatch, "_why_not", lambda b: None)
    with pytest.raises(ValueError, match="backend 'cpu' runs on CPU tensors, got tensors on cuda"):
        _dispatch._resolve("cpu", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend 'cuda' runs on CUDA tensors, got tensors on cpu"):
        _dispatch._resolve("cuda", torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend 'triton' got CPU tensors: set TRITON_INTERPRET=1"):
        _dispatch._resolve("triton", torch.device("cpu"))
    assert _dispatch._resolve("cpu", torch.device("cpu")) == "cpu"
    assert _dispatch._resolve("cuda", torch.device("cuda")) == "cuda"


@pytest.mark.gpu
def test_cpu_backend_rejects_cuda_tensors_on_a_gpu():
    if km.available_backends()["cpu"] is not None:
        pytest.skip(km.available_backends()["cpu"])
    x = torch.randn(3, 2, device="cuda")
    with pytest.raises(ValueError, match="backend 'cpu' runs on CPU tensors"):
        km.assign(x, x[:2], backend="cpu")


def test_auto_picks_the_cpu_kernels_on_cpu_when_built():
    want = "cpu" if km.available_backends()["cpu"] is None else "reference"
    assert _dispatch.resolve("auto", torch.device("cpu")) == want


def test_import_needs_no_triton_faiss_or_gpu():
    """In a fresh interpreter where triton and faiss cannot be imported, kmgan_ext still
    imports, reports why triton is missing, computes with the reference and the C++ kernels,
    and never initialises CUDA."""
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['faiss'] = None\n"
        "import torch, kmgan_ext as km\n"
        "b = km.available_backends()\n"
        "assert b['reference'] is None and 'triton' in b['triton'], b\n"
        "x = torch.randn(5, 3); l, d = km.assign(x, x[:2])\n"
        "assert l[:2].tolist() == [0, 1]\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_import_does_not_touch_the_gpu():
    code = "import torch, kmgan_ext; assert not torch.cuda.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def _nvcc_present() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(home, "bin", "nvcc"))


def test_build_carries_cpu_kernels():
    assert _dispatch.native_has_cpu(), km.available_backends()["cpu"]


@pytest.mark.skipif(
    torch.version.cuda is None or not _nvcc_present() or os.environ.get("KMGAN_EXT_NO_CUDA", "0") != "0",
    reason="a CPU build of torch, no nvcc, or KMGAN_EXT_NO_CUDA set: CUDA kernels are not built",
)
def test_build_carries_cuda_kernels_when_torch_is_a_cuda_build():
    """CI has no GPU, yet its build compiles csrc/cuda with nvcc: the kernels must be in _C."""
    for op in ("assign", "minibatch_update_", "center_loss", "assigned_distance", "pairwise_l1"):
        native = op[:-1] + "_native_" if op.endswith("_") else op + "_native"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"kmgan_ext::{native}", "CUDA"), native


def _all_ops(x, c, buf, counts, backend):
    labels, dist2 = km.assign(x, c, backend=backend)
    pull = km.assigned_distance(x, labels, c, "fro", backend=backend)
    cl = km.kmgan_center_loss(x, labels, c, x * 0.5, labels, c, backend=backend)
    pl = km.pairwise_l1(x, backend=backend) + km.pairwise_l1(x, x * 2, backend=backend)
    # The updates write a separate buffer: c is saved for the backward above.
    km.minibatch_update_(buf, counts, x, labels, backend=backend)
    step_labels = km.minibatch_step_(buf, counts, x, backend=backend)
    size, embed = torch.ones_like(counts, dtype=buf.dtype), buf.detach().clone()
    km.ema_update_(buf, size, embed, x, step_labels, decay=0.9, backend=backend)
    return dist2.sum() + pull + cl + pl


@pytest.mark.parametrize("device,backend", backend_params())
def test_torch_compile_fullgraph_every_op(device, backend):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g).to(device)
    c0 = torch.randn(4, 6, generator=g).to(device)
    c_eager, n_eager = c0.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    c_comp, n_comp = c0.clone(), torch.zeros(4, dtype=torch.int64, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = _all_ops(xe, c0, c_eager, n_eager, backend)
    want.backward()
    compiled = torch.compile(_all_ops, fullgraph=True)
    got = compiled(xc, c0, c_comp, n_comp, backend)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(c_comp, c_eager)
    assert torch.equal(n_comp, n_eager)
