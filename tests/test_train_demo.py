"""`make demo`'s entry point on a tiny setting: the numbers it prints are the per-seed scores'
means, and its verdict is the paired t-test of those scores (recomputed here)."""
import json
import re

import numpy as np
from scipy import stats

from kmgan_ext.demo import main, verdict


def test_demo_prints_what_its_numbers_support(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--seeds", "3", "--epochs", "2", "--jobs", "1",
               "--set", "n_train=320", "--set", "fake_pool=128"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    per_seed = {}
    for model in ("kmgan", "dcgan"):
        per_seed[model] = []
        for seed in range(3):
            job = json.loads((tmp_path / "scores" / f"{model}-seed{seed}.json").read_text())
            assert [r["epoch"] for r in job["curve"]] == [1, 2] and job["n_rows"] == 320
            per_seed[model].append(job["curve"][1]["acc"])  # epochs 2-2
    # the table's accuracy row: mean ± sd (n - 1) over the 3 seeds
    row = re.search(r"k-means accuracy\s+(\S+) ± (\S+)\s+(\S+) ± (\S+)", out)
    for model, (m, s) in zip(("kmgan", "dcgan"), ((1, 2), (3, 4))):
        assert float(row.group(m)) == round(float(np.mean(per_seed[model])), 3)
        assert float(row.group(s)) == round(float(np.std(per_seed[model], ddof=1)), 3)
    d = np.subtract(per_seed["kmgan"], per_seed["dcgan"])
    if d.std() > 0:
        p = stats.ttest_rel(per_seed["kmgan"], per_seed["dcgan"]).pvalue
        expected = "no significant difference" if p >= 0.05 else ("KM-GAN higher" if d.mean() > 0 else "KM-GAN lower")
        line = [x for x in out.splitlines() if x.strip().startswith("k-means accuracy:")][0]
        assert expected in line and f"ahead in {int((d > 0).sum())} of 3 seeds" in line
    assert (tmp_path / "REPORT.md").is_file() and (tmp_path / "fig2_scatter.png").stat().st_size > 0


def test_verdict_follows_the_test():
    assert verdict(0.1, 0.01, 9, 10, "acc").startswith("acc: KM-GAN higher than DCGAN (paired t-test p = 0.01")
    assert verdict(-0.1, 0.01, 1, 10, "acc").startswith("acc: KM-GAN lower")
    assert "no significant difference" in verdict(0.2, 0.2, 6, 10, "acc")
    assert "too few seeds" in verdict(0.2, float("nan"), 1, 1, "acc")


def test_demo_rejects_bad_set(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().out
