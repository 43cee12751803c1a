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


@pytest.fixture(autouse=True)
def _emulated_block_order(request):
    """Tests on the CUDA-on-CPU harness run under forward, reverse or seeded-random block and
    thread order, a third of them each, chosen by the test's id (reproducible; the order and
    seed are in the test's report on failure). KMGAN_EMU_ORDER pins one order for all."""
    if "emulated_gpu" not in request.keywords:
        yield
        return
    from kmgan_ext import _cuda_emulated

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
