"""Gaps found by auditing issue 12's estimator list against scikit-learn."""
import numpy as np
import pytest
import torch

import kmgan_ext as km

sk = pytest.importorskip("sklearn.cluster")


def _x():
    return np.random.default_rng(0).normal(size=(300, 4))


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_get_feature_names_out_as_sklearn(name):
    x = _x()
    ours = getattr(km, name)(3, random_state=0, n_init=1).fit(x)
    theirs = getattr(sk, name)(3, random_state=0, n_init=1).fit(x)
    np.testing.assert_array_equal(ours.get_feature_names_out(), theirs.get_feature_names_out())
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        getattr(km, name)(3).get_feature_names_out()


def test_counts_are_sklearns_private_counts():
    x = _x()
    init = x[:3].copy()
    ours = km.MiniBatchKMeans(3, init=init, batch_size=30, random_state=0).fit(x)
    theirs = sk.MiniBatchKMeans(3, init=init, batch_size=30, random_state=0).fit(x)
    np.testing.assert_array_equal(ours.counts_, theirs._counts)


def test_reassignment_ratio_above_one_is_refused_up_front():
    """scikit-learn accepts it and fails at the first reassignment (every center below the
    ratio, no count left to reset to); refused here before any work."""
    with pytest.raises(ValueError, match="reassignment_ratio"):
        km.MiniBatchKMeans(3, reassignment_ratio=2.0).fit(_x())
    with pytest.raises(ValueError, match="reassignment_ratio"):
        km.MiniBatchKMeansModule(3, reassignment_ratio=2.0)


def test_partial_fit_reassigns_with_sklearns_draws():
    """partial_fit with a dead center (far from every row) follows scikit-learn's
    reassignment: the same centers and counts after each batch."""
    x = _x()
    init = np.concatenate([x[:2], np.full((1, 4), 50.0)])
    ours = km.MiniBatchKMeans(3, init=init, random_state=0, reassignment_ratio=0.1)
    theirs = sk.MiniBatchKMeans(3, init=init, random_state=0, reassignment_ratio=0.1)
    for batch in np.array_split(x, 6):
        ours.partial_fit(batch)
        theirs.partial_fit(batch)
        np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-12)
        np.testing.assert_array_equal(ours.counts_, theirs._counts)
    assert not np.any(ours.cluster_centers_ == 50.0)  # the dead center moved


# ---------------------------------------------------------------- every method and parameter
# against scikit-learn on real data (digits; a little noise removes exact distance ties,
# which scikit-learn breaks by its GEMM's rounding and kmgan_ext by the lowest index)
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x = load_digits().data
    return x + 1e-3 * np.random.RandomState(0).randn(*x.shape)


@pytest.mark.parametrize("name,kw", [("KMeans", dict(n_init=1)),
                                     ("MiniBatchKMeans", dict(batch_size=200, random_state=0))])
def test_every_method_matches_sklearn_on_digits(digits, name, kw):
    init = digits[np.random.RandomState(4).choice(len(digits), 10, replace=False)]
    ours = getattr(km, name)(10, init=init, **kw)
    theirs = getattr(sk, name)(10, init=init, **kw)
    np.testing.assert_array_equal(ours.fit_predict(digits), theirs.fit_predict(digits))
    new = digits[::7] + 0.5
    np.testing.assert_array_equal(ours.predict(new), theirs.predict(new))
    np.testing.assert_allclose(ours.transform(new), theirs.transform(new), rtol=1e-10)
    assert ours.score(new) == pytest.approx(theirs.score(new), rel=1e-10)
    np.testing.assert_allclose(getattr(km, name)(10, init=init, **kw).fit_transform(digits),
                               getattr(sk, name)(10, init=init, **kw).fit_transform(digits), rtol=1e-10)
    assert ours.n_features_in_ == theirs.n_features_in_ and ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("kw", [dict(max_iter=3), dict(algorithm="elkan"), dict(copy_x=False),
                                dict(n_clusters=4)])
def test_kmeans_parameters_match_sklearn_on_digits(digits, kw):
    k = kw.get("n_clusters", 10)
    kw = {key: v for key, v in kw.items() if key != "n_clusters"}
    init = digits[np.random.RandomState(5).choice(len(digits), k, replace=False)]
    x_ours, x_theirs = digits.copy(), digits.copy()
    a = km.KMeans(k, init=init, n_init=1, **kw).fit(x_ours)
    b = sk.KMeans(k, init=init, n_init=1, **kw).fit(x_theirs)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-12)
    np.testing.assert_array_equal(x_ours, digits)  # copy_x=False too: X is never modified


@pytest.mark.parametrize("kw", [dict(init="random", init_size=300), dict(init="random", n_init=2),
                                dict(compute_labels=False), dict(max_iter=2, max_no_improvement=1)])
def test_minibatch_parameters_match_sklearn_on_digits(digits, kw):
    kw.setdefault("init", digits[:10].copy())
    a = km.MiniBatchKMeans(10, batch_size=150, random_state=1, **kw).fit(digits)
    b = sk.MiniBatchKMeans(10, batch_size=150, random_state=1, **kw).fit(digits)
    assert a.n_steps_ == b.n_steps_ and a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-10)
    assert hasattr(a, "labels_") == hasattr(b, "labels_")
    if hasattr(b, "labels_"):
        np.testing.assert_array_equal(a.labels_, b.labels_)
