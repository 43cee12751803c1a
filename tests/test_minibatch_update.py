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
    km.ema_update_(centers, x, lab, 0.9, backend=backend)
    assert torch.equal(centers, c0) and torch.equal(counts, n0)


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


def test_ema_known_answer():
    centers = torch.tensor([[0.0, 0.0], [4.0, 4.0]])
    x = torch.tensor([[2.0, 2.0], [4.0, 2.0]])
    reference.ema_update_(centers, x, torch.tensor([0, 0]), 0.75)
    assert centers.tolist() == [[0.75, 0.5], [4.0, 4.0]]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_ema_random(device, backend, deterministic):
    centers, _, x, labels = _problem(777, 31, 13, device, seed=15)
    want = centers.cpu().clone()
    reference.ema_update_(want, x.cpu(), labels.cpu(), 0.99)
    km.ema_update_(centers, x, labels, 0.99, deterministic=deterministic, backend=backend)
    torch.testing.assert_close(centers.cpu(), want, rtol=1e-5, atol=1e-5)


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
    torch.library.opcheck(ops.ema_update_.default, (centers.clone(), x, labels, 0.9, False, backend))


def test_counts_stay_exact_past_float32():
    """int64 counts keep counting where a float32 counter would stop at 2**24."""
    centers = torch.zeros(1, 1)
    counts = torch.tensor([2**24])
    km.minibatch_update_(centers, counts, torch.ones(1, 1), torch.zeros(1, dtype=torch.int64))
    assert counts.item() == 2**24 + 1
    assert centers.item() == pytest.approx(1.0 / (2**24 + 1), rel=1e-6)
