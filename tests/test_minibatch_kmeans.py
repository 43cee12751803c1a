"""km.MiniBatchKMeans: buffers, seeding, training/eval behaviour, scikit-learn parity, bad input.

The two-process (gloo) tests of its distributed update are in test_distributed_seeding.py.
"""
import copy

import numpy as np
import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference
from testing import DEVICES


def _data(n=600, d=6, k=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    means = 5 * torch.randn(k, d, generator=g)
    return (means[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g)).to(dtype)


def test_buffers_and_state_dict():
    m = km.MiniBatchKMeans(4, 6)
    assert dict(m.named_buffers()).keys() == {"centers", "counts"}
    assert m.centers.shape == (4, 6) and m.centers.dtype == torch.float32
    assert m.counts.dtype == torch.int64 and m.counts.shape == (4,)
    x = _data()
    m.init_(x, seed=1)
    m(x[:100])
    other = km.MiniBatchKMeans(4, 6)
    other.load_state_dict(m.state_dict())
    other.eval()
    assert torch.equal(other.predict(x), m.predict(x))  # a loaded module counts as seeded
    assert "n_clusters=4, n_features=6" in repr(m)


def test_init_is_kmeans_plusplus_and_zeroes_counts():
    x = _data()
    m = km.MiniBatchKMeans(4, 6)
    m.counts.fill_(9)
    assert m.init_(x, seed=3) is m
    assert torch.equal(m.centers, km.kmeans_plusplus(x, 4, seed=3))
    assert int(m.counts.sum()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_training_forward_is_minibatch_step(device):
    x = _data().to(device)
    m = km.MiniBatchKMeans(4, 6, device=device).init_(x)
    centers, counts = m.centers.clone(), m.counts.clone()
    for s in range(0, 600, 128):
        want = km.minibatch_step_(centers, counts, x[s : s + 128])
        got = m(x[s : s + 128])
        assert torch.equal(got, want)
        assert torch.equal(m.centers, centers) and torch.equal(m.counts, counts)
    assert int(m.counts.sum()) == 600


def test_eval_forward_and_predict_never_update():
    x = _data()
    m = km.MiniBatchKMeans(4, 6).init_(x)
    before = copy.deepcopy(m.state_dict())
    m.eval()
    labels = m(x)
    assert torch.equal(labels, km.assign(x, m.centers)[0])
    m.train()
    assert torch.equal(m.predict(x), labels)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_partial_fit_updates_in_any_mode_and_seeds_itself():
    x = _data()
    m = km.MiniBatchKMeans(4, 6).eval()
    with pytest.raises(RuntimeError, match="call init_"):
        m.predict(x)
    assert m.partial_fit(x[:200]) is m  # first call: k-means++ on the batch, then the update
    seeds = km.kmeans_plusplus(x[:200], 4, seed=0)
    c, n = seeds.clone(), torch.zeros(4, dtype=torch.int64)
    reference.minibatch_step_(c, n, x[:200])
    torch.testing.assert_close(m.centers, c.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(m.counts, n)


def test_cluster_centers_is_a_detached_copy():
    x = _data()
    m = km.MiniBatchKMeans(4, 6).init_(x)
    c = m.cluster_centers_
    c.add_(100)
    assert not torch.equal(c, m.centers)
    assert not m.cluster_centers_.requires_grad


def test_matches_sklearn_partial_fit():
    sk = pytest.importorskip("sklearn.cluster")
    x = _data(n=900, seed=4).double()
    m = km.MiniBatchKMeans(4, 6, dtype=torch.float64).init_(x, seed=2)
    init = m.centers.numpy().copy()
    skm = sk.MiniBatchKMeans(4, init=init, n_init=1, batch_size=150, reassignment_ratio=0.0)
    for s in range(0, 900, 150):
        m.partial_fit(x[s : s + 150])
        skm.partial_fit(x[s : s + 150].numpy())
    np.testing.assert_allclose(m.centers.numpy(), skm.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="n_clusters must be a positive int"):
        km.MiniBatchKMeans(0, 3)
    with pytest.raises(ValueError, match="n_features must be a positive int"):
        km.MiniBatchKMeans(2, 0)
    with pytest.raises(TypeError, match="dtype must be float32"):
        km.MiniBatchKMeans(2, 3, dtype=torch.int64)
    m = km.MiniBatchKMeans(2, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        m.init_(torch.randn(5, 4))
    with pytest.raises(ValueError, match="k must be <= the number of rows"):
        m.init_(torch.randn(1, 3))
    m.init_(torch.randn(5, 3))
    before = m.centers.clone(), m.counts.clone()
    with pytest.raises(ValueError, match="x must have 3 columns"):
        m(torch.randn(5, 4))
    with pytest.raises(TypeError, match="x must have dtype torch.float32"):
        m(torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be float"):
        m(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must be 2-D"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match="method must be one of"):
        m.init_(torch.randn(5, 3), method="random")
    assert torch.equal(m.centers, before[0]) and torch.equal(m.counts, before[1])
