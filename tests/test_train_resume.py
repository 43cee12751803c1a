"""--resume continues exactly: on CPU with deterministic=true, stopping (after an epoch, or
by Ctrl-C in the middle of one) and resuming gives bitwise the run done in one go. Also the
clean stop on a non-finite loss."""
import json
import os
import signal

import pytest
import torch

from kmgan_ext.train.checkpoint import newest_good

from kmgan_ext.train import load_config, resume, train
from kmgan_ext.train.__main__ import main

BASE = {
    "n_train": 320,  # 10 iterations per epoch
    "batch_size": 32,
    "fake_pool": 128,
    "feature_batch": 160,
    "deterministic": True,
    "device": "cpu",
    "progress": False,
    "threads": 1,
    "log_every": 5,
    "tensorboard": False,
    "prior": "gm_dynamic",  # the learned prior's state must come back too
}


def _state(run_dir):
    return torch.load(newest_good(os.path.join(run_dir, "checkpoints")), weights_only=False)


def _assert_same(a, b):
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
    for key in ("real", "real_counts", "fake", "fake_counts"):
        assert torch.equal(a["centers"][key], b["centers"][key]), key
    for opt in ("opt_D", "opt_G", "opt_C"):
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for key in sa[i]:
                assert torch.equal(sa[i][key], sb[i][key]), f"{opt}[{i}].{key}"
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    s = train(load_config("synthetic", {**BASE, "epochs": 2}), out)
    assert s["status"] == "finished" and s["steps"] == 20
    return out


def test_resume_after_epoch_is_bitwise(straight, tmp_path):
    out = str(tmp_path / "run")
    first = train(load_config("synthetic", {**BASE, "epochs": 1}), out)
    assert first["steps"] == 10 and first["epochs"] == 1
    second = resume(out, {"epochs": 2})
    assert second["steps"] == 20 and second["epochs"] == 2
    _assert_same(_state(straight), _state(out))
    # the log continues where it stopped
    steps = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl")) if '"L_D"' in x]
    assert steps == [5, 10, 15, 20]


def test_ctrl_c_mid_epoch_then_resume_is_bitwise(straight, tmp_path):
    out = str(tmp_path / "run")

    def ctrl_c_at_13(tr):
        if tr.step == 13:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers

    s = train(load_config("synthetic", {**BASE, "epochs": 2}), out, hook=ctrl_c_at_13)
    assert s["status"] == "interrupted" and s["steps"] == 13
    st = _state(out)
    assert (st["epoch"], st["batch_in_epoch"]) == (1, 3)
    # through the command line this time
    assert main(["--resume", out]) == 0
    _assert_same(_state(straight), _state(out))


def test_nonfinite_loss_stops_cleanly_with_a_checkpoint(tmp_path):
    out = str(tmp_path / "run")

    def poison(tr):
        if tr.step == 3:
            with torch.no_grad():
                next(tr.D_raw.parameters()).fill_(float("nan"))

    s = train(load_config("synthetic", {**BASE, "epochs": 2, "prior": "normal"}), out, hook=poison)
    assert s["status"].startswith("stopped: non-finite L_D at step 3")
    assert s["steps"] == 3 and s.get("features_nonfinite")
    assert _state(out)["status"] == s["status"]
    assert json.load(open(os.path.join(out, "summary.json")))["status"] == s["status"]
