"""Seeding and Lloyd quality against scikit-learn (issue 5's quality bar), as figures.

tests/test_seeding_quality.py asserts the bar (within 2%, no worse than KMeans(n_init=1));
this prints the numbers behind it, on the same data (scikit-learn's load_digits, Debian's
Fashion-MNIST when installed, the paper's synthetic set):

  python bench/seeding_quality.py [--seeds 100]

Columns: mean inertia of km.kmeans_plusplus / scikit-learn's kmeans_plusplus over independent
seeds, +- the standard error of our mean (relative to theirs: k-means++ inertia varies a lot
from seed to seed, e.g. on the 4 well-separated synthetic groups, so few seeds are noise), and
km.kmeans (20 Lloyd iterations) / KMeans(n_init=1) run to convergence, both seeded by their
own k-means++, over 5 seeds.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_seeding_quality import FASHION, dataset, inertia  # noqa: E402

import kmgan_ext as km  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()
    from sklearn.cluster import KMeans, kmeans_plusplus

    names = ["digits", "synthetic"] + (["fashion"] if os.path.exists(FASHION) else [])
    print(f"{'data':10s} {'N':>6s} {'d':>4s} {'k':>3s}  {'k-means++ ratio':>17s}  {'Lloyd ratio':>11s}")
    for name in names:
        x, k = dataset(name, fashion_rows=10_000)
        x64 = x.astype(np.float64)
        seeds = range(args.seeds)
        ours = [inertia(x, km.kmeans_plusplus(x, k, seed=s)) for s in seeds]
        theirs = [inertia(x, kmeans_plusplus(x64, k, random_state=s)[0]) for s in seeds]
        lloyd_seeds = range(min(args.seeds, 5))
        lloyd = [km.kmeans(x, k, seed=s).inertia for s in lloyd_seeds]
        sk = [KMeans(k, n_init=1, random_state=s).fit(x64).inertia_ for s in lloyd_seeds]
        se = np.std(ours) / np.sqrt(len(ours)) / np.mean(theirs)
        print(
            f"{name:10s} {x.shape[0]:6d} {x.shape[1]:4d} {k:3d}  {np.mean(ours) / np.mean(theirs):9.4f} +- {se:.4f}"
            f"  {np.mean(lloyd) / np.mean(sk):11.4f}"
        )
    if "fashion" not in names:
        print(f"(Fashion-MNIST absent: {FASHION}; `make data` installs it)")


if __name__ == "__main__":
    main()
