"""DDP: the distributed center update equals one process fed the concatenated batch, and a
2-process torchrun run on CPU (gloo on 127.0.0.1) keeps identical centers on every rank."""
import json
import os
import subprocess
import sys

import pytest
import torch

from kmgan_ext.train.checkpoint import newest_good

import kmgan_ext as km


def test_distributed_center_update_equals_concatenated_batch(monkeypatch):
    """The all-reduce of per-cluster sums and counts, played here for rank 0 with the other
    rank's numbers, gives the update of one process fed both batches."""
    from kmgan_ext import reference
    from kmgan_ext.train import centers, load_config

    g = torch.Generator().manual_seed(0)
    c = torch.randn(5, 3, generator=g)
    x0, x1 = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
    c_cat, n_cat = c.clone(), torch.zeros(5, dtype=torch.int64)
    n = torch.zeros(5, dtype=torch.int64)
    other: list = []
    monkeypatch.setattr(centers.dist, "all_reduce", lambda t, *a, **k: t.add_(other.pop(0)))
    for _ in range(3):
        labels1, _ = km.assign(x1, c, backend="reference")
        other[:] = list(reference.cluster_sums(x1, labels1, 5))
        centers.update_(c, n, x0, load_config("synthetic"), world_size=2)
        assert not other  # both the sums and the counts were all-reduced
        km.minibatch_step_(c_cat, n_cat, torch.cat([x0, x1]), backend="reference")
    assert torch.equal(n, n_cat) and int(n.sum()) == 240
    torch.testing.assert_close(c, c_cat, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # two fresh interpreters importing torch: 20-60 s on a shared 2-core machine
def test_torchrun_two_processes_keep_identical_centers(tmp_path):
    out = tmp_path / "run"
    sets = {
        "n_train": 512, "batch_size": 32, "fake_pool": 128, "feature_batch": 256, "max_steps": 8,
        "log_every": 2, "progress": "false", "tensorboard": "false", "device": "cpu", "deterministic": "true",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kmgan_ext.train", "--config", "synthetic", "--out", str(out)]  # fmt: skip
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 8 and s["status"] == "max_steps"
    assert s["center_rank_max_abs_diff"] == 0.0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["center_rank_max_abs_diff"] for x in logged if "L_D" in x] == [0.0] * 4
    st = torch.load(newest_good(str(out / "checkpoints")), weights_only=False)
    assert len(st["rank_states"]) == 2
    # each update took both ranks' batches: 8 iterations x 2 ranks x 32 rows
    assert int(st["centers"]["real_counts"].sum()) == 8 * 2 * 32
    assert int(st["centers"]["fake_counts"].sum()) == 8 * 2 * 32
