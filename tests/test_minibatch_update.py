"""km.minibatch_update_, km.minibatch_step_, km.ema_update_ against the reference."""
import numpy as np
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DTYPES, assert_labels_match, backend_params, noncontiguous, tol

SHAPES = [(0, 3, 10), (1, 1, 1), (7, 3, 10), (1023, 100, 10), (1023, 129, 1000), (4097, 512, 10)]


def _problem(n, d, k, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g).to(device, dtype)
    counts = torch.randint(0, 5, (k,), generator=g).to(device)
    x = torch.randn(n, d, generator=g).to(device, dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    # Cluster k // 2 gets no rows (when K > 1): every update test meets an empty cluster.
    labels = torch.where(labels == k // 2, (k // 2 + 1) % k, labels).to(device)
    return centers, counts, x, labels


def _assert_empty_clusters_untouched(after, before, labels, k):
    empty = torch.bincount(labels.cpu(), minlength=k) == 0
    assert empty.any() or k == 1
    assert torch.equal(after.cpu()[empty], before.cpu()[empty])


def test_known_answer():
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    counts = torch.tensor([2, 0, 7])
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0], [10.0, 12.0]])
    labels = torch.tensor([0, 0, 1])
    reference.minibatch_update_(centers, counts, x, labels)
    # c0 += (S0 - 2 c0) / (2 + 2); c1 += (S1 - c1) / 1; cluster 2 had no rows: untouched.
    assert centers.tolist() == [[1.5, 0.0], [10.0, 12.0], [5.0, 5.0]]
    assert counts.tolist() == [4, 1, 7]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_known_answer_every_backend(device, backend, deterministic):
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]], device=device)
    counts = torch.tensor([2, 0, 7], device=device)
    x = torch.tensor([[2.0, 0.0], [4.0, 0.0], [10.0, 12.0]], device=device)
    km.minibatch_update_(centers, counts, x, torch.tensor([0, 0, 1], device=device),
                         deterministic=deterministic, backend=backend)
    assert centers.tolist() == [[1.5, 0.0], [10.0, 12.0], [5.0, 5.0]]
    assert counts.tolist() == [4, 1, 7]


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_update_random(device, backend, deterministic, n, d, k):
    centers, counts, x, labels = _problem(n, d, k, device, seed=n + d + k)
    want_c, want_n = centers.cpu().clone(), counts.cpu().clone()
    reference.minibatch_update_(want_c, want_n, x.cpu(), labels.cpu())
    km.minibatch_update_(centers, counts, x, labels, deterministic=deterministic, backend=backend)
    assert torch.equal(counts.cpu(), want_n)
    assert int(counts.sum() - want_n.sum()) == 0
    torch.testing.assert_close(centers.cpu(), want_c, rtol=1e-5, atol=1e-5)
    untouched = torch.bincount(labels.cpu(), minlength=k) == 0
    assert torch.equal(centers.cpu()[untouched], _problem(n, d, k, "cpu", seed=n + d + k)[0][untouched])


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_update_dtypes(device, backend, dtype):
    centers, counts, x, labels = _problem(300, 24, 9, device, dtype, seed=11)
    want_c, want_n = centers.cpu().clone(), counts.cpu().clone()
    reference.minibatch_update_(want_c, want_n, x.cpu(), labels.cpu())
    before = centers.clone()
    km.minibatch_update_(centers, counts, x, labels, backend=backend)
    assert centers.dtype == dtype and torch.equal(counts.cpu(), want_n)
    torch.testing.assert_close(centers.cpu().double(), want_c.double(), **tol(dtype))
    _assert_empty_clusters_untouched(centers, before, labels, 9)


@pytest.mark.parametrize("device,backend", backend_params())
def test_deterministic_is_bitwise_repeatable(device, backend):
    centers, counts, x, labels = _problem(5000, 64, 7, device, seed=12)
    outs = []
    for _ in range(3):
        c, n = centers.clone(), counts.clone()
        km.minibatch_update_(c, n, x, labels, deterministic=True, backend=backend)
        outs.append(c)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    _assert_empty_clusters_untouched(outs[0], centers, labels, 7)


@pytest.mark.parametrize("device,backend", backend_params())
def test_empty_batch_changes_nothing(device, backend):
    centers, counts, _, _ = _problem(0, 5, 3, device)
    c0, n0 = centers.clone(), counts.clone()
    x = torch.empty(0, 5, device=device)
    lab = torch.empty(0, dtype=torch.int64, device=device)
    km.minibatch_update_(centers, counts, x, lab, backend=backend)
    assert torch.equal(centers, c0) and torch.equal(counts, n0)
    assert km.minibatch_step_(centers, counts, x, backend=backend).shape == (0,)
    assert torch.equal(centers, c0) and torch.equal(counts, n0)
    # The EMA decays its state on an empty batch too; with decay 1 nothing moves, and the
    # centers are the state's ratio (here: the centers themselves, cluster_size ones).
    size, embed = torch.ones(3, device=device), centers.clone()
    km.ema_update_(centers, size, embed, x, lab, decay=1.0, eps=0.0, backend=backend)
    assert torch.equal(centers, c0) and torch.equal(size, torch.ones(3, device=device))
    assert torch.equal(embed, c0)


@pytest.mark.parametrize("device,backend", backend_params())
def test_noncontiguous_centers_are_updated_in_place(device, backend):
    centers, counts, x, labels = _problem(100, 6, 4, device, seed=13)
    want_c, want_n = centers.cpu().clone(), counts.cpu().clone()
    reference.minibatch_update_(want_c, want_n, x.cpu(), labels.cpu())
    view = noncontiguous(centers)
    km.minibatch_update_(view, counts, noncontiguous(x), labels, backend=backend)
    torch.testing.assert_close(view.cpu(), want_c, rtol=1e-5, atol=1e-5)
    _assert_empty_clusters_untouched(view, centers, labels, 4)
    assert torch.equal(counts.cpu(), want_n)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_step_is_assign_then_update(device, backend, deterministic):
    centers, counts, x, _ = _problem(2000, 40, 10, device, seed=14)
    centers[5] += 100.0  # far from every row: an empty cluster, untouched
    before = centers.clone()
    want_c, want_n = centers.cpu().clone(), counts.cpu().clone()
    labels = km.minibatch_step_(centers, counts, x, deterministic=deterministic, backend=backend)
    # Labels are taken against the centers before the update.
    assert_labels_match(x, before, labels)
    reference.minibatch_update_(want_c, want_n, x.cpu(), labels.cpu())
    assert torch.equal(counts.cpu(), want_n)
    torch.testing.assert_close(centers.cpu(), want_c, rtol=1e-5, atol=1e-5)
    _assert_empty_clusters_untouched(centers, before, labels, 10)


def _ema_transcription(centers, cluster_size, embed_sum, x, labels, decay, eps):
    """van den Oord et al. 2017, A.1, written out per code in Python floats (float64), as the
    formula reads; returns the new (centers, cluster_size, embed_sum) as nested lists."""
    k, d = len(centers), len(centers[0])
    n_k = [0] * k
    s_k = [[0.0] * d for _ in range(k)]
    for row, lab in zip(x, labels):
        n_k[lab] += 1
        for j in range(d):
            s_k[lab][j] += row[j]
    size = [decay * cluster_size[q] + (1 - decay) * n_k[q] for q in range(k)]
    embed = [[decay * embed_sum[q][j] + (1 - decay) * s_k[q][j] for j in range(d)] for q in range(k)]
    n = sum(size)
    out = []
    for q in range(k):
        smoothed = (size[q] + eps) / (n + k * eps) * n
        out.append(list(centers[q]) if smoothed == 0 else [embed[q][j] / smoothed for j in range(d)])
    return out, size, embed


def _ema_state(k, d, device, dtype, seed, fresh):
    g = torch.Generator().manual_seed(seed)
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    if fresh:
        return torch.zeros(k, dtype=sdt).to(device), torch.zeros(k, d, dtype=sdt).to(device)
    return (torch.rand(k, generator=g) * 5).to(device, sdt), torch.randn(k, d, generator=g).to(device, sdt)


def test_ema_known_answer():
    centers = torch.tensor([[0.0, 0.0], [4.0, 4.0], [1.0, 1.0]], dtype=torch.float64)
    size = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    embed = torch.tensor([[1.0, 1.0], [8.0, 8.0], [0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 2.0], [4.0, 2.0]], dtype=torch.float64)
    reference.ema_update_(centers, size, embed, x, torch.tensor([0, 0]), 0.5, 0.0)
    # N = (0.5 + 1, 1, 0), M_0 = 0.5 (1, 1) + 0.5 (6, 4) = (3.5, 2.5); with eps = 0, N' = N:
    # c_0 = M_0 / 1.5, c_1 = (4, 4) / 1, and c_2 stays (N'_2 = 0).
    assert size.tolist() == [1.5, 1.0, 0.0]
    assert embed.tolist() == [[3.5, 2.5], [4.0, 4.0], [0.0, 0.0]]
    assert centers.tolist() == [[3.5 / 1.5, 2.5 / 1.5], [4.0, 4.0], [1.0, 1.0]]


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_ema_reference_is_the_transcription(fresh, eps):
    centers, _, x, labels = _problem(40, 3, 6, "cpu", torch.float64, seed=21)
    labels = labels % 4  # codes 4 and 5 get no rows
    size, embed = _ema_state(6, 3, "cpu", torch.float64, 22, fresh)
    want_c, want_n, want_m = _ema_transcription(
        centers.tolist(), size.tolist(), embed.tolist(), x.tolist(), labels.tolist(), 0.8, eps
    )
    reference.ema_update_(centers, size, embed, x, labels, 0.8, eps)
    torch.testing.assert_close(size, torch.tensor(want_n, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(embed, torch.tensor(want_m, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(centers, torch.tensor(want_c, dtype=torch.float64), rtol=1e-13, atol=1e-13)


def _ema_check(device, backend, n, d, k, dtype, fresh, deterministic, decay=0.99, eps=1e-5, seed=15):
    centers, _, x, labels = _problem(n, d, k, device, dtype, seed=seed)
    labels = labels % max(1, k - 2)  # the last two codes get no rows
    size, embed = _ema_state(k, d, device, dtype, seed + 1, fresh)
    want = [t.cpu().clone() for t in (centers, size, embed)]
    reference.ema_update_(*want, x.cpu(), labels.cpu(), decay, eps)
    km.ema_update_(centers, size, embed, x, labels, decay=decay, eps=eps, deterministic=deterministic,
                   backend=backend)
    t = tol(dtype)
    torch.testing.assert_close(size.cpu(), want[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(embed.cpu().double(), want[2].double(), **t)
    torch.testing.assert_close(centers.cpu().double(), want[0].double(), **t)
    return centers, size, embed


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_random(device, backend, deterministic, fresh):
    _ema_check(device, backend, 777, 31, 13, torch.float32, fresh, deterministic)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_dtypes(device, backend, dtype):
    _ema_check(device, backend, 300, 24, 9, dtype, False, False, decay=0.9, seed=31)


@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_fresh_state_and_no_rows_leave_centers_unchanged(device, backend):
    """n = sum N = 0 (nothing ever assigned): every N'_k is 0 and the centers stay (no NaN)."""
    centers, _, _, _ = _problem(0, 4, 5, device, seed=41)
    c0 = centers.clone()
    size, embed = torch.zeros(5, device=device), torch.zeros(5, 4, device=device)
    x = torch.empty(0, 4, device=device)
    lab = torch.empty(0, dtype=torch.int64, device=device)
    km.ema_update_(centers, size, embed, x, lab, decay=0.9, backend=backend)
    assert torch.equal(centers, c0)
    assert not size.any() and not embed.any()


@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_deterministic_is_bitwise_repeatable(device, backend):
    centers, _, x, labels = _problem(5000, 64, 7, device, seed=12)
    size, embed = _ema_state(7, 64, device, torch.float32, 13, False)
    outs = []
    for _ in range(3):
        state = [t.clone() for t in (centers, size, embed)]
        km.ema_update_(*state, x, labels, decay=0.95, deterministic=True, backend=backend)
        outs.append(state)
    for a, b in ((outs[0], outs[1]), (outs[0], outs[2])):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_noncontiguous_state_is_updated_in_place(device, backend):
    centers, _, x, labels = _problem(100, 6, 4, device, seed=13)
    size, embed = _ema_state(4, 6, device, torch.float32, 14, False)
    want = [t.cpu().clone() for t in (centers, size, embed)]
    reference.ema_update_(*want, x.cpu(), labels.cpu(), 0.9, 1e-5)
    views = [noncontiguous(centers), size.repeat_interleave(2)[::2], noncontiguous(embed)]
    km.ema_update_(*views, noncontiguous(x), labels, decay=0.9, backend=backend)
    for got, exp in zip(views, want):
        torch.testing.assert_close(got.cpu(), exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", backend_params())
def test_reproduces_sklearn_partial_fit(device, backend):
    """A sequence of steps equals scikit-learn's MiniBatchKMeans.partial_fit
    (same initial centers and batches, no random reassignment)."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(m, 1.0, size=(300, 8)) for m in (-5, 0, 5)]).astype(np.float32)
    rng.shuffle(data)
    init = data[:3].copy()
    skl = MiniBatchKMeans(n_clusters=3, init=init, n_init=1, reassignment_ratio=0.0, batch_size=100)
    centers = torch.from_numpy(init.copy()).to(device)
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    for s in range(0, len(data), 100):
        batch = data[s : s + 100]
        skl.partial_fit(batch)
        km.minibatch_step_(centers, counts, torch.from_numpy(batch).to(device), backend=backend)
        np.testing.assert_allclose(centers.cpu().numpy(), skl.cluster_centers_, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts.cpu().numpy(), skl._counts.astype(np.int64))


@pytest.mark.parametrize("device,backend", backend_params())
def test_opcheck(device, backend):
    centers, counts, x, labels = _problem(64, 10, 5, device, seed=16)
    ops = torch.ops.kmgan_ext
    torch.library.opcheck(ops.minibatch_update_.default, (centers.clone(), counts.clone(), x, labels, True, backend))
    torch.library.opcheck(ops.minibatch_step_.default, (centers.clone(), counts.clone(), x, False, backend))
    size, embed = _ema_state(5, 10, device, torch.float32, 17, False)
    torch.library.opcheck(ops.ema_update_.default, (centers.clone(), size, embed, x, labels, 0.9, 1e-5, False, backend))


def test_counts_stay_exact_past_float32():
    """int64 counts keep counting where a float32 counter would stop at 2**24."""
    centers = torch.zeros(1, 1)
    counts = torch.tensor([2**24])
    km.minibatch_update_(centers, counts, torch.ones(1, 1), torch.zeros(1, dtype=torch.int64))
    assert counts.item() == 2**24 + 1
    assert centers.item() == pytest.approx(1.0 / (2**24 + 1), rel=1e-6)
