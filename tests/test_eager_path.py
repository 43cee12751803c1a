"""The eager shortcut of _registry.call against the dispatcher path of torch.ops.kmgan_ext.

In plain eager code km.<op> skips the dispatcher's Python-kernel round trip (and runs its
autograd formula through a torch.autograd.Function); everything else must take the registered
op. Both must give bitwise the same values and gradients.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kmgan_ext as km

from testing import backends_for

BACKENDS = [b for b in backends_for("cpu") if b != "reference"]


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 11, generator=g)
    y = torch.randn(23, 11, generator=g) + 0.5
    c = torch.randn(5, 11, generator=g)
    return x, y, c


def _cases(backend):
    """(name, eager call, dispatcher call) pairs; each returns a scalar to differentiate."""
    ops = torch.ops.kmgan_ext
    x, y, c = _inputs()
    lx, ly = km.assign(x, c, backend="cpu")[0], km.assign(y, c, backend="cpu")[0]
    return [
        ("assign", lambda a, b: km.assign(a, c, backend=backend)[1].sum(),
         lambda a, b: ops.assign(a, c, backend)[1].sum()),
        ("center_loss", lambda a, b: km.kmgan_center_loss(a, lx, c, b, ly, c, backend=backend),
         lambda a, b: ops.center_loss(a, lx, c, b, ly, c, backend)[0]),
        ("assigned_distance", lambda a, b: km.assigned_distance(a, lx, c, "mean", backend=backend),
         lambda a, b: ops.assigned_distance(a, lx, c, "mean", backend)),
        ("pairwise_l1", lambda a, b: km.pairwise_l1(a, b, backend=backend),
         lambda a, b: ops.pairwise_l1(a, b, backend)),
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_path_is_bitwise_the_dispatcher_path(backend):
    x, y, _ = _inputs()
    for name, eager, dispatched in _cases(backend):
        got_x, got_y = x.clone().requires_grad_(), y.clone().requires_grad_()
        want_x, want_y = x.clone().requires_grad_(), y.clone().requires_grad_()
        got, want = eager(got_x, got_y), dispatched(want_x, want_y)
        assert torch.equal(got, want), name
        got.backward()
        want.backward()
        for g, w in ((got_x.grad, want_x.grad), (got_y.grad, want_y.grad)):
            assert (g is None) == (w is None), name
            assert g is None or torch.equal(g, w), name


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatch_modes_see_the_registered_op():
    x, _, c = _inputs()
    with _Recorder() as rec:
        km.assign(x, c, backend="cpu")
    assert "kmgan_ext.assign.default" in rec.seen


def test_in_place_ops_bump_the_version_counter_on_the_eager_path():
    # Autograd relies on it to catch a buffer modified after it was saved for backward.
    x, _, c = _inputs()
    counts = torch.zeros(c.shape[0], dtype=torch.int64)
    before = c._version
    km.minibatch_step_(c, counts, x, backend="cpu")
    assert c._version > before and int(counts.sum()) == x.shape[0]


def test_gradient_through_centers_changed_in_place_is_refused():
    # assign saves the centers for backward; updating them before backward must raise, as
    # for any torch in-place op, on the eager path and on the dispatcher path alike.
    x, _, c = _inputs()
    for call in (lambda a: km.assign(a, c, backend="cpu"), lambda a: torch.ops.kmgan_ext.assign(a, c, "cpu")):
        xg = x.clone().requires_grad_()
        labels, dist2 = call(xg)
        km.minibatch_update_(c, torch.zeros(c.shape[0], dtype=torch.int64), x, labels, backend="cpu")
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            dist2.sum().backward()
