"""km.MiniBatchKMeansModule: buffers, seeding, training/eval behaviour, scikit-learn parity, bad input.

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
    m = km.MiniBatchKMeansModule(4, 6)
    assert dict(m.named_buffers()).keys() == {"centers", "counts"}
    assert m.centers.shape == (4, 6) and m.centers.dtype == torch.float32
    assert m.counts.dtype == torch.int64 and m.counts.shape == (4,)
    x = _data()
    m.init_(x, seed=1)
    m(x[:100])
    other = km.MiniBatchKMeansModule(4, 6)
    other.load_state_dict(m.state_dict())
    other.eval()
    assert torch.equal(other.predict(x), m.predict(x))  # a loaded module counts as seeded
    assert "n_clusters=4, n_features=6" in repr(m)


def test_init_is_kmeans_plusplus_and_zeroes_counts():
    x = _data()
    m = km.MiniBatchKMeansModule(4, 6)
    m.counts.fill_(9)
    assert m.init_(x, seed=3) is m
    assert torch.equal(m.centers, km.kmeans_plusplus(x, 4, seed=3))
    assert int(m.counts.sum()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_training_forward_is_minibatch_step(device):
    x = _data().to(device)
    m = km.MiniBatchKMeansModule(4, 6, device=device, update="train").init_(x)
    centers, counts = m.centers.clone(), m.counts.clone()
    for s in range(0, 600, 128):
        want = km.minibatch_step_(centers, counts, x[s : s + 128])
        got = m(x[s : s + 128])
        assert torch.equal(got, want)
        assert torch.equal(m.centers, centers) and torch.equal(m.counts, counts)
    assert int(m.counts.sum()) == 600


def test_eval_forward_and_predict_never_update():
    x = _data()
    m = km.MiniBatchKMeansModule(4, 6, update="train").init_(x)
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
    m = km.MiniBatchKMeansModule(4, 6).eval()
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
    m = km.MiniBatchKMeansModule(4, 6).init_(x)
    c = m.cluster_centers_
    c.add_(100)
    assert not torch.equal(c, m.centers)
    assert not m.cluster_centers_.requires_grad


def test_matches_sklearn_partial_fit():
    sk = pytest.importorskip("sklearn.cluster")
    x = _data(n=900, seed=4).double()
    m = km.MiniBatchKMeansModule(4, 6, dtype=torch.float64).init_(x, seed=2)
    init = m.centers.numpy().copy()
    skm = sk.MiniBatchKMeans(4, init=init, n_init=1, batch_size=150, reassignment_ratio=0.0)
    for s in range(0, 900, 150):
        m.partial_fit(x[s : s + 150])
        skm.partial_fit(x[s : s + 150].numpy())
    np.testing.assert_allclose(m.centers.numpy(), skm.cluster_centers_, rtol=1e-10, atol=1e-10)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="n_clusters must be a positive int"):
        km.MiniBatchKMeansModule(0, 3)
    with pytest.raises(ValueError, match="n_features must be a positive int"):
        km.MiniBatchKMeansModule(2, 0)
    with pytest.raises(TypeError, match="dtype must be float32"):
        km.MiniBatchKMeansModule(2, 3, dtype=torch.int64)
    m = km.MiniBatchKMeansModule(2, 3)
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
    with pytest.raises(ValueError, match="x must be 2-D or more"):
        m(torch.randn(3))
    with pytest.raises(ValueError, match="method must be one of"):
        m.init_(torch.randn(5, 3), method="random")
    assert torch.equal(m.centers, before[0]) and torch.equal(m.counts, before[1])


def test_n_features_is_inferred_and_state_dict_fills_a_fresh_module():
    x = _data()
    m = km.MiniBatchKMeansModule(4)
    assert m.n_features is None
    m.partial_fit(x[:100])
    assert m.centers.shape == (4, 6) and int(m.counts.sum()) == 100
    fresh = km.MiniBatchKMeansModule(4)
    fresh.load_state_dict(m.state_dict())  # the lazy buffers take the saved shapes
    assert torch.equal(fresh.centers, m.centers) and torch.equal(fresh.predict(x), m.predict(x))


def test_centers_copied_in_are_kept_at_the_first_update():
    """Before the fix the first partial_fit overwrote copied-in centers with k-means++."""
    x = _data()
    mine = x[:4].clone() + 0.5
    m = km.MiniBatchKMeansModule(4, 6)
    m.centers.copy_(mine)
    m.partial_fit(x[:100])
    c, n = mine.clone(), torch.zeros(4, dtype=torch.int64)
    km.minibatch_step_(c, n, x[:100])
    assert torch.equal(m.centers, c) and torch.equal(m.counts, n)


def test_train_mode_alone_never_updates_by_default():
    x = _data()
    m = km.MiniBatchKMeansModule(4, 6).init_(x)
    before = m.centers.clone()
    m.train()
    m(x[:50])
    assert torch.equal(m.centers, before) and int(m.counts.sum()) == 0
    m(x[:50], update=True)
    assert int(m.counts.sum()) == 50
    always = km.MiniBatchKMeansModule(4, 6, update="always").init_(x).eval()
    always(x[:30])
    assert int(always.counts.sum()) == 30
    with pytest.raises(ValueError, match="update must be one of"):
        km.MiniBatchKMeansModule(4, update="sometimes")


def test_old_module_name_warns_and_keeps_training_mode_updates():
    from kmgan_ext.modules import MiniBatchKMeans as Old

    with pytest.warns(DeprecationWarning, match="MiniBatchKMeansModule"):
        m = Old(4, 6)
    x = _data()
    m.init_(x).train()
    m(x[:40])
    assert int(m.counts.sum()) == 40


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distributed_update_uses_the_segmented_sums_not_bincount_or_onehot(monkeypatch, metric):
    """Issue 11 3.8: the all-reduced update formed its sums with a one-hot matmul (CUDA,
    deterministic) or index_add_ + bincount (a host sync on CUDA). With a one-rank "group"
    (all_reduce the identity) the distributed path must equal minibatch_step_ and call
    neither bincount nor a matmul. metric="cosine": the all-reduced sums are those of the
    unit rows, and the renormalised centers are minibatch_step_'s."""
    from kmgan_ext.modules import minibatch_kmeans_module as mod

    x = _data()
    x[7] = 0  # a zero row: counted, adds nothing
    m = km.MiniBatchKMeansModule(4, 6, deterministic=True, metric=metric).init_(x)
    c, n = m.centers.clone(), m.counts.clone()
    monkeypatch.setattr(mod, "world", lambda group: "group")
    monkeypatch.setattr(mod.dist, "all_reduce", lambda t, group=None: None)

    def forbidden(*a, **k):
        raise AssertionError("bincount / one-hot matmul in the distributed update")

    monkeypatch.setattr(torch, "bincount", forbidden)
    monkeypatch.setattr(torch.Tensor, "__matmul__", forbidden)
    for s in range(0, 600, 150):
        got = m.partial_fit(x[s : s + 150])
        want = km.minibatch_step_(c, n, x[s : s + 150], metric=metric)
    assert torch.equal(m.counts, n)
    torch.testing.assert_close(m.centers, c, rtol=1e-6, atol=1e-6)


def test_inputs_as_they_come_leading_dims_and_16_bit():
    x = _data()
    m = km.MiniBatchKMeansModule(4, 6).init_(x)
    grid = x[:120].reshape(2, 10, 6, 6).transpose(2, 3)[..., :6]  # (..., d), non-contiguous
    want = km.assign(grid.reshape(-1, 6), m.centers)[0].reshape(2, 10, 6)
    assert torch.equal(m(grid), want) and torch.equal(m.predict(grid), want)
    half = x[:50].to(torch.bfloat16)
    assert torch.equal(m(half), km.assign(half.float(), m.centers)[0])  # computed in float32
    m.partial_fit(half)
    assert int(m.counts.sum()) == 50


def test_dead_clusters_are_reassigned_deterministically():
    """scikit-learn's reassignment_ratio rule: a center far from every row (count 0) moves to
    a row of the batch, drawn from the seeded generator; its count becomes the smallest other."""
    x = _data()

    def run(seed):
        m = km.MiniBatchKMeansModule(4, 6, reassignment_ratio=0.01, seed=seed)
        c = x[:4].clone()
        c[3] = 1e3  # dead
        m.centers.copy_(c)
        m.partial_fit(x[:200])
        return m

    a, b = run(0), run(0)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.counts, b.counts)
    assert bool((a.centers[3][None] == x[:200]).all(1).any())  # a row of the batch
    assert int(a.counts[3]) == int(a.counts[:3].min()) > 0
    off = km.MiniBatchKMeansModule(4, 6)  # the default keeps the old behaviour: no reassignment
    off.centers.copy_(torch.cat([x[:3], torch.full((1, 6), 1e3)]))
    off.partial_fit(x[:200])
    assert bool((off.centers[3] == 1e3).all()) and int(off.counts[3]) == 0
    with pytest.raises(ValueError, match="reassignment_ratio"):
        km.MiniBatchKMeansModule(4, reassignment_ratio=-1.0)
