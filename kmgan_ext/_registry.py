"""Registration of the public ops with torch.library (schemas are in csrc/kmgan_ext.cpp).

``route(name)`` registers the CPU and CUDA kernel of ``kmgan_ext::<name>``: a thin function
that runs the data-reading checks, makes inputs contiguous and calls the backend named by the
op's last argument. Each op file (assign.py, minibatch_update.py, ...) adds its fake kernel
and autograd next to its public function.

``call(name, *args)`` runs an op. In plain eager code (real CPU/CUDA tensors, no
torch.compile, no dispatch mode) it calls that routing function directly, through a
torch.autograd.Function built from the same setup_context/backward when a gradient is needed:
the dispatcher's Python-kernel round trip and redispatch cost about 50 us a call, as much as
the whole kernel at the paper's batch of 64 (the N=64 rows of bench/). Everything else (tracing,
fake tensors, vmap, opcheck) goes through torch.ops.kmgan_ext.<name>.

When kmgan_ext._C cannot be loaded (no compiler at install time), the schemas do not exist;
the public functions then call the reference directly (``registered()`` is False) and
``available_backends()`` says why.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _dispatch

_KERNELS: dict[str, Callable] = {}
_FUNCTIONS: dict[str, type] = {}
_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


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
    flags: tuple = (),
    checks_flags: bool = False,
):
    """Register the CPU/CUDA kernel of kmgan_ext::<name> that routes on ``backend``.

    ``mutated`` lists the positions of arguments written in place: a non-contiguous one is
    worked on as a contiguous copy that is written back, so the caller's tensor is updated.
    ``flags`` holds the defaults of the arguments that follow ``backend`` in the schema (the
    ``cosine`` flag of metric="cosine"); they are passed on to the backend after the others
    (tensors among them made contiguous), and to ``checks`` too when ``checks_flags``.
    """
    impl_name = impl_name or name

    n_args = len(op(name)._schema.arguments) if flags and registered() else None

    def kernel(*args):
        extra = ()
        if flags:
            missing = n_args - len(args) if n_args is not None else 0
            if missing > 0:  # left to their schema defaults by a torch.ops call
                args = args + tuple(flags[len(flags) - missing :])
            args, extra = args[: -len(flags)], args[-len(flags) :]
        *tensors, backend = args
        if checks is not None:
            checks(*tensors, *extra) if checks_flags else checks(*tensors)
        fn = getattr(_dispatch.implementation(backend), impl_name)
        if _dispatch._RECORD is not None:  # a test asked which code runs (_dispatch.recording)
            _dispatch.record(impl_name, fn)
        work = list(contiguous(*tensors))
        out = fn(*work, *contiguous(*extra))
        for i in mutated:
            if work[i] is not tensors[i]:
                tensors[i].copy_(work[i])
            # The dispatcher does not bump the version of a C++-schema op's mutated argument;
            # without it, autograd would not notice centers changed after being saved.
            torch.autograd.graph.increment_version(tensors[i])
        return out

    _KERNELS[name] = kernel
    if registered():
        torch.library.register_kernel(f"kmgan_ext::{name}", ("cpu", "cuda"), kernel)
    return kernel


def register_autograd(name: str, backward: Callable, setup_context: Callable) -> None:
    """torch.library.register_autograd for kmgan_ext::<name>, and the same formula as an
    autograd.Function over the routing function for ``call``'s eager path."""
    torch.library.register_autograd(f"kmgan_ext::{name}", backward, setup_context=setup_context)
    kernel = _KERNELS[name]

    # forward(ctx, ...) rather than a separate setup_context: with one, Function.apply binds
    # default arguments through inspect.signature on every call (~50 us).
    def forward(ctx, *args):
        out = kernel(*args)
        setup_context(ctx, args, out)
        return out

    _FUNCTIONS[name] = type(
        f"{name}_function",
        (torch.autograd.Function,),
        dict(forward=staticmethod(forward), backward=staticmethod(backward)),
    )


def _plain_eager(args) -> bool:
    """Real CPU/CUDA tensors in eager mode, where the routing function can run directly."""
    if torch.compiler.is_compiling() or _dispatch_stack_len() or _functorch_active():
        return False
    for a in args:
        if isinstance(a, Tensor) and (type(a) is not Tensor or not (a.is_cuda or a.is_cpu)):
            return False
    return True


def call(name: str, *args):
    """kmgan_ext::<name>(*args), the backend string last (see the module docstring)."""
    if not _plain_eager(args):
        return op(name)(*args)
    fn = _FUNCTIONS.get(name)
    if fn is not None and torch.is_grad_enabled():
        if any(isinstance(a, Tensor) and a.requires_grad for a in args):
            return fn.apply(*args)
    return _KERNELS[name](*args)
