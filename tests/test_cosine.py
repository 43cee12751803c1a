"""metric="cosine" (spherical k-means, issue 12) in assign and the center updates.

Every backend against the float64 reference (tests/testing.py matrix): exact labels on near
ties, zero rows and centers, NaN, 16-bit inputs, gradients, the updates; the assignment
against a peer (fast-pytorch-kmeans' cosine mode) where installed. Every backend has a cosine
kernel (cuda's runs here as cuda_emulated); a backend without one would have to refuse it with
NotImplementedError (test_known_answer asserts that; the other tests xfail there, visibly).
"""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import backend_params, fast_backend_params, tol

COSINE_BACKENDS = ("reference", "cpu", "triton", "cuda", "cuda_emulated")


def _require_cosine(backend):
    if backend not in COSINE_BACKENDS:
        pytest.xfail(f"{backend} has no cosine kernel yet (NotImplementedError)")


def _assign(x, c, backend):
    return km.assign(x, c, metric="cosine", backend=backend)


@pytest.mark.parametrize("device,backend", backend_params())
def test_known_answer(device, backend):
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, -2.0], [0.0, 0.0], [5.0, 5.0]], device=device)
    # far along +x, short along +y, a zero center, a duplicate direction at another scale
    c = torch.tensor([[10.0, 0.0], [0.0, 0.1], [0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], device=device)
    if backend not in COSINE_BACKENDS:
        with pytest.raises(NotImplementedError, match="cosine"):
            _assign(x, c, backend)
        return
    labels, dist2 = _assign(x, c, backend)
    # (-2, -2) is opposed to every nonzero center: the zero center (cos 0) wins; the zero row
    # is orthogonal to all: label 0, dist2 2; (5, 5) ties between centers 3 and 4: the lower.
    assert labels.tolist() == [0, 1, 2, 0, 3]
    torch.testing.assert_close(dist2.cpu(), torch.tensor([0.0, 0.0, 2.0, 2.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_random_every_dtype(device, backend, dtype):
    _require_cosine(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(777, 19, generator=g).to(dtype).to(device)
    c = torch.randn(37, 19, generator=g).to(dtype).to(device)
    x[5] = 0
    c[7] = 0
    labels, dist2 = _assign(x, c, backend)
    ref_labels, ref_dist2 = reference.assign(x, c, True)
    assert torch.equal(labels.cpu(), ref_labels.cpu())
    assert dist2.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(dist2.cpu().double(), ref_dist2.cpu().double(), **tol(torch.float32 if dtype != torch.float64 else dtype))


def _near_tie_problem(seed=3, n=400, d=48):
    """Rows whose two best centers' cosines differ by a few float64 ulps: float32 cannot order
    them, only the exact re-check can. Centers: unit directions and rescaled / nudged copies."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, d, generator=g, dtype=torch.float64)
    c = torch.cat([
        base,
        base * 3.0,                                   # same directions, another norm
        base + 1e-13 * torch.randn(6, d, generator=g, dtype=torch.float64),
        base * 0.7 - 1e-12 * torch.randn(6, d, generator=g, dtype=torch.float64),
    ]).float()
    i = torch.randint(0, 6, (n,), generator=g)
    x = (base[i] + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)).float()
    return x, c


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_near_ties_are_the_float64_argmax(device, backend):
    _require_cosine(backend)
    x, c = _near_tie_problem()
    labels, _ = _assign(x.to(device), c.to(device), backend)
    ref_labels, _ = reference.assign(x, c, True)
    assert torch.equal(labels.cpu(), ref_labels)
    # The problem is a real near-tie one: float32 cosines pick other labels on some rows.
    xn = torch.nn.functional.normalize(x, dim=1)
    cn = torch.nn.functional.normalize(c, dim=1)
    assert (torch.argmax(xn @ cn.t(), dim=1) != ref_labels).any()


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_many_center_tiles(device, backend):
    """K = 600 spans several center tiles (Triton's interpreter tiles 512, CUDA's lanes 32):
    copies of each direction far apart in k (another scale, nudged) keep the best candidates
    in different tiles, so the window's count must carry across tiles."""
    _require_cosine(backend)
    g = torch.Generator().manual_seed(13)
    base = torch.randn(200, 8, generator=g, dtype=torch.float64)
    c = torch.cat([base, base * 2.5, base + 1e-6 * torch.randn(200, 8, generator=g, dtype=torch.float64)])
    x = base[torch.randint(0, 200, (96,), generator=g)] + 1e-4 * torch.randn(96, 8, generator=g, dtype=torch.float64)
    x, c = x.float(), c.float()
    labels, dist2 = _assign(x.to(device), c.to(device), backend)
    ref_labels, ref_dist2 = reference.assign(x, c, True)
    assert torch.equal(labels.cpu(), ref_labels)
    assert (ref_labels >= 400).any()  # some rows are decided by a copy past the first 512
    torch.testing.assert_close(dist2.cpu(), ref_dist2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_exact_ties_go_to_the_lowest_index(device, backend):
    _require_cosine(backend)
    g = torch.Generator().manual_seed(4)
    c = torch.randn(5, 9, generator=g)
    c = torch.cat([c, c, c]).to(device)  # each direction three times, identical values
    x = torch.randn(300, 9, generator=g).to(device)
    labels, _ = _assign(x, c, backend)
    assert int(labels.max()) < 5
    assert torch.equal(labels.cpu(), reference.assign(x.cpu(), c.cpu(), True)[0])


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_nan_and_huge_values_follow_the_reference(device, backend):
    _require_cosine(backend)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=g)
    c = torch.randn(8, 6, generator=g)
    x[3, 2] = float("nan")
    x[4, 0] = float("inf")
    x[10:20] *= 3e37  # squares overflow float32: the exact path must still give the label
    labels, dist2 = _assign(x.to(device), c.to(device), backend)
    ref_labels, ref_dist2 = reference.assign(x, c, True)
    assert torch.equal(labels.cpu(), ref_labels)
    assert torch.isnan(dist2[3]) and torch.isnan(dist2[4])
    # A NaN center: every row's label is 6 (its first NaN), but rows 3 and 4 (NaN at k = 0).
    c[6, 1] = float("nan")
    labels, dist2 = _assign(x.to(device), c.to(device), backend)
    want = [0 if i in (3, 4) else 6 for i in range(64)]
    assert labels.tolist() == reference.assign(x, c, True)[0].tolist() == want
    assert torch.isnan(dist2).all()
    # float64 centers whose squared norm overflows double: no unit center exists; the exact
    # key decides (here NaN, inf / inf, at the huge center), as in the reference.
    xd, cd = x.double(), torch.randn(8, 6, generator=g, dtype=torch.float64)
    cd[2] *= 1e200
    labels, _ = _assign(xd.to(device), cd.to(device), backend)
    assert torch.equal(labels.cpu(), reference.assign(xd, cd, True)[0])


@pytest.mark.parametrize("device,backend", backend_params())
def test_gradcheck_float64(device, backend):
    _require_cosine(backend)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c = torch.randn(4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, c: _assign(x, c, backend)[1], (x, c))


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_gradient_matches_the_reference_and_is_zero_at_zero_rows(device, backend):
    _require_cosine(backend)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(50, 8, generator=g)
    c = torch.randn(6, 8, generator=g)
    x[0] = 0
    c[2] = 0
    gd = torch.randn(50, generator=g)
    labels = reference.assign(x, c, True)[0]
    want = reference.assign_backward(gd, x.double(), c.double(), labels, True, True)
    xg, cg = x.to(device).requires_grad_(), c.to(device).requires_grad_()
    _, dist2 = _assign(xg, cg, backend)
    dist2.backward(gd.to(device))
    torch.testing.assert_close(xg.grad.cpu().double(), want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cg.grad.cpu().double(), want[1], rtol=1e-5, atol=1e-6)
    assert not xg.grad[0].any()


def test_opcheck_cpu():
    g = torch.Generator().manual_seed(8)
    x, c = torch.randn(33, 7, generator=g), torch.randn(5, 7, generator=g)
    torch.library.opcheck(torch.ops.kmgan_ext.assign.default, (x, c, "cpu", True))
    labels = reference.assign(x, c, True)[0]
    torch.library.opcheck(
        torch.ops.kmgan_ext.assign_backward.default,
        (torch.randn(33, dtype=torch.float64), x.double(), c.double(), labels, True, "cpu", True),
    )
    # The flag defaults to False: positional calls without it keep their meaning.
    assert torch.equal(torch.ops.kmgan_ext.assign(x, c, "cpu")[0], reference.assign(x, c)[0])


def test_bad_metric_is_named():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="metric must be one of"):
        km.assign(x, x, metric="cos")
    with pytest.raises(TypeError, match="metric must be a string"):
        km.minibatch_step_(x.clone(), torch.zeros(4, dtype=torch.int64), x, metric=None)


# ------------------------------------------------------------------ updates (spherical k-means)
def _update_problem(dtype, seed=9, n=300, d=11, k=7):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * 5 + 2).to(dtype)
    x[0] = 0  # a zero row: counts, adds nothing to the sum
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1).to(dtype)
    return x, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_minibatch_step_matches_the_reference(device, backend, dtype):
    _require_cosine(backend)
    x, c = _update_problem(dtype)
    cr, nr = c.clone(), torch.full((c.shape[0],), 3, dtype=torch.int64)
    lr = reference.minibatch_step_(cr, nr, x, False, True)
    cb, nb = c.clone().to(device), torch.full((c.shape[0],), 3, dtype=torch.int64, device=device)
    lb = km.minibatch_step_(cb, nb, x.to(device), metric="cosine", backend=backend)
    assert torch.equal(lb.cpu(), lr) and torch.equal(nb.cpu(), nr)
    torch.testing.assert_close(cb.cpu().double(), cr.double(), **tol(dtype))
    hit = torch.bincount(lr, minlength=c.shape[0]) > 0
    norms = cb.double().norm(dim=1).cpu()
    torch.testing.assert_close(norms[hit], torch.ones(int(hit.sum()), dtype=torch.float64), **tol(dtype))


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_minibatch_update_leaves_clusters_without_rows(device, backend):
    _require_cosine(backend)
    x, c = _update_problem(torch.float32)
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    labels[1::2] = 3
    c[5] *= 4  # not unit, no rows: untouched (not renormalised)
    cb, nb = c.clone().to(device), torch.zeros(c.shape[0], dtype=torch.int64, device=device)
    km.minibatch_update_(cb, nb, x.to(device), labels.to(device), metric="cosine", backend=backend)
    cr, nr = c.clone(), torch.zeros(c.shape[0], dtype=torch.int64)
    reference.minibatch_update_(cr, nr, x, labels, False, True)
    torch.testing.assert_close(cb.cpu(), cr, rtol=1e-6, atol=1e-6)
    assert torch.equal(cb[5].cpu(), c[5])
    # With zero counts the update is the normalised mean direction of the normalised rows.
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    want = torch.nn.functional.normalize(xn[labels == 3].sum(0), dim=0)
    torch.testing.assert_close(cb[3].cpu().double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_updates_past_the_small_path(device, backend, deterministic):
    """K = 100 > 64 and N K d > 2^22: the general segment-sum paths (atomic and sorted), not the
    single-program one; Sculley and the EMA against the reference."""
    _require_cosine(backend)
    g = torch.Generator().manual_seed(14)
    x = torch.randn(4800, 9, generator=g) * 3 + 1
    x[4] = 0
    c = torch.nn.functional.normalize(torch.randn(100, 9, generator=g), dim=1)
    labels = reference.assign(x, c, True)[0]
    cr, nr = c.clone(), torch.zeros(100, dtype=torch.int64)
    reference.minibatch_update_(cr, nr, x, labels, False, True)
    cb, nb = c.clone().to(device), torch.zeros(100, dtype=torch.int64, device=device)
    km.minibatch_update_(cb, nb, x.to(device), labels.to(device), deterministic=deterministic,
                         metric="cosine", backend=backend)
    assert torch.equal(nb.cpu(), nr)
    torch.testing.assert_close(cb.cpu(), cr, rtol=1e-6, atol=1e-6)
    states = []
    for be in ("reference", backend):
        cc = c.clone().to(device)
        size, esum = torch.zeros(100, device=device), torch.zeros(100, 9, device=device)
        km.ema_update_(cc, size, esum, x.to(device), labels.to(device), decay=0.9,
                       deterministic=deterministic, metric="cosine", backend=be)
        states.append((cc.cpu(), size.cpu(), esum.cpu()))
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_ema_update_matches_the_reference(device, backend):
    _require_cosine(backend)
    x, c = _update_problem(torch.float32)
    labels = reference.assign(x, c, True)[0]
    k, d = c.shape
    states = []
    for be in ("reference", backend):
        cc = c.clone().to(device)
        size, esum = torch.zeros(k, device=device), torch.zeros(k, d, device=device)
        km.ema_update_(cc, size, esum, x.to(device), labels.to(device), decay=0.9, metric="cosine", backend=be)
        states.append((cc.cpu(), size.cpu(), esum.cpu()))
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    hit = torch.bincount(labels, minlength=k) > 0
    torch.testing.assert_close(states[1][0][hit].norm(dim=1), torch.ones(int(hit.sum())))


@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_ema_update_without_rows_still_renormalises(device, backend):
    """N = 0: the state decays and c_k = M_k / N'_k is renormalised as with rows (CUDA once
    read its empty row-norm workspace, a null pointer, as metric="euclidean")."""
    _require_cosine(backend)
    _, c = _update_problem(torch.float32)
    k, d = c.shape
    g = torch.Generator().manual_seed(12)
    state = (torch.rand(k, generator=g) + 0.5, torch.randn(k, d, generator=g) * 3)
    got = [c.clone().to(device)] + [t.clone().to(device) for t in state]
    want = [c.clone()] + [t.clone() for t in state]
    empty = torch.empty(0, d)
    km.ema_update_(*got, empty.to(device), torch.empty(0, dtype=torch.int64, device=device),
                   decay=0.9, metric="cosine", backend=backend)
    km.ema_update_(*want, empty, torch.empty(0, dtype=torch.int64), decay=0.9, metric="cosine",
                   backend="reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(want[0].norm(dim=1), torch.ones(k))


# ------------------------------------------------------------------ against a peer
def test_assignment_matches_fast_pytorch_kmeans():
    fpk = pytest.importorskip("fast_pytorch_kmeans")
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    c = torch.randn(20, 16, generator=g, dtype=torch.float64)
    peer = fpk.KMeans(n_clusters=20, mode="cosine")
    peer.centroids = c
    # float64 in both: the peer's normalise-then-matmul agrees with the exact argmax on data
    # without near ties
    assert torch.equal(peer.predict(x), km.assign(x, c, metric="cosine", backend="cpu")[0])


# ------------------------------------------------------------------ spherical k-means
def _spherical_lloyd(x, c, niter):
    """Dhillon & Modha's spherical k-means, transcribed in float64 numpy: labels by the
    largest cosine, centers the renormalised sums of the normalised rows (every cluster is
    hit in the problems below)."""
    import numpy as np

    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    for _ in range(niter):
        labels = np.argmax(xn @ c.T, axis=1)
        s = np.stack([xn[labels == j].sum(0) for j in range(c.shape[0])])
        assert (np.bincount(labels, minlength=c.shape[0]) > 0).all()
        c = s / np.linalg.norm(s, axis=1, keepdims=True)
    return np.argmax(xn @ c.T, axis=1), c


def _directions_problem(seed=12, n=1500, d=12, k=6, noise=0.35):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    truth = torch.randint(0, k, (n,), generator=g)
    scale = 0.5 + 10 * torch.rand(n, 1, generator=g, dtype=torch.float64)  # norms do not matter
    x = (dirs[truth] + noise * torch.randn(n, d, generator=g, dtype=torch.float64)) * scale
    init = x[torch.randperm(n, generator=g)[:k]]
    return x, init, truth


def test_kmeans_is_spherical_lloyd():
    x, init, _ = _directions_problem()
    want_labels, want_centers = _spherical_lloyd(x.numpy(), init.numpy(), 8)
    r = km.kmeans(x, 6, init=init, niter=8, metric="cosine")
    assert torch.equal(r.labels, torch.from_numpy(want_labels))
    torch.testing.assert_close(r.centers, torch.from_numpy(want_centers), rtol=1e-10, atol=1e-12)
    want_inertia = float((2 - 2 * (torch.nn.functional.normalize(x, dim=1) * r.centers[r.labels]).sum(1)).sum())
    assert abs(r.inertia - want_inertia) <= 1e-9 * want_inertia


def test_kmeans_plusplus_on_the_sphere_and_quality():
    from sklearn.metrics import adjusted_rand_score

    x, _, truth = _directions_problem(noise=0.1)
    c = km.kmeans_plusplus(x, 6, seed=3, metric="cosine")
    assert c.shape == (6, 12)
    # The norms vary 20-fold: only the direction carries the cluster, which Euclidean
    # k-means cannot see and spherical k-means finds.
    r = km.kmeans(x.float(), 6, metric="cosine", niter=20, seed=3)
    torch.testing.assert_close(r.centers.norm(dim=1), torch.ones(6))
    ari = adjusted_rand_score(truth.numpy(), r.labels.numpy())
    euclid = adjusted_rand_score(truth.numpy(), km.kmeans(x.float(), 6, niter=20, seed=3).labels.numpy())
    assert ari > 0.99 and euclid < 0.9, (ari, euclid)


def test_estimators_with_cosine():
    x, init, _ = _directions_problem()
    want_labels, want_centers = _spherical_lloyd(x.numpy(), init.numpy(), 300)
    est = km.KMeans(n_clusters=6, init=init.numpy(), n_init=1, metric="cosine", tol=0).fit(x.numpy())
    assert (est.labels_ == want_labels).all()
    torch.testing.assert_close(torch.from_numpy(est.cluster_centers_), torch.from_numpy(want_centers), rtol=1e-9, atol=1e-12)
    assert (est.predict(x.numpy()) == want_labels).all()
    t = est.transform(x.numpy())
    assert (t.argmin(1) == want_labels).all()
    mb = km.MiniBatchKMeans(n_clusters=6, init=init.numpy(), n_init=1, metric="cosine", batch_size=256)
    mb.partial_fit(x[:256].numpy())
    c, n = init.clone(), torch.zeros(6, dtype=torch.int64)
    c = torch.nn.functional.normalize(c, dim=1)
    reference.minibatch_step_(c, n, x[:256], False, True)
    torch.testing.assert_close(torch.from_numpy(mb.cluster_centers_), c, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        km.KMeans(n_clusters=2, metric="manhattan").fit(x.numpy())


def test_minibatch_kmeans_module_with_cosine():
    x, init, _ = _directions_problem()
    mod = km.MiniBatchKMeansModule(6, metric="cosine", update="always")
    mod.partial_fit(x[:500].float())
    torch.testing.assert_close(mod.centers.norm(dim=1), torch.ones(6))
    labels = mod(x[500:600].float(), update=False)
    assert torch.equal(labels, km.assign(x[500:600].float(), mod.centers, metric="cosine")[0])
