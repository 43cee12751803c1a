"""`make demo`'s entry point, on a tiny setting."""
import json

from kmgan_ext.demo import main


def test_demo_entry_point_tiny(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--no-progress", "--set", "n_train=320", "--set", "epochs=2",
               "--set", "fake_pool=128", "--set", "sample_every=1", "--set", "tensorboard=false"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "KM-GAN" in out and "DCGAN" in out and "figure:" in out
    s = json.loads((tmp_path / "demo.json").read_text())
    for model in ("kmgan", "dcgan"):
        r = s["runs"][model]
        assert 0 <= r["feature_acc"] <= 1 and 0 <= r["feature_nmi"] <= 1 and r["epochs"] == 2
        assert [e["epoch"] for e in s["per_epoch"][model]] == [1, 2]
    assert (tmp_path / "fig2.png").stat().st_size > 0
    assert (tmp_path / "kmgan" / "samples" / "epoch_0002.png").is_file()


def test_demo_rejects_bad_set(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().out
