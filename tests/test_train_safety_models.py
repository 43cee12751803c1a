"""slcGAN and GM-GAN runs have the KM-GAN runs' checkpoint safety (test_train_safety.py): an
existing run folder is refused, the newest keep_checkpoints are kept, a corrupt newest one is
skipped for the previous, the resume from it is exact (every network and optimizer bitwise the
uninterrupted run's, slcGAN's clustering network C included) and logs no step twice, and a
config.json disagreeing with the checkpoint is refused."""
import json
import os
import shutil

import pytest
import torch
from test_train_safety import _flip_byte_inside_largest_tensor, _steps

from kmgan_ext.train import load_config, resume, train
from kmgan_ext.train.checkpoint import CheckpointError, list_checkpoints, newest_good
from kmgan_ext.train.trainer import RunExistsError

BASE = {"n_train": 64, "batch_size": 16, "feature_batch": 64, "device": "cpu", "progress": False, "threads": 1,
        "log_every": 4, "tensorboard": False, "sample_every": 0, "eval_samples": 32, "keep_checkpoints": 2,
        "gm_cluster_samples": 16, "gm_cluster_epochs": 1}  # fmt: skip
MODELS = {
    "slcgan": ({"model": "slcgan"}, ("slc_lambda_mi", 0.5)),
    "gmgan": ({"model": "gmgan", "prior": "gm_dynamic"}, ("gm_sigma", 0.3)),
}
STATE_PARTS = ("G", "D", "clusterer", "opt_D", "opt_G", "opt_cluster")


def _cfg(model, **over):
    return load_config("synthetic", {**BASE, **MODELS[model][0], **over})


@pytest.fixture(scope="module", params=list(MODELS))
def three_epochs(request, tmp_path_factory):
    """A finished 3-epoch run (4 steps an epoch; checkpoints at steps 8 and 12 kept)."""
    out = str(tmp_path_factory.mktemp(request.param) / "run")
    s = train(_cfg(request.param, epochs=3), out)
    assert s["status"] == "finished" and s["steps"] == 12
    return request.param, out


def _same(a, b, path=()):
    """Nested state dicts / optimizer states equal, tensors bitwise."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], path + (k,))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, path + (i,))
    else:
        assert a == b, path


def test_out_on_existing_run_is_refused(three_epochs, tmp_path):
    model, src = three_epochs
    out = shutil.copytree(src, tmp_path / "run")
    before = {n: (out / n).read_bytes() for n in ("metrics.jsonl", "summary.json", "config.json")}
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(_cfg(model, epochs=1), str(out))
    assert all((out / n).read_bytes() == data for n, data in before.items())


def test_corrupt_newest_checkpoint_falls_back_and_the_resume_is_exact(three_epochs, tmp_path, capsys):
    model, src = three_epochs
    out = str(shutil.copytree(src, tmp_path / "run"))
    folder = os.path.join(out, "checkpoints")
    assert [st for st, _ in list_checkpoints(folder)] == [12, 8]
    want = torch.load(os.path.join(folder, "step-00000012.pt"), weights_only=False)
    _flip_byte_inside_largest_tensor(os.path.join(folder, "step-00000012.pt"))
    assert newest_good(folder).endswith("step-00000008.pt")
    assert "skipping corrupt checkpoint" in capsys.readouterr().err
    s = resume(out, {"epochs": 3})  # from step 8: epoch 3 again
    assert s["steps"] == 12 and _steps(out) == [4, 8, 12]
    got = torch.load(newest_good(folder), weights_only=False)
    assert got["step"] == 12
    assert (got["clusterer"] is not None) == (model == "slcgan")
    for part in STATE_PARTS:
        _same(want[part], got[part], (part,))


def test_config_json_disagreeing_with_the_checkpoint_is_refused(three_epochs, tmp_path):
    model, src = three_epochs
    out = str(shutil.copytree(src, tmp_path / "run"))
    key, value = MODELS[model][1]
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    cfg[key] = value
    json.dump(cfg, open(path, "w"))
    with pytest.raises(CheckpointError, match=f"{key}: config.json {value}"):
        resume(out, {"epochs": 4})
