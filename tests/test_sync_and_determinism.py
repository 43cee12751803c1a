"""Issue 11 section 3, items 1 and 9: label/count validation without a host sync on CUDA, and
torch.use_deterministic_algorithms(True) reaching the backends that sum with float atomics."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _checks, _dispatch, reference
from testing import backend_params


def _update_args():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, generator=g), torch.zeros(4, dtype=torch.int64),
            torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 3, 0, 1]))


@pytest.fixture
def device_side_checks(monkeypatch):
    """Makes the checks take their CUDA (device-side) path on CPU tensors, and fails the test
    if that path reads a value back to the host (aminmax + int()/item())."""
    monkeypatch.setattr(_checks, "_host_checkable", lambda t: False)
    calls = []
    real_assert = torch._assert_async
    monkeypatch.setattr(torch, "_assert_async", lambda *a: (calls.append(a[1:]), real_assert(*a))[1])

    def no_host_read(*a, **k):
        raise AssertionError("the device path read values back to the host")

    monkeypatch.setattr(torch, "aminmax", no_host_read)
    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__int__", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)
    return calls


def test_cpu_label_check_keeps_its_clear_message():
    c, n, x, lab = _update_args()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\) \(K\), found values in \[1, 7\]"):
        km.minibatch_update_(c, n, x, lab * 2 + 1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\) \(K\), found values in \[-1, 2\]"):
        _checks.label_range("labels", lab - 1, 4)


def test_device_path_checks_labels_and_counts_without_reading_them(device_side_checks):
    c, n, x, lab = _update_args()
    _checks.label_range("labels", lab, 4)
    _checks.counts_range("counts", n, 6)
    assert [m[0] for m in device_side_checks] == ["labels must lie in [0, 4) (K)",
                                                  "counts must be non-negative and below 2**63 - 6 (rows of x)"]
    # The assert itself fires (on a GPU: at the next sync; on CPU tensors: at once).
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 4\)"):
        _checks.label_range("labels", lab + 3, 4)
    with pytest.raises(RuntimeError, match="counts must be non-negative"):
        _checks.counts_range("counts", n - 1, 6)


def test_every_label_taking_op_uses_the_device_path(device_side_checks):
    c, n, x, lab = _update_args()
    km.minibatch_update_(c, n, x, lab, backend="reference")
    km.assigned_distance(x, lab, c, backend="reference")
    km.center_loss(x, lab, c, x, lab, c, backend="reference")
    km.ema_update_(c, torch.ones(4), c.clone(), x, lab, backend="reference")
    msgs = [m[0] for m in device_side_checks]
    for name in ("labels", "labels_real", "labels_fake", "counts"):
        assert any(m.startswith(f"{name} must") for m in msgs), name


@pytest.mark.gpu
def test_cuda_ops_do_not_sync_the_host():
    c, n, x, lab = (t.cuda() for t in _update_args())
    km.minibatch_update_(c, n, x, lab)  # warm-up (lazy loading may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        km.minibatch_update_(c, n, x, lab)
        km.assigned_distance(x, lab, c)
        km.center_loss(x, lab, c, x, lab, c)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.fixture
def deterministic_mode():
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def test_flags_without_deterministic_mode():
    assert not torch.are_deterministic_algorithms_enabled()
    for be in ("cuda", "triton", "cpu", "reference"):
        assert _dispatch.deterministic_for(be, False) is False
        assert _dispatch.deterministic_for(be, True) is True
        assert _dispatch.grad_backend(be, True) == be


def test_flags_under_deterministic_mode(deterministic_mode):
    assert _dispatch.deterministic_for("cuda", False) and _dispatch.deterministic_for("triton", False)
    assert not _dispatch.deterministic_for("cpu", False)  # deterministic whatever the flag
    assert _dispatch.grad_backend("cuda", True) == "reference"
    assert _dispatch.grad_backend("triton", True) == "reference"
    assert _dispatch.grad_backend("cuda", False) == "cuda"  # no centers' gradient: no atomics
    assert _dispatch.grad_backend("cpu", True) == "cpu"


def _triton_or_skip():
    why = km.available_backends()["triton"]
    if why:
        pytest.skip(f"triton: {why}")
    from kmgan_ext import kernels

    return kernels


def test_update_flag_reaches_the_atomic_backend(deterministic_mode, monkeypatch):
    kernels = _triton_or_skip()
    seen = []
    real = kernels.minibatch_update_

    def spy(centers, counts, x, labels, deterministic, *rest):  # rest: the trailing cosine flag
        seen.append(deterministic)
        return real(centers, counts, x, labels, deterministic, *rest)

    monkeypatch.setattr(kernels, "minibatch_update_", spy)
    c, n, x, lab = _update_args()
    km.minibatch_update_(c, n, x, lab, backend="triton")
    assert seen == [True]


def test_center_gradient_backward_leaves_the_atomic_backend(deterministic_mode, monkeypatch):
    _triton_or_skip()
    seen = []
    real_a, real_d = reference.assign_backward, reference.assigned_distance_backward
    monkeypatch.setattr(reference, "assign_backward", lambda *a: (seen.append("assign"), real_a(*a))[1])
    monkeypatch.setattr(reference, "assigned_distance_backward",
                        lambda *a: (seen.append("assigned_distance"), real_d(*a))[1])
    c, _, x, lab = _update_args()
    c = c.requires_grad_()
    km.assign(x, c, backend="triton")[1].sum().backward()
    km.assigned_distance(x, lab, c, backend="triton").backward()
    assert seen == ["assign", "assigned_distance"]
    seen.clear()
    xg = x.clone().requires_grad_()  # no centers' gradient: the backend's own kernel
    km.assign(xg, c.detach(), backend="triton")[1].sum().backward()
    assert seen == []


@pytest.mark.parametrize("device,backend", backend_params())
def test_results_under_deterministic_mode_match_the_reference(device, backend, deterministic_mode):
    c, n, x, lab = (t.to(device) for t in _update_args())
    want_c, want_n = c.cpu().clone(), n.cpu().clone()
    reference.minibatch_update_(want_c, want_n, x.cpu(), lab.cpu())
    km.minibatch_update_(c, n, x, lab, backend=backend)
    torch.testing.assert_close(c.cpu(), want_c)
    assert torch.equal(n.cpu(), want_n)
