"""int32 labels read natively by every backend (docs/ops.md, "int32 labels"): the same bits as
int64 labels, forward and backward, the caller's int32 tensor handed to the kernels (never an
int64 copy), and out-of-range int32 labels refused before anything is written."""
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _dispatch
from testing import backend_params

# N, d, K all different, so that a (N,) tensor is recognisable among the kernels' arguments.
N, D, K = 37, 5, 6


def _data(device, seed=0, k=K, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g).to(device, dtype)
    c = torch.randn(k, D, generator=g).to(device, dtype)
    l64 = torch.randint(0, k, (N,), generator=g).to(device)
    return x, c, l64


def _grads(fn, *tensors):
    """fn's value and the gradients of the given leaves (fresh copies that require grad)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(torch.tensor(0.7, dtype=out.dtype, device=out.device))
    return out.detach(), [t.grad for t in leaves]


def _same(a, b):
    assert a.dtype == b.dtype and torch.equal(a, b), (a, b)


# ------------------------------------------------------------------------------ same bits
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_assigned_distance_bitwise(device, backend, reduction, dtype):
    x, c, l64 = _data(device, dtype=dtype)
    l32 = l64.to(torch.int32)
    runs = [_grads(lambda x, c, lab=lab: km.assigned_distance(x, lab, c, reduction, backend=backend),
                   x, c) for lab in (l64, l32)]
    (o64, (gx64, gc64)), (o32, (gx32, gc32)) = runs
    _same(o32, o64)
    _same(gx32, gx64)
    if backend in ("reference", "cpu"):
        _same(gc32, gc64)
    else:  # the centers' gradient is summed with float atomics there: the order may vary
        torch.testing.assert_close(gc32, gc64, rtol=1e-12 if dtype == torch.float64 else 1e-6,
                                   atol=1e-12 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("sides", ["both", "real", "fake"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_center_loss_bitwise(device, backend, sides):
    """Each side's labels in their own dtype: int32 on both sides, or on one only."""
    x, c, lr = _data(device, seed=1)
    y, cf, lf = _data(device, seed=2, k=K + 1)
    lr32 = lr.int() if sides in ("both", "real") else lr
    lf32 = lf.int() if sides in ("both", "fake") else lf

    def loss(a, b, lab_r, lab_f):
        return km.kmgan_center_loss(a, lab_r, c, b, lab_f, cf, backend=backend)

    o64, (ga64, gb64) = _grads(lambda a, b: loss(a, b, lr, lf), x, y)
    o32, (ga32, gb32) = _grads(lambda a, b: loss(a, b, lr32, lf32), x, y)
    _same(o32, o64)
    _same(ga32, ga64)
    _same(gb32, gb64)


@pytest.mark.parametrize("variant", ["plain", "weighted", "cosine"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_update_bitwise(device, backend, deterministic, variant):
    x, c, l64 = _data(device, seed=3)
    kw = dict(deterministic=deterministic, backend=backend)
    if variant == "weighted":
        kw["sample_weight"] = torch.rand(N, generator=torch.Generator().manual_seed(4)).to(device)
    if variant == "cosine":
        kw["metric"] = "cosine"
        c = torch.nn.functional.normalize(c, dim=1)
    count_dtype = torch.float64 if variant == "weighted" else torch.int64
    out = []
    for lab in (l64, l64.to(torch.int32)):
        cc, nn = c.clone(), torch.arange(K, dtype=count_dtype, device=device)
        km.minibatch_update_(cc, nn, x, lab, **kw)
        out.append((cc, nn))
    if deterministic or backend in ("reference", "cpu"):
        _same(out[1][0], out[0][0])
    else:  # atomics: the order of the float64 additions may differ run to run
        torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-6)
    _same(out[1][1], out[0][1])


@pytest.mark.parametrize("variant", ["plain", "weighted", "cosine"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_update_bitwise(device, backend, deterministic, variant):
    x, c, l64 = _data(device, seed=5)
    kw = dict(deterministic=deterministic, backend=backend, decay=0.9)
    if variant == "weighted":
        kw["sample_weight"] = torch.rand(N, generator=torch.Generator().manual_seed(6)).to(device)
    if variant == "cosine":
        kw["metric"] = "cosine"
    out = []
    for lab in (l64, l64.to(torch.int32)):
        cc, size, embed = c.clone(), torch.ones(K, device=device), c.clone()
        km.ema_update_(cc, size, embed, x, lab, **kw)
        out.append((cc, size, embed))
    for a, b in zip(out[1], out[0]):
        if deterministic or backend in ("reference", "cpu"):
            _same(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_params())
def test_batched_updates_bitwise(device, backend):
    """(B, N) labels of B problems: int32 gives the same centers and state as int64."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, N, D, generator=g).to(device)
    c = torch.randn(3, K, D, generator=g).to(device)
    l64 = torch.randint(0, K, (3, N), generator=g).to(device)
    out = []
    for lab in (l64, l64.to(torch.int32)):
        cc, nn = c.clone(), torch.zeros(3, K, dtype=torch.int64, device=device)
        km.minibatch_update_(cc, nn, x, lab, deterministic=True, backend=backend)
        ce, size, embed = c.clone(), torch.ones(3, K, device=device), c.clone()
        km.ema_update_(ce, size, embed, x, lab, deterministic=True, backend=backend)
        out.append((cc, nn, ce, size, embed))
    for a, b in zip(out[1], out[0]):
        _same(a, b)


@pytest.mark.parametrize("device,backend", backend_params())
def test_center_loss_module_bitwise(device, backend):
    """km.CenterLoss passes int32 labels on as they are (narrower ones are widened)."""
    x, _, l64 = _data(device, seed=8)
    res = []
    for lab in (l64, l64.int(), l64.to(torch.int16)):
        torch.manual_seed(0)
        mod = km.CenterLoss(K, D, backend=backend).to(device)
        res.append(_grads(lambda a, lab=lab: mod(a, lab), x))
    for o, (g,) in res[1:]:
        _same(o, res[0][0])
        _same(g, res[0][1][0])


# ------------------------------------------------------------------------------ no int64 copy
class _Spy:
    """A backend module whose functions record the arguments they are called with."""

    def __init__(self, module, calls):
        self._module, self._calls = module, calls

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def spy(*args):
            self._calls.append((name, args))
            return fn(*args)

        return spy


def _calls_reaching(backend, monkeypatch):
    calls = []
    real = _dispatch.implementation
    monkeypatch.setattr(_dispatch, "implementation", lambda be: _Spy(real(be), calls))
    return calls


def _assert_labels_passed_as_given(calls, labels, names):
    """Every call in ``names`` got the caller's int32 tensor itself (same memory) and no int64
    tensor of N elements (what a conversion would have made)."""
    assert sorted({name for name, _ in calls}) == sorted(names), calls
    for name, args in calls:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        assert any(t.dtype == torch.int32 and t.data_ptr() == labels.data_ptr() for t in tensors), name
        assert not any(t.dtype == torch.int64 and t.numel() == N for t in tensors), name


@pytest.mark.parametrize("device,backend", backend_params())
def test_no_int64_copy_assigned_distance(device, backend, monkeypatch):
    x, c, l64 = _data(device)
    l32 = l64.int()
    calls = _calls_reaching(backend, monkeypatch)
    # The autograd node saves the labels: the backward gets the caller's tensor too.
    _grads(lambda x, c: km.assigned_distance(x, l32, c, "mean", backend=backend), x, c)
    _assert_labels_passed_as_given(calls, l32, ["assigned_distance", "assigned_distance_backward"])


@pytest.mark.parametrize("device,backend", backend_params())
def test_no_int64_copy_center_loss(device, backend, monkeypatch):
    x, c, l64 = _data(device)
    l32 = l64.int()
    calls = _calls_reaching(backend, monkeypatch)
    _grads(lambda a, b: km.kmgan_center_loss(a, l32, c, b, l32, c, backend=backend), x, x.flip(0))
    _assert_labels_passed_as_given(calls, l32, ["center_loss_forward", "center_loss_backward"])


@pytest.mark.parametrize("device,backend", backend_params())
def test_no_int64_copy_updates(device, backend, monkeypatch):
    x, c, l64 = _data(device)
    l32 = l64.int()
    calls = _calls_reaching(backend, monkeypatch)
    km.minibatch_update_(c.clone(), torch.zeros(K, dtype=torch.int64, device=device), x, l32,
                         backend=backend)
    km.ema_update_(c.clone(), torch.ones(K, device=device), c.clone(), x, l32, backend=backend)
    _assert_labels_passed_as_given(calls, l32, ["minibatch_update_", "ema_update_"])


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("bad", [-1, K, 2**31 - 1, -(2**31)], ids=["neg", "K", "int32max", "int32min"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_out_of_range_int32_refused_before_any_write(device, backend, bad):
    x, c, l64 = _data(device)
    lab = l64.int()
    lab[N // 2] = bad
    msg = rf"labels must lie in \[0, {K}\)"
    with pytest.raises(ValueError, match=msg):
        km.assigned_distance(x, lab, c, backend=backend)
    with pytest.raises(ValueError, match=msg.replace("labels", "labels_fake")):
        km.kmgan_center_loss(x, l64.int(), c, x, lab, c, backend=backend)
    cc, nn = c.clone(), torch.arange(K, device=device)
    with pytest.raises(ValueError, match=msg):
        km.minibatch_update_(cc, nn, x, lab, backend=backend)
    assert torch.equal(cc, c) and torch.equal(nn, torch.arange(K, device=device))
    size, embed = torch.ones(K, device=device), c.clone()
    with pytest.raises(ValueError, match=msg):
        km.ema_update_(cc, size, embed, x, lab, backend=backend)
    assert torch.equal(cc, c) and torch.equal(size, torch.ones(K, device=device))
    assert torch.equal(embed, c)


@pytest.mark.skipif(not _dispatch.native_has_cpu(), reason="kmgan_ext._C is not built")
def test_native_cpu_kernels_check_int32_values():
    """The C++ kernels are public (torch.ops.kmgan_ext.*_native): they read int32 labels and
    check their range themselves, before writing."""
    x, c, l64 = _data("cpu")
    ops = torch.ops.kmgan_ext
    lab = l64.int()
    assert torch.equal(ops.assigned_distance_native(x, lab, c, "fro"),
                       ops.assigned_distance_native(x, l64, c, "fro"))
    lab[3] = K
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\) \(K\), found 6 at position 3"):
        ops.assigned_distance_native(x, lab, c, "fro")
    cc, nn = c.clone(), torch.zeros(K, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels must lie in"):
        ops.minibatch_update_native_(cc, nn, x, lab, False)
    assert torch.equal(cc, c) and not nn.any()
    with pytest.raises(TypeError, match="labels must be int64 or int32, got Short"):
        ops.assigned_distance_native(x, l64.short(), c, "fro")


@pytest.mark.skipif(km.available_backends()["triton"] is not None, reason="triton not importable")
def test_triton_label_offsets_in_int64():
    """A label loaded from an int32 tensor times D is int32 arithmetic in Triton: it wraps once
    l * d passes 2^31 (K * d = 2^31 elements fit a 141 GB GPU). The kernels that read labels
    form the offset through _common.row_offset (int64)."""
    import importlib
    import inspect

    for mod, name in (("assigned_distance", "_ad_fwd_kernel"),
                      ("assigned_distance", "_ad_bwd_kernel"),
                      ("minibatch_update", "_segment_sum_kernel")):
        src = inspect.getsource(getattr(importlib.import_module(f"kmgan_ext.kernels.{mod}"),
                                        name).fn)
        assert "lab[:, None] * D" not in src, (mod, name)
        assert "row_offset(lab[:, None], D)" in src, (mod, name)


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck_int32(device, backend):
    """The registered schemas take int32 labels: fake kernels, autograd and the routed kernels
    agree (torch.library.opcheck), forward and backward."""
    x, c, l64 = _data(device, dtype=torch.float64)
    lab = l64.int()
    ops = torch.ops.kmgan_ext
    torch.library.opcheck(ops.assigned_distance.default,
                          (x.clone().requires_grad_(), lab, c.clone().requires_grad_(), "mean", backend))
    torch.library.opcheck(ops.center_loss.default,
                          (x.clone().requires_grad_(), lab, c, x.flip(0).clone().requires_grad_(),
                           l64, c, backend))
    torch.library.opcheck(ops.minibatch_update_.default,
                          (c.clone(), torch.zeros(K, dtype=torch.int64, device=device), x, lab, True,
                           backend))
    torch.library.opcheck(ops.ema_update_.default,
                          (c.clone(), torch.ones(K, dtype=torch.float64, device=device), c.clone(), x,
                           lab, 0.9, 1e-5, True, backend))
