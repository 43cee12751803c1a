"""Two processes on the gloo backend (CPU): k-means|| and MiniBatchKMeansModule's all-reduced update.

One launch (two ranks, a free port on 127.0.0.1) runs every scenario and saves each rank's
results; the tests below compare them with each other and with one process fed the
concatenated data.
"""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist

import kmgan_ext as km
from testing import run_ranks

WORLD = 2
K, D = 6, 5
SHARD_ROWS = (700, 500)  # uneven shards
BATCH_ROWS = (40, 24)  # each rank's share of a mini-batch
STEPS = 4


def all_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(42)
    means = 6 * torch.randn(K, D, generator=g)
    n = sum(SHARD_ROWS)
    return means[torch.randint(K, (n,), generator=g)] + torch.randn(n, D, generator=g)


def cosine_data() -> torch.Tensor:
    """all_data with a zero row in rank 0's first batch (it counts, and adds nothing to S_k)."""
    x = all_data().clone()
    x[3] = 0
    return x


def shard(x: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SHARD_ROWS[:rank])
    return x[start : start + SHARD_ROWS[rank]]


def batch(x: torch.Tensor, step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s part of global mini-batch ``step`` (the global batch is their concat)."""
    start = step * sum(BATCH_ROWS) + sum(BATCH_ROWS[:rank])
    return x[start : start + BATCH_ROWS[rank]]


def _vq(threshold_dead_code: float) -> "km.VectorQuantizer":
    """A VQ layer whose codebook does not depend on the process's RNG state."""
    vq = km.VectorQuantizer(K, D, decay=0.7, threshold_dead_code=threshold_dead_code, seed=2)
    c = torch.randn(1, K, D, generator=torch.Generator().manual_seed(11))
    vq.codebook.copy_(c)
    vq.embed_sum.copy_(c)
    return vq


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        x = all_data()
        mine = shard(x, rank)
        from_numpy = km.kmeans_parallel(mine.numpy(), K, seed=3)
        res = {
            "kpar": km.kmeans_parallel(mine, K, seed=3),
            "kpar_numpy_type": type(from_numpy).__name__,
            "kpar_numpy": torch.from_numpy(from_numpy),  # torch.load(weights_only) wants tensors
            "kpar_seed4": km.kmeans_parallel(mine, K, seed=4),
            "kpar_seed5": km.kmeans_parallel(mine, K, seed=5),
        }
        m = km.MiniBatchKMeansModule(K, D, update="train").init_(mine, seed=5)  # k-means|| over both shards
        res["mb_init"] = m.centers.clone()
        res["mb_labels"] = [m(batch(x, s, rank)) for s in range(STEPS)]
        res["mb_centers"], res["mb_counts"] = m.centers.clone(), m.counts.clone()
        m2 = km.MiniBatchKMeansModule(K, D).init_(mine, seed=5, method="k-means++")
        res["mb_rank0_init"] = m2.centers.clone()
        m3 = km.MiniBatchKMeansModule(K, D, reassignment_ratio=0.5, seed=1)
        m3.centers.copy_(torch.cat([x[:K - 1], torch.full((1, D), 1e3)]))  # one dead center
        for s in range(STEPS):
            m3.partial_fit(batch(x, s, rank))
        res["mb_reassigned"] = (m3.centers.clone(), m3.counts.clone())
        xc = cosine_data()
        mc = km.MiniBatchKMeansModule(K, metric="cosine").init_(shard(xc, rank), seed=5)
        res["cos_init"] = mc.centers.clone()
        res["cos_labels"] = [mc(batch(xc, s, rank), update=True) for s in range(STEPS)]
        res["cos_centers"], res["cos_counts"] = mc.centers.clone(), mc.counts.clone()
        for name, dead in (("vq", 0.0), ("vq_dead", 0.3)):
            vq = _vq(dead)
            for s in range(STEPS):
                vq(batch(x, s, rank), update=True)
            res[name] = {k: v.clone() for k, v in vq.state_dict().items()}
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = str(tmp_path_factory.mktemp("dist_seeding"))
    return run_ranks(_worker, out, WORLD)


def _rows_of(c: torch.Tensor, x: torch.Tensor) -> bool:
    return bool((torch.cdist(c.double(), x.double()).min(1).values == 0).all())


def test_kmeans_parallel_identical_on_every_rank(ranks):
    r0, r1 = ranks
    for key in ("kpar", "kpar_numpy", "kpar_seed4", "kpar_seed5"):
        assert r0[key].shape == (K, D) and torch.equal(r0[key], r1[key]), key
    assert r0["kpar_numpy_type"] == "ndarray"
    assert torch.equal(r0["kpar_numpy"], r0["kpar"])  # same shards, same seed
    assert not torch.equal(r0["kpar"], r0["kpar_seed4"])


def test_kmeans_parallel_centers_are_rows_and_good(ranks):
    x = all_data()
    c = ranks[0]["kpar"]
    assert _rows_of(c, x)
    assert len({tuple(r.tolist()) for r in c}) == K

    def inertia(cc):
        return float((torch.cdist(x.double(), cc.double()) ** 2).min(1).values.sum())

    # k-means|| is as good as k-means++ (Bahmani et al., Table 2): compare with the mean over
    # seeds of greedy k-means++ on the whole data in one process.
    pp = np.mean([inertia(km.kmeans_plusplus(x, K, seed=s)) for s in range(10)])
    assert inertia(c) <= 1.25 * pp
    assert inertia(ranks[0]["kpar_seed4"]) <= 1.25 * pp


def test_minibatch_kmeans_ranks_identical(ranks):
    r0, r1 = ranks
    for key in ("mb_init", "mb_centers", "mb_counts", "mb_rank0_init"):
        assert torch.equal(r0[key], r1[key]), key
    assert torch.equal(r0["mb_init"], r0["kpar_seed5"])  # init_ under a group is k-means||
    assert _rows_of(r0["mb_init"], all_data())
    # rank-0 k-means++ seeding + broadcast: rank 0's own k-means++ on its shard
    assert torch.equal(r0["mb_rank0_init"], km.kmeans_plusplus(shard(all_data(), 0), K, seed=5))


def test_minibatch_kmeans_equals_one_process_on_the_concatenated_batch(ranks):
    x = all_data()
    r0, r1 = ranks
    one = km.MiniBatchKMeansModule(K, D, update="train")
    one.init_(x[:K])  # marks it seeded; the centers are then set to the ranks' seeds
    one.centers.copy_(r0["mb_init"])
    for s in range(STEPS):
        labels = one(torch.cat([batch(x, s, r) for r in range(WORLD)]))
        want = torch.cat([r0["mb_labels"][s], r1["mb_labels"][s]])
        assert torch.equal(labels, want), f"step {s}"
    assert torch.equal(one.counts, r0["mb_counts"])
    assert int(one.counts.sum()) == STEPS * sum(BATCH_ROWS)
    torch.testing.assert_close(r0["mb_centers"], one.centers, rtol=1e-6, atol=1e-6)


def test_kmeans_parallel_one_process_and_bad_input():
    """Without an initialized process group, k-means|| runs on x_local alone."""
    x = all_data()
    c = km.kmeans_parallel(x, K, seed=1)
    assert _rows_of(c, x) and torch.equal(c, km.kmeans_parallel(x, K, seed=1))
    tiny = x[:3]
    c = km.kmeans_parallel(tiny, 3, seed=0)  # every row becomes a center
    assert sorted(map(tuple, c.tolist())) == sorted(map(tuple, tiny.tolist()))
    with pytest.raises(ValueError, match="k must be <= the number of rows of x_local over all ranks"):
        km.kmeans_parallel(tiny, 4)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        km.kmeans_parallel(x, K, rounds=0)
    with pytest.raises(ValueError, match="oversampling must be > 0"):
        km.kmeans_parallel(x, K, oversampling=0)
    with pytest.raises(TypeError, match="x_local must be float"):
        km.kmeans_parallel(torch.ones(10, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="group was given but torch.distributed is not initialized"):
        km.kmeans_parallel(x, K, group=object())


def test_vector_quantizer_ranks_identical_and_equal_one_process(ranks):
    """The EMA statistics are all-reduced before the update (and dead codes replaced on rank 0
    and broadcast): both ranks keep the same codebook; without dead-code draws (which take
    rank 0's rows) it is the one a single process computes from the concatenated batches."""
    r0, r1 = ranks
    for name in ("vq", "vq_dead"):
        for key in r0[name]:
            assert torch.equal(r0[name][key], r1[name][key]), (name, key)
    assert not torch.equal(r0["vq_dead"]["codebook"], r0["vq"]["codebook"])  # codes were replaced
    x = all_data()
    one = _vq(0.0)
    for s in range(STEPS):
        one(torch.cat([batch(x, s, r) for r in range(WORLD)]), update=True)
    for key, v in one.state_dict().items():
        torch.testing.assert_close(r0["vq"][key], v, rtol=1e-5, atol=1e-6, msg=key)


def test_minibatch_kmeans_reassignment_identical_on_every_rank(ranks):
    """Dead centers are drawn on rank 0 and broadcast; the decision uses the shared counts."""
    (c0, n0), (c1, n1) = ranks[0]["mb_reassigned"], ranks[1]["mb_reassigned"]
    assert torch.equal(c0, c1) and torch.equal(n0, n1)
    assert not bool((c0[-1] == 1e3).all())  # the dead center moved


def test_cosine_minibatch_kmeans_ranks_identical_and_equal_one_process(ranks):
    """metric="cosine" under DDP: k-means|| on the sphere seeds one set of unit centers, and
    each update all-reduces the sums of the unit rows, so both ranks keep one codebook: the
    one a single process computes from the concatenated batches (its own fused kernel)."""
    r0, r1 = ranks
    for key in ("cos_init", "cos_centers", "cos_counts"):
        assert torch.equal(r0[key], r1[key]), key
    xc = cosine_data()
    for key in ("cos_init", "cos_centers"):
        torch.testing.assert_close(torch.linalg.vector_norm(r0[key].double(), dim=1),
                                   torch.ones(K, dtype=torch.float64), rtol=0, atol=1e-6)
    unit_rows = xc[xc.norm(dim=1) > 0] / xc[xc.norm(dim=1) > 0].norm(dim=1, keepdim=True)
    assert bool((torch.cdist(r0["cos_init"].double(), unit_rows.double()).min(1).values < 1e-6).all())
    one = km.MiniBatchKMeansModule(K, D, metric="cosine")
    one.centers.copy_(r0["cos_init"])  # centers set by the user are kept at the first update
    for s in range(STEPS):
        labels = one(torch.cat([batch(xc, s, r) for r in range(WORLD)]), update=True)
        want = torch.cat([r0["cos_labels"][s], r1["cos_labels"][s]])
        assert torch.equal(labels, want), f"step {s}"
    assert torch.equal(one.counts, r0["cos_counts"])
    assert int(one.counts.sum()) == STEPS * sum(BATCH_ROWS)
    torch.testing.assert_close(r0["cos_centers"], one.centers, rtol=1e-6, atol=1e-6)
