"""Batched independent problems: x (B, N, d) with centers (B, K, d), on every backend.

Each batched op must give, problem by problem, what the single-problem op gives (bitwise:
same backend, same kernels), which the single-problem tests hold to the reference; and it
must run as one launch for all problems.
"""
import contextlib
import os

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _cuda_emulated, _dispatch, reference
from testing import assert_labels_match, backend_params

# (B, N, K, d): a single-tile case, K past the Triton interpreter's one-tile limit (its
# two-pass path with per-problem row lists), and empty problems.
SHAPES = [(3, 70, 5, 4), (2, 300, 600, 8), (4, 0, 3, 4), (0, 5, 3, 4), (5, 33, 1, 3)]


def _problems(b, n, k, d, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed + 97 * b + 13 * n + 7 * k + d)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    # Problems with their own offsets and scales: a kernel reading another problem's centers
    # or rows gives other labels.
    shift = torch.randn(b, 1, d, generator=g, dtype=torch.float64) * 5
    c = torch.randn(b, k, d, generator=g, dtype=torch.float64) + shift
    return (x + shift).to(dtype).to(device), c.to(dtype).to(device)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_equals_per_problem(device, backend, dtype, shape):
    if dtype != torch.float32 and shape[2] == 600:
        pytest.skip("one large shape per dtype is enough for CI's time")
    b, n, k, d = shape
    x, c = _problems(b, n, k, d, dtype, device)
    labels, dist2 = km.assign(x, c, backend=backend)
    assert labels.shape == (b, n) and dist2.shape == (b, n)
    assert dist2.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for i in range(b):
        one_l, one_d = km.assign(x[i], c[i], backend=backend)
        assert torch.equal(labels[i], one_l), i
        assert torch.equal(dist2[i], one_d), i
        assert_labels_match(x[i], c[i], labels[i], dist2[i])


@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_one_launch(device, backend):
    x, c = _problems(6, 40, 7, 5, device=device)
    before = _cuda_emulated.launch_count() if backend == "cuda_emulated" else None
    with _dispatch.recording() as calls:
        km.assign(x, c, backend=backend)
    assert [f for f, _ in calls] == ["assign"]  # one routed call, not one per problem
    if before is not None:
        assert _cuda_emulated.launch_count() - before == 1


# metric="cosine" (issue 12): one launch for all problems on every backend, each problem's
# labels and dist2 bitwise those of its own call (held to the reference by test_cosine.py).
@pytest.mark.parametrize("shape", [(3, 70, 5, 4), (2, 300, 600, 8), (4, 0, 3, 4), (0, 5, 3, 4)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_assign_equals_per_problem(device, backend, dtype, shape):
    if dtype != torch.float32 and shape[2] == 600:
        pytest.skip("one large shape per dtype is enough for CI's time")
    b, n, k, d = shape
    x, c = _problems(b, n, k, d, dtype, device)
    if b and n:
        x[-1, 0] = 0  # a zero row: label 0, dist2 2
        x[0, 1] = c[0, 2] * 3  # exactly center 2's direction
    labels, dist2 = km.assign(x, c, metric="cosine", backend=backend)
    assert labels.shape == (b, n) and dist2.shape == (b, n)
    for i in range(b):
        one_l, one_d = km.assign(x[i], c[i], metric="cosine", backend=backend)
        assert torch.equal(labels[i], one_l), i
        assert torch.equal(dist2[i], one_d), i
        want_l, want_d = km.assign(x[i].cpu(), c[i].cpu(), metric="cosine", backend="reference")
        assert torch.equal(labels[i].cpu(), want_l), i
        torch.testing.assert_close(dist2[i].cpu(), want_d, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_assign_one_launch(device, backend):
    x, c = _problems(6, 40, 7, 5, device=device)
    launches = _cuda_emulated.launch_count if backend == "cuda_emulated" else (lambda: 0)
    before = launches()
    km.assign(x[0], c[0], metric="cosine", backend=backend)
    one = launches() - before
    before = launches()
    with _dispatch.recording() as calls:
        km.assign(x, c, metric="cosine", backend=backend)
    assert [f for f, _ in calls] == ["assign"]  # one routed call, not one per problem
    assert launches() - before == one  # as many kernel launches as one problem's (2 on CUDA)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_gradient_per_problem(device, backend, metric):
    x, c = _problems(3, 25, 4, 3, device=device)
    x.requires_grad_(True)
    c.requires_grad_(True)
    w = torch.rand(3, 25, generator=torch.Generator().manual_seed(1)).to(device)
    _, dist2 = km.assign(x, c, metric=metric, backend=backend)
    gx, gc = torch.autograd.grad((dist2 * w).sum(), (x, c))
    for i in range(3):
        xi, ci = x[i].detach().requires_grad_(True), c[i].detach().requires_grad_(True)
        _, di = km.assign(xi, ci, metric=metric, backend=backend)
        gxi, gci = torch.autograd.grad((di * w[i]).sum(), (xi, ci))
        torch.testing.assert_close(gx[i], gxi, rtol=0, atol=0)
        torch.testing.assert_close(gc[i], gci, rtol=1e-6, atol=1e-6)  # GPU sums: atomics


# The GPU kernels sum rows in float32 blocks of up to 64 rows (float64 block totals): in the
# flat (B*K, d) update a problem's rows fall into other blocks than in its own call, so the
# last bits of a center may differ from the single-problem call (both within the contract,
# checked against the reference by test_minibatch_update.py). The CPU kernel and the
# reference sum each cluster's rows in row order: bitwise equal.
def _assert_same_update(got, want, backend, what):
    if backend in ("reference", "cpu"):
        assert torch.equal(got, want), what
    else:
        torch.testing.assert_close(got, want, rtol=2e-7, atol=1e-6, msg=what)


# opcheck/gradcheck call the op hundreds of times: minutes in the Triton interpreter. The fake
# kernel and the autograd formula are the backends' common code; each backend's gradient is
# held to its own single-problem gradient by test_assign_gradient_per_problem.
@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] in ("reference", "cpu")])
def test_assign_opcheck_and_gradcheck(device, backend):
    """The batched form goes through the same op: its fake kernel (shapes (B, N)), autograd
    registration and float64 gradients hold, as test_assign.py holds them for one problem."""
    x, c = _problems(3, 9, 4, 5, dtype=torch.float64, device=device)
    # Not opcheck's aot_dispatch tests (a torch.compile of the op, ~40 s; test_assign.py runs
    # them on the op's one-problem form): the schema, autograd and fake-kernel checks.
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.kmgan_ext.assign.default, (x, c, backend), test_utils=utils)
    xg, cg = x.clone().requires_grad_(), c.clone().requires_grad_()
    torch.library.opcheck(torch.ops.kmgan_ext.assign.default, (xg, cg, backend), test_utils=utils)
    # few inputs: gradcheck perturbs each one (the reference takes ~0.1 s a batched call)
    xs, cs = (t[:2, :3, :2].clone().requires_grad_() for t in (x, c))
    assert torch.autograd.gradcheck(lambda x, c: km.assign(x, c, backend=backend)[1], (xs, cs))


def _state(b, k, device):
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 4, (b, k), generator=g).to(device)


@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_update_equals_per_problem(device, backend):
    x, c = _problems(4, 60, 6, 5, device=device)
    labels, _ = km.assign(x, c, backend="reference")
    counts = _state(4, 6, device)
    cb, nb = c.clone(), counts.clone()
    km.minibatch_update_(cb, nb, x, labels, deterministic=True, backend=backend)
    for i in range(4):
        ci, ni = c[i].clone(), counts[i].clone()
        km.minibatch_update_(ci, ni, x[i], labels[i], deterministic=True, backend=backend)
        _assert_same_update(cb[i], ci, backend, i)
        assert torch.equal(nb[i], ni), i
    # and the batched reference, which runs the same loop in float64
    cr, nr = c.clone(), counts.clone()
    km.minibatch_update_(cr, nr, x, labels, backend="reference")
    torch.testing.assert_close(cb, cr, rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_update_one_launch_and_noncontiguous(device, backend):
    x, c = _problems(3, 20, 4, 3, device=device)
    labels, _ = km.assign(x, c, backend="reference")
    want, want_n = c.clone(), torch.zeros(3, 4, dtype=torch.int64, device=device)
    km.minibatch_update_(want, want_n, x, labels, deterministic=True, backend=backend)
    # centers (B, K, d) as a transposed view: no flat view exists, the update is written back.
    got = c.transpose(0, 1).contiguous().transpose(0, 1)
    assert not got.is_contiguous()
    got_n = torch.zeros(3, 4, dtype=torch.int64, device=device)
    with _dispatch.recording() as calls:
        km.minibatch_update_(got, got_n, x, labels, deterministic=True, backend=backend)
    assert [f for f, _ in calls] == ["minibatch_update_"]
    assert torch.equal(got, want) and torch.equal(got_n, want_n)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_minibatch_step_equals_per_problem(device, backend, metric):
    x, c = _problems(3, 50, 5, 4, device=device)
    cb, nb = c.clone(), torch.zeros(3, 5, dtype=torch.int64, device=device)
    with _dispatch.recording() as calls:
        lb = km.minibatch_step_(cb, nb, x, deterministic=True, metric=metric, backend=backend)
    assert [f for f, _ in calls] == ["assign", "minibatch_update_"]
    assert lb.shape == (3, 50)
    for i in range(3):
        ci, ni = c[i].clone(), torch.zeros(5, dtype=torch.int64, device=device)
        li = km.minibatch_step_(ci, ni, x[i], deterministic=True, metric=metric, backend=backend)
        assert torch.equal(lb[i], li)
        _assert_same_update(cb[i], ci, backend, i)
        assert torch.equal(nb[i], ni)


# ema_update_ (issue 12): one call of the op and one launch sequence for all problems (the
# problem is a grid axis on triton and cuda, a loop inside the one cpu call), each problem
# bitwise its own 2-D call: the Laplace smoothing's total n is each problem's own. Shapes: the
# one-program Triton path, K past it (the sorted / atomic paths), and empty problems.
EMA_SHAPES = [(3, 40, 5, 4), (2, 150, 70, 6), (3, 0, 4, 3), (0, 5, 3, 4)]


def _ema_case(b, n, k, d, device, weighted):
    x, c = _problems(b, n, k, d, device=device)
    labels, _ = km.assign(x, c, backend="reference")
    if b:
        labels[0][labels[0] == k - 1] = 0  # an empty cluster in problem 0
    g = torch.Generator().manual_seed(3)
    size = torch.rand(b, k, generator=g).to(device)
    embed = torch.randn(b, k, d, generator=g).to(device)
    if b > 1:
        size[1] = 0  # a problem with no history: its own total, not its neighbours', decides
        embed[1] = 0  # with no rows, N'_k == 0: its centers are kept
    w = None
    if weighted:
        w = torch.rand(b, n, generator=g, dtype=torch.float64).to(device)
        if b and n:
            w[0, :3] = 0  # zero-weight rows count for nothing
    return x, c, labels, size, embed, w


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("shape", EMA_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_update_equals_per_problem(device, backend, shape, deterministic, metric, weighted):
    b, n, k, d = shape
    x, c, labels, size, embed, w = _ema_case(b, n, k, d, device, weighted)
    cb, sb, eb = c.clone(), size.clone(), embed.clone()
    with _dispatch.recording() as calls:
        km.ema_update_(cb, sb, eb, x, labels, sample_weight=w, decay=0.9, eps=1e-3,
                       deterministic=deterministic, metric=metric, backend=backend)
    assert [f for f, _ in calls] == ["ema_update_"]  # one routed call, not one per problem
    # Float atomics (the fast mode of the GPU backends, but Triton's one-program path for
    # K <= 64) may add in another order in every call: bitwise only in the deterministic mode.
    exact = deterministic or backend in ("reference", "cpu") or (backend == "triton" and k <= 64)
    for i in range(b):
        ci, si, ei = c[i].clone(), size[i].clone(), embed[i].clone()
        km.ema_update_(ci, si, ei, x[i], labels[i], sample_weight=None if w is None else w[i],
                       decay=0.9, eps=1e-3, deterministic=deterministic, metric=metric,
                       backend=backend)
        for got, want, what in ((cb[i], ci, "centers"), (sb[i], si, "cluster_size"),
                                (eb[i], ei, "embed_sum")):
            if exact:
                assert torch.equal(got, want), (i, what)
            else:
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=(i, what))
    cr, sr, er = c.cpu().clone(), size.cpu().clone(), embed.cpu().clone()
    reference.ema_update_(cr, sr, er, x.cpu(), labels.cpu(), 0.9, 1e-3, False,
                          metric == "cosine", None if w is None else w.cpu())
    torch.testing.assert_close(cb.cpu(), cr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sb.cpu(), sr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eb.cpu(), er, rtol=1e-5, atol=1e-5)


@contextlib.contextmanager
def _launch_counter(backend):
    """Yields a function returning the kernel launches so far on ``backend``, or None where
    there are none of our own to count here."""
    if backend == "cuda_emulated":
        yield _cuda_emulated.launch_count
        return
    if backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        import triton_emulation as em

        if em.incompatible() is None:
            with em.emulate("forward") as st:
                yield lambda: st.launches
            return
    yield None


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "fast"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_update_one_launch_sequence(device, backend, deterministic):
    """B problems take as many kernel launches as one problem, not B times as many."""
    b, n, k, d = 5, 30, 70, 4
    x, c, labels, size, embed, w = _ema_case(b, n, k, d, device, weighted=True)
    args = dict(decay=0.9, deterministic=deterministic, metric="cosine", backend=backend)
    with _launch_counter(backend) as count:
        if count is None:
            pytest.skip(f"{backend}: no kernel launches to count here (its one routed call is "
                        "checked by test_ema_update_equals_per_problem)")
        before = count()
        km.ema_update_(c[0].clone(), size[0].clone(), embed[0].clone(), x[0], labels[0],
                       sample_weight=w[0], **args)
        one = count() - before
        before = count()
        km.ema_update_(c.clone(), size.clone(), embed.clone(), x, labels, sample_weight=w, **args)
        assert one > 0 and count() - before == one, (one, count() - before)


@pytest.mark.emulated_gpu
def test_ema_update_triton_past_the_grid_limit(monkeypatch):
    """More problems than a grid axis holds (65535 on a GPU; 2 here) run in slices."""
    if km.available_backends()["triton"]:
        pytest.skip(km.available_backends()["triton"])
    from kmgan_ext.kernels import minibatch_update as triton_updates

    monkeypatch.setattr(triton_updates, "_MAX_PROBLEMS", 2)
    x, c, labels, size, embed, w = _ema_case(5, 30, 4, 3, "cpu", weighted=True)
    cb, sb, eb = c.clone(), size.clone(), embed.clone()
    km.ema_update_(cb, sb, eb, x, labels, sample_weight=w, decay=0.9, deterministic=True,
                   backend="triton")
    for i in range(5):
        ci, si, ei = c[i].clone(), size[i].clone(), embed[i].clone()
        km.ema_update_(ci, si, ei, x[i], labels[i], sample_weight=w[i], decay=0.9,
                       deterministic=True, backend="triton")
        assert torch.equal(cb[i], ci) and torch.equal(sb[i], si) and torch.equal(eb[i], ei), i


@pytest.mark.parametrize("device,backend", [p for p in backend_params() if p.values[1] in ("reference", "cpu")])
def test_ema_update_opcheck(device, backend):
    """The batched form goes through the op itself: schema (mutated arguments), fake kernel."""
    x, c, labels, size, embed, w = _ema_case(3, 20, 4, 5, device, weighted=True)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.kmgan_ext.ema_update_.default,
                          (c.clone(), size.clone(), embed.clone(), x, labels, 0.9, 1e-5, True,
                           backend, True, w), test_utils=utils)


@pytest.mark.parametrize("device,backend", backend_params())
def test_labels_of_another_problem_are_refused(device, backend):
    if device != "cpu":
        pytest.skip("on a GPU the range check is a device-side assert")
    x, c = _problems(2, 10, 3, 2, device=device)
    labels = torch.zeros(2, 10, dtype=torch.int64, device=device)
    labels[0, 4] = 3  # center 0 of problem 1 in the flat (B*K, d) view: still out of range
    cb, nb = c.clone(), torch.zeros(2, 3, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        km.minibatch_update_(cb, nb, x, labels, backend=backend)
    assert torch.equal(cb, c) and not nb.any()
    size, embed = torch.zeros(2, 3, device=device), torch.zeros(2, 3, 2, device=device)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        km.ema_update_(cb, size, embed, x, labels, backend=backend)
    assert torch.equal(cb, c)


def test_bad_batched_shapes():
    x, c = _problems(2, 5, 3, 4)
    with pytest.raises(ValueError, match=r"centers must hold 2 problems \(x.shape\[0\]\)"):
        km.assign(x, c[:1])
    with pytest.raises(ValueError, match=r"x must be 3-D \(B, N, d\) with 3-D centers"):
        km.assign(x[0], c)
    with pytest.raises(ValueError, match=r"centers must have 4 features"):
        km.assign(x, c[..., :3])
    with pytest.raises(ValueError, match=r"K >= 1"):
        km.assign(x, c[:, :0])
    with pytest.raises(TypeError, match=r"x and centers must share one dtype"):
        km.assign(x.double(), c)
    with pytest.raises(ValueError, match=r"counts must have shape \(2, 3\)"):
        km.minibatch_update_(c.clone(), torch.zeros(3, dtype=torch.int64), x,
                             torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 5\) \(B, N\)"):
        km.minibatch_update_(c.clone(), torch.zeros(2, 3, dtype=torch.int64), x,
                             torch.zeros(10, dtype=torch.int64))


# ------------------------------------------------------------------------------ km.kmeans
def test_kmeans_equals_per_problem():
    x, _ = _problems(3, 80, 4, 3, seed=11)
    got = km.kmeans(x, 4, niter=5, seed=7, backend="torch")
    assert got.centers.shape == (3, 4, 3) and got.labels.shape == (3, 80)
    assert got.inertia.shape == (3,) and got.inertia.dtype == torch.float64
    for i in range(3):
        one = km.kmeans(x[i], 4, niter=5, seed=7 + i, backend="torch")
        assert torch.equal(got.centers[i], one.centers), i
        assert torch.equal(got.labels[i], one.labels), i
        assert float(got.inertia[i]) == one.inertia


def test_kmeans_batched_init_array_and_empty_cluster():
    x, _ = _problems(2, 30, 3, 2, seed=3)
    init = x[:, :3].clone()
    init[1, 2] = 1e3  # far from every row: empty after the first assignment, re-seeded
    got = km.kmeans(x, 3, init=init, niter=3, backend="torch")
    for i in range(2):
        one = km.kmeans(x[i], 3, init=init[i], niter=3, backend="torch")
        assert torch.equal(got.centers[i], one.centers)
        assert torch.equal(got.labels[i], one.labels)
    assert bool(torch.isfinite(got.centers).all())


@pytest.mark.parametrize("init", ["k-means++", "array"])
def test_kmeans_cosine_equals_per_problem(init):
    """metric="cosine" on (B, N, d): problem b is km.kmeans(x[b], metric="cosine", seed=seed
    + b), bitwise (spherical k-means, its seeding on the sphere and the batched assign)."""
    x, _ = _problems(3, 80, 4, 3, seed=11)
    x[1, :40] *= 50  # norms must not matter, directions do
    start = x[:, :4].clone() if init == "array" else init
    got = km.kmeans(x, 4, init=start, niter=5, seed=7, metric="cosine", backend="torch")
    assert got.centers.shape == (3, 4, 3) and got.labels.shape == (3, 80)
    torch.testing.assert_close(got.centers.norm(dim=2), torch.ones(3, 4))
    for i in range(3):
        one = km.kmeans(x[i], 4, init=start[i] if init == "array" else init, niter=5, seed=7 + i,
                        metric="cosine", backend="torch")
        assert torch.equal(got.centers[i], one.centers), i
        assert torch.equal(got.labels[i], one.labels), i
        assert float(got.inertia[i]) == one.inertia


def test_kmeans_cosine_empty_cluster_takes_a_unit_row():
    x, _ = _problems(2, 30, 3, 2, seed=3)
    init = x[:, :3].clone()
    init[1, 2] = -x[1].sum(0) * 1e3  # opposite every row's mean direction: empties, re-seeded
    got = km.kmeans(x, 3, init=init, niter=3, metric="cosine", backend="torch")
    for i in range(2):
        one = km.kmeans(x[i], 3, init=init[i], niter=3, metric="cosine", backend="torch")
        assert torch.equal(got.centers[i], one.centers)
    torch.testing.assert_close(got.centers.norm(dim=2), torch.ones(2, 3))


def test_kmeans_batched_refuses_sample_weight():
    x, _ = _problems(2, 10, 2, 2)
    with pytest.raises(ValueError, match="sample_weight"):
        km.kmeans(x, 2, sample_weight=torch.ones(2, 10))


def test_kmeans_batched_refuses_faiss():
    x, _ = _problems(2, 10, 2, 2)
    with pytest.raises(ValueError, match="backend 'torch'"):
        km.kmeans(x, 2, backend="faiss")


# ------------------------------------------------------------------------------ the peer
fpk = pytest.importorskip("fast_pytorch_kmeans")


def _separated(b, n, k, d, seed):
    """Rows near their problem's centers: no near ties, so every exact method agrees."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(b, k, d, generator=g, dtype=torch.float64) * 10
    pick = torch.randint(0, k, (b, n), generator=g)
    x = torch.gather(c, 1, pick[:, :, None].expand(b, n, d))
    return x + 0.3 * torch.randn(b, n, d, generator=g, dtype=torch.float64), c


@pytest.mark.parametrize("device,backend", backend_params())
def test_assign_matches_multikmeans_predict(device, backend):
    x, c = _separated(4, 200, 6, 5, seed=2)
    peer = fpk.MultiKMeans(n_clusters=6, mode="euclidean")
    peer.centroids = c
    want = peer.predict(x)
    got, _ = km.assign(x.float().to(device), c.float().to(device), backend=backend)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device,backend", backend_params())
def test_cosine_assign_matches_multikmeans_predict(device, backend):
    x, c = _separated(4, 200, 6, 5, seed=6)
    x[:, ::3] *= 7  # norms must not matter
    peer = fpk.MultiKMeans(n_clusters=6, mode="cosine")
    peer.centroids = c
    want = peer.predict(x)
    got, _ = km.assign(x.float().to(device), c.float().to(device), metric="cosine", backend=backend)
    assert torch.equal(got.cpu(), want)


def test_kmeans_matches_multikmeans_lloyd():
    x, c = _separated(3, 300, 5, 4, seed=4)
    init = c + 0.5
    peer = fpk.MultiKMeans(n_clusters=5, max_iter=4, tol=-1.0, mode="euclidean")
    peer.fit(x, centroids=init.clone())
    got = km.kmeans(x, 5, init=init, niter=4, backend="torch")
    torch.testing.assert_close(got.centers, peer.centroids, rtol=1e-12, atol=1e-12)
