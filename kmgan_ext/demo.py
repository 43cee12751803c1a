"""``make demo``: the paper's synthetic experiment (section 4.1, Fig. 2) on the CPU, over
several seeds.

KM-GAN and DCGAN (the same Table 2 networks) are trained on 4 Gaussians mapped to R^100,
once per seed, two processes at a time; after every epoch each discriminator's features of
the whole training set are scored against the hidden labels: k-means accuracy, NMI, and the
compactness measures k-means cannot see (between/within-class variance ratio, class pairs
with d' > 3). The paper's claim: KM-GAN's features separate the four groups, DCGAN's do not.
The printed verdict is the paired comparison over seeds of the numbers printed above it.

    python -m kmgan_ext.demo [--out runs/demo] [--seeds 4] [--epochs 8] [--set key=value ...]

This is ``python -m kmgan_ext.train.reproduce synthetic`` with a small budget; the committed
report (10 seeds, 24 epochs, more variants) is results/reproduction/synthetic/REPORT.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

ALPHA = 0.05  # the paired t-test's level for the verdict


def verdict(diff_mean: float, p: float, wins: int, n: int, what: str) -> str:
    """The sentence the numbers allow: a paired t-test at level ALPHA over n seeds."""
    if n < 2 or p != p:  # NaN p: fewer than 2 seeds or identical results
        return f"{what}: too few seeds for a test ({n})"
    if p < ALPHA:
        side = "higher" if diff_mean > 0 else "lower"
        return f"{what}: KM-GAN {side} than DCGAN (paired t-test p = {p:.3g} < {ALPHA}, KM-GAN ahead in {wins} of {n} seeds)"
    return (f"{what}: no significant difference (paired t-test p = {p:.3g} >= {ALPHA}, KM-GAN ahead in "
            f"{wins} of {n} seeds); {n} seeds cannot separate it from seed-to-seed noise")  # fmt: skip


def run_demo(out: str, seeds: int, epochs: int, sets: list[str], jobs: int) -> dict:
    from kmgan_ext.train import reproduce

    if os.path.isdir(out):
        shutil.rmtree(out)  # the demo always trains afresh (its folder is scratch)
    argv = ["synthetic", "--out", out, "--seeds", str(seeds), "--epochs", str(epochs),
            "--variants", "kmgan,dcgan", "--jobs", str(jobs), "--scatter-seed", "0"]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    reproduce.main(argv)
    import json

    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    from kmgan_ext.train import ConfigError, parse_set

    p = argparse.ArgumentParser(prog="python -m kmgan_ext.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "demo"))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    try:
        parse_set(a.sets)
    except ConfigError as e:
        print(f"demo: error: {e}")
        return 2
    t0 = time.perf_counter()
    print(f"KM-GAN vs DCGAN on the synthetic set (paper section 4.1, Fig. 2): {a.seeds} seeds x {a.epochs} epochs, "
          f"{a.jobs} process(es)")  # fmt: skip
    rep = run_demo(a.out, a.seeds, a.epochs, a.sets, a.jobs)
    e = rep["epochs"]
    e0 = min(2, e)
    span = f"mean_epochs_{e0}_{e}"
    n = len(rep["seeds_paired"])
    print(f"\nD's features of the training set scored after every epoch; mean ± sd over {n} seeds, averaged over "
          f"epochs {e0}-{e} (the scores move from epoch to epoch):")  # fmt: skip
    names = {"acc": "k-means accuracy", "nmi": "NMI", "var_ratio": "between/within variance",
             "pairs_separated": "class pairs d' > 3 (of 6)"}  # fmt: skip
    print(f"  {'':28s} {'KM-GAN':>16s} {'DCGAN':>16s}")
    for m, label in names.items():
        cells = []
        for v in ("kmgan", "dcgan"):
            mu, sd = rep["summary"][v][m][span]
            cells.append(f"{mu:.3f} ± {sd:.3f}" if sd == sd else f"{mu:.3f}")
        print(f"  {label:28s} {cells[0]:>16s} {cells[1]:>16s}")
    print("\nVerdict (paired over seeds, KM-GAN - DCGAN):")
    for c in rep["comparisons"]:
        if c["a"] == "kmgan" and c["b"] == "dcgan" and c["where"] == span and c["metric"] in ("acc", "var_ratio"):
            print("  " + verdict(c["mean_diff"], c["p"], c["wins"], c["n"], names[c["metric"]]))
    print(f"\nreport: {os.path.join(a.out, 'REPORT.md')}  figures: {', '.join(rep['figures'].values())}")
    print("the full reproduction (10 seeds, 24 epochs, both d_round readings, GP): "
          "results/reproduction/synthetic/REPORT.md")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
