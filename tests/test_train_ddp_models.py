"""slcGAN and GM-GAN under DDP (two gloo ranks on CPU) and under autocast.

DDP's promise for the networks: every rank steps on the gradient averaged over the ranks,
so the replicas stay bitwise identical although each rank draws its own batches and noise
(the KM-GAN test, test_train_ddp.py, checks the same of the center sets). Batch norm uses
each rank's own batch statistics, so a 2-rank run is not the 1-rank run on the concatenated
batch, and nothing here asserts that.

One launch (two forked ranks, a free port on 127.0.0.1) trains both models; each rank saves
its parameters after the run.
"""
import json
import os

import pytest
import torch
import torch.distributed as dist

from kmgan_ext.train import Trainer, load_config
from kmgan_ext.train import centers as cset
from kmgan_ext.train import gmgan, slcgan
from kmgan_ext.train.checkpoint import newest_good
from testing import run_ranks

WORLD = 2
STEPS = 3
TINY = {"n_train": 128, "batch_size": 16, "feature_batch": 128, "progress": False, "threads": 1, "device": "cpu",
        "tensorboard": False, "max_steps": STEPS, "log_every": 1, "eval_samples": 64, "sample_every": 0,
        "gm_cluster_samples": 32, "gm_cluster_epochs": 1, "interpolation": False}  # fmt: skip
MODELS = {
    "slcgan": {"model": "slcgan", "d_steps": 2},
    "gmgan": {"model": "gmgan", "prior": "gm_dynamic", "g_batch_size": 24},
}


def _params(tr) -> dict:
    nets = {"G": tr.G_raw, "D": tr.D_raw}
    if tr.clusterer is not None:
        nets["C"] = tr.clusterer
    return {name: {k: p.detach().clone() for k, p in m.named_parameters()} for name, m in nets.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        res = {}
        for name, over in MODELS.items():
            tr = Trainer(load_config("synthetic", {**TINY, **over}), os.path.join(out_dir, name))
            res[name] = {"init": _params(tr), "world": tr.world, "ddp": type(tr.D).__name__}
            tr.run()
            res[name]["final"] = _params(tr)
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = str(tmp_path_factory.mktemp("ddp_models"))
    return out, run_ranks(_worker, out, WORLD)


@pytest.mark.parametrize("model", list(MODELS))
def test_two_ranks_keep_identical_networks(ranks, model):
    out, (r0, r1) = ranks
    assert r0[model]["world"] == r1[model]["world"] == 2
    assert r0[model]["ddp"] == "DistributedDataParallel"
    nets = ("G", "D", "C") if model == "slcgan" else ("G", "D")
    assert set(r0[model]["final"]) == set(nets)
    for net in nets:
        init, a, b = r0[model]["init"][net], r0[model]["final"][net], r1[model]["final"][net]
        # every network trained, and both replicas took the same (all-reduced) steps although
        # the ranks drew different batches and noise
        assert any(not torch.equal(init[k], a[k]) for k in a), (model, net, "did not move")
        for k in a:
            assert torch.equal(a[k], b[k]), (model, net, k)
    s = json.load(open(os.path.join(out, model, "summary.json")))
    assert s["world_size"] == 2 and s["steps"] == STEPS and s["status"] == "max_steps"
    assert 0.0 <= s["cluster_acc"] <= 1.0
    st = torch.load(newest_good(os.path.join(out, model, "checkpoints")), weights_only=False)
    assert len(st["rank_states"]) == 2 and st["step"] == STEPS
    for net, part in (("G", "G"), ("D", "D"), ("C", "clusterer")):
        if net in nets:
            for k, t in r0[model]["final"][net].items():
                assert torch.equal(st[part][k], t), (model, net, k)


# --------------------------------------------------------------------------- autocast
def _dtypes_seen(monkeypatch, module, nets: dict) -> dict:
    """Per optimizer step: the output dtypes of ``nets``' forwards that ran before it."""
    seen, current, hooks = {}, [], []
    for name, m in nets.items():
        hooks.append(m.register_forward_hook(lambda mod, args, out, name=name: current.append((name, out.dtype))))
    real = module.optimizer_step

    def step(tr_, opt, name, loss, clip=False):
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (name, loss)
        seen.setdefault(name, set()).update(current)
        current.clear()
        real(tr_, opt, name, loss, clip=clip)

    monkeypatch.setattr(module, "optimizer_step", step)
    return seen


@pytest.mark.parametrize("model", list(MODELS))
def test_autocast_runs_every_forward_in_bfloat16(tmp_path, monkeypatch, model):
    """amp=true switches autocast on on a GPU only; the same regions run on the CPU here
    (tr.autocast() autocasts on the trainer's device)."""
    tr = Trainer(load_config("synthetic", {**TINY, **MODELS[model]}), str(tmp_path))
    cset.seed(tr)
    tr.amp = True
    module = slcgan if model == "slcgan" else gmgan
    nets = {"G": tr.G_raw.net, "D": tr.D_raw.body}
    if model == "slcgan":
        nets["C"] = tr.clusterer
    seen = _dtypes_seen(monkeypatch, module, nets)
    before = _params(tr)
    out = tr.iteration(tr.data.dataset[list(range(16))])
    assert all(torch.isfinite(v).all() for k, v in out.items() if k.startswith("L_"))
    bf16 = {(n, torch.bfloat16) for n in nets}
    if model == "slcgan":
        # D's steps: G's fakes, C's soft labels and D; G's: G, D and C on the fakes; C's: C and D
        assert seen == {"L_D": bf16, "L_G": bf16, "L_C": {("C", torch.bfloat16), ("D", torch.bfloat16)}}
    else:
        assert seen == {"L_D": bf16, "L_G": bf16}
    after = _params(tr)
    for net in before:
        assert any(not torch.equal(before[net][k], after[net][k]) for k in after[net]), net
