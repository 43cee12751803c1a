"""km.kmeans_plusplus: exact against a float64 oracle, invariants, inputs, bad input.

The oracle below is the greedy k-means++ loop of scikit-learn written out in float64 numpy,
fed the same random numbers (``kmgan_ext.seeding.kmeans_plusplus.uniforms``): with float64
data every backend must pick exactly its indices. On small-integer data every distance,
norm and sum is exact in float32 too, so the float32 backends (torch, faiss) must agree with
the oracle index for index.
"""
import contextlib
import importlib
import math

import numpy as np
import pytest
import torch

import kmgan_ext as km
from testing import DEVICES

# The module (the package re-exports a function of the same name).
kpp_mod = importlib.import_module("kmgan_ext.seeding.kmeans_plusplus")

HAVE_CPU_KERNEL = km.available_backends()["cpu"] is None
SEEDING_BACKENDS = (
    ["torch"]
    + (["cpu"] if HAVE_CPU_KERNEL else [])
    + (["faiss"] if kpp_mod._data.faiss_module() is not None else [])
)
# The backends that compute in float64 for float64 data (faiss is float32 only).
EXACT_BACKENDS = [b for b in SEEDING_BACKENDS if b != "faiss"]


def oracle_kmeans_plusplus(x, k, seed, trials=None, weights=None, exact_ties=False):
    """Greedy k-means++ as scikit-learn's _kmeans_plusplus, in float64, on our uniforms.

    ``exact_ties``: sum each candidate's potential row by row (np.sum), so that duplicate
    candidates tie exactly and the first wins; scikit-learn's ``d @ w`` (BLAS) can round
    the rows of its (trials, N) block differently and break such a tie either way."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    trials = trials or 2 + int(math.log(k))
    u = kpp_mod.uniforms(seed, k, trials).numpy()
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights is None:
        first = min(int(u[0, 0] * n), n - 1)
    else:
        cw = np.cumsum(w)
        first = min(int(np.searchsorted(cw, u[0, 0] * cw[-1])), n - 1)
    idx = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for j in range(1, k):
        cum = np.cumsum(w * closest)
        cand = np.minimum(np.searchsorted(cum, u[j] * cum[-1]), n - 1)
        d = ((x[None, :, :] - x[cand][:, None, :]) ** 2).sum(-1)  # (trials, N)
        d = np.minimum(d, closest[None, :])
        best = int(np.argmin((d * w).sum(1) if exact_ties else d @ w))
        idx.append(int(cand[best]))
        closest = d[best]
    return np.array(idx)


def _gaussian(n, d, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = 5 * rng.standard_normal((6, d))
    return (means[rng.integers(0, 6, n)] + rng.standard_normal((n, d))).astype(dtype)


def _integer_grid(n=400, d=6, seed=0):
    """Small integers: every float32 distance and partial sum below is exact."""
    return np.random.default_rng(seed).integers(0, 10, (n, d)).astype(np.float32)


# --------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("trials", [None, 1, 3, 12])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_matches_oracle_float64(seed, trials, backend):
    x = _gaussian(500, 5, seed=seed)
    _, idx = km.kmeans_plusplus(
        torch.from_numpy(x), 9, seed=seed, n_local_trials=trials, backend=backend, return_indices=True
    )
    np.testing.assert_array_equal(idx.numpy(), oracle_kmeans_plusplus(x, 9, seed, trials))


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_matches_oracle_weighted(backend):
    x = _gaussian(300, 4, seed=3)
    w = np.random.default_rng(3).uniform(0.0, 3.0, 300)
    w[::7] = 0.0  # zero-weight rows are never picked
    _, idx = km.kmeans_plusplus(x, 8, seed=5, sample_weight=w, backend=backend, return_indices=True)
    np.testing.assert_array_equal(idx, oracle_kmeans_plusplus(x, 8, 5, weights=w))
    assert (w[idx] > 0).all()


@pytest.mark.parametrize("backend", SEEDING_BACKENDS)
@pytest.mark.parametrize("trials", [None, 1])
def test_float32_backends_exact_on_integer_data(backend, trials):
    x = _integer_grid()
    for seed in range(3):
        _, idx = km.kmeans_plusplus(
            x, 12, seed=seed, n_local_trials=trials, backend=backend, return_indices=True
        )
        np.testing.assert_array_equal(idx, oracle_kmeans_plusplus(x, 12, seed, trials))


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunking_and_second_pass_do_not_change_the_answer(chunk_size, monkeypatch):
    x = _gaussian(257, 3, seed=2)
    want = oracle_kmeans_plusplus(x, 6, 4)
    kw = dict(seed=4, chunk_size=chunk_size, backend="torch", return_indices=True)  # chunks: torch's
    _, idx = km.kmeans_plusplus(x, 6, **kw)
    np.testing.assert_array_equal(idx, want)
    # Past the memory budget for the (N, trials) block, the chosen column is recomputed.
    monkeypatch.setattr(kpp_mod, "_KEEP_BYTES", 0)
    _, idx = km.kmeans_plusplus(x, 6, **kw)
    np.testing.assert_array_equal(idx, want)


def test_known_answer_two_blobs():
    # Two far-apart pairs: the second center must land in the pair the first one is not in.
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [100.0, 0.0], [100.0, 1.0]])
    for seed in range(10):
        c = km.kmeans_plusplus(x, 2, seed=seed)
        assert {float(c[0, 0]), float(c[1, 0])} == {0.0, 100.0}


def test_k_equals_n_picks_every_row():
    x = _gaussian(20, 3)
    _, idx = km.kmeans_plusplus(x, 20, seed=1, return_indices=True)
    assert sorted(idx.tolist()) == list(range(20))


def test_fewer_distinct_rows_than_k_does_not_fail():
    x = np.repeat(_gaussian(3, 2), 4, axis=0)  # 3 distinct rows, 12 rows
    c = km.kmeans_plusplus(x, 5, seed=0)
    assert np.isfinite(c).all() and len({tuple(r) for r in c}) == 3


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tensor_centers_are_rows_of_x(device, dtype):
    x = torch.from_numpy(_gaussian(300, 7, seed=1)).to(device, dtype)
    c, idx = km.kmeans_plusplus(x, 10, seed=3, return_indices=True)
    assert c.dtype == dtype and c.device == x.device and c.shape == (10, 7)
    assert idx.dtype == torch.int64 and idx.device == x.device
    assert torch.equal(c, x[idx])
    assert len(set(idx.tolist())) == 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numpy_and_memmap_inputs(dtype, tmp_path):
    x = _gaussian(300, 7, seed=1, dtype=dtype)
    c, idx = km.kmeans_plusplus(x, 10, seed=3, return_indices=True)
    assert isinstance(c, np.ndarray) and isinstance(idx, np.ndarray)
    assert c.dtype == x.dtype and np.array_equal(c, x[idx])
    mm = np.memmap(tmp_path / "x.bin", dtype=dtype, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(tmp_path / "x.bin", dtype=dtype, mode="r", shape=x.shape)
    c2, idx2 = km.kmeans_plusplus(ro, 10, seed=3, return_indices=True, chunk_size=50)
    np.testing.assert_array_equal(idx2, idx)
    # A tensor holding the same values gives the same centers.
    _, idx3 = km.kmeans_plusplus(torch.from_numpy(np.array(x)), 10, seed=3, return_indices=True)
    np.testing.assert_array_equal(idx3.numpy(), idx)


@pytest.mark.parametrize("backend", SEEDING_BACKENDS)
def test_same_seed_same_centers_other_seed_other_centers(backend):
    x = _gaussian(400, 8, seed=0, dtype=np.float32)
    a = km.kmeans_plusplus(x, 16, seed=11, backend=backend)
    b = km.kmeans_plusplus(x, 16, seed=11, backend=backend)
    c = km.kmeans_plusplus(x, 16, seed=12, backend=backend)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_noncontiguous_tensor():
    x = torch.from_numpy(_gaussian(200, 10, seed=4))
    view = x[:, ::2]
    assert not view.is_contiguous()
    _, a = km.kmeans_plusplus(view, 5, seed=2, return_indices=True)
    _, b = km.kmeans_plusplus(view.contiguous(), 5, seed=2, return_indices=True)
    assert torch.equal(a, b)


def test_greedy_lowers_potential_on_average():
    # More candidates per center can only help the expected potential (scikit-learn's reason
    # for the greedy default); averaged over seeds on clustered data it must show.
    x = _gaussian(600, 4, seed=9)

    def pot(c):
        return ((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum()

    classic = np.mean([pot(km.kmeans_plusplus(x, 6, seed=s, n_local_trials=1)) for s in range(20)])
    greedy = np.mean([pot(km.kmeans_plusplus(x, 6, seed=s)) for s in range(20)])
    assert greedy < classic


def test_thread_setting_is_restored():
    x = _gaussian(300, 4)
    before = torch.get_num_threads()
    _, a = km.kmeans_plusplus(x, 5, seed=1, return_indices=True)
    assert torch.get_num_threads() == before
    _, b = km.kmeans_plusplus(x, 5, seed=1, num_threads=2, return_indices=True)
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_threads must be a positive int"):
        km.kmeans_plusplus(x, 5, num_threads=0)


def test_default_uses_the_threads_torch_was_given(monkeypatch):
    """num_threads=None runs the loops on torch's setting (and faiss's OpenMP on the same),
    not on one thread: the library default is what the caller gave torch."""
    from kmgan_ext.seeding import _data

    seen = []
    real = _data.cpu_threads

    @contextlib.contextmanager
    def spy(rows, num_threads, *, faiss_too=False):
        with real(rows, num_threads, faiss_too=faiss_too):
            faiss = _data.faiss_module() if faiss_too else None
            seen.append((torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None))
            yield

    monkeypatch.setattr(_data, "cpu_threads", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = _gaussian(300, 4)
        km.kmeans_plusplus(x, 5, seed=1, backend="torch")
        km.kmeans(x, 5, seed=1, niter=2)
        if _data.faiss_module() is not None:
            km.kmeans_plusplus(x, 5, seed=1, backend="faiss")
    finally:
        torch.set_num_threads(before)
    assert len(seen) >= 2 and all(t == 2 and f in (None, 2) for t, f in seen), seen


@pytest.mark.gpu
def test_cuda_matches_cpu_and_never_syncs_per_center():
    x = torch.from_numpy(_integer_grid(2000, 8))
    _, want = km.kmeans_plusplus(x, 32, seed=1, return_indices=True)
    xc = x.cuda()
    _, got = km.kmeans_plusplus(xc, 32, seed=1, return_indices=True)
    assert torch.equal(got.cpu(), want)

    def syncs(k):
        import warnings

        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                km.kmeans_plusplus(xc, k, seed=1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len(w)

    assert syncs(64) == syncs(4)  # a constant number of host syncs, whatever k


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be <= the number of rows of x"):
        km.kmeans_plusplus(x, 11)
    with pytest.raises(ValueError, match="k must be >= 1"):
        km.kmeans_plusplus(x, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        km.kmeans_plusplus(x, 2.0)
    with pytest.raises(ValueError, match="x must be 2-D"):
        km.kmeans_plusplus(torch.randn(10), 2)
    with pytest.raises(ValueError, match="x must be 2-D"):
        km.kmeans_plusplus(np.zeros((2, 3, 4), np.float32), 2)
    with pytest.raises(TypeError, match="x must be float"):
        km.kmeans_plusplus(torch.arange(30).view(10, 3), 2)
    with pytest.raises(TypeError, match="x must be float"):
        km.kmeans_plusplus(np.arange(30).reshape(10, 3), 2)
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a numpy array"):
        km.kmeans_plusplus([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="n_local_trials must be a positive int"):
        km.kmeans_plusplus(x, 2, n_local_trials=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        km.kmeans_plusplus(x, 2, chunk_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        km.kmeans_plusplus(x, 2, backend="sklearn")
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        km.kmeans_plusplus(x, 2, sample_weight=torch.ones(9))
    with pytest.raises(ValueError, match="sample_weight must be finite, non-negative"):
        km.kmeans_plusplus(x, 2, sample_weight=-torch.ones(10))


def test_nan_rejected_in_debug_mode():
    x = torch.randn(50, 3)
    x[17, 1] = float("nan")
    km.set_debug(True)
    try:
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            km.kmeans_plusplus(x, 3)
        with pytest.raises(ValueError, match="x contains NaN or Inf"):
            km.kmeans_plusplus(x.numpy(), 3, chunk_size=8)
    finally:
        km.set_debug(False)
