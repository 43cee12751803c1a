"""Trainer configuration and command line: keys, types, choices, built-in configs, sweeps."""
import json

import pytest

from kmgan_ext.train import CONFIGS, DEFAULTS, SWEEPS, ConfigError, load_config, parse_set
from kmgan_ext.train.__main__ import main
from kmgan_ext.train.config import resume_overrides

REQUIRED_KEYS = (
    "model", "epochs", "seed", "device", "deterministic", "batch_size", "k", "d_round",
    "d_round_mode", "clip", "lambda", "prior", "data_root",
)  # fmt: skip


def test_required_keys_exist():
    for key in REQUIRED_KEYS:
        assert key in DEFAULTS, key


def test_parse_set_types():
    got = parse_set(["k=4", "lambda=10", "deterministic=true", "prior=gm_dynamic", "clip=0.01", "d_round=2e4"])
    assert got == {"k": 4, "lambda": 10.0, "deterministic": True, "prior": "gm_dynamic", "clip": 0.01, "d_round": 20000}
    assert isinstance(got["lambda"], float) and isinstance(got["k"], int)


@pytest.mark.parametrize(
    "item, words",
    [
        ("bogus=1", ["unknown config key 'bogus'", "valid keys"]),
        ("k=four", ["k must be of type int"]),
        ("k=2.5", ["k must be of type int"]),
        ("model=wgan", ["model must be one of", "kmgan"]),
        ("deterministic=maybe", ["deterministic must be a boolean"]),
        ("prior=uniform", ["prior must be one of"]),
        ("d_round_mode=ceil", ["d_round_mode must be one of"]),
        ("lr=-1", ["lr must be >= 0"]),
        ("k", ["--set expects key=value"]),
    ],
)
def test_bad_set_rejected_by_parser(item, words):
    with pytest.raises(ConfigError) as e:
        parse_set([item])
    for w in words:
        assert w in str(e.value)


def test_cli_rejects_bad_set_key_with_clear_error(tmp_path, capsys):
    rc = main(["--config", "synthetic", "--out", str(tmp_path / "r"), "--set", "epochz=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown config key 'epochz'" in err and "epochs" in err
    assert not (tmp_path / "r").exists()  # nothing started


def test_cli_needs_config_and_out(capsys):
    assert main(["--config", "synthetic"]) == 2
    assert "--out" in capsys.readouterr().err


def test_builtin_configs_resolve():
    for name in CONFIGS:
        cfg = load_config(name)
        assert cfg["config"] == name
        assert set(DEFAULTS) <= set(cfg)
    # the paper's settings (section 4)
    assert load_config("mnist")["d_round"] == 10000 and load_config("mnist")["clip"] == 1.0
    assert load_config("cifar10")["d_round"] == 20000 and load_config("cifar10")["clip"] == 0.1
    celeba = load_config("celeba")
    assert (celeba["clip"], celeba["lambda"], celeba["model"]) == (0.01, 10.0, "generalized")
    assert load_config("synthetic")["k"] == 4


def test_sweeps_are_overrides_of_builtin_configs():
    assert set(SWEEPS) == {"table4_clip", "table5_d_round", "table8_lambda"}
    for base, key, values in SWEEPS.values():
        for v in values:
            assert load_config(base, {key: v})[key] == v


def test_config_file_and_unknown_key_in_file(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"dataset": "synthetic", "k": 3, "epochs": 2}))
    cfg = load_config(str(good), {"seed": 5})
    assert (cfg["k"], cfg["epochs"], cfg["seed"]) == (3, 2, 5)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"kk": 3}))
    with pytest.raises(ConfigError, match="unknown config key 'kk'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="neither a built-in config"):
        load_config(str(tmp_path / "missing.json"))


def test_resume_may_not_change_what_the_checkpoint_means():
    saved = load_config("synthetic")
    assert resume_overrides(saved, {"epochs": 30})["epochs"] == 30
    with pytest.raises(ConfigError, match="cannot change 'k'"):
        resume_overrides(saved, {"k": 5})
    assert resume_overrides(saved, {"k": saved["k"]})["k"] == saved["k"]  # unchanged is fine


def test_cli_sweep_runs_each_value(tmp_path, capsys):
    from kmgan_ext.train.config import SWEEPS

    sets = ["n_train=128", "batch_size=32", "fake_pool=64", "max_steps=1", "progress=false",
            "tensorboard=false", "threads=1", "model=generalized"]  # fmt: skip
    args = ["--config", "synthetic", "--sweep", "table8_lambda", "--out", str(tmp_path)]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    res = json.loads((tmp_path / "sweep.json").read_text())
    values = SWEEPS["table8_lambda"][2]
    assert list(res["runs"]) == [f"lambda={v}" for v in values]
    assert res["paper_base"] == "celeba"
    for v in values:
        cfg = json.loads((tmp_path / f"lambda={v}" / "config.json").read_text())
        assert cfg["lambda"] == v and cfg["dataset"] == "synthetic"
    assert "run folder" in capsys.readouterr().out


def test_one_d_round_reading_for_every_config_and_new_keys_checked():
    from kmgan_ext.train import CONFIGS

    # the iteration-budget reading (argued from Table 5 in config.py) everywhere; the
    # synthetic experiment's d_round = 0 therefore runs no center-loss step
    assert {load_config(name)["d_round_mode"] for name in CONFIGS} == {"steps"}
    assert load_config("synthetic")["d_round"] == 0
    assert load_config("synthetic", {"dcgan_head": "none"})["dcgan_head"] == "none"
    for bad, msg in (({"dcgan_head": "conv"}, "dcgan_head must be one of"), ({"gp_weight": -1}, "gp_weight must be >= 0"),
                     ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
                     ({"dist_timeout": 0}, "dist_timeout must be > 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            load_config("synthetic", bad)
