"""bench/run_all.py --tiny: every benchmark runs, writes its files, and checks before timing.

Runs the whole suite on tiny shapes in a subprocess (its thread setting and torch.compile
configuration stay out of this test session). What it holds:
* results.json has the run metadata and rows with every schema key;
* every op of the suite wrote rows, and no benchmark crashed;
* every kmgan_ext backend usable here gave a checked answer (correct) and a time;
* a row is timed only after its check passed (quality-bar rows excepted, and flagged);
* absent and skipped rows say why; speedups are relative to a named baseline;
* results.md and one PNG per op exist.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import _harness as H  # noqa: E402
import run_all  # noqa: E402

# One run shared by the tests of this file.
_RUN: dict = {}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not _RUN:
        out = tmp_path_factory.mktemp("bench")
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "run_all.py"), "--tiny", "--threads", "1", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(out / "results.json") as f:
            _RUN.update(out=out, result=json.load(f), stdout=proc.stdout)
    return _RUN


def test_metadata(tiny_run):
    r = tiny_run["result"]
    for key in ("device", "torch", "triton", "faiss", "commit", "date", "rows", "roofline", "available_backends"):
        assert key in r, key
    assert r["device"]["name"] and r["device"]["type"] in ("cpu", "cuda")
    assert r["commit"] and r["date"]
    assert r["roofline"]["bandwidth_gbps"] > 0 and r["roofline"]["gflops"]["fp32"] > 0


def test_rows_schema(tiny_run):
    rows = tiny_run["result"]["rows"]
    assert rows
    for row in rows:
        missing = [k for k in H.ROW_KEYS if k not in row]
        assert not missing, (row.get("op"), row.get("provider"), missing)
        assert isinstance(row["op"], str) and isinstance(row["provider"], str)
        assert row["mode"] in ("forward", "backward", "full"), row
        assert isinstance(row["shape"], dict) and row["shape"]
        assert isinstance(row["correct"], bool)
        if row["median_ms"] is not None:
            assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"], row
            # Timed only after a passed check, except quality bars, which stay flagged.
            assert row["correct"] or "inertia_ratio" in row, row
        if row["correct"]:
            assert row["check"], row
        if row["absent"] is not None or row["skipped"] is not None:
            assert (row["absent"] or row["skipped"]).strip(), row
            assert row["median_ms"] is None and not row["correct"], row


def test_every_op_ran(tiny_run):
    rows = tiny_run["result"]["rows"]
    ops = {r["op"] for r in rows}
    expected = {"assign", "assign_topk", "soft_assign", "assign_batched", "minibatch_update", "minibatch_step",
                "center_loss", "assigned_distance", "pairwise_l1", "kmeans_plusplus", "kmeans", "kmeans_lloyd",
                "train_step", "kmgan_loss_block",
                "vector_quantizer", "center_loss_layer", "kmeans_fit", "minibatch_kmeans_fit"}
    assert expected <= ops, expected - ops
    crashed = [r for r in rows if r["provider"] == "(benchmark)"]
    assert not crashed, crashed


# issue 12's peers of the estimator benchmark: every one has a row, absent ones say why
ESTIMATOR_PEERS = {
    "kmeans_fit": {"sklearn", "kmgan_ext", "faiss", "fast-pytorch-kmeans", "kmeans-pytorch"},
    "minibatch_kmeans_fit": {"sklearn", "kmgan_ext", "faiss", "fast-pytorch-kmeans", "kmeans-pytorch"},
}


def test_estimator_rows_name_every_peer_and_check_inertia_first(tiny_run):
    """KMeans.fit / MiniBatchKMeans.fit against scikit-learn, faiss.Kmeans, fast-pytorch-kmeans
    and kmeans-pytorch: each peer has a row; each one that ran had its inertia checked
    against scikit-learn's before it was timed (a ratio, a verdict); kmgan_ext passes."""
    rows = tiny_run["result"]["rows"]
    for op, peers in ESTIMATOR_PEERS.items():
        mine = [r for r in rows if r["op"] == op]
        assert {r["provider"] for r in mine} == peers, (op, {r["provider"] for r in mine})
        for r in mine:
            if r["absent"] or r["skipped"]:
                assert isinstance(r["absent"] or r["skipped"], str), r
                continue
            assert r["error"] is None, r
            assert r["check"] and "inertia" in r["check"] and r["inertia_ratio"] > 0, r
            assert r["correct"] == (r["inertia_ratio"] <= 1.25), r
            assert r["median_ms"] is not None, r
        ours = [r for r in mine if r["provider"] == "kmgan_ext"]
        assert ours and all(r["correct"] for r in ours), ours


def test_kmgan_ext_backends_correct_and_timed(tiny_run):
    """Each usable backend (reference at least) is checked right and timed on every case."""
    rows = tiny_run["result"]["rows"]
    ours = [r for r in rows if "kmgan_ext" in r["provider"] and r["absent"] is None and r["skipped"] is None]
    assert any(r["provider"].endswith("reference") for r in ours)
    bad = [(r["op"], r["shape"], r["provider"], r["mode"], r["check"], r["error"]) for r in ours
           if not r["correct"] or r["error"] or r["median_ms"] is None]
    assert not bad, bad
    # Backends not usable here are listed with their reason, never dropped.
    avail = tiny_run["result"]["available_backends"]
    assign_rows = {r["provider"]: r for r in rows if r["op"] == "assign"}
    for b in ("reference", "cpu", "triton"):
        assert f"kmgan_ext-{b}" in assign_rows
        if avail[b] is not None:
            assert assign_rows[f"kmgan_ext-{b}"]["absent"], b


def test_naive_baselines_and_speedups(tiny_run):
    rows = tiny_run["result"]["rows"]
    for r in rows:
        assert r["baseline"], r
        if r["provider"] == r["baseline"] and r["median_ms"] is not None:
            assert r["speedup_vs_torch"] == pytest.approx(1.0)
    # The naive providers themselves pass their checks (the checks are not vacuous for them).
    naive = [r for r in rows if r["provider"] in ("torch", "torch-cdist", "torch-matmul", "kmgan-torch")]
    assert naive and all(r["correct"] for r in naive if r["skipped"] is None)


def test_files(tiny_run):
    out = tiny_run["out"]
    assert (out / "results.md").read_text().startswith("# kmgan_ext benchmarks")
    for op in {r["op"] for r in tiny_run["result"]["rows"]}:
        png = out / f"{op}.png"
        assert png.exists() and png.stat().st_size > 1000, op
    assert "| shape | mode | provider |" in tiny_run["stdout"]


def test_check_labels_rejects_a_wrong_label():
    """The assignment check is not vacuous: one row sent to a far center fails it."""
    import torch

    x = torch.randn(50, 8)
    c = torch.randn(5, 8)
    truth = H.nearest64(x, c)
    assert H.check_labels(x, c, truth, truth[0].clone())[0]
    wrong = truth[0].clone()
    d = torch.cdist(x, c)
    wrong[0] = int(d[0].argmax())
    ok, msg = H.check_labels(x, c, truth, wrong)
    assert not ok and "not the argmin" in msg


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_wait_for_cores_measures_again_until_the_cores_are_there(monkeypatch):
    import _metadata

    ratios = iter([1.05, 1.1, 1.9, 2.0])
    monkeypatch.setattr(_metadata, "core_scaling", lambda: {"threads": 2, "ratio": next(ratios)})
    said = []
    cs = _metadata.wait_for_cores(wait_s=10.0, pause_s=0.01, log=said.append)
    assert cs["ratio"] == 1.9 and len(said) == 2 and cs["waited_s"] >= 0.0
    # never there: it gives up after wait_s and starts with the last measurement
    monkeypatch.setattr(_metadata, "core_scaling", lambda: {"threads": 2, "ratio": 1.0})
    cs = _metadata.wait_for_cores(wait_s=0.05, pause_s=0.01)
    assert cs["ratio"] == 1.0 and 0.0 <= cs["waited_s"] < 1.0


def test_parse_rejects_unknown_op(capsys):
    with pytest.raises(SystemExit, match="2"):
        run_all.parse(["--ops", "nope"])
    assert "unknown ops ['nope']" in capsys.readouterr().err


def test_one_thread_setting_for_every_provider(tiny_run):
    """--threads 1 reaches torch, faiss's OpenMP and every BLAS/OpenMP pool, and is recorded."""
    t = tiny_run["result"]["threads"]
    assert t["torch"] == 1 and t["faiss_omp"] in (None, 1), t
    assert isinstance(t["threadpools"], list) and all(p.endswith(": 1") for p in t["threadpools"]), t


def test_speedup_is_against_the_faster_naive_form(tiny_run):
    rows = [r for r in tiny_run["result"]["rows"] if r["op"] == "assign" and r["median_ms"] is not None]
    for shape in {json.dumps(r["shape"], sort_keys=True) for r in rows}:
        naive = {r["provider"]: r["median_ms"] for r in rows
                 if json.dumps(r["shape"], sort_keys=True) == shape and r["provider"] in ("torch-cdist", "torch-matmul")}
        assert len(naive) == 2, naive  # both plain-torch forms are shown
        fastest = min(naive, key=naive.get)
        assert all(r["baseline"] == fastest for r in rows if json.dumps(r["shape"], sort_keys=True) == shape)


def test_loss_block_is_checked_loss_by_loss(tiny_run):
    rows = [r for r in tiny_run["result"]["rows"] if r["op"] == "kmgan_loss_block" and r["correct"]]
    assert rows
    for r in rows:
        for part in ("L_D ok", "dL_D/d fake features ok", "dL_G/d fake features ok", "dL_center/d fake features ok"):
            assert part in r["check"], (r["provider"], r["check"])
    steps = [r for r in tiny_run["result"]["rows"] if r["op"] == "train_step" and r["correct"] and r["provider"] != "dcgan"]
    assert steps and all("C-hat after the update ok" in r["check"] and "G parameters" in r["check"] for r in steps)


def test_readme_table_holds_every_row_that_ran(tiny_run):
    import readme_table

    result = tiny_run["result"]
    text = readme_table.section(result, "results.json")
    assert text.startswith(readme_table.START) and text.endswith(readme_table.END)
    assert "vary about 2x between machines" in text
    ran = [r for r in result["rows"] if not (r["absent"] or r["skipped"])]
    table_rows = [line for line in text.split("\n") if line.startswith("| ") and not line.startswith("| shape")]
    assert len(table_rows) == len(ran)
    readme = "before\n" + readme_table.START + "\nold\n" + readme_table.END + "\nafter\n"
    assert readme_table.replace_section(readme, text) == "before\n" + text + "\nafter\n"


def test_roofline_holds_each_row_to_the_level_its_data_fits():
    from _roofline import Roofline

    roof = Roofline(20.0, {"fp32": 100.0}, "test", cache_bytes=32 << 20, cache_gbps=100.0, inner_cache_bytes=1 << 20)
    t, what = roof.bound(28e6, 0.0, "fp32")  # the 28 MB array: in the 32 MB LLC
    assert "LLC-resident" in what and t == pytest.approx(28e6 / 100e9 * 1e3)
    t, what = roof.bound(280e6, 0.0, "fp32")
    assert "DRAM" in what and t == pytest.approx(280e6 / 20e9 * 1e3)
    t, what = roof.bound(1e5, 0.0, "fp32")  # within L2: no memory bound is claimed
    assert t == 0.0 and "not modelled" in what


# --------------------------------------------------------------------------- train_step's check
def _train_step_case():
    import torch
    import bench_train_step as B

    base = B.State(dict(batch=16, d=100, K=10), torch.device("cpu"), dcgan=False, tiny=True)
    return B, base, B.first_iteration(base, B.TorchOps()), B.truth_iteration(base)


def test_train_step_plain_torch_in_float64_is_the_reference_iteration():
    """The naive torch iteration computes what kmgan_ext.reference's does: in float64 the two
    agree to float64 rounding (Adam-amplified on the gradients that are 0 before a batch
    norm: ~1e-10 of lr-sized steps), so their float32 gap is rounding, not a bug."""
    B, base, _, (w_losses, w) = _train_step_case()
    losses, s = B.first_iteration(B.float64_copy(base), B.TorchOps())
    assert float((losses - w_losses).abs().max()) < 1e-12
    assert float((s.C - w.C).abs().max()) < 1e-12 and float((s.Ch - w.Ch).abs().max()) < 1e-12
    for net in ("D", "G"):
        assert float((B._params(s, net) - B._params(w, net)).abs().max()) < 1e-8, net


def test_train_step_check_accepts_float32_rounding_and_rejects_planted_bugs():
    """Every float32 iteration differs from the float64 truth by Adam-amplified rounding (the
    nets have a bias before a batch norm, whose true gradient is 0); the check allows what
    plain torch itself shows, and fails a dropped gradient, a flipped one, or a wrong update."""
    import torch

    B, base, plain, truth = _train_step_case()
    assert B.iteration_close(plain, truth)[0]
    for b in ("reference", "cpu"):
        ok, msg = B.iteration_close(B.first_iteration(base, B.KmOps(b)), truth, plain)
        assert ok, (b, msg)

    class NoFakeCenterGrad(B.TorchOps):  # L_center's gradient to the fake features dropped
        def center(self, fr, lr, cr, ff, lf, cf):
            return super().center(fr, lr, cr, ff.detach(), lf, cf)

    class FlippedPullGrad(B.TorchOps):  # the right value, the negated gradient
        def pull(self, f, labels, c):
            v = super().pull(f, labels, c)
            return 2 * v.detach() - v

    class WrongUpdate(B.TorchOps):  # rows credited to the next center
        def update_(self, c, n, f, labels):
            super().update_(c, n, f, (labels + 1) % c.shape[0])

    for planted, part in ((NoFakeCenterGrad, "G parameters"), (FlippedPullGrad, "D parameters"), (WrongUpdate, "centers C")):
        ok, msg = B.iteration_close(B.first_iteration(base, planted()), truth, plain)
        assert not ok, (planted.__name__, msg)
        failed = [p for p in msg.split("; ") if "too far" in p or "values off" in p or "DIFFER" in p]
        assert any(p.startswith(part) for p in failed), (planted.__name__, msg)


def test_every_check_fails_a_planted_wrong_answer(tmp_path):
    """tests/planted_bench.py makes every kernel of the cpu backend 1% (+1e-3) off; every
    benchmark row that runs that backend must then be judged wrong, and the other backends'
    rows still right. Excepted: k-means++ seeding, whose check is a quality bar (rows of x,
    inertia within 1.25x of scikit-learn's): D^2 sampling on distances 1% off is still a
    valid k-means++ (its rows-of-x check: test_kmeans_plusplus_check_rejects_a_non_row)."""
    import kmgan_ext as km

    if km.available_backends()["cpu"] is not None:
        pytest.skip("the cpu backend is not built")
    # estimators: quality bars only (inertia within 1.25x of scikit-learn's), by design blind
    # to a 1% kernel error; its exact parts are the ops' own benchmarks
    ops = ",".join(op for op in run_all.MODULES if op != "estimators")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "planted_bench.py"), "cpu", "--tiny", "--threads", "1",
         "--ops", ops, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ran = [r for r in rows if r["absent"] is None and r["skipped"] is None and not r["error"]]
    cpu = [r for r in ran if r["provider"].endswith("kmgan_ext-cpu") or r["provider"].endswith("kmgan_ext-cpu-det")
           or (r["op"] == "kmeans_lloyd" and r["provider"] == "kmgan_ext")]  # backend "torch": the cpu kernels
    ops = {r["op"] for r in cpu}
    assert {"assign", "assign_topk", "assign_batched", "soft_assign", "minibatch_update", "minibatch_step",
            "center_loss", "assigned_distance", "pairwise_l1", "train_step", "kmgan_loss_block",
            "vector_quantizer", "center_loss_layer", "kmeans_lloyd"} <= ops, ops
    passed = [(r["op"], r["provider"], r["mode"], r["check"]) for r in cpu
              if r["correct"] and r["op"] != "kmeans_plusplus"]
    assert not passed, passed
    others = [(r["op"], r["provider"]) for r in ran if r["provider"].endswith("kmgan_ext-reference") and not r["correct"]]
    assert not others, others


def test_kmeans_plusplus_check_rejects_a_non_row():
    """The seeding checks of bench_kmeans_plusplus.py and sweep.py: rows of x pass, centers
    1e-3 off the rows fail, whatever their inertia."""
    import torch

    import bench_kmeans_plusplus as kpp
    import sweep

    x, c = sweep._data(500, 8, 5, torch.device("cpu"))
    assert sweep.check("kmeans_plusplus", c, None, None, x, c)[0]
    assert not sweep.check("kmeans_plusplus", c + 1e-3, None, None, x, c)[0]
    yard = [kpp.inertia(x, c)]
    assert kpp._quality(x, [c], 5, yard, 1.25, True)[0]
    ok, msg, _ = kpp._quality(x, [c + 1e-3], 5, yard, 1.25, True)
    assert not ok and "not rows of x" in msg


def test_plain_torch_rows_are_held_to_a_bound_they_can_fail():
    """Plain torch's answer sizes every tolerance (twice its own error against float64), so
    that rule cannot fail plain torch's own row: checked as the provider "torch", an answer 1%
    off must fail (1e-3 of the scale), and the same answer checked as another provider too."""
    import torch

    import _correctness as C
    import bench_minibatch_update as M

    x, c0, n0, labels = M.make_inputs(dict(N=200, d=16, K=8, dtype="float32"), torch.device("cpu"))
    want_tol = M.update_truth(c0, n0, x, labels)
    plain = M.torch_update_(c0.clone(), n0.clone(), x, labels)
    off = (plain[0] * 1.01 + 1e-3, plain[1])
    for provider in ("torch", "kmgan_ext-cpu"):
        C.checking["provider"] = provider
        try:
            assert M._check_state(plain, want_tol)[0], provider
            assert not M._check_state(off, want_tol)[0], provider
        finally:
            C.checking["provider"] = None

    w = torch.randn(5, dtype=torch.float64)
    loss, grads = w.sum(), [w]
    tols = H.tolerances((loss.float(), [w.float()]), (loss, [w]), [1e-6, 1e-6])
    wrong = (loss * 1.01 + 1e-3, [w * 1.01 + 1e-3])
    C.checking["provider"] = "torch"
    try:
        assert H.check_loss((loss.float(), [w.float()]), (loss, [w]), tols, ("value", "grad"))[0]
        # twice its own error would let this pass were it the yardstick: tols sized from it
        wide = H.tolerances(wrong, (loss, [w]), [1e-6, 1e-6])
        ok, msg = H.check_loss(wrong, (loss, [w]), wide, ("value", "grad"))
        assert not ok and "yardstick" in msg, msg
    finally:
        C.checking["provider"] = None
    assert H.check_loss(wrong, (loss, [w]), wide, ("value", "grad"))[0]  # another provider: its tolerance
