"""Each backend runs its own code for every op, not merely an answer equal to the reference's.

Every other test compares answers: a backend silently served by the reference (a routing
slip such as ``_dispatch.implementation`` returning ``reference`` for "cpu") passes all of
them. Here ``_dispatch.recording()`` lists which function implemented each routed call, and
every function of the backend interface must be implemented by the backend's own code: the
C++ kernel registered from csrc/cpu (csrc/cuda) for "cpu" ("cuda"), a module of
kmgan_ext.kernels for "triton", and never kmgan_ext.reference for any backend but the
reference. Parametrised over testing.backend_params(), so a backend added there is covered.
"""
from __future__ import annotations

import inspect

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _dispatch
from testing import backend_params

# KM-GAN's Eq. 4 (named km.kmgan_center_loss where km.center_loss is its deprecated alias).
CENTER_LOSS = getattr(km, "kmgan_center_loss", None) or km.center_loss

# The interface's names as the routing records them (center_loss's forward is
# center_loss_forward in every backend module).
INTERFACE = {"center_loss_forward" if n == "center_loss" else n for n in _dispatch._INTERFACE}

# What implements a backend's calls: a prefix of implementer(fn). Backends not listed
# (added later) are held to the general rule only: not the reference.
OWN_CODE = {
    "reference": "kmgan_ext.reference",
    "cpu": "kmgan_ext::",
    "cuda": "kmgan_ext::",
    "triton": "kmgan_ext.kernels.",
    "cuda_emulated": "kmgan_ext._cuda_emulated",  # csrc/cuda compiled with g++ (issue 11)
}
# Where a native op's kernel for the backend's device key must have been registered.
NATIVE_SOURCE = {"cpu": ("CPU", "csrc/cpu/"), "cuda": ("CUDA", "csrc/cuda/")}


def _ema_update_(centers, x, labels, backend):
    """km.ema_update_ in either of its signatures (the VQ-VAE state arguments came later)."""
    if "cluster_size" in inspect.signature(km.ema_update_).parameters:
        k, d = centers.shape
        size = torch.zeros(k, dtype=torch.float32, device=x.device)
        embed = torch.zeros(k, d, dtype=torch.float32, device=x.device)
        km.ema_update_(centers, size, embed, x, labels, decay=0.9, backend=backend)
    else:
        km.ema_update_(centers, x, labels, 0.9, backend=backend)


def _every_op(device, backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, generator=g).to(device).requires_grad_()
    y = torch.randn(20, 5, generator=g).to(device).requires_grad_()
    c = torch.randn(4, 5, generator=g).to(device).requires_grad_()
    labels, dist2 = km.assign(x, c, backend=backend)
    pull = km.assigned_distance(x, labels, c, "fro", backend=backend)
    cl = CENTER_LOSS(x, labels, c.detach(), y, labels[:20], c.detach(), backend=backend)
    pl = km.pairwise_l1(x, backend=backend) + km.pairwise_l1(x, y, backend=backend)
    terms = km.kmgan_losses(x, y, c.detach(), c.detach()[:3], backend=backend)
    _, top_dist2 = km.assign(x, c, k=2, backend=backend)
    q = km.soft_assign(x, c, backend=backend)
    (dist2.sum() + pull + cl + pl + terms.loss_d + terms.loss_g + terms.loss_center
     + top_dist2.sum() + (q * q).sum()).backward()
    buf = c.detach().clone()
    counts = torch.zeros(4, dtype=torch.int64, device=device)
    km.minibatch_update_(buf, counts, x.detach(), labels, backend=backend)
    step_labels = km.minibatch_step_(buf, counts, x.detach(), backend=backend)
    _ema_update_(buf, x.detach(), step_labels, backend)


@pytest.mark.parametrize("device,backend", backend_params())
def test_every_op_runs_the_backends_own_code(device, backend):
    with _dispatch.recording() as calls:
        _every_op(device, backend)
    ran = {}
    for function, where in calls:
        ran.setdefault(function, set()).add(where)
    missing = INTERFACE - set(ran)
    assert not missing, f"backend {backend!r}: never routed {sorted(missing)}"
    for function, wheres in sorted(ran.items()):
        for where in wheres:
            if backend != "reference":
                assert not where.startswith("kmgan_ext.reference"), (
                    f"backend {backend!r} ran {function} with the reference ({where})"
                )
            prefix = OWN_CODE.get(backend)
            assert prefix is None or where.startswith(prefix), (backend, function, where)
            if backend in NATIVE_SOURCE:
                key, source = NATIVE_SOURCE[backend]
                kernel = [line for line in torch._C._dispatch_dump(where).splitlines() if line.startswith(key + ":")]
                assert kernel and source in kernel[0], f"{where}'s {key} kernel is not from {source}: {kernel}"


def test_recording_is_off_outside_the_block():
    with _dispatch.recording() as calls:
        km.assign(torch.randn(3, 2), torch.randn(2, 2), backend="reference")
    assert calls == [("assign", "kmgan_ext.reference")]
    assert _dispatch._RECORD is None
    km.assign(torch.randn(3, 2), torch.randn(2, 2), backend="reference")
    assert calls == [("assign", "kmgan_ext.reference")]
