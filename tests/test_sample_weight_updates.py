"""sample_weight in the update ops (issue 12): km.minibatch_update_, km.minibatch_step_ and
km.ema_update_ on every backend against the float64 reference, the reference against
scikit-learn's ``_minibatch_update_dense`` / ``_mini_batch_step`` (the peer that defines the
weighted Sculley step), error growth at offset 1e4, and the estimators' weighted steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import backend_params, fast_backend_params

sk_minibatch = pytest.importorskip("sklearn.cluster._k_means_minibatch")
sk_kmeans = pytest.importorskip("sklearn.cluster._kmeans")


def _problem(n, k, d, seed=0, dtype=torch.float32, zero_weights=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    # Weights representable in float32 (what scikit-learn keeps for float32 data), a few zeros.
    w = (torch.randint(0, 9, (n,), generator=g).double() / 4).to(dtype)
    if not zero_weights:
        w = w + 0.25
    centers = torch.randn(k, d, generator=g, dtype=torch.float64).to(dtype)
    counts = torch.randint(0, 5, (k,), generator=g).double() * 1.5  # some zero
    return x, labels, w, centers, counts


def _tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)


# K = 5 runs the small single-program paths; K = 70 the atomics (fast) and sorted-segment
# (deterministic) paths of Triton and the chunked pieces of CUDA (clusters span 32-row chunks).
SHAPES = [(50, 5, 7), (400, 70, 3)]


# metric="cosine" renormalises every center whose batch weight is > 0, also when that weight
# is below 2^-53 of W_k, so that W_k + w_k rounds to W_k (Triton once decided by "W changed"
# and left such a center as it was: not unit length).
@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_cosine_renormalises_a_center_whose_batch_weight_is_tiny(device, backend, deterministic,
                                                                 n, k, d):
    x, labels, w, c, _ = _problem(n, k, d, seed=4)
    c = c * 3  # not unit length: a renormalised center differs from the one given
    cnt = torch.ones(k, dtype=torch.float64)
    w = torch.where(labels == 1, 1e-20, w.double())  # cluster 1: a batch weight 1e-20 vs W = 1
    want_c, want_n = c.clone(), cnt.clone()
    reference.minibatch_update_(want_c, want_n, x, labels, False, True, w)
    assert float(want_n[1]) == 1.0 and abs(float(want_c[1].double().norm()) - 1) < 1e-6
    got_c, got_n = c.clone().to(device), cnt.clone().to(device)
    km.minibatch_update_(got_c, got_n, x.to(device), labels.to(device), sample_weight=w.to(device),
                         deterministic=deterministic, metric="cosine", backend=backend)
    torch.testing.assert_close(got_n.cpu(), want_n, rtol=1e-15, atol=0)
    torch.testing.assert_close(got_c.cpu(), want_c, **_tol(torch.float32))


@pytest.mark.parametrize("n,k,d", SHAPES)
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_weighted_minibatch_update_matches_reference(device, backend, dtype, deterministic,
                                                     cosine, n, k, d):
    x, labels, w, c, cnt = _problem(n, k, d, dtype=dtype)
    if cosine:
        x[3] = 0  # a zero row adds nothing
    metric = "cosine" if cosine else "euclidean"
    want_c, want_n = c.clone(), cnt.clone()
    reference.minibatch_update_(want_c, want_n, x, labels, False, cosine, w)
    got_c, got_n = c.clone().to(device), cnt.clone().to(device)
    km.minibatch_update_(got_c, got_n, x.to(device), labels.to(device), sample_weight=w.to(device),
                         deterministic=deterministic, metric=metric, backend=backend)
    torch.testing.assert_close(got_n.cpu(), want_n, rtol=1e-15, atol=0)
    torch.testing.assert_close(got_c.cpu(), want_c, **_tol(dtype))
    # clusters whose batch weight is 0 (no rows, or only zero-weight rows) are bitwise untouched
    wk = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w.double())
    assert torch.equal(got_c.cpu()[wk == 0], c[wk == 0])


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", fast_backend_params())
def test_weighted_ema_update_matches_reference(device, backend, deterministic, cosine):
    for n, k, d in SHAPES:
        x, labels, w, c, _ = _problem(n, k, d, seed=1)
        g = torch.Generator().manual_seed(2)
        size, embed = torch.rand(k, generator=g), torch.randn(k, d, generator=g)
        want = [c.clone(), size.clone(), embed.clone()]
        reference.ema_update_(*want, x, labels, 0.8, 1e-5, False, cosine, w)
        got = [t.clone().to(device) for t in (c, size, embed)]
        km.ema_update_(*got, x.to(device), labels.to(device), sample_weight=w.to(device), decay=0.8,
                       deterministic=deterministic, metric="cosine" if cosine else "euclidean",
                       backend=backend)
        for name, a, b in zip(("centers", "cluster_size", "embed_sum"), got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=2e-6, atol=2e-6, msg=name)


@pytest.mark.parametrize("device,backend", backend_params())
def test_weighted_minibatch_step_matches_sklearn_mini_batch_step(device, backend):
    """km.minibatch_step_ with sample_weight = scikit-learn's _mini_batch_step (no
    reassignment): same labels against the old centers, same centers and weight sums."""
    x, _, w, c, cnt = _problem(300, 6, 4, seed=3, dtype=torch.float64)
    centers_new, weight_sums = c.numpy().copy(), cnt.numpy().copy()
    sk_kmeans._mini_batch_step(x.numpy(), w.numpy(), c.numpy().copy(), centers_new, weight_sums,
                               np.random.RandomState(0), random_reassign=False)
    got_c, got_n = c.to(device), cnt.to(device)
    km.minibatch_step_(got_c, got_n, x.to(device), sample_weight=w.to(device), backend=backend)
    np.testing.assert_allclose(got_n.cpu().numpy(), weight_sums, rtol=1e-15)
    np.testing.assert_allclose(got_c.cpu().numpy(), centers_new, rtol=1e-12, atol=1e-12)


def test_reference_is_sklearn_minibatch_update_dense():
    """The weighted rule transcribed: the float64 reference and scikit-learn's Cython kernel
    (float64 and float32 data) agree; a cluster with only zero-weight rows is untouched."""
    for dtype, rtol in ((torch.float64, 1e-13), (torch.float32, 2e-6)):
        x, labels, w, c, cnt = _problem(200, 8, 5, seed=4, dtype=dtype)
        labels[labels == 2] = 3
        labels[0] = 2
        w[0] = 0  # cluster 2: one row, weight 0
        want_c, want_n = c.clone(), cnt.clone()
        reference.minibatch_update_(want_c, want_n, x, labels, False, False, w)
        np_dtype = x.numpy().dtype
        centers_new, weight_sums = c.numpy().copy(), cnt.numpy().astype(np_dtype)
        sk_minibatch._minibatch_update_dense(x.numpy(), w.numpy(), c.numpy(), centers_new,
                                             weight_sums, labels.numpy().astype(np.int32), 1)
        np.testing.assert_allclose(want_n.numpy(), weight_sums, rtol=rtol)
        np.testing.assert_allclose(want_c.numpy(), centers_new, rtol=rtol, atol=rtol)
        assert torch.equal(want_c[2], c[2]) and float(want_n[2]) == float(cnt[2])


@pytest.mark.parametrize("device,backend", backend_params())
def test_integer_weights_are_repeated_rows(device, backend):
    """w_i = 2 counts row i twice: the weighted update with float counts equals the unweighted
    one on the batch with those rows repeated (Sculley and EMA)."""
    x, labels, _, c, cnt = _problem(60, 4, 3, seed=5)
    cnt = cnt.floor()  # whole counts, so that the int64 state holds them too
    w = torch.ones(60)
    w[::3] = 2.0
    rep = torch.repeat_interleave(torch.arange(60), w.long())
    a_c, a_n = c.clone().to(device), cnt.clone().to(device)
    km.minibatch_update_(a_c, a_n, x.to(device), labels.to(device), sample_weight=w.to(device),
                         backend=backend)
    b_c, b_n = c.clone(), cnt.long()
    reference.minibatch_update_(b_c, b_n, x[rep], labels[rep])
    torch.testing.assert_close(a_n.cpu(), b_n.double())
    torch.testing.assert_close(a_c.cpu(), b_c, rtol=2e-6, atol=2e-6)
    size, embed = torch.zeros(4), torch.zeros(4, 3)
    got = [t.clone().to(device) for t in (c, size, embed)]
    km.ema_update_(*got, x.to(device), labels.to(device), sample_weight=w.to(device), decay=0.5,
                   backend=backend)
    want = [c.clone(), size.clone(), embed.clone()]
    reference.ema_update_(*want, x[rep], labels[rep], 0.5, 1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("device,backend", backend_params())
def test_weighted_sums_do_not_drift_with_n(device, backend, deterministic):
    """Contract 3 with weights: 10^5 rows at offset 1e4 (3 * 10^4 on the CPU emulations, as
    tests/test_accumulation.py), one cluster, fresh state: the new center is the weighted
    mean within a few float32 ulps, where a float32 running sum drifts by thousands."""
    from test_accumulation import _far_rows, _n, assert_ulps

    x = _far_rows(_n(100_000, device, backend), 1e4, seed=6)
    g = torch.Generator().manual_seed(7)
    w = (torch.randint(1, 5, (x.shape[0],), generator=g).double() / 2).float()
    labels = torch.zeros(x.shape[0], dtype=torch.int64)
    mean = (x.double() * w.double()[:, None]).sum(0, keepdim=True) / w.double().sum()
    c, cnt = torch.tensor([[1e4]]), torch.zeros(1, dtype=torch.float64)
    want_c = c.clone()
    reference.minibatch_update_(want_c, cnt.clone(), x, labels, False, False, w)
    assert_ulps(want_c, mean, 1)
    c, cnt = c.to(device), cnt.to(device)
    km.minibatch_update_(c, cnt, x.to(device), labels.to(device), sample_weight=w.to(device),
                         deterministic=deterministic, backend=backend)
    assert float(cnt) == float(w.double().sum())
    assert_ulps(c, mean)
    state = [torch.tensor([[1e4]]), torch.zeros(1), torch.zeros(1, 1)]
    want = [t.clone() for t in state]
    reference.ema_update_(*want, x, labels, 0.5, 1e-5, False, False, w)
    state = [t.to(device) for t in state]
    km.ema_update_(*state, x.to(device), labels.to(device), sample_weight=w.to(device), decay=0.5,
                   deterministic=deterministic, backend=backend)
    for got, exp in zip(state, want):
        assert_ulps(got, exp)


BAD_WEIGHTS = [
    (lambda w: w.long(), TypeError),  # integer weights
    (lambda w: w[:-1], ValueError),  # shape
    (lambda w: w[:, None], ValueError),
    (lambda w: torch.where(torch.arange(w.numel()) == 2, -1.0, w), ValueError),
    (lambda w: torch.where(torch.arange(w.numel()) == 2, float("nan"), w), ValueError),
    (lambda w: torch.where(torch.arange(w.numel()) == 2, float("inf"), w), ValueError),
    (lambda w: w.to("meta"), ValueError),  # device
    (lambda w: [1.0] * w.numel(), TypeError),  # not a tensor
]


@pytest.mark.parametrize("case", range(len(BAD_WEIGHTS)))
@pytest.mark.parametrize("device,backend", backend_params())
def test_bad_sample_weight_is_refused_before_any_write(device, backend, case):
    make, err = BAD_WEIGHTS[case]
    x, labels, w, c, cnt = _problem(20, 3, 2, seed=8)
    size, embed = torch.rand(3), torch.randn(3, 2)
    args = [t.to(device) for t in (x, labels, c, cnt, size, embed)]
    bad = make(w.to(device))
    x, labels, c, cnt, size, embed = args
    saved = [t.clone() for t in (c, cnt, size, embed)]
    calls = [
        lambda: km.minibatch_update_(c, cnt, x, labels, sample_weight=bad, backend=backend),
        lambda: km.minibatch_step_(c, cnt, x, sample_weight=bad, backend=backend),
        lambda: km.ema_update_(c, size, embed, x, labels, sample_weight=bad, backend=backend),
    ]
    for call in calls:
        with pytest.raises(err, match="sample_weight must"):
            call()
        for a, b in zip((c, cnt, size, embed), saved):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device,backend", backend_params())
def test_counts_dtype_follows_sample_weight(device, backend):
    """Cumulative weights need float64 counts; int64 counts stay the unweighted state."""
    x, labels, w, c, cnt = _problem(20, 3, 2, seed=9)
    x, labels, w, c, cnt = (t.to(device) for t in (x, labels, w, c, cnt))
    with pytest.raises(TypeError, match="counts must be float64"):
        km.minibatch_update_(c, cnt.long(), x, labels, sample_weight=w, backend=backend)
    with pytest.raises(TypeError, match="counts must be int64"):
        km.minibatch_update_(c, cnt, x, labels, backend=backend)
    with pytest.raises(ValueError, match="counts must be finite and non-negative"):
        km.minibatch_step_(c, -cnt - 1, x, sample_weight=w, backend=backend)


def test_direct_op_call_checks_sample_weight():
    """torch.ops.kmgan_ext.minibatch_update_ (no Python wrapper) runs the same checks."""
    if not km._registry.registered():
        pytest.skip("no compiled ops")
    x, labels, w, c, cnt = _problem(20, 3, 2, seed=10)
    w[1] = -1
    saved = c.clone()
    with pytest.raises(ValueError, match="sample_weight"):
        torch.ops.kmgan_ext.minibatch_update_(c, cnt, x, labels, False, "cpu", False, w)
    assert torch.equal(c, saved)


def test_batched_weighted_update_is_each_problem():
    x = torch.randn(3, 40, 2, generator=torch.Generator().manual_seed(11))
    labels = torch.randint(0, 4, (3, 40), generator=torch.Generator().manual_seed(12))
    w = torch.rand(3, 40, generator=torch.Generator().manual_seed(13))
    c, cnt = torch.randn(3, 4, 2), torch.rand(3, 4, dtype=torch.float64)
    want_c, want_n = c.clone(), cnt.clone()
    for b in range(3):
        reference.minibatch_update_(want_c[b], want_n[b], x[b], labels[b], False, False, w[b])
    km.minibatch_update_(c, cnt, x, labels, sample_weight=w, backend="cpu")
    torch.testing.assert_close(c, want_c)
    torch.testing.assert_close(cnt, want_n)


# ----------------------------------------------------------------------------- estimators
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits().data


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_minibatch_kmeans_weighted_partial_fit_follows_sklearn(digits, backend):
    """MiniBatchKMeans.partial_fit with sample_weight now runs the weighted update op: the
    same centers and weight sums as scikit-learn's partial_fit sequence (same init)."""
    if km.available_backends()[backend] is not None:
        pytest.skip(km.available_backends()[backend])
    sk = pytest.importorskip("sklearn.cluster")
    w = np.random.RandomState(0).uniform(0.2, 2.0, len(digits))
    w[::7] = 0.0
    init = digits[np.random.RandomState(3).choice(len(digits), 10, replace=False)].copy()
    a = km.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100, backend=backend)
    b = sk.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100)
    for s in range(0, 500, 100):
        a.partial_fit(digits[s : s + 100], sample_weight=w[s : s + 100])
        b.partial_fit(digits[s : s + 100], sample_weight=w[s : s + 100])
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(a.counts_, b._counts, rtol=1e-12)


def _repeated(x, seed):
    w = np.random.RandomState(seed).randint(1, 4, len(x)).astype(np.float64)
    return w, np.repeat(np.arange(len(x)), w.astype(np.int64))


def test_kmeans_cosine_with_sample_weight_is_repeated_rows(digits):
    """metric="cosine" with sample_weight (refused before): integer weights give the fit of
    the rows repeated that many times."""
    x = digits[:400]
    w, rep = _repeated(x, 1)
    init = x[:6].copy()
    a = km.KMeans(6, init=init, n_init=1, metric="cosine", backend="cpu").fit(x, sample_weight=w)
    b = km.KMeans(6, init=init, n_init=1, metric="cosine", backend="cpu").fit(x[rep])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-12)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-10)
    assert a.n_iter_ == b.n_iter_


def test_minibatch_kmeans_cosine_with_sample_weight_is_repeated_rows(digits):
    x = digits[:300]
    w, rep = _repeated(x, 2)
    init = x[:5].copy()
    a = km.MiniBatchKMeans(5, init=init, metric="cosine", reassignment_ratio=0.0, backend="cpu")
    b = km.MiniBatchKMeans(5, init=init, metric="cosine", reassignment_ratio=0.0, backend="cpu")
    for s in range(0, 300, 100):
        a.partial_fit(x[s : s + 100], sample_weight=w[s : s + 100])
        b.partial_fit(x[rep[(rep >= s) & (rep < s + 100)]])
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(a.counts_, b.counts_)
