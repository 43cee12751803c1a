"""km.kmeans' bounded Lloyd kernel (csrc/cpu/lloyd_cpu.cpp, float32 CPU rows; Yinyang panels up
to K = 16, cluster-local tiles above, csrc/cpu/lloyd_local.cpp; Elkan's per-center bounds,
csrc/cpu/lloyd_elkan.cpp, by name): with every labeler the same labels, sums and update as the
per-iteration path (km.minibatch_step_ per iteration, then km.assign), so bitwise the same
centers and labels; the bounds may only skip work. Without AVX2 + FMA (or with
KMGAN_EXT_CPU_NO_AVX2=1) the kernel declines and km.kmeans takes the per-iteration path: the
tests check that fallback instead."""
import importlib
import platform

import pytest
import torch

import kmgan_ext as km
from kmgan_ext._show_config import _cpu_flags, _switched_off
from kmgan_ext.seeding import _data

kmeans_mod = importlib.import_module("kmgan_ext.seeding.kmeans")  # the package exports the function

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("kmgan_ext::lloyd_native", "CPU"),
    reason="kmgan_ext._C without lloyd_native",
)


def _kernel_expected():
    """Whether lloyd_native should run here (use_avx2() in csrc/cpu/assign_cpu.cpp)."""
    flags = _cpu_flags()
    x86 = platform.machine() in ("x86_64", "AMD64")
    return x86 and "avx2" in flags and "fma" in flags and not _switched_off("KMGAN_EXT_CPU_NO_AVX2")


KERNEL = _kernel_expected()


def _blobs(n, d, blobs, seed, spread=4.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(blobs, d, generator=g) + offset
    return (means[torch.randint(blobs, (n,), generator=g)] + torch.randn(n, d, generator=g)).float()


def _per_iteration(x, init, niter):
    """The path the kernel replaces: km.minibatch_step_ per iteration (with the relocation of
    empty clusters), then km.assign against the final centers."""
    rows = _data.Rows("x", x)
    c = kmeans_mod._lloyd_torch(rows, init.clone(), niter, chunk=x.shape[0])
    labels, dist2 = km.assign(x, c)
    return c, labels, dist2


def _bounded(x, init, niter, labeler="auto"):
    out = kmeans_mod._lloyd_bounded(_data.Rows("x", x), init.clone(), niter, chunk=x.shape[0], labeler=labeler)
    if not KERNEL:
        # The kernel declines (done == -1): km.kmeans then runs the per-iteration path.
        assert out is None, "lloyd_native ran without AVX2 + FMA"
        res = km.kmeans(x, init.shape[0], init=init.clone(), niter=niter, backend="torch")
        want = _per_iteration(x, init, niter)
        assert torch.equal(res.centers, want[0]) and torch.equal(res.labels, want[1])
        pytest.skip("lloyd_native needs AVX2 + FMA here: checked that it declines and km.kmeans falls back")
    assert out is not None, "the kernel did not run on a float32 CPU tensor"
    return out


CASES = {
    # many centers per blob: the bounds skip most rows and panels after a few iterations
    "blobs K=100": (lambda: _blobs(4000, 20, 8, 0), 100, 15),
    # K not a multiple of the 16-center panel, one partial panel
    "K=37": (lambda: _blobs(3000, 9, 5, 1), 37, 10),
    "K=17": (lambda: _blobs(2000, 33, 4, 2), 17, 8),
    "K=1": (lambda: _blobs(500, 5, 2, 3), 1, 3),
    # far from the origin: the expansion cancels, near-ties are frequent
    "offset 1e4": (lambda: _blobs(3000, 16, 6, 4, spread=0.5, offset=1e4), 24, 10),
    # integer grid with duplicated rows: exact ties everywhere (lowest index wins)
    "ties": (lambda: torch.randint(0, 4, (3000, 3), generator=torch.Generator().manual_seed(5)).float(), 20, 8),
    # one center per separated blob: Hamerly's test keeps most rows unread once they settle
    "separated": (lambda: _blobs(4000, 8, 40, 21, spread=10.0), 40, 12),
    # cells tiling the unit square: a center's neighbours lie just beyond twice its cluster's
    # radius until its drift is counted (a reach without it misses the nearest center)
    "uniform 2-D": (lambda: torch.rand(1000, 2, generator=torch.Generator().manual_seed(11)), 20, 10),
    # no clusters in 64 dimensions: every center is within reach of every cluster (whole passes)
    "gaussian": (lambda: torch.randn(3000, 64, generator=torch.Generator().manual_seed(22)), 48, 8),
}

# How lloyd_native finds the labels: "auto" (the panels' bounds up to K = 16, the cluster-local
# tiles above), and each labeler forced at every K.
LABELERS = ["auto", "local", "elkan", "panels"]


@pytest.mark.parametrize("labeler", LABELERS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_same_centers_and_labels_as_the_per_iteration_path(case, threads, labeler):
    make, k, niter = CASES[case]
    x = make()
    g = torch.Generator().manual_seed(7)
    init = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want_c, want_l, want_d = _per_iteration(x, init, niter)
        got_c, got_l, got_d = _bounded(x, init, niter, labeler)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(got_c, want_c)
    assert torch.equal(got_l, want_l)
    torch.testing.assert_close(got_d, want_d, rtol=2e-7, atol=0)


@pytest.mark.parametrize("labeler", LABELERS)
def test_empty_cluster_is_relocated_as_the_per_iteration_path(labeler):
    x = _blobs(1500, 6, 3, 8)
    # two centers far away: empty at once, relocated to the farthest rows; then a duplicate
    # center (ties go to the lower index: the copy stays empty); K = 7 (panels), 21 (local)
    for first in (4, 18):
        init = torch.cat([x[:first], torch.full((2, 6), 1e3), x[:1]])
        for niter in (1, 2, 6):
            want = _per_iteration(x, init, niter)
            got = _bounded(x, init, niter, labeler)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_kmeans_uses_it_and_matches_scikit_learn(monkeypatch):
    sk = pytest.importorskip("sklearn.cluster")
    x = _blobs(3000, 10, 6, 9)
    init = x[:12].clone()  # K <= 16: the panels' bounds (Yinyang)
    calls = []
    orig = kmeans_mod._lloyd_bounded
    monkeypatch.setattr(kmeans_mod, "_lloyd_bounded", lambda *a: calls.append(1) or orig(*a))
    res = km.kmeans(x, 12, init=init, niter=12, backend="torch")
    assert calls  # without AVX2 it declines and the per-iteration path must match scikit-learn too
    ref = sk.KMeans(12, init=init.double().numpy(), n_init=1, max_iter=12, tol=0.0, algorithm="lloyd")
    ref.fit(x.double().numpy())
    torch.testing.assert_close(res.centers.double(), torch.from_numpy(ref.cluster_centers_), rtol=1e-5, atol=1e-5)
    want_l, want_d = km.assign(x, res.centers)
    assert torch.equal(res.labels, want_l)
    assert res.inertia == pytest.approx(float(want_d.double().sum()), rel=1e-9)


@pytest.mark.parametrize("labeler", ["auto", "elkan"])
def test_kmeans_plusplus_start_at_k100_as_the_per_iteration_path(labeler):
    # The bench's case in small (bench/bench_kmeans_plusplus.py kmeans_lloyd): 10 blobs, K = 100
    # from k-means++, 20 iterations: ~10 centers per blob, so most rows keep near-tied
    # competitors in their own group and the per-center bounds decide; Lloyd's drift stays large
    # for the first iterations (a bound not lowered by it fails here).
    x = _blobs(6000, 24, 10, 11)
    init = km.kmeans_plusplus(x, 100, seed=0)
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            want_c, want_l, want_d = _per_iteration(x, init, 20)
            got_c, got_l, got_d = _bounded(x, init, 20, labeler)
        finally:
            torch.set_num_threads(prev)
        assert torch.equal(got_c, want_c)
        assert torch.equal(got_l, want_l)
        torch.testing.assert_close(got_d, want_d, rtol=2e-7, atol=0)


def test_k100_matches_scikit_learn_from_the_same_start(monkeypatch):
    sk = pytest.importorskip("sklearn.cluster")
    # 50 separated blobs, two centers each from the start: no float32 near-tie flips a row, so
    # float64 scikit-learn and the float32 kernel follow the same iterations.
    x = _blobs(5000, 16, 50, 12, spread=10.0)
    init = x[torch.randperm(5000, generator=torch.Generator().manual_seed(3))[:100]].clone()
    calls = []
    orig = kmeans_mod._lloyd_bounded
    monkeypatch.setattr(kmeans_mod, "_lloyd_bounded", lambda *a: calls.append(1) or orig(*a))
    res = km.kmeans(x, 100, init=init, niter=15, backend="torch")
    assert calls, "km.kmeans did not call the bounded kernel at K = 100"
    ref = sk.KMeans(100, init=init.double().numpy(), n_init=1, max_iter=15, tol=0.0, algorithm="lloyd")
    ref.fit(x.double().numpy())
    torch.testing.assert_close(res.centers.double(), torch.from_numpy(ref.cluster_centers_), rtol=1e-5, atol=1e-5)
    assert torch.equal(res.labels, torch.from_numpy(ref.labels_).long())
    assert res.inertia == pytest.approx(ref.inertia_, rel=1e-5)


@pytest.mark.parametrize("labeler", ["auto", "elkan"])
def test_far_rows_take_the_exact_path_at_k100(labeler):
    # Rows whose float32 squared differences overflow (|x - c| ~ 1e20): every labeler sends
    # them to float64 distances over all K, as km.assign does.
    x = _blobs(3000, 8, 10, 13)
    x[::97] *= 3e19
    init = x[torch.randperm(3000, generator=torch.Generator().manual_seed(4))[:40]].clone()
    want = _per_iteration(x, init, 6)
    got = _bounded(x, init, 6, labeler)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_bad_input_is_named():
    x = torch.randn(50, 3)
    with pytest.raises(TypeError, match="x must be float32"):
        torch.ops.kmgan_ext.lloyd_native(x.double(), x[:4].double(), 2)
    with pytest.raises(ValueError, match="niter"):
        torch.ops.kmgan_ext.lloyd_native(x, x[:4].clone(), -1)
    with pytest.raises((ValueError, TypeError), match="centers"):
        torch.ops.kmgan_ext.lloyd_native(x, torch.randn(4, 5), 2)
    with pytest.raises(ValueError, match="labeler must be"):
        torch.ops.kmgan_ext.lloyd_native(x, x[:4].clone(), 2, "yinyang")


@pytest.mark.parametrize("case", ["K=17", "K=37", "ties", "K=1"])
def test_converged_runs_end_early_with_the_bits_of_every_iteration(case, monkeypatch):
    # The kernel and the per-iteration path stop where the centers repeat (kmeans.py's
    # _cycle_ends); here against the per-iteration path with that stop disabled, run for all
    # of many more iterations than these blobs need, an odd and an even count.
    make, k, _ = CASES[case]
    x = make()
    init = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(7))[:k]].clone()
    for niter in (201, 200):
        got_c, got_l, _ = _bounded(x, init, niter)
        with monkeypatch.context() as m:
            m.setattr(kmeans_mod, "_same_bits", lambda a, b: False)
            want_c, want_l, _ = _per_iteration(x, init, niter)
        assert torch.equal(got_c, want_c)
        assert torch.equal(got_l, want_l)
