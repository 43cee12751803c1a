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


# ---------------------------------------------------------------- random_state, tol, ours
def _blobs(n=240, d=3, seed=0):
    rng = np.random.RandomState(seed)
    return (4 * rng.randn(4, d))[rng.randint(4, size=n)] + rng.randn(n, d)


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_random_state_none_is_fresh_randomness(name):
    """scikit-learn's meaning: None draws from numpy's global RandomState, so two fits differ
    and np.random.seed makes them repeat (an int would repeat without it)."""
    x = _blobs()
    kw = dict(init="random", n_init=1, max_iter=1, random_state=None)
    if name == "MiniBatchKMeans":
        kw.update(batch_size=16, max_no_improvement=None)
    fit = lambda: getattr(km, name)(4, **kw).fit(x).cluster_centers_  # noqa: E731
    assert not np.array_equal(fit(), fit())
    np.random.seed(7)
    a = fit()
    np.random.seed(7)
    np.testing.assert_array_equal(a, fit())


@pytest.mark.parametrize("name,tol", [("KMeans", 1e-2), ("MiniBatchKMeans", 1e-3)])
def test_tol_is_relative_to_the_data_variance(name, tol):
    """The same tol on X and on 1000 X stops at the same step (an absolute tol would stop the
    scaled fit much later); a tighter tol runs longer, so tol is what stopped it."""
    x = _blobs(600, 5)
    kw = dict(init=x[:4].copy(), random_state=0)
    if name == "MiniBatchKMeans":  # measured: 13 steps at tol=1e-3, the cap (93) at 1e-9
        kw.update(batch_size=32, max_no_improvement=None, max_iter=5)

    def steps(data, t):
        m = getattr(km, name)(4, tol=t, **kw)
        m.init = kw["init"] * (data[0, 0] / x[0, 0])  # the same initial centers, scaled
        m.fit(data)
        return getattr(m, "n_steps_", m.n_iter_), m.cluster_centers_

    n1, c1 = steps(x, tol)
    n2, c2 = steps(1000 * x, tol)
    assert n1 == n2 and n1 < steps(x, tol * 1e-6)[0], (n1, n2)
    np.testing.assert_allclose(c2, 1000 * c1, rtol=1e-9)


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_backend_reaches_every_op(name, monkeypatch):
    """backend="reference": every op the fit, predict, transform and score call is asked for
    the reference backend (none falls back to "auto"), with the default backend's answer."""
    from kmgan_ext import _dispatch

    x = _blobs()
    kw = dict(init=x[:4].copy(), random_state=0)
    want = getattr(km, name)(4, **kw).fit(x)
    seen = []
    resolve = _dispatch.resolve
    monkeypatch.setattr(_dispatch, "resolve", lambda b, *a, **k: seen.append(b) or resolve(b, *a, **k))
    got = getattr(km, name)(4, backend="reference", **kw).fit(x)
    got.predict(x), got.transform(x), got.score(x)
    assert seen and set(seen) == {"reference"}, set(seen)
    np.testing.assert_array_equal(got.labels_, want.labels_)
    np.testing.assert_allclose(got.cluster_centers_, want.cluster_centers_, rtol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        getattr(km, name)(4, backend="nope").fit(x)


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_dtype_device_and_deterministic(name):
    """dtype: float64 data in float64, float32 / integer / 16-bit data in float32 (the
    README's table), torch.float64 / float32 override either way; device: where to compute,
    the results in the caller's type; deterministic: a bool (the CPU is deterministic)."""
    x = _blobs()
    est = getattr(km, name)
    kw = dict(init=x[:4].copy(), random_state=0)
    for data, want in [(x, np.float64), (x.astype(np.float32), np.float32),
                       (np.rint(x * 10).astype(np.int64), np.float32),
                       (x.astype(np.float16), np.float32)]:
        assert est(4, **kw).fit(data).cluster_centers_.dtype == want, data.dtype
    assert est(4, dtype=torch.float32, **kw).fit(x).cluster_centers_.dtype == np.float32
    t = torch.from_numpy(x).float()
    m = est(4, dtype=torch.float64, device="cpu", **kw).fit(t)
    assert m.cluster_centers_.dtype == torch.float64 and m.labels_.device == t.device
    np.testing.assert_allclose(m.cluster_centers_.numpy(), est(4, **kw).fit(t.double().numpy()).cluster_centers_,
                               rtol=1e-12)
    a = est(4, deterministic=True, **kw).fit(x).cluster_centers_
    np.testing.assert_array_equal(a, est(4, **kw).fit(x).cluster_centers_)
    with pytest.raises(TypeError, match="deterministic"):
        est(4, deterministic="yes").fit(x)
    with pytest.raises(ValueError, match="dtype"):
        est(4, dtype=torch.int32).fit(x)
    with pytest.raises(ValueError, match="device"):
        est(4, device="nowhere").fit(x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_torch_on_a_gpu_in_gives_torch_on_that_gpu_out(name):
    x = torch.from_numpy(_blobs()).float()
    kw = dict(init=x[:4].clone(), random_state=0)
    m = getattr(km, name)(4, **kw).fit(x.cuda())
    for out in (m.cluster_centers_, m.labels_, m.predict(x.cuda()), m.transform(x.cuda())):
        assert isinstance(out, torch.Tensor) and out.device.type == "cuda"
    assert isinstance(m.predict(x.numpy()), np.ndarray)  # the caller's type, per call
    cpu = getattr(km, name)(4, **kw).fit(x)
    assert (m.labels_.cpu() == cpu.labels_).float().mean() > 0.99
    m = getattr(km, name)(4, device="cuda", **kw).fit(x.numpy())  # numpy in: numpy out
    assert isinstance(m.cluster_centers_, np.ndarray)


@pytest.mark.parametrize("name", ["KMeans", "MiniBatchKMeans"])
def test_random_state_takes_a_torch_generator(name):
    """A torch.Generator is used and advanced, as a RandomState or np.random.Generator is:
    two generators seeded alike give the same fit, one generator gives new draws per fit."""
    x = _blobs()
    kw = dict(init="random", n_init=1, max_iter=1)
    if name == "MiniBatchKMeans":
        kw.update(batch_size=16, max_no_improvement=None)
    fit = lambda rs: getattr(km, name)(4, random_state=rs, **kw).fit(x).cluster_centers_  # noqa: E731
    np.testing.assert_array_equal(fit(torch.Generator().manual_seed(3)), fit(torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(3)
    assert not np.array_equal(fit(g), fit(g))
