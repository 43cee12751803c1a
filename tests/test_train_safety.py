"""The trainer never destroys or silently corrupts a run (issue 16, items 7-10): an existing
run folder is refused, checkpoints are kept, verified and fallen back on, resume errors are
one line, config.json is checked against the checkpoint, the log has no duplicates after a
resume, and a stalled DDP rank gives an error naming the rank and the phase."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from kmgan_ext.train import load_config, resume, train
from kmgan_ext.train.__main__ import main
from kmgan_ext.train.checkpoint import CheckpointError, list_checkpoints, newest_good, verify
from kmgan_ext.train.trainer import RunExistsError

BASE = {
    "n_train": 160,  # 5 iterations per epoch
    "batch_size": 32,
    "fake_pool": 64,
    "feature_batch": 160,
    "device": "cpu",
    "progress": False,
    "threads": 1,
    "log_every": 5,
    "tensorboard": False,
    "sample_every": 0,
    "eval_samples": 160,
}


def _steps(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(x)["step"] for x in f if '"L_D"' in x]


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """A finished 3-epoch run (checkpoints at steps 5, 10, 15), copied by the tests that change it."""
    out = str(tmp_path_factory.mktemp("three") / "run")
    s = train(load_config("synthetic", {**BASE, "epochs": 3, "keep_checkpoints": 2}), out)
    assert s["status"] == "finished" and s["steps"] == 15
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


# ------------------------------------------------------------------ 7: --out on an existing run
def test_out_on_existing_run_is_refused_and_left_intact(three_epochs, tmp_path, capsys):
    out = _copy(three_epochs, tmp_path / "run")
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("metrics.jsonl", "summary.json", "config.json")}
    with pytest.raises(RunExistsError, match="already holds a run .*--resume"):
        train(load_config("synthetic", {**BASE, "epochs": 1}), out)
    rc = main(["--config", "synthetic", "--out", out, "--set", "epochs=1", "--set", "n_train=160"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--overwrite" in err and "Traceback" not in err
    for name, data in before.items():
        assert open(os.path.join(out, name), "rb").read() == data, name
    # asked for explicitly: the old run's files go, nothing of it mixes into the new one
    s = train(load_config("synthetic", {**BASE, "epochs": 1}), out, overwrite=True)
    assert s["steps"] == 5 and _steps(out) == [5]
    assert [st for st, _ in list_checkpoints(os.path.join(out, "checkpoints"))] == [5]


# ------------------------------------------------------------------ 8: keep, verify, fall back
def test_keeps_the_newest_checkpoints_and_removes_stale_temp_files(three_epochs, tmp_path):
    out = _copy(three_epochs, tmp_path / "run")
    assert [st for st, _ in list_checkpoints(os.path.join(out, "checkpoints"))] == [15, 10]
    stale = os.path.join(out, "checkpoints", ".tmp-killed-writer.pt")
    open(stale, "wb").write(b"half a checkpoint")
    resume(out, {"epochs": 4})
    assert [st for st, _ in list_checkpoints(os.path.join(out, "checkpoints"))] == [20, 15]
    assert not os.path.exists(stale)


def _flip_byte_inside_largest_tensor(path):
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        pos = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("damage", ["truncated", "empty", "flipped"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(three_epochs, tmp_path, capsys, damage):
    out = _copy(three_epochs, tmp_path / "run")
    newest = os.path.join(out, "checkpoints", "step-00000015.pt")
    assert verify(newest) is None
    if damage == "truncated":
        data = open(newest, "rb").read()
        open(newest, "wb").write(data[: len(data) // 2])
    elif damage == "empty":
        open(newest, "wb").close()
    else:
        _flip_byte_inside_largest_tensor(newest)  # loads without error if not verified
    assert verify(newest) is not None
    path = newest_good(os.path.join(out, "checkpoints"))
    assert path.endswith("step-00000010.pt")
    assert "skipping corrupt checkpoint" in capsys.readouterr().err
    # the resume starts from step 10 and re-runs epoch 3: its log records are not duplicated
    s = resume(out, {"epochs": 3})
    assert s["steps"] == 15 and _steps(out) == [5, 10, 15]


def test_every_checkpoint_corrupt_is_a_one_line_error(three_epochs, tmp_path, capsys):
    out = _copy(three_epochs, tmp_path / "run")
    for _, p in list_checkpoints(os.path.join(out, "checkpoints")):
        open(p, "wb").close()
    assert main(["--resume", out]) == 2
    err = capsys.readouterr().err
    assert "every checkpoint" in err and "Traceback" not in err


# ------------------------------------------------------------------ 9: resume errors, config, log
def test_resume_before_the_first_checkpoint_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    cfg = load_config("synthetic", BASE)
    (out / "config.json").write_text(json.dumps(cfg))
    assert main(["--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kmgan-train: error: no checkpoint in") and err.count("\n") == 1
    assert main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "no run there" in capsys.readouterr().err


def test_config_json_disagreeing_with_the_checkpoint_is_refused(three_epochs, tmp_path):
    out = _copy(three_epochs, tmp_path / "run")
    path = os.path.join(out, "config.json")
    cfg = json.load(open(path))
    cfg["k"] = 6  # the checkpoint holds 4 centers
    json.dump(cfg, open(path, "w"))
    with pytest.raises(CheckpointError, match=r"k: config.json 6 vs checkpoint 4"):
        resume(out, {"epochs": 4})


def test_resume_drops_log_records_after_the_checkpoint(three_epochs, tmp_path):
    out = _copy(three_epochs, tmp_path / "run")
    # a run killed after logging steps its last checkpoint (step 15) does not hold
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 20, "epoch": 3, "L_D": 0.0, "L_G": 0.0}) + "\n")
        f.write('{"step": 21, "epoch": 3, "L_D"')  # cut short by the kill
    s = resume(out, {"epochs": 4})
    assert s["steps"] == 20 and _steps(out) == [5, 10, 15, 20]


# ------------------------------------------------------------------ 10: a stalled DDP rank
@pytest.mark.slow  # two fresh interpreters importing torch
def test_stalled_rank_gives_an_error_naming_rank_and_phase(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        from kmgan_ext.train import load_config, train
        from kmgan_ext.train.dist import CollectiveError

        def stall(tr):
            if tr.info.rank == 1 and tr.step == 2:
                time.sleep(60)  # what kill -STOP does to a rank
        cfg = load_config("synthetic", {{**{BASE!r}, "n_train": 256, "max_steps": 6, "dist_timeout": 4.0}})
        try:
            train(cfg, {str(tmp_path / "run")!r}, hook=stall)
        except CollectiveError as e:
            print("COLLECTIVE-ERROR", e, flush=True)
            os._exit(3)
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "COLLECTIVE-ERROR rank 0 of 2: a collective failed during the stop check after the iteration (step 2)" in text, text[-3000:]
