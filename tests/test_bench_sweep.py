"""bench/sweep.py --tiny: every op's cells run, are checked before they are timed, and the
results JSON and one plot per op are written (tiny shapes, seconds; no timing is asserted)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import sweep  # noqa: E402


def test_grid_covers_the_ranges():
    g = sweep.grid("quick")
    assert {s["N"] for s in g} >= {10_000, 1_000_000}
    assert {s["K"] for s in g} >= {10, 4096}
    assert {s["d"] for s in g} >= {32, 512}


def test_tiny_sweep(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "sweep.py"), "--tiny", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["load_avg_start"] is not None and r["load_avg_end"] is not None
    assert r["roofline"]["bandwidth_gbps"] > 0
    rows = r["rows"]
    assert {x["op"] for x in rows} == set(sweep.OPS)
    for x in rows:
        assert not x["error"], x
        if x["median_ms"] is not None:
            assert x["correct"] and x["check"], x  # timed only after its check passed
            assert x["pct_of_roofline"] is not None and x["flops"] and x["bytes"]
        else:
            assert x["absent"] or x["skipped"] or x["correct"] is False, x
    timed = {x["op"] for x in rows if x["provider"] == "kmgan_ext" and x["median_ms"]}
    assert timed == set(sweep.OPS)
    for op in sweep.OPS:
        assert (tmp_path / f"{op}.png").exists(), op


def _cell(op, n=2000, k=4, d=16):
    import torch

    x, c = sweep._data(n, d, k, torch.device("cpu"))
    labels = sweep.cell_labels(op, x, c)
    provs = {name: fn for name, fn, _ in sweep.providers(op, x, c, None, labels) if fn is not None}
    return x, c, provs, sweep.truth(op, x, c, labels)


def test_sweep_checks_judge_against_float64_and_reject_planted_errors():
    """Every op's check passes the float64 truth itself (rounded to float32) and each real
    provider, and fails a planted wrong answer: the tolerance is plain torch's own error
    against float64, so an answer more exact than torch's can never fail it."""
    import numpy as np
    import torch

    for op in ("minibatch_update", "assigned_distance", "center_loss"):
        x, c, provs, want = _cell(op)
        plain = provs["torch"]()
        outs = want if op != "center_loss" else want[0]
        exact = tuple(t.float() for t in outs)
        for name, got in [("float64 truth", exact)] + [(p, fn()) for p, fn in provs.items()]:
            ok, msg = sweep.check(op, got, want, plain, x, c)
            assert ok, (op, name, msg)
        wrong = list(exact)
        wrong[-1] = wrong[-1].clone()
        wrong[-1][0] = -wrong[-1][0] if op == "center_loss" else wrong[-1][0] * 1.01
        ok, msg = sweep.check(op, tuple(wrong), want, plain, x, c)
        assert not ok, (op, msg)

    x, c, provs, want = _cell("assign")
    labels, dist2 = provs["kmgan_ext"]()
    assert sweep.check("assign", (labels, dist2), want, None, x, c)[0]
    far = labels.clone()
    far[0] = int(torch.cdist(x[:1], c).argmax())
    assert not sweep.check("assign", (far, dist2), want, None, x, c)[0]

    x, c, provs, want = _cell("kmeans_plusplus")
    seeds = provs["kmgan_ext"]()
    assert sweep.check("kmeans_plusplus", seeds, want, None, x, c)[0]
    assert not sweep.check("kmeans_plusplus", seeds + 1e-3, want, None, x, c)[0]

    x, c, provs, want = _cell("kmeans")
    for name, fn in provs.items():
        assert sweep.check("kmeans", fn(), want, None, x, c)[0], name
    assert not sweep.check("kmeans", c, want, None, x, c)[0]  # the initial centers: no Lloyd
    assert not sweep.check("kmeans", np.asarray(want[0] + 0.5, dtype=np.float32), want, None, x, c)[0]


def test_faiss_kmeans_is_checked_up_to_its_first_split():
    """faiss fills an empty cluster by splitting a large one (scikit-learn and kmgan_ext move
    the farthest row): its Lloyd is held to the float64 truth up to that iteration, and the
    row says why it ends elsewhere; an objective off before the split still fails."""
    import torch

    pytest = __import__("pytest")
    x, c = sweep._data(5000, 64, 100, torch.device("cpu"))
    provs = {name: fn for name, fn, _ in sweep.providers("kmeans", x, c, None) if fn is not None}
    if "faiss" not in provs:
        pytest.skip("faiss not installed")
    want = sweep.truth("kmeans", x, c, None)
    centers, stats = provs["faiss"]()
    split = next((i for i, st in enumerate(stats) if st["nsplit"] > 0), None)
    assert split is not None, stats  # this cell empties clusters (64 blobs, 100 centers)
    ok, msg = sweep.check("kmeans", (centers, stats), want, None, x, c)
    assert ok and sweep.FAISS_SPLIT in msg, msg
    bad = [dict(st) for st in stats]
    bad[0]["obj"] *= 1.01
    assert not sweep.check("kmeans", (centers, bad), want, None, x, c)[0]
    # without its splits the same final centers would be judged like the others: they fail
    no_split = [dict(st, nsplit=0) for st in stats]
    assert not sweep.check("kmeans", (centers, no_split), want, None, x, c)[0]
