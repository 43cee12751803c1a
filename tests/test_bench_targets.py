"""bench/bench_kmeans_plusplus.py notes issue 15's targets on the kmgan_ext rows it times:
the k-means++ time (K=10, K=100) and Lloyd's speedup over faiss and scikit-learn from the
same start; a missed target says MISSED, an untimed row says so."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import _harness as H  # noqa: E402
import bench_kmeans_plusplus as B  # noqa: E402


def _row(op, k, provider, ms):
    r = H.empty_row(op, dict(N=70_000, d=100, K=k), provider, "forward")
    r["median_ms"] = ms
    return r


def test_seeding_target_met_and_missed():
    rows = [_row("kmeans_plusplus", 100, "kmgan_ext-cpu", 240.0), _row("kmeans_plusplus", 10, "kmgan_ext-cpu", 41.0),
            _row("kmeans_plusplus", 100, "sklearn", 900.0)]  # fmt: skip
    B.note_targets(rows)
    assert rows[0]["note"] == "target <= 250 ms: met"
    assert rows[1]["note"] == "target <= 40 ms: MISSED"
    assert not rows[2]["note"]


def test_lloyd_ratios_to_the_peers():
    rows = [_row("kmeans_lloyd", 100, "kmgan_ext", 100.0), _row("kmeans_lloyd", 100, "faiss", 140.0),
            _row("kmeans_lloyd", 100, "sklearn", 600.0)]  # fmt: skip
    rows[0]["note"] = "earlier"
    B.note_targets(rows)
    assert rows[0]["note"] == ("earlier; 1.40x faiss (target >= 1.5x: MISSED); "
                               "6.00x sklearn (target >= 5x: met)")  # fmt: skip


def test_untimed_peer_is_said():
    rows = [_row("kmeans_lloyd", 100, "kmgan_ext", 100.0), _row("kmeans_lloyd", 100, "faiss", None)]
    B.note_targets(rows)
    assert "vs faiss: not timed (target >= 1.5x)" in rows[0]["note"]
    assert "vs sklearn: not timed (target >= 5x)" in rows[0]["note"]


def test_whole_fit_ratio_on_the_kmeans_row():
    rows = [_row("kmeans", 100, "kmgan_ext", 400.0), _row("kmeans", 100, "sklearn", 1640.0),
            _row("kmeans", 10, "kmgan_ext", 50.0), _row("kmeans", 10, "sklearn", 500.0)]  # fmt: skip
    B.note_targets(rows)
    assert rows[0]["note"] == "whole fit 4.10x sklearn (>= 5x: MISSED)"
    assert not rows[2]["note"]  # the Lloyd row is K = 100
    rows[0]["note"], rows[0]["median_ms"] = None, 300.0
    B.note_targets(rows)
    assert rows[0]["note"] == "whole fit 5.47x sklearn (>= 5x: met)"
