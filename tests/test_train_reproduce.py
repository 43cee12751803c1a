"""The reproduction command: its report's statistics are those of the per-seed score files
(recomputed here), finished runs are not recomputed, a folder made with other settings is
refused, Fig. 5c's distance from uniform has known answers, and REPRODUCTION.md is exactly
what the generator makes of the committed result files."""
import json
import os

import numpy as np
import pytest
from scipy import stats

from kmgan_ext.train import reproduce
from kmgan_ext.train.fig5c import uniformity
from kmgan_ext.train.repro_table import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--seeds", "2", "--epochs", "2", "--variants", "kmgan,dcgan", "--jobs", "1",
        "--set", "n_train=160", "--set", "fake_pool=64"]  # fmt: skip


def test_synthetic_report_statistics_and_resume(tmp_path, capsys):
    out = str(tmp_path / "syn")
    assert reproduce.main(["synthetic", "--out", out, *ARGS]) == 0
    rep = json.load(open(os.path.join(out, "report.json")))
    acc = {v: [json.load(open(os.path.join(out, "scores", f"{v}-seed{s}.json")))["curve"][1]["acc"] for s in (0, 1)]
           for v in ("kmgan", "dcgan")}  # fmt: skip
    assert rep["seeds_paired"] == [0, 1]
    for v in ("kmgan", "dcgan"):
        mu, sd = rep["summary"][v]["acc"]["epoch_2"]
        assert mu == pytest.approx(np.mean(acc[v]), abs=1e-12) and sd == pytest.approx(np.std(acc[v], ddof=1), abs=1e-12)
    c = [x for x in rep["comparisons"] if (x["a"], x["b"], x["metric"], x["where"]) == ("kmgan", "dcgan", "acc", "epoch_2")][0]
    d = np.subtract(acc["kmgan"], acc["dcgan"])
    assert c["mean_diff"] == pytest.approx(d.mean(), abs=1e-12) and c["wins"] == int((d > 0).sum())
    if d.std() > 0:
        assert c["p"] == pytest.approx(stats.ttest_rel(acc["kmgan"], acc["dcgan"]).pvalue, rel=1e-9)
    assert "fig2_scatter.png" in rep["figures"].values() and os.path.isfile(os.path.join(out, "REPORT.md"))
    # resumable: nothing is recomputed the second time
    stamp = os.path.getmtime(os.path.join(out, "scores", "kmgan-seed0.json"))
    capsys.readouterr()
    assert reproduce.main(["synthetic", "--out", out, *ARGS]) == 0
    assert "4 of 4 runs already finished" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, "scores", "kmgan-seed0.json")) == stamp
    # --report-only reports what is finished and trains nothing
    os.remove(os.path.join(out, "scores", "dcgan-seed1.json"))
    assert reproduce.main(["synthetic", "--out", out, *ARGS, "--report-only"]) == 0
    assert not os.path.exists(os.path.join(out, "scores", "dcgan-seed1.json"))
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["seeds_paired"] == [0] and "--report-only" not in rep["command"]
    # other settings in the same folder are refused (their runs would mix)
    with pytest.raises(SystemExit, match="holds runs made with"):
        reproduce.main(["synthetic", "--out", out, *ARGS[:2], "--epochs", "3", *ARGS[4:]])


def test_uniformity_known_answers():
    u = uniformity([0.1] * 10, 5000)
    assert u["chi2_uniform"] == 0.0 and u["kl_to_uniform"] == 0.0 and u["max_min_ratio"] == 1.0
    skew = [0.2, 0.0] + [0.1] * 8  # 1,000 and 0 images where 500 were expected
    s = uniformity(skew, 5000)
    assert s["chi2_uniform"] == pytest.approx(2 * 500**2 / 500) and s["min_share"] == 0.0
    assert s["kl_to_uniform"] == pytest.approx(0.2 * np.log(2.0)) and s["max_min_ratio"] == float("inf")


def test_reproduction_md_is_generated_from_the_committed_results(monkeypatch):
    monkeypatch.chdir(ROOT)
    with open(os.path.join(ROOT, "REPRODUCTION.md")) as f:
        assert f.read() == render(os.path.join("results", "reproduction")), (
            "REPRODUCTION.md differs from `python -m kmgan_ext.train.reproduce table`: regenerate it"
        )
