"""km.reassign_dead_: scikit-learn's reassignment_ratio rule and vector-quantize-pytorch's
dead-code threshold, each against its peer with the same random draws; bad input."""
import numpy as np
import pytest
import torch

import kmgan_ext as km


def _state(k=12, d=5, n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    centers = torch.randn(k, d, generator=g, dtype=dtype)
    centers[k // 2:] += 50.0  # far from every row: they receive nothing
    counts = torch.randint(0, 50, (k,), generator=g)
    return centers, counts, x


# ---------------------------------------------------------------- scikit-learn's rule
@pytest.mark.parametrize("k,n,ratio,seed", [
    (12, 40, 0.2, 0),    # a few low counts
    (30, 20, 0.5, 1),    # more low counts than half the batch: scikit-learn's cap
    (40, 30, 1.0, 2),    # K > 16 (numpy's argsort is no longer an insertion sort), ties
    (8, 100, 0.01, 3),
])
def test_ratio_rule_equals_sklearns_mini_batch_step(k, n, ratio, seed):
    """scikit-learn's private ``_mini_batch_step`` (update + reassignment) against
    km.minibatch_update_ + km.reassign_dead_ with a RandomState of the same seed: the same
    centers, counts and RandomState afterwards."""
    kmeans_mod = pytest.importorskip("sklearn.cluster._kmeans")
    centers, counts, x = _state(k=k, n=n, seed=seed)
    counts[: k // 3] = counts[k // 3]  # ties in the counts
    counts[-1] = 0  # a far center with no rows: below any ratio > 0
    wsk = counts.numpy().astype(np.float64)
    csk = centers.numpy().copy()
    rs_sk = np.random.RandomState(seed)
    kmeans_mod._mini_batch_step(
        x.numpy(), np.ones(n), csk.copy(), csk, wsk, rs_sk,
        random_reassign=True, reassignment_ratio=ratio,
    )
    rs = np.random.RandomState(seed)
    labels, _ = km.assign(x, centers)
    km.minibatch_update_(centers, counts, x, labels)
    moved = km.reassign_dead_(centers, counts, x, reassignment_ratio=ratio, generator=rs)
    assert bool(moved.any())
    np.testing.assert_allclose(centers.numpy(), csk, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(counts.numpy(), wsk)
    assert rs.randint(1 << 30) == rs_sk.randint(1 << 30)  # the same draws were consumed


def test_ratio_rule_moves_low_counts_onto_batch_rows():
    centers, counts, x = _state()
    counts[:] = torch.tensor([100, 90, 80, 70, 60, 50, 0, 1, 0, 2, 30, 0])
    before = centers.clone()
    # strictly below 0.02 * 100 = 2: the count 2 stays
    moved = km.reassign_dead_(centers, counts, x, reassignment_ratio=0.02,
                              generator=torch.Generator().manual_seed(0))
    want = torch.tensor([False] * 6 + [True, True, True, False, False, True])
    assert torch.equal(moved, want)
    assert bool((centers[moved][:, None] == x[None]).all(-1).any(1).all())  # rows of x
    assert len({tuple(r.tolist()) for r in centers[moved]}) == int(moved.sum())  # distinct
    assert torch.equal(centers[~moved], before[~moved])
    assert counts[moved].tolist() == [2] * 4  # the smallest kept count
    # ratio 0 (scikit-learn's "off") and an empty batch move nothing
    c2, n2 = centers.clone(), counts.clone()
    assert not km.reassign_dead_(c2, n2, x, reassignment_ratio=0.0).any()
    assert not km.reassign_dead_(c2, n2, x[:0], reassignment_ratio=0.5).any()
    assert torch.equal(c2, centers) and torch.equal(n2, counts)


@pytest.mark.parametrize("make", [lambda: torch.Generator().manual_seed(5),
                                  lambda: np.random.RandomState(5),
                                  lambda: np.random.default_rng(5)])
def test_deterministic_given_the_generator(make):
    out = []
    for _ in range(2):
        centers, counts, x = _state(k=20, n=16, seed=4, dtype=torch.float32)
        counts[::3] = 0
        km.reassign_dead_(centers, counts, x, reassignment_ratio=0.3, generator=make())
        out.append((centers, counts))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


# ---------------------------------------------------------------- vector-quantize-pytorch's rule
@pytest.mark.parametrize("n,threshold,seed", [(64, 0.6, 0), (5, 0.6, 1), (64, 2.0, 2)])
def test_threshold_rule_equals_vector_quantize_pytorch(n, threshold, seed):
    """vector-quantize-pytorch's ``expire_codes_`` (dead codes: EMA cluster size below
    ``threshold_ema_dead_code``) against km.reassign_dead_ with the same global torch seed:
    bitwise the same codebook, cluster sizes and EMA sums; n = 5 has more dead codes than
    rows (a random subset of them is replaced now)."""
    vqp = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")
    k, d = 16, 4
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    embed = torch.randn(k, d, generator=g)
    size = torch.rand(k, generator=g) * 2 * threshold  # about half of them dead
    size[0] = 3 * threshold
    size[1:10] *= 0.1  # at least 9 dead codes: more than the 5 rows of the second case
    embed_sum = embed * size[:, None]

    cb = vqp.Codebook(d, k, threshold_ema_dead_code=threshold)
    cb.embed.data.copy_(embed[None])
    cb.cluster_size.data.copy_(size[None])
    cb.embed_avg.data.copy_(embed_sum[None])
    torch.manual_seed(100 + seed)
    cb.expire_codes_(x[None])

    ours = embed.clone(), size.clone(), embed_sum.clone()
    torch.manual_seed(100 + seed)
    moved = km.reassign_dead_(ours[0], ours[1], x, threshold=threshold, embed_sum=ours[2])
    assert int(moved.sum()) == min(int((size < threshold).sum()), n) > 0
    assert torch.equal(ours[0], cb.embed.data[0])
    assert torch.equal(ours[1], cb.cluster_size.data[0])
    assert torch.equal(ours[2], cb.embed_avg.data[0])


def test_threshold_rule_reset_count_and_int_counts():
    centers, counts, x = _state(k=6, n=10)
    counts[:] = torch.tensor([5, 0, 5, 1, 5, 0])
    moved = km.reassign_dead_(centers, counts, x, threshold=2, reset_count=3,
                              generator=torch.Generator().manual_seed(1))
    assert moved.tolist() == [False, True, False, True, False, True]
    assert counts.tolist() == [5, 3, 5, 3, 5, 3]


# ---------------------------------------------------------------- the users of the op
def test_the_estimator_module_and_vq_use_the_op(monkeypatch):
    """MiniBatchKMeans, MiniBatchKMeansModule and VectorQuantizer reassign through
    km.reassign_dead_ (one implementation)."""
    import kmgan_ext.estimators.minibatch_kmeans as est
    import kmgan_ext.modules.minibatch_kmeans_module as mod
    import kmgan_ext.modules.vector_quantizer as vq

    calls = []

    def spy(*a, **kw):
        calls.append(kw)
        return km.reassign_dead_(*a, **kw)

    for m in (est, mod, vq):
        monkeypatch.setattr(m, "reassign_dead_", spy)
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    km.MiniBatchKMeans(4, batch_size=50, max_iter=1, random_state=0).fit(x)
    assert calls and all(c["reassignment_ratio"] == 0.01 for c in calls)
    calls.clear()
    m = km.MiniBatchKMeansModule(4, reassignment_ratio=0.1)
    m.partial_fit(x)
    assert calls and "counts" not in calls[0]
    calls.clear()
    q = km.VectorQuantizer(8, 3, threshold_dead_code=0.5)
    q(x, update=True)
    assert calls and calls[0]["threshold"] == 0.5


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad,err,match", [
    (dict(), ValueError, "exactly one"),
    (dict(reassignment_ratio=0.1, threshold=1.0), ValueError, "exactly one"),
    (dict(reassignment_ratio=1.5), ValueError, "reassignment_ratio"),
    (dict(reassignment_ratio=-0.1), ValueError, "reassignment_ratio"),
    (dict(reassignment_ratio=True), TypeError, "reassignment_ratio"),
    (dict(threshold=float("nan")), ValueError, "threshold"),
    (dict(threshold=1.0, reset_count=-1.0), ValueError, "reset_count"),
    (dict(reassignment_ratio=0.1, reset_count=1.0), ValueError, "reset_count"),
    (dict(threshold=1.0, generator=7), TypeError, "generator"),
    (dict(threshold=1.0, embed_sum=torch.zeros(12, 5, dtype=torch.float32)), TypeError, "embed_sum"),
    (dict(threshold=1.0, counts=torch.zeros(12, dtype=torch.int32)), TypeError, "counts"),
    (dict(threshold=1.0, counts=torch.zeros(11, dtype=torch.int64)), ValueError, "counts"),
    (dict(threshold=1.0, counts=torch.full((12,), -1, dtype=torch.int64)), ValueError, "counts"),
    (dict(threshold=1.0, x=torch.zeros(4, 5, dtype=torch.float32)), TypeError, "x"),
    (dict(threshold=1.0, x=torch.zeros(4, 6, dtype=torch.float64)), ValueError, "centers"),
])
def test_bad_input_raises_before_any_write(bad, err, match):
    centers, counts, x = _state()
    counts[:] = 0  # every center would move
    args = dict(centers=centers, counts=counts, x=x)
    for name in ("counts", "x"):
        if name in bad:
            args[name] = bad.pop(name)
    snapshot = [t.clone() for t in args.values()]
    with pytest.raises(err, match=match):
        km.reassign_dead_(args["centers"], args["counts"], args["x"], **bad)
    assert all(torch.equal(a, b) for a, b in zip(args.values(), snapshot))


def test_aliasing_refused():
    centers, counts, x = _state()
    with pytest.raises(ValueError, match="shares memory"):
        km.reassign_dead_(centers, counts, centers, threshold=1.0)
