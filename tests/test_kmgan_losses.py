"""km.kmgan_losses / km.KMGANLosses against the paper's formulas in float64 autograd."""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference as R

from testing import assert_grad_close, assert_labels_match, fast_backend_params

N_REAL, N_FAKE, D, K, K_HAT = 33, 29, 24, 7, 5


def _inputs(device, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    f_real = torch.randn(N_REAL, D, generator=g).to(device, dtype)
    f_fake = (0.5 * torch.randn(N_FAKE, D, generator=g) + 0.3).to(device, dtype)
    c_real = torch.randn(K, D, generator=g).to(device)
    c_fake = torch.randn(K_HAT, D, generator=g).to(device)
    return f_real, f_fake, c_real, c_fake


def _pull64(f, labels, c, reduction):
    diff = f - c.double()[labels]
    if reduction == "fro":
        return diff.norm()
    if reduction == "mean":
        return diff.norm(dim=1).mean()
    return 0.5 * (diff**2).sum()


def _center64(fr, lr, cr, ff, lf, cf):
    def u(x, labels, c):
        c = c.double()
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        n = torch.zeros(c.shape[0], dtype=torch.float64, device=x.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float64)
        )
        return ((c + sums) / (1 + n)[:, None]).sum(0)

    return (u(fr, lr, cr) - u(ff, lf, cf)).abs().sum()


def _pairs64(a, b=None):
    if b is None:
        return (a[:, None, :] - a[None, :, :]).abs().sum()
    return (a[:, None, :] - b[None, :, :]).abs().sum()


def _truth(f_real, f_fake, c_real, c_fake, terms, reduction, lam, pairwise_reduction):
    """Float64 losses and gradients with the labels the op chose (checked separately)."""
    fr = f_real.detach().double().requires_grad_()
    ff = f_fake.detach().double().requires_grad_()
    lr, lf, lh = terms.labels_real, terms.labels_fake, terms.labels_fake_hat
    pull_r, pull_f = _pull64(fr, lr, c_real, reduction), _pull64(ff, lf, c_real, reduction)
    loss_d, loss_g = pull_r - pull_f, pull_f
    if lam:
        nr, nf = fr.shape[0], ff.shape[0]
        scale = (1 / (nr * (nr - 1)), 1 / (nf * (nf - 1)), 1 / (nr * nf)) if pairwise_reduction == "mean" else (1, 1, 1)
        intra = scale[0] * _pairs64(fr) + scale[1] * _pairs64(ff)
        inter = scale[2] * _pairs64(fr, ff)
        loss_d = loss_d + lam * (intra - inter)
        loss_g = loss_g + lam * scale[2] * _pairs64(fr.detach(), ff)
    loss_c = _center64(fr, lr, c_real, ff, lh, c_fake)
    out = {}
    for name, loss in (("loss_d", loss_d), ("loss_g", loss_g), ("loss_center", loss_c)):
        gr, gf = torch.autograd.grad(loss, [fr, ff], retain_graph=True, allow_unused=True)
        out[name] = (loss.detach(), gr, gf)
    return out


@pytest.mark.parametrize("device,backend", fast_backend_params() + [pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize(
    "reduction,lam,pairwise_reduction",
    [("fro", 0.0, "sum"), ("mean", 0.0, "sum"), ("sq_sum", 0.0, "sum"), ("fro", 0.5, "sum"), ("fro", 2.0, "mean")],
)
def test_losses_and_gradients_match_formulas(device, backend, reduction, lam, pairwise_reduction):
    f_real, f_fake, c_real, c_fake = _inputs(device)
    f_real.requires_grad_()
    f_fake.requires_grad_()
    c_before = (c_real.clone(), c_fake.clone())
    terms = km.kmgan_losses(
        f_real, f_fake, c_real, c_fake, reduction=reduction, lam=lam, pairwise_reduction=pairwise_reduction,
        backend=backend,
    )  # fmt: skip
    assert_labels_match(f_real.detach(), c_real, terms.labels_real)
    assert_labels_match(f_fake.detach(), c_real, terms.labels_fake)
    assert_labels_match(f_fake.detach(), c_fake, terms.labels_fake_hat)
    assert (terms.l_intra is None) == (lam == 0) and (terms.l_inter is None) == (lam == 0)
    want = _truth(f_real, f_fake, c_real, c_fake, terms, reduction, lam, pairwise_reduction)
    for name in ("loss_d", "loss_g", "loss_center"):
        loss = getattr(terms, name)
        assert loss.dtype == torch.float32 and loss.shape == ()
        w_loss, w_gr, w_gf = want[name]
        scale = 1 + float(w_loss.abs())
        torch.testing.assert_close(loss.double().cpu(), w_loss.cpu(), rtol=1e-5, atol=1e-5 * scale)
        gr, gf = torch.autograd.grad(loss, [f_real, f_fake], retain_graph=True, allow_unused=True)
        for got, w in ((gr, w_gr), (gf, w_gf)):
            if w is None:  # no path from this loss to that input (L_G to the real features)
                assert got is None or not got.any()
                continue
            torch.testing.assert_close(got.double().cpu(), w.cpu(), rtol=1e-4, atol=1e-5 * (1 + float(w.abs().max())))
    # Centers are buffers: untouched, and no gradient flows to them.
    assert torch.equal(c_real, c_before[0]) and torch.equal(c_fake, c_before[1])


def test_module_matches_function_and_generator_loss_matches_loss_g():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=3)
    f_fake.requires_grad_()
    mod = km.KMGANLosses(reduction="mean", lam=0.25, pairwise_reduction="sum", backend="cpu")
    assert "lam=0.25" in repr(mod)
    a = mod(f_real, f_fake, c_real, c_fake)
    b = km.kmgan_losses(f_real, f_fake, c_real, c_fake, reduction="mean", lam=0.25, backend="cpu")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    g_loss = mod.generator_loss(f_fake, a.labels_fake, c_real, f_real)
    torch.testing.assert_close(g_loss, a.loss_g, rtol=1e-6, atol=0)
    c_loss = mod.center_loss(f_real, a.labels_real, c_real, f_fake, a.labels_fake_hat, c_fake)
    assert torch.equal(c_loss, a.loss_center)


def test_low_precision_features_are_cast_to_the_centers_dtype():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=5)
    terms32 = km.kmgan_losses(f_real.bfloat16().float(), f_fake.bfloat16().float(), c_real, c_fake, backend="cpu")
    bf_real = f_real.bfloat16().requires_grad_()
    terms = km.kmgan_losses(bf_real, f_fake.bfloat16(), c_real, c_fake, backend="cpu")
    assert terms.loss_d.dtype == torch.float32
    for x, y in zip(terms, terms32):
        if x is not None:
            assert torch.equal(x, y)
    terms.loss_d.backward()
    # The gradient is the float32 block's on the same (bfloat16) values, rounded once.
    f32_real = f_real.bfloat16().float().requires_grad_()
    km.kmgan_losses(f32_real, f_fake.bfloat16().float(), c_real, c_fake, backend="cpu").loss_d.backward()
    assert_grad_close(bf_real.grad, f32_real.grad.double(), torch.bfloat16)


def test_labels_agree_with_assign():
    f_real, f_fake, c_real, c_fake = _inputs("cpu", seed=7)
    terms = km.kmgan_losses(f_real, f_fake, c_real, c_fake, backend="cpu")
    assert torch.equal(terms.labels_real, R.assign(f_real, c_real)[0])
    assert torch.equal(terms.labels_fake_hat, km.assign(f_fake, c_fake, backend="cpu")[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reduction="l1"), "reduction"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(pairwise_reduction="max"), "pairwise_reduction"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    f_real, f_fake, c_real, c_fake = _inputs("cpu")
    with pytest.raises(ValueError, match=match):
        km.kmgan_losses(f_real, f_fake, c_real, c_fake, **kwargs)
    with pytest.raises(ValueError, match=match):
        km.KMGANLosses(**kwargs)


def test_bad_features_are_rejected_before_anything_runs():
    f_real, f_fake, c_real, c_fake = _inputs("cpu")
    with pytest.raises(ValueError, match="f_real"):
        km.kmgan_losses(f_real[0], f_fake, c_real, c_fake)
    with pytest.raises(TypeError, match="f_fake"):
        km.kmgan_losses(f_real, f_fake.long(), c_real, c_fake)
    with pytest.raises(ValueError, match=r"centers_real must have 5 columns \(f_real.shape\[1\]\)"):
        km.kmgan_losses(f_real[:, :5], f_fake, c_real, c_fake)


# --------------------------------------------------------------------------- the fused op
# kmgan_ext::kmgan_losses (kmgan_losses_op.py): every backend against the float64 reference
# composition (reference.kmgan_losses), the one-launch paths and the op's registration.
import importlib  # noqa: E402

from kmgan_ext import _dispatch  # noqa: E402
from kmgan_ext.kmgan_losses_op import available as _fused_available  # noqa: E402

from testing import backend_params, noncontiguous, tol  # noqa: E402

pytestmark_fused = pytest.mark.skipif(not _fused_available(), reason="kmgan_ext._C lacks kmgan_ext::kmgan_losses")
OUT_NAMES = ("loss_d", "loss_g", "loss_center", "labels_real", "labels_fake", "labels_fake_hat", "pulls", "u_diff",
             "counts_real", "counts_fake")  # fmt: skip


def _triton_module():
    why = km.available_backends()["triton"]
    if why:
        pytest.skip(why)
    # kernels/__init__ re-exports the function under the module's name: fetch the module.
    return importlib.import_module("kmgan_ext.kernels.kmgan_losses")


def _problem(nr, nf, d, kr, kf, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    fr = torch.randn(nr, d, generator=g)
    ff = 0.5 * torch.randn(nf, d, generator=g) + 0.3
    cr, cf = torch.randn(kr, d, generator=g), torch.randn(kf, d, generator=g)
    return tuple(t.to(device, dtype) for t in (fr, ff, cr, cf))


def _op(*args):
    return torch.ops.kmgan_ext.kmgan_losses.default(*args)


def _check_outputs(got, fr, ff, cr, cf, reduction, dtype):
    want = R.kmgan_losses(fr, ff, cr, cf, reduction)
    # Labels are the float64 argmin of the inputs (ties to the lowest index) on every backend.
    for name, a, b in zip(OUT_NAMES, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        if a.dtype == torch.int64:
            assert torch.equal(a.cpu(), b.cpu()), name
        else:
            t = tol(dtype) if dtype == torch.float64 else tol(torch.float32)
            scale = 1 + float(b.abs().max()) if b.numel() else 1
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=t["rtol"], atol=t["atol"] * scale, msg=name)


FUSED_SHAPES = [
    (64, 64, 100, 10, 10),  # the paper's batch, d = 100, K = 10
    (33, 29, 23, 7, 5),  # odd everything
    (1, 1, 7, 1, 1),  # N = 1, K = 1
    (0, 5, 3, 2, 3),  # no real rows
    (5, 0, 3, 2, 3),  # no generated rows
]


@pytestmark_fused
@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_op_matches_reference_composition(device, backend, reduction, shape):
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    fr, ff, cr, cf = _problem(*shape, seed=sum(shape), device=device)
    _check_outputs(_op(fr, ff, cr, cf, reduction, backend), fr, ff, cr, cf, reduction, torch.float32)


@pytestmark_fused
@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_fused_op_dtypes(device, backend, dtype):
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    fr, ff, cr, cf = _problem(21, 19, 13, 5, 4, dtype=dtype, seed=2, device=device)
    got = _op(fr, ff, cr, cf, "mean", backend)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _check_outputs(got, fr, ff, cr, cf, "mean", dtype)


@pytest.mark.emulated_gpu
@pytestmark_fused
@pytest.mark.parametrize("shape", [(40, 30, 130, 3, 4), (70, 9, 20, 10, 10)], ids=["d130", "n70"])
def test_triton_tiled_forward_matches_reference(monkeypatch, shape):
    """The two-launch path (row tiles + finalize) that a GPU takes beyond one CTA."""
    mod = _triton_module()
    monkeypatch.setattr(mod, "_use_single", lambda *a: False)
    fr, ff, cr, cf = _problem(*shape, seed=4)
    for reduction in ("fro", "mean"):
        _check_outputs(mod.kmgan_losses(fr, ff, cr, cf, reduction), fr, ff, cr, cf, reduction, torch.float32)


@pytest.mark.emulated_gpu
@pytestmark_fused
def test_triton_many_clusters_falls_back_to_the_single_ops():
    mod = _triton_module()
    fr, ff, cr, cf = _problem(12, 10, 9, mod.FUSED_MAX_K + 3, 5, seed=6)
    _check_outputs(_op(fr, ff, cr, cf, "fro", "triton"), fr, ff, cr, cf, "fro", torch.float32)


@pytestmark_fused
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_ties_and_near_ties_give_the_float64_argmin(device, backend):
    """Duplicated centers (exact ties: lowest index) and rows on the bisector of two centers,
    off it by less than float32 resolves: labels must equal the float64 reference exactly."""
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    g = torch.Generator().manual_seed(11)
    d = 31
    c = torch.randn(4, d, generator=g)
    cr = torch.cat([c, c[:2]])  # centers 4, 5 duplicate 0, 1
    cf = torch.cat([c[2:3], c[2:3], c[:1]])
    mid = 0.5 * (c[0] + c[1])
    t = 1e-7 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    near = (mid.double() + t * (c[1] - c[0]).double()).float()
    ff = torch.cat([near, c[:2], torch.randn(5, d, generator=g)])
    fr = torch.cat([c, near[:7]])
    fr, ff, cr, cf = (t.to(device) for t in (fr, ff, cr, cf))
    got = _op(fr, ff, cr, cf, "fro", backend)
    for labels, x, centers in ((got[3], fr, cr), (got[4], ff, cr), (got[5], ff, cf)):
        assert torch.equal(labels.cpu(), R.assign(x.cpu(), centers.cpu())[0])
    assert not (got[5] == 1).any()  # c_fake 0 and 1 are the same point: index 0 wins
    assert not (got[3] >= 4).any() and not (got[4] >= 4).any()  # c_real 4, 5 repeat 0, 1
    _check_outputs(got, fr, ff, cr, cf, "fro", torch.float32)


def _grads64(fr, ff, cr, cf, labels, reduction, weights):
    frd = fr.detach().double().requires_grad_()
    ffd = ff.detach().double().requires_grad_()
    lr, lf, lh = labels
    pull_r, pull_f = _pull64(frd, lr, cr, reduction), _pull64(ffd, lf, cr, reduction)
    losses = (pull_r - pull_f, pull_f, _center64(frd, lr, cr, ffd, lh, cf))
    total = sum(w * loss for w, loss in zip(weights, losses) if w is not None)
    gr, gf = torch.autograd.grad(total, [frd, ffd], allow_unused=True)
    zero = torch.zeros_like
    return [torch.stack([x.detach() for x in losses]), gr if gr is not None else zero(frd), gf if gf is not None else zero(ffd)]


@pytestmark_fused
@pytest.mark.parametrize("device,backend", backend_params())
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0), (1.0, None, None), (None, 0.7, None), (None, None, -2.0), (0.5, None, 3.0)],
    ids=["sum", "d", "g", "center", "d+center"],
)
def test_backward_of_any_combination_of_losses(device, backend, reduction, weights):
    """One backward call per combination: missing losses arrive as None (no zero fill)."""
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    fr, ff, cr, cf = _problem(17, 13, 11, 4, 3, seed=9, device=device)
    fr.requires_grad_()
    ff.requires_grad_()
    t = km.kmgan_losses(fr, ff, cr, cf, reduction=reduction, backend=backend)
    losses = [loss * w for loss, w in zip((t.loss_d, t.loss_g, t.loss_center), weights) if w is not None]
    sum(losses).backward()
    want_losses, want_gr, want_gf = _grads64(fr, ff, cr, cf, t[:3], reduction, weights)
    got_losses = torch.stack([t.loss_d, t.loss_g, t.loss_center]).double().detach()
    torch.testing.assert_close(got_losses, want_losses, rtol=1e-5, atol=1e-5)
    for got, want in ((fr.grad, want_gr), (ff.grad, want_gf)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * (1 + float(want.abs().max())))


@pytestmark_fused
@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_centers_and_noncontiguous_features(device, backend, dtype):
    """Features of the centers' 16-bit dtype, strided: grads within the dtype's rounding."""
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    fr, ff, cr, cf = _problem(15, 12, 9, 3, 4, dtype=dtype, seed=12, device=device)
    fr, ff = noncontiguous(fr).requires_grad_(), noncontiguous(ff).requires_grad_()
    t = km.kmgan_losses(fr, ff, cr, cf, reduction="mean", backend=backend)
    for labels, x, c in ((t.labels_real, fr, cr), (t.labels_fake, ff, cr), (t.labels_fake_hat, ff, cf)):
        assert torch.equal(labels.cpu(), R.assign(x.detach().cpu(), c.cpu())[0])
    # Each loss on its own: in a sum, L_D's and L_G's gradients to f_fake cancel.
    for i, name in enumerate(("loss_d", "loss_g", "loss_center")):
        weights = tuple(1.0 if j == i else None for j in range(3))
        want_losses, want_gr, want_gf = _grads64(fr, ff, cr, cf, t[:3], "mean", weights)
        torch.testing.assert_close(getattr(t, name).double().detach(), want_losses[i], rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(getattr(t, name), [fr, ff], retain_graph=True, allow_unused=True)
        for got, want in zip(grads, (want_gr, want_gf)):
            got = torch.zeros_like(want) if got is None else got
            assert got.dtype == dtype, (name, got.dtype)
            # The float64 gradient rounded once to the dtype: within its rounding of the largest entry.
            torch.testing.assert_close(got.double(), want, rtol=tol(dtype)["rtol"],
                                       atol=tol(dtype)["atol"] * (1 + float(want.abs().max())), msg=name)  # fmt: skip


@pytestmark_fused
@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    fr, ff, cr, cf = _problem(9, 7, 5, 3, 2, dtype=torch.float64, seed=13, device=device)
    torch.library.opcheck(
        torch.ops.kmgan_ext.kmgan_losses.default, (fr.requires_grad_(), ff.requires_grad_(), cr, cf, "mean", backend)
    )
    out = R.kmgan_losses(fr.detach(), ff.detach(), cr, cf, "mean")
    one = torch.ones((), dtype=torch.float64, device=device)
    saved = (fr.detach(), ff.detach(), cr, *out[3:6], *out[6:])
    for grads in ((one, 2 * one, 3 * one), (None, one, None)):
        torch.library.opcheck(torch.ops.kmgan_ext.kmgan_losses_backward.default, (*grads, *saved, "mean", backend))


@pytestmark_fused
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_torch_compile_fullgraph(device, backend):
    if km.available_backends()[backend]:
        pytest.skip(km.available_backends()[backend])
    torch._dynamo.reset()

    def block(fr, ff, cr, cf):
        t = km.kmgan_losses(fr, ff, cr, cf, reduction="fro", backend=backend)
        return t.loss_d + t.loss_g + t.loss_center, t.labels_fake_hat

    fr, ff, cr, cf = _problem(16, 12, 10, 4, 3, seed=14, device=device)
    xe, ye = fr.clone().requires_grad_(), ff.clone().requires_grad_()
    xc, yc = fr.clone().requires_grad_(), ff.clone().requires_grad_()
    want, want_l = block(xe, ye, cr, cf)
    want.backward()
    got, got_l = torch.compile(block, fullgraph=True)(xc, yc, cr, cf)
    got.backward()
    torch.testing.assert_close(got, want)
    assert torch.equal(got_l, want_l)
    torch.testing.assert_close(xc.grad, xe.grad)
    torch.testing.assert_close(yc.grad, ye.grad)


def test_auto_prefers_the_fused_triton_kernel_on_cuda(monkeypatch):
    """Where every backend is available, auto on CUDA picks triton for this op only."""
    monkeypatch.setattr(_dispatch, "_why_not", lambda b: None)
    cuda = torch.device("cuda")
    assert _dispatch._resolve("auto", cuda, "kmgan_losses") == "triton"
    assert _dispatch._resolve("auto", cuda, "center_loss") == _dispatch._AUTO_CUDA_ORDER[0]
    assert _dispatch._resolve("auto", cuda) == _dispatch._AUTO_CUDA_ORDER[0]
    assert _dispatch._resolve("auto", torch.device("cpu"), "kmgan_losses") == "cpu"


@pytest.mark.emulated_gpu
@pytestmark_fused
def test_triton_block_is_one_launch_each_way_and_no_torch_compute(monkeypatch):
    """The paper's shape through backend="triton": one Triton launch forward, one backward, and
    no aten compute op outside them (each would be one more CUDA kernel on a GPU)."""
    if km.available_backends()["triton"]:
        pytest.skip(km.available_backends()["triton"])
    from torch.profiler import ProfilerActivity, profile, record_function

    launches = []
    mod = _triton_module()
    kernel_cls = type(mod._bwd_kernel)
    real_run = kernel_cls.run

    def counted_run(self, *args, **kwargs):
        launches.append(getattr(self, "__name__", None) or getattr(self.fn, "__name__", "?"))
        with record_function("triton_launch"):
            return real_run(self, *args, **kwargs)

    monkeypatch.setattr(kernel_cls, "run", counted_run)
    fr, ff, cr, cf = _problem(64, 64, 100, 10, 10, seed=15)
    fr.requires_grad_()
    ff.requires_grad_()
    km.kmgan_losses(fr, ff, cr, cf, backend="triton")  # warm: first-call work is not counted
    launches.clear()

    def compute_ops(prof):
        inside = set()
        out = []
        for e in sorted(prof.events(), key=lambda e: e.time_range.start):
            p = e.cpu_parent
            nested = False
            while p is not None:
                if p.name == "triton_launch":
                    nested = True
                    break
                p = p.cpu_parent
            if nested or e.name == "triton_launch":
                inside.add(e.name)
                continue
            if e.name.startswith("aten::") and not e.name.startswith(
                ("aten::empty", "aten::as_strided", "aten::view", "aten::detach", "aten::alias", "aten::lift",
                 "aten::contiguous")  # a copy inside contiguous() would still show as aten::clone/copy_
            ):
                out.append(e.name)
        return out

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = km.kmgan_losses(fr, ff, cr, cf, backend="triton")
    assert len(launches) == 1, launches
    assert compute_ops(prof) == []
    launches.clear()
    grads = [torch.ones(()) for _ in range(3)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.autograd.backward([t.loss_d, t.loss_g, t.loss_center], grads)
    assert len(launches) == 1, launches
    assert compute_ops(prof) == []
