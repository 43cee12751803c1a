"""km.kmeans: Lloyd over all rows (faiss.Kmeans or torch), result contract, empty clusters."""
import numpy as np
import pytest
import torch

import kmgan_ext as km
from kmgan_ext.seeding import _data

HAVE_FAISS = _data.faiss_module() is not None
BACKENDS = ["torch"] + (["faiss"] if HAVE_FAISS else [])


def _blobs(n=1200, d=5, k=6, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    means = 6 * rng.standard_normal((k, d))
    return (means[rng.integers(0, k, n)] + rng.standard_normal((n, d))).astype(dtype)


def _check_result(x, res, k):
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    c = torch.as_tensor(np.asarray(res.centers, dtype=np.float64))
    assert c.shape == (k, x.shape[1]) and torch.isfinite(c).all()
    d = torch.cdist(xt, c) ** 2
    labels = torch.as_tensor(np.asarray(res.labels))
    assert labels.dtype == torch.int64 and labels.shape == (x.shape[0],)
    chosen = d[torch.arange(len(labels)), labels]
    assert (chosen <= d.min(1).values * (1 + 1e-5) + 1e-6).all(), "labels are not the argmin"
    assert res.inertia == pytest.approx(float(chosen.sum()), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_result_contract_numpy(backend):
    x = _blobs()
    res = km.kmeans(x, 6, backend=backend)
    assert isinstance(res, km.KMeansResult) and isinstance(res.inertia, float)
    assert isinstance(res.centers, np.ndarray) and res.centers.dtype == np.float32
    assert isinstance(res.labels, np.ndarray)
    _check_result(x, res, 6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_result_contract_tensor(backend, dtype):
    x = torch.from_numpy(_blobs()).to(dtype)
    res = km.kmeans(x, 6, backend=backend, niter=10)
    assert res.centers.dtype == dtype and res.centers.device == x.device
    assert res.labels.dtype == torch.int64
    # labels/inertia are computed against the centers before the cast to x's dtype
    if dtype != torch.bfloat16:
        _check_result(x.double().numpy(), res._replace(centers=res.centers.double()), 6)


@pytest.mark.skipif(not HAVE_FAISS, reason="faiss not installed")
def test_faiss_and_torch_lloyd_agree_and_use_every_row():
    # N = 3000 > 256 * k: faiss.Kmeans' defaults would train on a 1024-row subsample; here the
    # faiss result must equal the torch Lloyd, which always reads every row.
    x = _blobs(n=3000, d=8, k=4, seed=3)
    a = km.kmeans(x, 4, backend="faiss", niter=15, seed=2)
    b = km.kmeans(x, 4, backend="torch", niter=15, seed=2)
    np.testing.assert_allclose(a.centers, b.centers, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-6)


def test_lloyd_lowers_inertia_and_niter_zero_returns_the_seeds():
    x = _blobs(seed=5)
    seeds = km.kmeans_plusplus(x, 6, seed=1)
    r0 = km.kmeans(x, 6, seed=1, niter=0)
    np.testing.assert_array_equal(r0.centers, seeds)
    r = km.kmeans(x, 6, seed=1, niter=20)
    assert r.inertia <= r0.inertia
    assert km.kmeans(x, 6, seed=1, niter=20).inertia == r.inertia  # deterministic


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_clusters_never_nan(backend):
    x = _blobs(n=400, k=3, seed=7)
    init = np.repeat(x[:2], [3, 2], axis=0)  # 5 centers, 3 and 2 identical: empties at once
    res = km.kmeans(x, 5, init=init, niter=10, backend=backend)
    assert np.isfinite(res.centers).all()
    assert len(np.unique(res.labels)) == 5, "every cluster should end up with rows"
    _check_result(x, res, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subsample_and_random_init(backend):
    x = _blobs(n=2000)
    res = km.kmeans(x, 6, subsample=300, seed=4, backend=backend)
    assert res.labels.shape == (2000,)
    _check_result(x, res, 6)
    res2 = km.kmeans(x, 6, init="random", seed=4, backend=backend)
    _check_result(x, res2, 6)


def test_memmap_input(tmp_path):
    x = _blobs()
    mm = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=x.shape)
    # "auto" reads a memmap in chunks with the torch engine (faiss would read it whole)
    a = km.kmeans(ro, 6)
    b = km.kmeans(x, 6, backend="torch")
    np.testing.assert_array_equal(a.centers, b.centers)
    if km.seeding._data.faiss_module() is not None:
        c = km.kmeans(ro, 6, backend="faiss")
        np.testing.assert_array_equal(c.centers, km.kmeans(x, 6, backend="faiss").centers)


def test_bad_input_is_named():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be <= the number of rows"):
        km.kmeans(x, 11)
    with pytest.raises(ValueError, match="k must be >= 1"):
        km.kmeans(x, 0)
    with pytest.raises(ValueError, match="niter must be an int >= 0"):
        km.kmeans(x, 2, niter=-1)
    with pytest.raises(ValueError, match=r"init must have shape \(2, 3\)"):
        km.kmeans(x, 2, init=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="init must be 'k-means\\+\\+', 'random'"):
        km.kmeans(x, 2, init="kmeans")
    with pytest.raises(ValueError, match="subsample must be >= k"):
        km.kmeans(x, 4, subsample=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        km.kmeans(x, 2, backend="cuda")
    with pytest.raises(TypeError, match="x must be float"):
        km.kmeans(torch.ones(10, 3, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="x must be 2-D"):
        km.kmeans(torch.randn(10), 2)


@pytest.mark.gpu
def test_cuda_torch_lloyd_matches_cpu():
    x = torch.from_numpy(_blobs(n=3000))
    init = km.kmeans_plusplus(x, 6, seed=1)  # the same start (seeding is tested elsewhere)
    a = km.kmeans(x, 6, init=init, backend="torch")
    b = km.kmeans(x.cuda(), 6, init=init, backend="torch")
    torch.testing.assert_close(b.centers.cpu(), a.centers, rtol=1e-4, atol=1e-4)
    assert b.inertia == pytest.approx(a.inertia, rel=1e-5)


def test_nan_rejected_in_debug_mode():
    x = torch.randn(40, 3)
    x[5, 0] = float("inf")
    km.set_debug(True)
    try:
        for init in ("k-means++", "random"):
            with pytest.raises(ValueError, match="x contains NaN or Inf"):
                km.kmeans(x, 3, init=init)
        with pytest.raises(ValueError, match="x_local contains NaN or Inf"):
            km.kmeans_parallel(x, 3)
        m = km.MiniBatchKMeansModule(3, 3).init_(torch.randn(10, 3))
        before = m.centers.clone()
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            m(x, update=True)
        assert torch.equal(m.centers, before)
    finally:
        km.set_debug(False)


# --------------------------------------------------------------------------- the own-ops engine
def _lloyd64(x, init, niter, weights=None):
    """Lloyd in float64 plain torch with scikit-learn's relocation of empty clusters
    (``_relocate_empty_clusters_dense``: the j-th empty cluster takes the j-th farthest row
    from its center, and that row leaves its old cluster's sum and weight)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    c = torch.as_tensor(np.asarray(init, dtype=np.float64)).clone()
    w = torch.ones(x.shape[0], dtype=torch.float64)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
    k = c.shape[0]
    for _ in range(niter):
        d = torch.cdist(x, c) ** 2
        dist2, labels = d.min(1)
        counts = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w)
        sums = torch.zeros_like(c).index_add_(0, labels, x * w[:, None])
        empty = (counts == 0).nonzero().ravel().tolist()
        far = torch.topk(dist2, k).indices.tolist()
        for j, row in zip(empty, far):
            old = int(labels[row])
            sums[old] -= x[row] * w[row]
            counts[old] -= w[row]
            sums[j], counts[j] = x[row] * w[row], w[row]
        c = sums / torch.where(counts > 0, counts, torch.ones_like(counts))[:, None]
    return c


@pytest.mark.parametrize("kind", ["tensor", "numpy"])  # fused minibatch_step_ / chunked ops
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_engine_is_lloyd(kind, dtype):
    x = _blobs(n=1500, d=7, k=5, seed=11, dtype=dtype)
    init = x[[0, 1, 2, 3, 4, 5, 6, 7]]
    want = _lloyd64(x, init, 6)
    data = torch.from_numpy(x) if kind == "tensor" else x
    res = km.kmeans(data, 8, init=torch.from_numpy(init), niter=6, backend="torch", chunk_size=400)
    got = torch.as_tensor(np.asarray(res.centers, dtype=np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    _check_result(x, res, 8)


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_torch_engine_relocates_empty_clusters_to_the_farthest_rows(kind):
    x = _blobs(n=600, d=4, k=3, seed=8, dtype=np.float64)
    init = np.concatenate([x[:3], np.full((2, 4), 1e3)])  # 2 centers far away: empty at once
    want = _lloyd64(x, init, 1)
    data = torch.from_numpy(x) if kind == "tensor" else x
    res = km.kmeans(data, 5, init=torch.from_numpy(init), niter=1, backend="torch")
    got = torch.as_tensor(np.asarray(res.centers))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert {tuple(r) for r in got[3:].tolist()} <= {tuple(r) for r in x.tolist()}


def _two_far_centers():
    x = _blobs(n=600, d=4, k=3, seed=8, dtype=np.float64)
    return x, np.concatenate([x[:3], np.full((2, 4), 1e3)])  # 2 centers far away: empty at once


@pytest.mark.parametrize("kind", ["tensor", "numpy", "float32", "weighted"])
def test_empty_cluster_relocation_is_scikit_learns(kind):
    # scikit-learn itself, from the same start: the moved rows leave their old clusters, so
    # those clusters' means change too (before, km.kmeans left them in: a different result).
    sklearn = pytest.importorskip("sklearn.cluster")
    x, init = _two_far_centers()
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(x)) if kind == "weighted" else None
    if kind == "float32":
        x, init = x.astype(np.float32), init.astype(np.float32)
    for niter in (1, 3):
        want = sklearn.KMeans(5, init=init, n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd")
        want = want.fit(x, sample_weight=w).cluster_centers_
        data = x if kind == "numpy" else torch.from_numpy(x)
        res = km.kmeans(data, 5, init=torch.from_numpy(init), niter=niter, backend="torch",
                        sample_weight=None if w is None else torch.from_numpy(w))
        got = np.asarray(res.centers, dtype=np.float64)
        tol = 1e-5 if kind == "float32" else 1e-10
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        np.testing.assert_allclose(got, _lloyd64(x, init, niter, w).numpy(), rtol=tol, atol=tol)


def test_batched_empty_cluster_relocation_is_scikit_learns():
    x, init = _two_far_centers()
    xb = torch.stack([torch.from_numpy(x), torch.from_numpy(x[::-1].copy())])
    ib = torch.from_numpy(np.stack([init, init]))
    res = km.kmeans(xb, 5, init=ib, niter=2, backend="torch")
    for b in range(2):
        want = _lloyd64(xb[b].numpy(), init, 2)
        torch.testing.assert_close(res.centers[b], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["whole", "chunks", "segments"])
def test_fixed_point_ends_the_iterations_with_the_same_bits(case, monkeypatch):
    # Centers an iteration leaves bit for bit as they were repeat forever: the loop stops
    # there, and the result is the one of all niter iterations (the stop disabled).
    import importlib

    kmeans_mod = importlib.import_module("kmgan_ext.seeding.kmeans")
    x = _blobs(n=900, d=5, k=3, seed=2, dtype=np.float64)  # float64: the per-iteration path
    data = torch.from_numpy(x) if case != "chunks" else x
    kw = dict(init=torch.from_numpy(x[:3]), niter=400, backend="torch")
    if case == "segments":
        kw["sample_weight"] = torch.ones(len(x), dtype=torch.float64)
    calls = []
    real = kmeans_mod.assign
    monkeypatch.setattr(kmeans_mod, "assign", lambda *a, **k: calls.append(1) or real(*a, **k))
    step = kmeans_mod.minibatch_step_
    monkeypatch.setattr(kmeans_mod, "minibatch_step_",
                        lambda *a, **k: calls.append(1) or step(*a, **k))
    fast = km.kmeans(data, 3, **kw)
    assert 0 < len(calls) < 50, "the loop did not stop at the fixed point"
    monkeypatch.setattr(kmeans_mod, "_same_bits", lambda a, b: False)
    calls.clear()
    full = km.kmeans(data, 3, **kw)
    assert len(calls) > 400
    assert torch.equal(torch.as_tensor(fast.centers), torch.as_tensor(full.centers))
    assert torch.equal(torch.as_tensor(fast.labels), torch.as_tensor(full.labels))
    assert fast.inertia == full.inertia


def test_auto_engine_rule(monkeypatch):
    import importlib

    kmeans_mod = importlib.import_module("kmgan_ext.seeding.kmeans")

    rows = _data.Rows("x", torch.zeros(100, 3))
    for k in (1, 10, 31, 32, 100):  # CPU data: kmgan_ext's own engine at every K
        assert kmeans_mod._resolve("auto", rows, k) == "torch"
    assert kmeans_mod._resolve("torch", rows, 10) == "torch"
    if HAVE_FAISS:
        assert kmeans_mod._resolve("faiss", rows, 10) == "faiss"


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_sample_weight_matches_sklearn(backend):
    """Weighted k-means++ draws, weighted means and inertia, as scikit-learn's KMeans given
    the same initial centers; integer weights = repeated rows."""
    if backend == "faiss" and km.seeding._data.faiss_module() is None:
        pytest.skip("needs faiss")
    sk = pytest.importorskip("sklearn.cluster")
    x = np.asarray(_blobs(), dtype=np.float64)
    w = np.random.default_rng(0).integers(0, 4, len(x)).astype(np.float64)
    init = x[:6].copy()
    ours = km.kmeans(x.astype(np.float32), 6, init=init.astype(np.float32), niter=50,
                     sample_weight=w, backend=backend)
    ref = sk.KMeans(6, init=init, n_init=1, max_iter=50, tol=0).fit(x, sample_weight=w)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, rtol=1e-4, atol=1e-4)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-4)
    rep = np.repeat(x, w.astype(int), axis=0).astype(np.float32)
    dup = km.kmeans(rep, 6, init=init.astype(np.float32), niter=50, backend=backend)
    np.testing.assert_allclose(ours.centers, dup.centers, rtol=1e-4, atol=1e-4)
    seeded = km.kmeans(x.astype(np.float32), 6, niter=0, sample_weight=w, seed=3)
    assert set(map(tuple, seeded.centers)) <= set(map(tuple, x.astype(np.float32)[w > 0]))
    with pytest.raises(ValueError, match="sample_weight"):
        km.kmeans(x, 6, sample_weight=w[:-1])


def test_relocation_without_an_empty_cluster_changes_no_bit():
    # On CUDA _lloyd_torch runs the relocation every iteration (no host sync to ask first):
    # with no empty cluster it must return the means bit for bit.
    import importlib

    kmeans_mod = importlib.import_module("kmgan_ext.seeding.kmeans")
    x = torch.from_numpy(_blobs(n=500, d=6, k=4, seed=4))
    c = x[:4].clone()
    labels, dist2 = km.assign(x, c)
    new, counts = c.clone(), torch.zeros(4, dtype=torch.int64)
    km.minibatch_update_(new, counts, x, labels, deterministic=True)
    assert (counts > 0).all()
    out = kmeans_mod._relocate_empty(_data.Rows("x", x), new, counts, labels, dist2)
    assert torch.equal(out, new)
