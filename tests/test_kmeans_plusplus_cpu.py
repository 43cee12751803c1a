"""The C++ k-means++ loop (backend "cpu", csrc/cpu/kmeans_plusplus_cpu.cpp) against the torch
loop it replaces on CPU: the same draws, so the same indices for a seed, index for index; its
potential against a float64 recomputation; what "auto" picks; bad input.

test_seeding.py runs the float64 oracle and the exact-on-integer-data tests on this backend
too; test_seeding_quality.py compares the default ("auto" = "cpu") with scikit-learn on the
same draws.
"""
import importlib

import numpy as np
import pytest
import torch

import kmgan_ext as km
from test_seeding import oracle_kmeans_plusplus

kpp_mod = importlib.import_module("kmgan_ext.seeding.kmeans_plusplus")

pytestmark = pytest.mark.skipif(
    km.available_backends()["cpu"] is not None, reason="kmgan_ext._C (CPU kernels) not built"
)


def _blobs(n, d, seed=0, dtype=np.float32, offset=0.0):
    rng = np.random.default_rng(seed)
    means = 5 * rng.standard_normal((7, d))
    return (offset + means[rng.integers(0, 7, n)] + rng.standard_normal((n, d))).astype(dtype)


def _both(x, k, **kw):
    _, a = km.kmeans_plusplus(x, k, backend="torch", return_indices=True, **kw)
    _, b = km.kmeans_plusplus(x, k, backend="cpu", return_indices=True, **kw)
    return np.asarray(a), np.asarray(b)


# Shapes around the kernel's blocks: 8-row blocks, 256-row tiles, 8-candidate panels (trials
# 12 needs two panels with the pending winner), d not a multiple of the 8 lanes.
SHAPES = [(1, 3, 1), (9, 1, 4), (300, 5, 9), (777, 13, 17), (2100, 33, 30)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d,k", SHAPES)
def test_same_indices_as_the_torch_loop(n, d, k, dtype):
    x = torch.from_numpy(_blobs(n, d, seed=n, dtype=dtype))
    for seed, trials in [(0, None), (3, 1), (5, 12)]:
        a, b = _both(x, k, seed=seed, n_local_trials=trials)
        np.testing.assert_array_equal(b, a, err_msg=f"seed {seed}, trials {trials}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_indices_with_sample_weight(dtype):
    x = _blobs(1500, 11, seed=2, dtype=dtype)
    rng = np.random.default_rng(2)
    for seed in range(3):
        w = rng.uniform(0.0, 2.0, len(x)).astype(dtype)
        w[rng.integers(0, len(x), 300)] = 0.0  # zero-weight rows: never drawn
        a, b = _both(x, 20, seed=seed, sample_weight=w)
        np.testing.assert_array_equal(b, a)
        assert (w[b] > 0).all()
    # Integer weights are accepted as in the torch loop.
    a, b = _both(x, 20, seed=1, sample_weight=torch.from_numpy(rng.integers(0, 4, len(x))))
    np.testing.assert_array_equal(b, a)


def test_ties_duplicates_and_exhausted_data():
    # Every row 4 times: equal distances, and the same row drawn as two candidates, whose
    # potentials must tie exactly so that the first one wins (numpy's argmin, as the oracle
    # and scikit-learn). The torch loop does not always manage that: MKL rounds the columns
    # of its (N, trials) block differently, so its duplicate candidates can differ by an ulp
    # (seen at center 15 of seed 0 here in float32), nor does the oracle's BLAS d @ w (center
    # 23 of k = 75, seed 1): the float64 oracle with row-wise sums is the judge.
    base = _blobs(60, 4, seed=5, dtype=np.float64)
    x = np.repeat(base, 4, axis=0)
    for seed in range(4):
        _, idx = km.kmeans_plusplus(x, 30, seed=seed, backend="cpu", return_indices=True)
        np.testing.assert_array_equal(idx, oracle_kmeans_plusplus(x, 30, seed, exact_ties=True))
    # More centers than distinct rows: once every term is 0, the draws land on row 0.
    _, idx = km.kmeans_plusplus(x, 75, seed=1, backend="cpu", return_indices=True)
    np.testing.assert_array_equal(idx, oracle_kmeans_plusplus(x, 75, 1, exact_ties=True))
    # Integer grid: every float32 distance is exact, so any difference is a wrong draw.
    g = np.random.default_rng(0).integers(0, 4, (900, 3)).astype(np.float32)
    for seed in range(3):
        a, b = _both(g, 40, seed=seed, n_local_trials=9)
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(b, oracle_kmeans_plusplus(g, 40, seed, 9))


def test_same_indices_at_the_bench_shape_subsampled():
    # The bench's KM-GAN shape scaled down (d = 100, well-separated blobs).
    x = torch.from_numpy(_blobs(6000, 100, seed=9))
    a, b = _both(x, 20, seed=7)
    np.testing.assert_array_equal(b, a)


def _native(x, k, seed, trials, skip, weights=None):
    x = torch.as_tensor(x)
    u = kpp_mod.uniforms(seed, k, trials)
    first = int(kpp_mod._first_index(len(x), u, weights))
    idx, pot, finite, read = torch.ops.kmgan_ext.kmeans_plusplus_native(x, weights, u, first, skip)
    assert bool(finite)
    return idx, pot, int(read)


def _skip_cases(dtype):
    rng = np.random.default_rng(11)
    # Far-apart blobs, many more than the columns of a pass: most rows are skipped.
    yield "separated", _blobs(4000, 24, seed=11), 60, 0.9
    means = 40 * rng.standard_normal((50, 16))
    yield "50 blobs", means[rng.integers(0, 50, 3000)] + rng.standard_normal((3000, 16)), 80, 0.6
    # Tight groups far from the origin: the matmul form's rounding (relative to |x|^2) is as
    # large as the distances, which only the error term e_i of the test keeps from skipping
    # rows whose computed distance to a column is below D_i.
    # (Without e_i, each of these gives other indices; the offsets scale with 1/sqrt(eps).)
    scale = 1.0 if dtype == np.float32 else 2.0**14.5
    for d, offset, spread in ((8, 1e3 * scale, 0.3), (8, 5e3 * scale, 1.0), (32, 5e3 * scale, 1.0)):
        g = 3 * rng.standard_normal((40, d))
        x = offset + g[rng.integers(0, 40, 2500)] + spread * rng.standard_normal((2500, d))
        yield f"d {d}, offset {offset:g}, spread {spread:g}", x, 50, 1e9
    # Duplicated rows and an integer grid: exact ties between D_i and a column's distance.
    yield "grid", rng.integers(0, 5, (2000, 3)).astype(np.float64), 60, 1e9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_skipped_rows_change_no_bit(dtype):
    # The skip test (kmeans_plusplus_cpu.cpp) leaves out rows that no column of a pass can come
    # nearer to: the same indices and the same float64 potential, bit for bit, as reading
    # every row, on data where the rounding of the distances is as large as the distances.
    skipped_somewhere = False
    for name, x, k, most_read in _skip_cases(dtype):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))
        n = len(x)
        w = torch.from_numpy(np.random.default_rng(3).uniform(0.5, 2.0, n).astype(dtype))
        for seed, trials, weights in ((0, 6, None), (1, 1, None), (2, 9, w)):
            i1, p1, r1 = _native(x, k, seed, trials, True, weights)
            i0, p0, r0 = _native(x, k, seed, trials, False, weights)
            assert torch.equal(i1, i0), (name, seed)
            assert float(p1) == float(p0), (name, seed, float(p1), float(p0))
            assert r0 == k * n, (name, r0)
            assert r1 <= most_read * k * n, (name, seed, r1 / (k * n))
            skipped_somewhere |= r1 < r0
    assert skipped_somewhere


def test_numpy_memmap_and_tensor_read_in_place(tmp_path):
    x = _blobs(500, 6, seed=4)
    mm = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    ro = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="r", shape=x.shape)
    _, a = km.kmeans_plusplus(ro, 12, seed=2, backend="cpu", return_indices=True)
    _, b = km.kmeans_plusplus(torch.from_numpy(x), 12, seed=2, backend="torch", return_indices=True)
    np.testing.assert_array_equal(a, b.numpy())


def test_any_thread_count_same_answer():
    x = torch.from_numpy(_blobs(3000, 9, seed=1))
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2, 3):
            _, idx = km.kmeans_plusplus(x, 25, seed=4, backend="cpu", num_threads=threads, return_indices=True)
            got.append(idx)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(g, got[0]) for g in got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_potential_against_float64(dtype):
    # Far from the origin, where float32 sums drift: the potential is summed in float64, so
    # its error is that of the float32 distance terms only (~1e-7 relative), not N times it.
    x = torch.from_numpy(_blobs(8000, 8, seed=3, offset=50.0)).to(dtype)
    rows = kpp_mod._data.Rows("x", x)
    u = kpp_mod.uniforms(1, 15, 4)
    idx, pot = kpp_mod.greedy_kmeans_plusplus(rows, 15, 4, u, backend="cpu")
    x64 = x.double()
    want = torch.cdist(x64, x64[idx]).pow(2).min(1).values.sum()
    idx_t, _ = kpp_mod.greedy_kmeans_plusplus(rows, 15, 4, u, backend="torch")
    assert torch.equal(idx, idx_t)
    assert pot.dtype == torch.float64
    # The matmul form's own rounding, (|x|^2 + |c|^2) eps per term, bounds the error.
    eps = torch.finfo(dtype).eps
    bound = 4 * eps * float((x64 * x64).sum()) + 1e-12
    assert abs(float(pot) - float(want)) <= bound, (float(pot), float(want), bound)


def test_auto_picks_the_kernel_where_it_reads_x_in_place():
    x = torch.from_numpy(_blobs(100, 4))
    rows = kpp_mod._data.Rows
    assert kpp_mod.resolve_backend("auto", rows("x", x)) == "cpu"
    assert kpp_mod.resolve_backend("auto", rows("x", x.double().numpy())) == "cpu"
    assert kpp_mod.resolve_backend("auto", rows("x", x[:, ::2])) == "torch"  # strided
    assert kpp_mod.resolve_backend("auto", rows("x", x.half())) == "torch"  # widened in chunks
    # Explicitly asked: a strided view is copied once, same answer.
    a, b = _both(x[:, ::2], 6, seed=3)
    np.testing.assert_array_equal(b, a)


def test_bad_input():
    with pytest.raises(ValueError, match="backend 'cpu' cannot seed this x: x is torch.float16"):
        km.kmeans_plusplus(torch.randn(10, 3).half(), 2, backend="cpu")
    x = torch.randn(50, 3)
    x[17, 1] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        km.kmeans_plusplus(x, 3, backend="cpu")
    x[17, 1] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        km.kmeans_plusplus(x, 3, backend="cpu")
    # The native op checks its own arguments (it is reachable as torch.ops.kmgan_ext.*).
    op = torch.ops.kmgan_ext.kmeans_plusplus_native
    u = kpp_mod.uniforms(0, 3, 2)
    with pytest.raises(ValueError, match="first must lie in"):
        op(torch.randn(5, 2), None, u, 5)
    with pytest.raises(ValueError, match="must be <= the number of rows of x"):
        op(torch.randn(2, 2), None, u, 0)
    with pytest.raises(TypeError, match="u must be float64"):
        op(torch.randn(5, 2), None, u.float(), 0)
    with pytest.raises(TypeError, match="weights must have dtype"):
        op(torch.randn(5, 2), torch.ones(5, dtype=torch.float64), u, 0)
