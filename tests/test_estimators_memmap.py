"""np.memmap inputs of the estimators and km.kmeans: read in row chunks, never whole; the
same answers as in memory."""
import numpy as np
import pytest
import torch

import kmgan_ext as km
import kmgan_ext.estimators._base as base
import kmgan_ext.seeding._data as data


def _blobs(n, d, k=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 5
    return (means[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)


def _memmap(path, x):
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(x).tobytes())
    return np.memmap(path, dtype=x.dtype, mode="r", shape=x.shape)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 16 KiB: a memmap of a few hundred rows is read in several chunks."""
    monkeypatch.setattr(base, "MEMMAP_CHUNK_BYTES", 16384)
    monkeypatch.setattr(data, "MEMMAP_CHUNK_BYTES", 16384)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_on_a_memmap_equals_in_memory(tmp_path, small_chunks, dtype):
    x = _blobs(700, 6, dtype=dtype)
    mm = _memmap(tmp_path / "x.bin", x)
    w = np.random.default_rng(1).uniform(0.5, 2, len(x))
    kws = [dict(init=x[:5] + 0.1)]
    if dtype == np.float32:  # the seedings read the memmap the same way in either dtype
        kws += [dict(init="k-means++"), dict(init="random", n_init=2)]
    for kw in kws:
        a = km.KMeans(5, random_state=0, **kw).fit(mm, sample_weight=w)
        b = km.KMeans(5, random_state=0, **kw).fit(x, sample_weight=w)
        assert isinstance(a.cluster_centers_, np.ndarray) and a.cluster_centers_.dtype == dtype
        np.testing.assert_array_equal(a.labels_, b.labels_)
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-5)
        assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-6) and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.predict(mm), a.predict(x))
    np.testing.assert_array_equal(a.transform(mm), a.transform(x))
    assert a.score(mm, sample_weight=w) == pytest.approx(a.score(x, sample_weight=w), rel=1e-12)


def test_kmeans_empty_cluster_relocation_on_a_memmap(tmp_path, small_chunks):
    """An initial center far from every row: relocated to the farthest row, as in memory."""
    x = _blobs(300, 3)
    init = np.concatenate([x[:3], np.full((1, 3), 1e3, np.float32)])
    mm = _memmap(tmp_path / "x.bin", x)
    a = km.KMeans(4, init=init).fit(mm)
    b = km.KMeans(4, init=init).fit(x)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-5)


def test_minibatch_kmeans_and_kmeans_function_on_a_memmap(tmp_path, small_chunks):
    x = _blobs(900, 5)
    mm = _memmap(tmp_path / "x.bin", x)
    a = km.MiniBatchKMeans(4, batch_size=64, random_state=0, tol=1e-4).fit(mm)
    b = km.MiniBatchKMeans(4, batch_size=64, random_state=0, tol=1e-4).fit(x)
    assert a.n_steps_ == b.n_steps_
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)  # same batches
    np.testing.assert_array_equal(a.labels_, b.labels_)
    r = km.kmeans(mm, 4, niter=5, seed=1)
    s = km.kmeans(x, 4, niter=5, seed=1, backend="torch")
    np.testing.assert_array_equal(r.labels, s.labels)
    np.testing.assert_allclose(r.centers, s.centers, rtol=1e-6, atol=1e-6)


def test_memmap_bad_input(tmp_path):
    x = _blobs(50, 3)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        km.KMeans(2).fit(_memmap(tmp_path / "x.bin", x))
    fitted = km.KMeans(2, random_state=0).fit(_blobs(50, 3))
    with pytest.raises(ValueError, match="features"):
        fitted.predict(_memmap(tmp_path / "y.bin", _blobs(10, 4)))


def test_release_pages_leaves_the_data_and_copy_on_write_alone(tmp_path):
    x = _blobs(5000, 8)
    mm = _memmap(tmp_path / "x.bin", x)
    before = np.array(mm[100:4000])
    data.release_pages(mm, 100, 4000)
    np.testing.assert_array_equal(mm[100:4000], before)  # read back from the file
    cow = np.memmap(tmp_path / "x.bin", dtype=x.dtype, mode="c", shape=x.shape)
    cow[:] = 0  # private writes a release would discard
    data.release_pages(cow)
    assert not cow.any()
    idx = np.array([4999, 3, 3, 2500, 0])
    np.testing.assert_array_equal(data.gather_rows(mm, idx, 64), x[idx])


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.slow  # ten passes over a 200 MB file: 10-60 s on a loaded 2-core machine
def test_peak_rss_stays_well_below_a_200mb_memmap(tmp_path):
    """Every estimator method and km.kmeans on a 200 MB memmap: the process's peak RSS
    (VmHWM, which counts mapped file pages too, reset through /proc/self/clear_refs) grows by
    less than half the file. Reading it whole (np.asarray + a pass) grows it by the file."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    n, d = 1 << 18, 200  # 200 MiB of float32
    path = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    means = (rng.normal(size=(4, d)) * 5).astype(np.float32)
    with open(path, "wb") as f:
        for _ in range(0, n, 1 << 14):
            f.write((means[rng.integers(0, 4, 1 << 14)]
                     + rng.normal(size=(1 << 14, d)).astype(np.float32)).tobytes())
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
    size = n * d * 4
    init = np.ascontiguousarray(mm[:4]) + 0.5

    def peak_growth(fn):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status("VmRSS")
        fn()
        return _status("VmHWM") - before

    def estimators():
        est = km.KMeans(4, init=init, max_iter=2).fit(mm)
        est.predict(mm), est.transform(mm), est.score(mm)
        km.MiniBatchKMeans(4, init=init, batch_size=4096, max_iter=1, random_state=0,
                           max_no_improvement=2).fit(mm)
        km.kmeans(mm, 4, init=init, niter=1)

    grown = peak_growth(estimators)
    assert grown < size / 2, f"peak RSS grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB memmap"
    whole = peak_growth(lambda: float(torch.from_numpy(np.asarray(mm)).sum()))
    assert whole > 0.9 * size  # the measure sees a whole read


def test_cosine_kmeans_on_a_memmap_equals_in_memory(tmp_path, small_chunks):
    """metric="cosine" (spherical Lloyd, with an empty cluster relocated): the per-chunk sums
    of unit rows give the in-memory answer."""
    x = _blobs(500, 6)
    init = np.concatenate([x[:3], -x[3:4] * 100])  # the last center attracts nothing at first
    mm = _memmap(tmp_path / "x.bin", x)
    a = km.KMeans(4, init=init, metric="cosine").fit(mm)
    b = km.KMeans(4, init=init, metric="cosine").fit(x)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.transform(mm), b.transform(x), rtol=1e-5, atol=1e-6)
