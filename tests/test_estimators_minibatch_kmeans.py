"""km.MiniBatchKMeans against scikit-learn's MiniBatchKMeans: the same random sequence
(digits; Fashion-MNIST when installed)."""
import os

import numpy as np
import pytest
import torch

import kmgan_ext as km

sk = pytest.importorskip("sklearn.cluster")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from kmgan_ext.train.data import FASHION_SYSTEM_DIR, read_idx  # noqa: E402

# Debian's dataset-fashion-mnist; the test that needs it skips (reason shown by -ra) without it
FASHION = os.path.join(FASHION_SYSTEM_DIR, "t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def digits():
    return load_digits().data


def _init(x, k, seed):
    return x[np.random.RandomState(seed).choice(len(x), k, replace=False)].copy()


@pytest.mark.parametrize("kw", [dict(), dict(max_no_improvement=None, max_iter=3),
                                dict(tol=1e-3), dict(reassignment_ratio=0.2)])
def test_fit_follows_sklearns_sequence(digits, kw):
    init = _init(digits, 10, 0)
    a = km.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100, **kw).fit(digits)
    b = sk.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100, **kw).fit(digits)
    assert a.n_steps_ == b.n_steps_ and a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)
    np.testing.assert_array_equal(a.counts_, b._counts)


def test_partial_fit_follows_sklearns_sequence(digits):
    init = _init(digits, 10, 1)
    a = km.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100)
    b = sk.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100)
    for s in range(0, len(digits), 100):
        a.partial_fit(digits[s : s + 100])
        b.partial_fit(digits[s : s + 100])
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(a.counts_, b._counts)
    assert a.n_steps_ == b.n_steps_
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_init_random_and_sample_weight_follow_sklearn(digits):
    a = km.MiniBatchKMeans(10, init="random", random_state=2, batch_size=200).fit(digits)
    b = sk.MiniBatchKMeans(10, init="random", random_state=2, batch_size=200).fit(digits)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    w = np.random.RandomState(0).uniform(0.2, 2.0, len(digits))
    init = _init(digits, 10, 3)
    a = km.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100).fit(digits, sample_weight=w)
    b = sk.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100).fit(digits, sample_weight=w)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    # partial_fit with weights: the weighted step
    a = km.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100)
    b = sk.MiniBatchKMeans(10, init=init, random_state=0, batch_size=100)
    for s in range(0, 600, 100):
        a.partial_fit(digits[s : s + 100], sample_weight=w[s : s + 100])
        b.partial_fit(digits[s : s + 100], sample_weight=w[s : s + 100])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.counts_, b._counts, rtol=1e-12)


def test_inertia_within_noise_of_sklearn_over_seeds(digits):
    ours = [km.MiniBatchKMeans(10, random_state=s, batch_size=256).fit(digits).inertia_ for s in range(6)]
    theirs = [sk.MiniBatchKMeans(10, random_state=s, batch_size=256).fit(digits).inertia_ for s in range(6)]
    se = np.sqrt(np.var(ours) / len(ours) + np.var(theirs) / len(theirs))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 3 * se + 2e-2 * np.mean(theirs)


def test_protocol_and_torch_io(digits):
    m = km.MiniBatchKMeans()
    assert m.n_clusters == 8 and m.get_params()["batch_size"] == 1024
    assert clone(km.MiniBatchKMeans(3, batch_size=64)).batch_size == 64
    x = torch.from_numpy(digits).float()
    m = km.MiniBatchKMeans(5, random_state=0, batch_size=256).fit(x)
    assert isinstance(m.cluster_centers_, torch.Tensor) and isinstance(m.labels_, torch.Tensor)
    assert torch.equal(m.predict(x), m.labels_)
    assert m.transform(x[:4]).shape == (4, 5)
    assert m.score(x) == pytest.approx(-m.inertia_, rel=1e-6)
    with pytest.raises(ValueError, match="reassignment_ratio"):
        km.MiniBatchKMeans(3, reassignment_ratio=-1).fit(digits)
    with pytest.raises(ValueError, match="batch_size"):
        km.MiniBatchKMeans(3, batch_size=0).fit(digits)
    with pytest.raises(ValueError, match="64 features"):
        km.MiniBatchKMeans(3).fit(digits).partial_fit(digits[:, :5])


@pytest.mark.skipif(not os.path.exists(FASHION), reason=f"Fashion-MNIST not installed ({FASHION})")
def test_fashion_mnist_follows_sklearns_sequence():
    """fit and partial_fit on 3,000 Fashion-MNIST images (784 float32 pixels): scikit-learn's
    batches and steps, so the same centers to float32 tolerance and the same step count."""
    x = read_idx(FASHION)[:3000].reshape(3000, -1).astype(np.float32) / 255.0
    init = _init(x, 10, 0)
    kw = dict(init=init, random_state=0, batch_size=256, max_iter=2)
    a = km.MiniBatchKMeans(10, **kw).fit(x)
    b = sk.MiniBatchKMeans(10, **kw).fit(x)
    assert a.n_steps_ == b.n_steps_ and a.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(a.counts_, b._counts)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-4, atol=1e-5)
    assert (a.labels_ == b.labels_).mean() > 0.995  # float32: near-ties may differ
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-4)
    a, b = km.MiniBatchKMeans(10, init=init, random_state=0), sk.MiniBatchKMeans(10, init=init, random_state=0)
    for s in range(0, 3000, 500):
        a.partial_fit(x[s : s + 500])
        b.partial_fit(x[s : s + 500])
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.counts_, b._counts)
