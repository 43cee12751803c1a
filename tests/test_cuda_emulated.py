"""The CUDA C++ kernels on the CPU harness (issue 11, section 1): every op under forward,
reverse and seeded-random block/thread order with several blocks in flight, the backend's
place in dispatch, and the optional ThreadSanitizer run (KMGAN_EMU_TSAN=1).

The op matrix (tests/test_<op>.py) runs on ``cuda_emulated`` too, one order per test; here
every op runs under all three orders, on shapes with several blocks, grid-stride loops and
partial warps, against the float64 reference.
"""
import os
import subprocess

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _cuda_emulated, _dispatch, reference

pytestmark = pytest.mark.emulated_gpu

WHY = km.available_backends()["cuda_emulated"]
needs_harness = pytest.mark.skipif(WHY is not None, reason=f"cuda_emulated: {WHY}")
BE = "cuda_emulated"


@pytest.fixture(params=[("forward", 1), ("reverse", 3), ("random", 3)], ids=lambda p: f"{p[0]}-{p[1]}")
def order(request):
    name, in_flight = request.param
    _cuda_emulated.configure(order=name, seed=1234, in_flight=in_flight, sms=2)
    yield name
    _cuda_emulated.configure()


def _close(got, want, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


@needs_harness
def test_every_op_under_each_block_order(order):
    g = torch.Generator().manual_seed(42)
    n, m, k, d = 333, 150, 70, 45  # 6 assign blocks, 2 center tiles, 2 feature stages
    x = torch.randn(n, d, generator=g)
    y = torch.randn(m, d, generator=g) + 0.3
    c = torch.randn(k, d, generator=g)
    before = _cuda_emulated.launch_count()

    labels, dist2 = km.assign(x, c, backend=BE)
    want_l, want_d = reference.assign(x, c)
    assert torch.equal(labels, want_l)
    _close(dist2, want_d)
    gd = torch.randn(n, generator=g)
    for got, want in zip(_dispatch.implementation(BE).assign_backward(gd, x, c, labels, True),
                         reference.assign_backward(gd, x, c, labels, True)):
        _close(got, want)

    for deterministic in (False, True):
        cc, cnt = c.clone(), torch.arange(k, dtype=torch.int64)
        wc, wn = c.clone(), cnt.clone()
        km.minibatch_update_(cc, cnt, x, labels, deterministic=deterministic, backend=BE)
        reference.minibatch_update_(wc, wn, x, labels)
        _close(cc, wc)
        assert torch.equal(cnt, wn)
        size, embed = torch.rand(k), torch.randn(k, d)
        cc, ws, we, wc = c.clone(), size.clone(), embed.clone(), c.clone()
        km.ema_update_(cc, size, embed, x, labels, decay=0.9, deterministic=deterministic, backend=BE)
        reference.ema_update_(wc, ws, we, x, labels, 0.9, 1e-5)
        _close(size, ws)
        _close(embed, we)
        _close(cc, wc, rtol=1e-4, atol=1e-4)

    ly = reference.assign(y, c)[0]
    for got, want in zip(_dispatch.implementation(BE).center_loss_forward(x, labels, c, y, ly, c),
                         reference.center_loss_forward(x, labels, c, y, ly, c)):
        _close(got, want, rtol=1e-4, atol=1e-4)
    for reduction in ("fro", "mean", "sq_sum"):
        _close(km.assigned_distance(x, labels, c, reduction, backend=BE),
               reference.assigned_distance(x, labels, c, reduction))
        xg = x.clone().requires_grad_()
        km.assigned_distance(xg, labels, c, reduction, backend=BE).backward()
        x64 = x.double().requires_grad_()
        reference.assigned_distance(x64, labels, c, reduction).backward()
        _close(xg.grad, x64.grad)
        t = km.kmgan_losses(x, y, c, c + 0.1, reduction=reduction, backend=BE)
        want = reference.kmgan_losses(x, y, c, c + 0.1, reduction)
        for got, w in zip((t.loss_d, t.loss_g, t.loss_center), want[:3]):
            _close(got, w, rtol=1e-4, atol=1e-3)
        for got, w in zip((t.labels_real, t.labels_fake, t.labels_fake_hat), want[3:6]):
            assert torch.equal(got, w)
    _close(km.pairwise_l1(x, backend=BE), reference.pairwise_l1(x), rtol=1e-5, atol=1e-2)
    _close(km.pairwise_l1(x, y, backend=BE), reference.pairwise_l1(x, y), rtol=1e-5, atol=1e-2)
    for got, want in zip(_dispatch.implementation(BE).pairwise_l1_backward(torch.tensor(0.5), x, y),
                         reference.pairwise_l1_backward(torch.tensor(0.5), x, y)):
        _close(got, want)
    assert _cuda_emulated.launch_count() - before > 30  # the kernels ran, not a fallback


@needs_harness
def test_orders_agree_bitwise_where_the_kernels_are_deterministic():
    """assign and the deterministic updates fix their summation order by the data alone: the
    block order and the blocks in flight must not change a bit."""
    g = torch.Generator().manual_seed(7)
    x, c = torch.randn(300, 40, generator=g), torch.randn(20, 40, generator=g)
    results = []
    for name, in_flight in [("forward", 1), ("reverse", 3), ("random", 4)]:
        _cuda_emulated.configure(order=name, seed=99, in_flight=in_flight)
        labels, dist2 = km.assign(x, c, backend=BE)
        cc, cnt = c.clone(), torch.zeros(20, dtype=torch.int64)
        km.minibatch_update_(cc, cnt, x, labels, deterministic=True, backend=BE)
        results.append((labels, dist2, cc))
    _cuda_emulated.configure()
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


@needs_harness
def test_dispatch_accepts_cpu_tensors_only_and_auto_never_picks_it():
    assert _dispatch.resolve(BE, torch.device("cpu"), "assign") == BE
    with pytest.raises(ValueError, match="CPU tensors"):
        _dispatch._resolve(BE, torch.device("cuda"), "assign")
    assert _dispatch.resolve("auto", torch.device("cpu"), "assign") != BE
    assert "cuda_emulated" in km.BACKENDS


def test_unloaded_harness_is_reported_not_chosen(monkeypatch):
    monkeypatch.setattr(_cuda_emulated, "_lib", None)
    monkeypatch.setattr(_cuda_emulated, "_error", None)
    assert "not loaded" in km.available_backends()["cuda_emulated"]
    with pytest.raises(RuntimeError, match="cuda_emulated"):
        _dispatch._resolve(BE, torch.device("cpu"), "assign")


@pytest.mark.skipif(os.environ.get("KMGAN_EMU_TSAN", "0") in ("", "0"),
                    reason="set KMGAN_EMU_TSAN=1 for the ThreadSanitizer run (minutes)")
def test_thread_sanitizer_finds_no_race():
    """Every launcher on small grids under TSan, three orders, 3 blocks in flight."""
    driver = _cuda_emulated.build(tsan=True).parent / "tsan_driver"
    r = subprocess.run([str(driver), "1"], capture_output=True, text=True, timeout=1800)
    races = r.stderr.count("WARNING: ThreadSanitizer")
    assert r.returncode == 0 and races == 0, f"{races} reports:\n{r.stderr[-6000:]}"
