"""Test configuration shared by every test file.

Triton runs on CPU tensors only through its interpreter, which must be switched on before
triton is first imported: do it here, before anything imports kmgan_ext, whenever no GPU is
visible (nvidia-smi-free check: torch.cuda.is_available() does not import triton).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from testing import DEVICES  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
