"""km.KMeans against scikit-learn's KMeans on real data (digits; Fashion-MNIST when installed)."""
import os
import warnings

import numpy as np
import pytest
import torch

import kmgan_ext as km

sk = pytest.importorskip("sklearn.cluster")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from kmgan_ext.train.data import FASHION_SYSTEM_DIR, read_idx  # noqa: E402

# Debian's dataset-fashion-mnist; the tests that need it skip (reason shown by -ra) without it
FASHION = os.path.join(FASHION_SYSTEM_DIR, "t10k-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def digits():
    return load_digits().data  # (1797, 64) float64


def _init(x, k, seed):
    return x[np.random.RandomState(seed).choice(len(x), k, replace=False)].copy()


def test_same_answer_as_sklearn_given_the_same_initial_centers(digits):
    init = _init(digits, 10, 0)
    a = km.KMeans(10, init=init, n_init=1).fit(digits)
    b = sk.KMeans(10, init=init, n_init=1).fit(digits)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)
    assert a.labels_.dtype == np.int32 and a.cluster_centers_.dtype == np.float64


def test_init_random_draws_as_sklearn(digits):
    """init="random" with n_init=10 consumes the RandomState as scikit-learn does."""
    a = km.KMeans(10, init="random", random_state=3).fit(digits)
    b = sk.KMeans(10, init="random", random_state=3).fit(digits)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)


def test_tol_is_relative_to_the_variance(digits):
    # digits are small integers: exact distance ties are common, and scikit-learn breaks them
    # by the rounding of its GEMM form where kmgan_ext takes the lowest index; a little noise
    # makes the comparison about tol alone
    x = digits + 1e-3 * np.random.RandomState(0).randn(*digits.shape)
    init = _init(x, 10, 1)
    for tol in (1e-2, 1.0):
        a = km.KMeans(10, init=init, n_init=1, tol=tol).fit(x)
        b = sk.KMeans(10, init=init, n_init=1, tol=tol).fit(x)
        assert a.n_iter_ == b.n_iter_, tol
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_sample_weight_matches_sklearn(digits):
    w = np.random.RandomState(0).uniform(0.1, 3.0, len(digits))
    init = _init(digits, 10, 2)
    a = km.KMeans(10, init=init, n_init=1).fit(digits, sample_weight=w)
    b = sk.KMeans(10, init=init, n_init=1).fit(digits, sample_weight=w)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-10)
    assert a.score(digits, sample_weight=w) == pytest.approx(b.score(digits, sample_weight=w), rel=1e-10)


def test_empty_cluster_is_relocated_as_sklearn():
    """A center far from every row gets no rows; scikit-learn moves it to the farthest row."""
    rs = np.random.RandomState(0)
    x = np.concatenate([rs.randn(50, 2), rs.randn(50, 2) + 8])
    init = np.array([[0.0, 0.0], [8.0, 8.0], [100.0, 100.0]])
    a = km.KMeans(3, init=init, n_init=1).fit(x)
    b = sk.KMeans(3, init=init, n_init=1).fit(x)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(a.labels_, b.labels_)


def test_inertia_within_noise_of_sklearn_over_seeds(digits):
    """k-means++ then Lloyd (n_init=1), 10 seeds each, paired by seed: the mean of the
    per-seed inertia differences lies within 3 standard errors of 0 (a paired t statistic,
    |t| <= 3; measured t = -0.1). It can fail: our Lloyd stopped after 3 iterations gives
    t = 6.2 (+3.2% inertia), measured on these seeds."""
    seeds = range(10)
    ours = np.array([km.KMeans(10, n_init=1, random_state=s).fit(digits).inertia_ for s in seeds])
    theirs = np.array([sk.KMeans(10, n_init=1, random_state=s).fit(digits).inertia_ for s in seeds])
    d = (ours - theirs) / theirs.mean()
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert se > 0 and abs(d.mean()) <= 3 * se, (d.mean(), se)


def test_methods_and_attributes(digits):
    m = km.KMeans(n_clusters=5, random_state=0)
    assert m.fit(digits) is m
    assert m.cluster_centers_.shape == (5, 64) and m.n_features_in_ == 64
    labels = m.predict(digits)
    np.testing.assert_array_equal(labels, m.labels_)
    d = m.transform(digits[:7])
    want = np.sqrt(((digits[:7, None, :] - m.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d, want, rtol=1e-12)
    assert m.score(digits) == pytest.approx(-m.inertia_, rel=1e-12)
    np.testing.assert_array_equal(km.KMeans(5, random_state=0).fit_predict(digits), m.labels_)
    np.testing.assert_allclose(km.KMeans(5, random_state=0).fit_transform(digits[:50]),
                               km.KMeans(5, random_state=0).fit(digits[:50]).transform(digits[:50]))
    with pytest.raises(ValueError, match="64 features"):
        m.predict(digits[:, :10])


def test_sklearn_protocol():
    m = km.KMeans()
    assert m.n_clusters == 8
    p = m.get_params()
    assert p["n_clusters"] == 8 and p["init"] == "k-means++" and "backend" in p
    c = clone(km.KMeans(3, tol=0.5, backend="reference"))
    assert c.get_params()["tol"] == 0.5 and c.get_params()["backend"] == "reference"
    assert m.set_params(n_clusters=4) is m and m.n_clusters == 4
    with pytest.raises(ValueError, match="Invalid parameter"):
        m.set_params(n_cluster=3)
    with pytest.raises(TypeError):
        km.KMeans(3, "random")  # keyword-only after n_clusters, as scikit-learn
    assert repr(km.KMeans(3, tol=0.5)) == "KMeans(n_clusters=3, tol=0.5)"
    from sklearn.utils.validation import check_is_fitted
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        km.KMeans(2).predict(np.zeros((3, 2)))
    check_is_fitted(km.KMeans(2).fit(np.random.rand(10, 2)))


def test_random_state_meaning(digits):
    a = km.KMeans(10, random_state=5).fit(digits).cluster_centers_
    b = km.KMeans(10, random_state=5).fit(digits).cluster_centers_
    np.testing.assert_array_equal(a, b)  # an int: every fit reproducible
    rs = np.random.RandomState(0)
    m = km.KMeans(10, random_state=rs)
    c1, c2 = m.fit(digits).cluster_centers_, m.fit(digits).cluster_centers_
    assert not np.array_equal(c1, c2)  # an instance is advanced between fits
    gen = km.KMeans(10, random_state=np.random.default_rng(0))
    assert not np.array_equal(gen.fit(digits).cluster_centers_, gen.fit(digits).cluster_centers_)
    with pytest.raises(ValueError, match="random_state"):
        km.KMeans(2, random_state="x").fit(digits)


def test_callable_init_and_array_warning(digits):
    def init(x, k, random_state):
        assert isinstance(random_state, np.random.RandomState)
        return x[:k]

    x = digits + 1e-3 * np.random.RandomState(1).randn(*digits.shape)  # no exact ties
    a = km.KMeans(4, init=init, n_init=1).fit(x)
    # .copy(): scikit-learn 1.9 writes its Lloyd buffers into a view returned by the callable
    # (here rows of its own X), so only a copy gives it a clean run to compare with
    b = sk.KMeans(4, init=lambda x, k, random_state: x[:k].copy(), n_init=1).fit(x)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    with pytest.warns(RuntimeWarning, match="only one init"):
        km.KMeans(4, init=digits[:4], n_init=3).fit(digits)


def test_torch_in_torch_out_float32(digits):
    x = torch.from_numpy(digits).float()
    init = x[:10].clone()
    m = km.KMeans(10, init=init, n_init=1).fit(x)
    assert isinstance(m.cluster_centers_, torch.Tensor) and m.cluster_centers_.dtype == torch.float32
    assert m.labels_.dtype == torch.int64 and m.labels_.device == x.device
    b = sk.KMeans(10, init=init.numpy(), n_init=1).fit(x.numpy())
    assert (m.labels_.numpy() == b.labels_).mean() > 0.999
    np.testing.assert_allclose(m.cluster_centers_.numpy(), b.cluster_centers_, rtol=1e-4, atol=1e-3)
    assert isinstance(m.predict(digits[:3]), np.ndarray)  # the caller's type, per call


def test_bad_parameters_are_named(digits):
    for kw, match in [
        (dict(n_clusters=0), "n_clusters"),
        (dict(init="kmeans"), "init must be"),
        (dict(n_init=0), "n_init"),
        (dict(max_iter=0), "max_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(algorithm="full"), "algorithm"),
        (dict(metric="manhattan"), "metric"),
    ]:
        with pytest.raises(ValueError, match=match):
            km.KMeans(**kw).fit(digits)
    # metric="cosine" is spherical k-means now (tests/test_cosine.py): unit centers
    c = km.KMeans(3, metric="cosine").fit(digits).cluster_centers_
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="n_samples=2 should be >= n_clusters=3"):
        km.KMeans(3).fit(digits[:2])
    with pytest.raises(ValueError, match=r"shape of the initial centers"):
        km.KMeans(3, init=digits[:2]).fit(digits)
    with pytest.raises(ValueError, match="NaN"):
        km.KMeans(3).fit(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="sample_weight"):
        km.KMeans(3).fit(digits, sample_weight=-np.ones(len(digits)))


def _fashion(n):
    """The first n Fashion-MNIST test images as float32 rows in [0, 1]."""
    return read_idx(FASHION)[:n].reshape(n, -1).astype(np.float32) / 255.0


@pytest.mark.skipif(not os.path.exists(FASHION), reason=f"Fashion-MNIST not installed ({FASHION})")
def test_fashion_mnist_same_answer_as_sklearn():
    x = _fashion(2000)
    init = _init(x, 10, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = km.KMeans(10, init=init, n_init=1, max_iter=30).fit(x)
        b = sk.KMeans(10, init=init, n_init=1, max_iter=30).fit(x)
    assert (a.labels_ == b.labels_).mean() > 0.995  # float32: near-ties may differ
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-4)
