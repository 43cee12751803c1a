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
