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
