"""Test configuration shared by every test file.

Triton runs on CPU tensors only through its interpreter, which must be switched on before
triton is first imported: do it here, before anything imports kmgan_ext, whenever no GPU is
visible (nvidia-smi-free check: torch.cuda.is_available() does not import triton).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import zlib  # noqa: E402

import pytest  # noqa: E402

from testing import DEVICES  # noqa: E402,F401


def _runs_triton(item) -> bool:
    """A test of the Triton kernels: parametrised with backend "triton" (any parameter)."""
    spec = getattr(item, "callspec", None)
    return spec is not None and any(v == "triton" for v in spec.params.values())


@pytest.fixture(autouse=True)
def _emulated_block_order(request):
    """Tests on the CUDA-on-CPU harness (backend cuda_emulated) run under forward, reverse or
    seeded-random block and thread order, a third of them each, chosen by the test's id
    (reproducible; the order and seed are in the test's report). KMGAN_EMU_ORDER pins one
    order for all. tests/test_cuda_emulated.py runs every op under all three."""
    spec = getattr(request.node, "callspec", None)
    if spec is None or not any(v == "cuda_emulated" for v in spec.params.values()):
        yield
        return
    from kmgan_ext import _cuda_emulated

    if _cuda_emulated.why_not() is not None:  # a skipped parameter
        yield
        return
    h = zlib.crc32(request.node.nodeid.encode())
    order = os.environ.get("KMGAN_EMU_ORDER") or _cuda_emulated.ORDERS[h % 3]
    request.node.user_properties.append(("emulated_block_order", f"{order}, seed {h}"))
    _cuda_emulated.configure(order=order, seed=h)
    yield
    _cuda_emulated.configure()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if _runs_triton(item) and "emulated_gpu" not in item.keywords:
            item.add_marker(pytest.mark.emulated_gpu)


@pytest.fixture(autouse=True)
def _triton_emulation(request):
    """Every ``emulated_gpu`` test runs its Triton launches under a hostile schedule + TF32.

    The schedule rotates over forward / reverse / random / interleaved by a hash of the test
    id (tests/triton_emulation.py), so the whole op matrix sees each order somewhere at the
    cost of one run; tests/test_triton_emulation.py runs one case per kernel at the GPU's
    block sizes under every schedule. Only in the interpreter (no GPU): on a GPU the real
    hardware is the schedule. A test module that sets ``MANAGES_EMULATION = True`` chooses
    its own (tests/test_triton_emulation.py).
    """
    if ("emulated_gpu" not in request.node.keywords
            or getattr(request.module, "MANAGES_EMULATION", False)
            or os.environ.get("TRITON_INTERPRET", "0") in ("", "0")):
        yield
        return
    import triton_emulation as em

    if em.incompatible() is not None:
        yield
        return
    nodeid = request.node.nodeid
    with em.emulate(em.schedule_for(nodeid), seed=em.seed_for(nodeid)):
        yield
