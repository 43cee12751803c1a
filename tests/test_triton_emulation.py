"""The Triton kernels under hostile program orders and TF32 rounding (tests/triton_emulation.py).

Three parts: the harness does what it claims (orders, interleaving, TF32 rounding); the
exactness guards of assign and of the loss block are really exercised (switched off, they
give wrong labels on near ties under the emulation; on, none); and every kernel runs at
the GPU's launch parameters (block sizes, grids, autotune configs) under the three
adversarial schedules, compared with the float64 reference.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import assert_labels_match

em = pytest.importorskip("triton_emulation")

pytestmark = pytest.mark.emulated_gpu
MANAGES_EMULATION = True  # each test picks its schedules (tests/conftest.py)

if km.available_backends()["triton"] is not None:
    pytest.skip(f"triton: {km.available_backends()['triton']}", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("a GPU is present: the interpreter is not in use", allow_module_level=True)
if (_why := em.incompatible()) is not None:
    pytest.skip(_why, allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

A = importlib.import_module("kmgan_ext.kernels.assign")
L = importlib.import_module("kmgan_ext.kernels.kmgan_losses")
U = importlib.import_module("kmgan_ext.kernels.minibatch_update")


# ------------------------------------------------------------------------------ the harness
@triton.jit
def _ticket_kernel(counter_ptr, order_ptr):
    """Each program takes the next ticket and writes its id there: the execution order."""
    t = tl.atomic_add(counter_ptr, 1)
    tl.store(order_ptr + t, tl.program_id(0))


@triton.jit
def _racy_increment_kernel(p_ptr):
    """A non-atomic read-modify-write: correct only if programs never overlap."""
    v = tl.load(p_ptr)
    tl.store(p_ptr, v + 1)


def _order(schedule, n=16, seed=0):
    counter = torch.zeros(1, dtype=torch.int32)
    order = torch.full((n,), -1, dtype=torch.int32)
    with em.emulate(schedule, seed=seed) as st:
        _ticket_kernel[(n,)](counter, order)
    assert st.launches == 1 and st.programs == n
    return order.tolist(), st


def test_schedules_run_programs_in_the_claimed_order():
    n = 16
    assert _order("forward", n)[0] == list(range(n))
    assert _order("reverse", n)[0] == list(range(n))[::-1]
    shuffled, _ = _order("random", n, seed=1)
    assert sorted(shuffled) == list(range(n)) and shuffled != list(range(n))
    assert shuffled == _order("random", n, seed=1)[0]  # seeded: reproducible
    assert shuffled != _order("random", n, seed=2)[0]
    inter, st = _order("interleaved", n, seed=1)
    assert sorted(inter) == list(range(n)) and st.switches > 0


def test_interleaving_exposes_a_race_between_programs():
    """Programs that each load then store one word lose updates only when interleaved."""
    for schedule, seed in (("forward", 0), ("reverse", 0), ("random", 3)):
        p = torch.zeros(1, dtype=torch.int32)
        with em.emulate(schedule, seed=seed):
            _racy_increment_kernel[(64,)](p)
        assert int(p) == 64, schedule
    p = torch.zeros(1, dtype=torch.int32)
    with em.emulate("interleaved", seed=3):
        _racy_increment_kernel[(64,)](p)
    assert int(p) < 64


def test_patches_are_removed_after_the_block():
    from triton.runtime import interpreter

    call = interpreter.GridExecutor.__call__
    dot = interpreter.InterpreterBuilder.create_dot
    with em.emulate("interleaved"):
        assert interpreter.GridExecutor.__call__ is not call
    assert interpreter.GridExecutor.__call__ is call
    assert interpreter.InterpreterBuilder.create_dot is dot


def test_to_tf32_truncates_and_rounds():
    one_plus = 1.0 + 2.0**-10  # the last TF32 mantissa bit
    vals = torch.tensor([1.0 + 2.0**-12, one_plus + 2.0**-11, -(1.0 + 2.0**-11),
                         3.0e38, float("inf"), float("nan"), 1e-40], dtype=torch.float32)
    t = torch.from_numpy(em.to_tf32(vals.numpy(), "trunc"))
    assert t[:4].tolist() == [1.0, one_plus, -1.0, float(torch.tensor(3.0e38).view(torch.int32)
                                                       .bitwise_and(-8192).view(torch.float32))]
    assert t[4] == float("inf") and t[5].isnan()
    r = torch.from_numpy(em.to_tf32(vals.numpy(), "rna"))
    # ties away from zero: 1 + 2^-11 (half an ulp of TF32) rounds to 1 + 2^-10 in magnitude
    assert r[:3].tolist() == [1.0, 1.0 + 2.0**-9, -one_plus]


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, P: tl.constexpr):
    i = tl.arange(0, 16)
    a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
    b = tl.load(b_ptr + i[:, None] * 16 + i[None, :])
    tl.store(c_ptr + i[:, None] * 16 + i[None, :], tl.dot(a, b, input_precision=P))


def test_dot_operands_are_rounded_to_tf32():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g)
    b = torch.randn(16, 16, generator=g)
    exact = a.double() @ b.double()
    out = {}
    for p in ("tf32", "tf32x3", "ieee"):
        c = torch.empty(16, 16)
        with em.emulate("forward") as st:
            _dot_kernel[(1,)](a, b, c, P=p)
        assert st.dots == (p != "ieee")
        out[p] = (c.double() - exact).abs().max().item()
    trunc = (torch.from_numpy(em.to_tf32(a.numpy())).double()
             @ torch.from_numpy(em.to_tf32(b.numpy())).double())
    c = torch.empty(16, 16)
    with em.emulate("forward"):
        _dot_kernel[(1,)](a, b, c, P="tf32")
    torch.testing.assert_close(c.double(), trunc, rtol=1e-6, atol=1e-6)
    # TF32 loses ~3 decimal digits, 3xTF32 recovers float32's.
    assert out["tf32"] > 1e-3 and out["tf32x3"] < 1e-5 and out["ieee"] < 1e-5
    with em.emulate("forward", tf32=False):
        _dot_kernel[(1,)](a, b, c, P="tf32")
    assert (c.double() - exact).abs().max() < 1e-5  # the interpreter's own dot: exact float32


# ------------------------------------------------------------------------------ the guards
def near_ties(n, d, k, gap, seed=0):
    """Rows almost equidistant from two random centers (relative gap ~ ``gap``)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(k, d, generator=g, dtype=torch.float64) * 3
    a = torch.randint(0, k, (n,), generator=g)
    b = (a + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k
    u = c[b] - c[a]
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    v -= (v * u).sum(1, keepdim=True) / (u * u).sum(1, keepdim=True) * u
    t = gap * (2 * torch.rand(n, 1, generator=g, dtype=torch.float64) - 1)
    return ((c[a] + c[b]) / 2 + 0.3 * v + t * u).float(), c.float()


def _wrong_labels(x, c, monkeypatch, guard, tf32, gpu=False):
    with monkeypatch.context() as m:
        if not guard:  # a zero misordering window: the dot's argmin is taken as is
            m.setattr(A, "_window_constants", lambda d, precision: (0.0, 0.0, 0.0))
        with em.emulate("random", seed=5, tf32=tf32):
            if gpu:
                with em.gpu_launch_params():
                    labels, dist2 = km.assign(x, c, backend="triton")
            else:
                labels, dist2 = km.assign(x, c, backend="triton")
    ref_labels, ref_d2 = reference.assign(x, c)
    if guard:
        torch.testing.assert_close(dist2, ref_d2)
    return int((labels != ref_labels).sum())


@pytest.mark.parametrize("k,gpu", [(48, False), (100, True)], ids=["one-launch", "two-pass-gpu"])
def test_assign_guard_is_exercised_by_tf32(monkeypatch, k, gpu):
    """Near ties at a relative gap of 1e-4: TF32 (2^-10) misorders them, float32 does not.

    With the guard switched off, the emulated tensor cores give wrong labels (a few hundred of
    1,024; exact float32 dots give at most a couple); with the guard on, none.
    """
    x, c = near_ties(1024 if not gpu else 384, 64, k, 1e-4, seed=k)
    off_tf32 = _wrong_labels(x, c, monkeypatch, guard=False, tf32=True, gpu=gpu)
    off_f32 = _wrong_labels(x, c, monkeypatch, guard=False, tf32=False, gpu=gpu)
    assert off_tf32 > 20 * max(1, off_f32), (off_tf32, off_f32)
    assert _wrong_labels(x, c, monkeypatch, guard=True, tf32=True, gpu=gpu) == 0


def test_loss_block_guard_is_exercised(monkeypatch):
    """The loss block assigns from float32 differences (no tensor cores), which the interpreter
    rounds as the GPU does: near ties at 1e-7 get wrong labels without its guard, none with."""
    x, c = near_ties(256, 32, 10, 1e-7, seed=3)
    ff, cf = near_ties(256, 32, 10, 1e-7, seed=4)
    ref_r = reference.assign(x, c)[0]
    ref_h = reference.assign(ff, cf)[0]

    def labels(guard):
        with monkeypatch.context() as m:
            if not guard:
                m.setattr(L, "_guard_args",
                          lambda x, d: dict(tau=0.0, slack=0.0, GUARD=False))
            with em.emulate("interleaved", seed=1):
                out = L.kmgan_losses(x, ff, c, cf, "fro")
        return out[3], out[5]

    lr, lh = labels(False)
    assert int((lr != ref_r).sum()) + int((lh != ref_h).sum()) > 0
    lr, lh = labels(True)
    assert torch.equal(lr, ref_r) and torch.equal(lh, ref_h)
