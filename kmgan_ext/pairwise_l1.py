"""km.pairwise_l1: KM-GAN Eq. 7 regularisers in O(N log N d) (docs/ops.md, KM-GAN losses)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _dispatch, _registry, reference


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _data_checks(a, b):
    _checks.finite("a", a)
    if b is not None:
        _checks.finite("b", b)


_registry.route("pairwise_l1", _data_checks)
_registry.route("pairwise_l1_backward")

if _registry.registered():

    @torch.library.register_fake("kmgan_ext::pairwise_l1")
    def _(a, b, backend):
        return a.new_empty((), dtype=_out_dtype(a))

    @torch.library.register_fake("kmgan_ext::pairwise_l1_backward")
    def _(grad, a, b, backend):
        return torch.empty_like(a), (a.new_empty(0) if b is None else torch.empty_like(b))

    def _setup_context(ctx, inputs, output):
        a, b, backend = inputs
        ctx.has_b = b is not None
        ctx.save_for_backward(a, b) if b is not None else ctx.save_for_backward(a)
        ctx.backend = backend

    def _backward(ctx, grad):
        saved = ctx.saved_tensors
        a, b = (saved[0], saved[1]) if ctx.has_b else (saved[0], None)
        ga, gb = _registry.call("pairwise_l1_backward", grad, a, b, ctx.backend)
        need = ctx.needs_input_grad
        return (ga if need[0] else None), (gb if (b is not None and need[1]) else None), None

    _registry.register_autograd("pairwise_l1", _backward, _setup_context)


def pairwise_l1(a: Tensor, b: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """Sum of L1 distances between rows, exact, with gradient (KM-GAN Eq. 7).

    ``b is None``: ``sum_{i != j} ||a_i - a_j||_1`` over ordered pairs (L_intra of a batch).
    Otherwise ``sum_{i, j} ||a_i - b_j||_1`` (L_inter between two batches).

    Per feature this is a sum of absolute differences, which sorting gives in O(N log N):
    ``sum_{i<j} |v_(j) - v_(i)| = sum_j (2j - N + 1) v_(j)`` on the sorted values. The
    gradient of a value is (#values strictly below) - (#strictly above), which equals
    autograd's sign(0) = 0 convention at ties. Returns a 0-d float32 (float64) tensor.
    """
    a = _checks.features("a", a)
    if b is not None:
        b = _checks.features("b", b, dtype=a.dtype, ref="a")
        _checks.same_device("b", b, a, "a")
        if b.shape[1] != a.shape[1]:
            raise ValueError(f"b must have {a.shape[1]} columns (a.shape[1]), got shape {tuple(b.shape)}")
    be = _dispatch.resolve(backend, a.device)
    if not _registry.registered():
        return reference.pairwise_l1(a, b)
    return _registry.call("pairwise_l1", a, b, be)
