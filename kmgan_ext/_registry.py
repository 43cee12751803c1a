"""Registration of the public ops with torch.library (schemas are in csrc/kmgan_ext.cpp).

``route(name)`` registers the CPU and CUDA kernel of ``kmgan_ext::<name>``: a thin function
that runs the data-reading checks, makes inputs contiguous and calls the backend named by the
op's last argument. Each op file (assign.py, minibatch_update.py, ...) adds its fake kernel
and autograd next to its public function.

When kmgan_ext._C cannot be loaded (no compiler at install time), the schemas do not exist;
the public functions then call the reference directly (``registered()`` is False) and
``available_backends()`` says why.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import _dispatch


@torch.compiler.assume_constant_result
def registered() -> bool:
    return _dispatch._load_native() is None


def op(name: str):
    return getattr(torch.ops.kmgan_ext, name).default


def contiguous(*ts):
    return tuple(t.contiguous() if isinstance(t, torch.Tensor) else t for t in ts)


def route(
    name: str,
    checks: Callable[..., None] | None = None,
    impl_name: str | None = None,
    mutated: tuple[int, ...] = (),
):
    """Register the CPU/CUDA kernel of kmgan_ext::<name> that routes on ``backend``.

    ``mutated`` lists the positions of arguments written in place: a non-contiguous one is
    worked on as a contiguous copy that is written back, so the caller's tensor is updated.
    """
    impl_name = impl_name or name

    def kernel(*args):
        *tensors, backend = args
        if checks is not None:
            checks(*tensors)
        fn = getattr(_dispatch.implementation(backend), impl_name)
        work = list(contiguous(*tensors))
        out = fn(*work)
        for i in mutated:
            if work[i] is not tensors[i]:
                tensors[i].copy_(work[i])
        return out

    if registered():
        torch.library.register_kernel(f"kmgan_ext::{name}", ("cpu", "cuda"), kernel)
    return kernel
