"""Bad input (docs/ops.md): a clear error naming the argument, raised before any write."""
import pytest
import torch

import kmgan_ext as km
from testing import backend_params


def _state(device):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 3, generator=g).to(device)
    counts = torch.arange(4).to(device)
    x = torch.randn(6, 3, generator=g).to(device)
    labels = torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    return centers, counts, x, labels


def _bad_update_calls(centers, counts, x, labels, size, embed):
    """(description, callable, exception type, message pattern) for every 4.8 case."""
    f16_c = centers.half()
    return [
        ("int x", lambda b: km.minibatch_update_(centers, counts, x.long(), labels, backend=b), TypeError, "x must be float"),
        # x (d,) is one row (leading dimensions ()): labels (6,) do not match it.
        ("1-D x", lambda b: km.minibatch_update_(centers, counts, x[0], labels, backend=b), ValueError, r"labels must have shape \(\) \(x.shape\[:-1\]\)"),
        ("dtype mix", lambda b: km.minibatch_update_(centers, counts, x.double(), labels, backend=b), TypeError, "x and centers must share one dtype"),
        ("f32 x, f16 centers", lambda b: km.minibatch_update_(f16_c, counts, x, labels, backend=b), TypeError, r"got x torch.float32, centers torch.float16"),
        ("d mismatch", lambda b: km.minibatch_update_(centers, counts, x[:, :2], labels, backend=b), ValueError, r"centers must have 2 columns"),
        ("K = 0", lambda b: km.minibatch_update_(centers[:0], counts[:0], x, labels, backend=b), ValueError, "K >= 1"),
        ("label < 0", lambda b: km.minibatch_update_(centers, counts, x, labels - 1, backend=b), ValueError, r"labels must lie in \[0, 4\)"),
        ("label >= K", lambda b: km.minibatch_update_(centers, counts, x, labels + 1, backend=b), ValueError, r"labels must lie in \[0, 4\)"),
        ("int16 labels", lambda b: km.minibatch_update_(centers, counts, x, labels.short(), backend=b), TypeError, "labels must be int64 or int32"),
        ("labels length", lambda b: km.minibatch_update_(centers, counts, x, labels[:3], backend=b), ValueError, r"labels must have shape \(6,\)"),
        ("float counts", lambda b: km.minibatch_update_(centers, counts.float(), x, labels, backend=b), TypeError, "counts must be int64"),
        ("counts shape", lambda b: km.minibatch_update_(centers, counts[:3], x, labels, backend=b), ValueError, r"counts must have shape \(4,\)"),
        ("deterministic", lambda b: km.minibatch_update_(centers, counts, x, labels, deterministic=1, backend=b), TypeError, "deterministic must be a bool"),
        ("step int x", lambda b: km.minibatch_step_(centers, counts, x.long(), backend=b), TypeError, "x must be float"),
        ("step counts", lambda b: km.minibatch_step_(centers, counts.float(), x, backend=b), TypeError, "counts must be int64"),
        ("ema decay", lambda b: km.ema_update_(centers, size, embed, x, labels, decay=1.5, backend=b), ValueError, "decay must lie in"),
        ("ema labels", lambda b: km.ema_update_(centers, size, embed, x, labels + 4, decay=0.9, backend=b), ValueError, "labels must lie in"),
        ("ema eps", lambda b: km.ema_update_(centers, size, embed, x, labels, eps=-1.0, backend=b), ValueError, "eps must be a finite float >= 0"),
        ("ema eps type", lambda b: km.ema_update_(centers, size, embed, x, labels, eps="1", backend=b), TypeError, "eps must be a float"),
        ("ema size dtype", lambda b: km.ema_update_(centers, size.double(), embed, x, labels, backend=b), TypeError, "cluster_size must be torch.float32"),
        ("ema size shape", lambda b: km.ema_update_(centers, size[:3], embed, x, labels, backend=b), ValueError, r"cluster_size must have shape \(4,\)"),
        ("ema embed dtype", lambda b: km.ema_update_(centers, size, embed.half(), x, labels, backend=b), TypeError, "embed_sum must be torch.float32"),
        ("ema embed shape", lambda b: km.ema_update_(centers, size, embed[:, :2], x, labels, backend=b), ValueError, r"embed_sum must have shape \(4, 3\)"),
        ("ema embed type", lambda b: km.ema_update_(centers, size, embed.tolist(), x, labels, backend=b), TypeError, "embed_sum must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("device,backend", backend_params())
def test_bad_updates_leave_state_bitwise_unchanged(device, backend):
    centers, counts, x, labels = _state(device)
    size, embed = torch.ones(4, device=device), centers.clone()
    c0, n0, s0, e0 = centers.clone(), counts.clone(), size.clone(), embed.clone()
    for what, call, exc, pattern in _bad_update_calls(centers, counts, x, labels, size, embed):
        with pytest.raises(exc, match=pattern):
            call(backend)
        assert torch.equal(centers, c0) and torch.equal(counts, n0), what
        assert torch.equal(size, s0) and torch.equal(embed, e0), what


@pytest.mark.parametrize("device,backend", backend_params())
def test_bad_loss_inputs_name_the_argument(device, backend):
    centers, _, x, labels = _state(device)
    cases = [
        (lambda: km.assign(x, centers.double(), backend=backend), TypeError, r"x and centers must share one dtype .*got x torch.float32, centers torch.float64"),
        (lambda: km.assign(x, centers[:, :2], backend=backend), ValueError, "centers must have 3 columns"),
        (lambda: km.assign(x.int(), centers, backend=backend), TypeError, "x must be float"),
        (lambda: km.assign([[1.0]], centers, backend=backend), TypeError, "x must be a torch.Tensor"),
        (lambda: km.kmgan_center_loss(x, labels, centers, x.double(), labels, centers, backend=backend), TypeError, "x_fake must have dtype"),
        (lambda: km.kmgan_center_loss(x, labels + 9, centers, x, labels, centers, backend=backend), ValueError, "labels_real must lie in"),
        (lambda: km.kmgan_center_loss(x, labels, centers, x, labels[:2], centers, backend=backend), ValueError, "labels_fake must have shape"),
        (lambda: km.assigned_distance(x, labels, centers, "l1", backend=backend), ValueError, "reduction must be one of"),
        (lambda: km.assigned_distance(x, labels - 1, centers, backend=backend), ValueError, "labels must lie in"),
        (lambda: km.pairwise_l1(x, x[:, :2], backend=backend), ValueError, "b must have 3 columns"),
        (lambda: km.pairwise_l1(x, x.double(), backend=backend), TypeError, "b must have dtype"),
    ]
    for call, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            call()


def test_device_mix_is_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU to mix devices")
    centers, counts, x, labels = _state("cpu")
    with pytest.raises(ValueError, match="centers must be on"):
        km.assign(x, centers.cuda())
    with pytest.raises(ValueError, match="counts must be on"):
        km.minibatch_update_(centers, counts.cuda(), x, labels)


def test_nan_is_caught_only_in_debug_mode():
    centers, counts, x, labels = _state("cpu")
    x[2, 1] = float("nan")
    c0 = centers.clone()
    km.set_debug(True)
    try:
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            km.minibatch_update_(centers, counts, x, labels)
        assert torch.equal(centers, c0)
        with pytest.raises(ValueError, match="x contains NaN"):
            km.assign(x, centers)
    finally:
        km.set_debug(False)
    km.assign(x, centers)  # without debug: no check, no sync


def _nan_center_calls(centers, counts, x, labels, backend):
    size, embed = torch.ones(4, device=centers.device), centers.clone()
    return [
        ("minibatch_update_", lambda: km.minibatch_update_(centers, counts, x, labels, backend=backend)),
        ("minibatch_step_", lambda: km.minibatch_step_(centers, counts, x, backend=backend)),
        ("ema_update_", lambda: km.ema_update_(centers, size, embed, x, labels, backend=backend)),
        ("assign", lambda: km.assign(x, centers, backend=backend)),
        ("assigned_distance", lambda: km.assigned_distance(x, labels, centers, backend=backend)),
        ("center_loss", lambda: km.center_loss(x, labels, centers, x, labels, centers, backend=backend)),
        ("kmgan_losses", lambda: km.kmgan_losses(x, x, centers, centers, backend=backend)),
    ]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("device,backend", backend_params())
def test_debug_mode_checks_the_centers_too(device, backend, bad):
    """Issue 16 item 3: NaN/Inf centers reached the updates and losses under set_debug(True)."""
    centers, counts, x, labels = _state(device)
    centers[1, 2] = bad
    c0, n0 = centers.clone(), counts.clone()
    km.set_debug(True)
    try:
        for what, call in _nan_center_calls(centers, counts, x, labels, backend):
            with pytest.raises(ValueError, match="centers(_real)? contains NaN or Inf"):
                call()
            assert torch.equal(centers.isnan(), c0.isnan()), what
            assert torch.equal(centers.nan_to_num(), c0.nan_to_num()) and torch.equal(counts, n0), what
    finally:
        km.set_debug(False)


def _inplace_cases(device):
    """(description, argument named, call(backend)) for what PyTorch's in-place ops refuse
    (issue 16 item 4) and invalid counts (item 5); every tensor must be unchanged after."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g).to(device)
    labels = torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    counts = torch.zeros(4, dtype=torch.int64, device=device)
    size, embed = torch.ones(4, device=device), torch.randn(4, 3, generator=g).to(device)
    expanded = torch.randn(1, 3, generator=g).to(device).expand(4, 3)
    overlapping = torch.randn(7, generator=g).to(device).as_strided((4, 3), (1, 1))
    leaf = torch.randn(4, 3, generator=g).to(device).requires_grad_()
    c = torch.randn(4, 3, generator=g).to(device)
    buf = torch.randn(10, 3, generator=g).to(device)
    lab_buf = torch.zeros(10, dtype=torch.int64, device=device)
    big = torch.full((4,), 2**63 - 3, dtype=torch.int64, device=device)
    u, s = km.minibatch_update_, km.minibatch_step_
    e = km.ema_update_
    cases = [
        ("expanded centers", "centers", lambda b: u(expanded, counts, x, labels, backend=b)),
        ("expanded counts", "counts", lambda b: u(c, torch.zeros(1, dtype=torch.int64, device=device).expand(4), x, labels, backend=b)),
        ("overlapping centers", "centers", lambda b: u(overlapping, counts, x, labels, backend=b)),
        ("leaf centers", "centers", lambda b: u(leaf, counts, x, labels, backend=b)),
        ("step leaf centers", "centers", lambda b: s(leaf, counts, x, backend=b)),
        ("x is centers", "centers", lambda b: s(buf[:4], counts, buf[2:8], backend=b)),
        ("centers alias x", "centers", lambda b: u(buf[:4], counts, buf[3:9], labels, backend=b)),
        ("counts alias labels", "counts", lambda b: u(c, lab_buf[:4], x, lab_buf[2:8], backend=b)),
        ("negative counts", "counts", lambda b: u(c, counts - 1, x, labels, backend=b)),
        ("counts near 2**63", "counts", lambda b: u(c, big, x, labels, backend=b)),
        ("step negative counts", "counts", lambda b: s(c, counts - 1, x, backend=b)),
        ("ema expanded size", "cluster_size", lambda b: e(c, torch.ones(1, device=device).expand(4), embed, x, labels, backend=b)),
        ("ema overlapping embed", "embed_sum", lambda b: e(c, size, overlapping, x, labels, backend=b)),
        ("ema embed is centers", "centers", lambda b: e(c, size, c, x, labels, backend=b)),
        ("ema leaf centers", "centers", lambda b: e(leaf, size, embed, x, labels, backend=b)),
        ("ema leaf size", "cluster_size", lambda b: e(c, size.clone().requires_grad_(), embed, x, labels, backend=b)),
    ]
    everything = [x, labels, counts, size, embed, expanded, overlapping, leaf, c, buf, lab_buf, big]
    return cases, everything


@pytest.mark.parametrize("device,backend", backend_params())
def test_inplace_ops_refuse_up_front_and_write_nothing(device, backend):
    cases, tensors = _inplace_cases(device)
    before = [t.detach().clone() for t in tensors]
    for what, arg, call in cases:
        with pytest.raises(ValueError, match=arg) as info:
            call(backend)
        assert str(info.value).startswith(arg) or f" {arg}" in str(info.value), what
        for t, t0 in zip(tensors, before):
            assert torch.equal(t.detach(), t0), what


def test_inplace_update_of_a_parameter_under_no_grad_is_allowed():
    """As PyTorch's in-place ops: a leaf that requires grad may be written under no_grad."""
    c = torch.nn.Parameter(torch.zeros(2, 1))
    with torch.no_grad():
        km.minibatch_update_(c, torch.zeros(2, dtype=torch.int64), torch.ones(3, 1), torch.zeros(3, dtype=torch.int64))
    assert c.tolist() == [[1.0], [0.0]]


def test_error_types_and_names():
    """Issue 16 item 6 (the op and seeding layer's share)."""
    x, c, lab = torch.randn(6, 3), torch.randn(4, 3), torch.zeros(6, dtype=torch.int64)
    np = pytest.importorskip("numpy")
    cases = [
        (lambda: km.center_loss(x, lab, c, torch.randn(6, 2), lab, c), ValueError, r"x_fake must have 3 columns"),
        (lambda: km.kmgan_losses(x, x, c.numpy(), c), TypeError, "centers_real must be a torch.Tensor"),
        (lambda: km.kmgan_losses(x, x, c, np.zeros((4, 3))), TypeError, "centers_fake must be a torch.Tensor"),
        (lambda: km.kmeans_plusplus(x, 2, seed=2**64), ValueError, r"seed must lie in \[0, 2\*\*32\)"),
        (lambda: km.kmeans(x, 2, seed=-1), ValueError, "seed must lie in"),
        (lambda: km.kmeans_plusplus(torch.empty(6, 3, device="meta"), 2), ValueError, "x is a meta tensor"),
        (lambda: km.kmeans(torch.empty(6, 3, device="meta"), 2), ValueError, "x is a meta tensor"),
        (lambda: km.kmeans(torch.tensor([[float("nan"), 0.0], [1.0, 1.0], [2.0, 2.0]]), 2), ValueError, "x contains NaN or Inf"),
        (lambda: km.kmeans_plusplus(torch.tensor([[float("nan"), 0.0], [1.0, 1.0], [2.0, 2.0]]), 2), ValueError, "x contains NaN or Inf"),
        (lambda: km.center_loss(x, lab, c, x.double(), lab, c), TypeError, r"x_fake must have dtype torch.float32 \(as x_real\)"),
        (lambda: km.pairwise_l1(x, x.double()), TypeError, r"b must have dtype torch.float32 \(as a\)"),
        (lambda: km.center_loss(x, lab, c.double(), x, lab, c), TypeError, r"x_real and centers_real must share one dtype .*: got x_real torch.float32, centers_real torch.float64"),
    ]
    for call, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            call()
