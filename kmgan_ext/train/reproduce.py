"""Reproduce the paper's claims with several seeds and a report (issue 14).

    python -m kmgan_ext.train.reproduce synthetic --seeds 10 --out DIR [--epochs 24] [--jobs 2]
    python -m kmgan_ext.train.reproduce fashion --out DIR [--epochs 24] [--n-train 0]
    python -m kmgan_ext.train.reproduce clustering --data fashion|mnist --seeds S --epochs E --n-train N --out DIR
    python -m kmgan_ext.train.reproduce table [--results results/reproduction] [--out REPRODUCTION.md]

``synthetic`` (section 4.1, Fig. 2): every variant (KM-GAN under both d_round readings,
KM-GAN with a WGAN-GP-style penalty, with weight clipping, DCGAN) is trained once per seed,
in parallel processes; D's features of the whole training set are scored after every
epoch (k-means accuracy, NMI, between/within-class variance ratio, class pairs with
d' > 3); DIR/report.json and DIR/REPORT.md give mean +- sd, paired differences with a paired
t-test and win counts, curves with bands and a Fig. 2-style scatter of one seed. A
finished (variant, seed) is never recomputed: rerun the same command to continue.

``fashion`` (section 4.3, Fig. 5c): see ``repro_fashion.py``. ``clustering``: KM-GAN, GM-GAN,
slcGAN, k-means and AE + k-means on the same data, seeds and budget (``repro_clustering.py``).
``table``: REPRODUCTION.md from the result files (``repro_table.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

# (overrides of the synthetic config, description). "kmgan" is the reading every config uses.
SYNTHETIC_VARIANTS: dict[str, tuple[dict, str]] = {
    "kmgan": ({"model": "kmgan"}, "KM-GAN, d_round = 0 read as an iteration budget (no center-loss step)"),
    "kmgan_floor": (
        {"model": "kmgan", "d_round_mode": "floor"},
        "KM-GAN, d_round = 0 read as a floor (center-loss step every iteration)",
    ),
    "kmgan_gp": ({"model": "kmgan", "gp_weight": 10.0}, "KM-GAN + WGAN-GP-style penalty (weight 10), no clipping"),
    "kmgan_clip": ({"model": "kmgan", "clip": 1.0}, "KM-GAN + weight clipping [-1, 1] (the paper's MNIST box)"),
    "dcgan": ({"model": "dcgan"}, "DCGAN: the same Table 2 networks + a linear head"),
}
# Paired comparisons the report makes: (a, b) reads "a minus b".
SYNTHETIC_PAIRS = [
    ("kmgan", "dcgan"),
    ("kmgan_floor", "dcgan"),
    ("kmgan", "kmgan_floor"),
    ("kmgan_gp", "dcgan"),
    ("kmgan_clip", "dcgan"),
    ("kmgan_gp", "kmgan_clip"),
    ("kmgan_gp", "kmgan"),
    ("kmgan_clip", "kmgan"),
]
METRICS = {
    "acc": "k-means accuracy (Hungarian)",
    "nmi": "NMI",
    "var_ratio": "between/within-class variance ratio",
    "pairs_separated": "class pairs with d' > 3 (of 6)",
}
SCATTER_EPOCHS = (1, 4, 12, 24)


# --------------------------------------------------------------------------- one job
def _job_path(out: str, variant: str, seed: int) -> str:
    return os.path.join(out, "scores", f"{variant}-seed{seed}.json")


def run_synthetic_job(out: str, variant: str, seed: int, epochs: int, extra: dict, scatter_seed: int) -> dict:
    """Train one (variant, seed) with scoring after every epoch; writes scores/<job>.json
    (the marker that the job is done) and, for ``scatter_seed``, the features of a few
    epochs under scatter/. Runs in a worker process."""
    import torch

    from . import metrics
    from .config import load_config
    from .trainer import train

    overrides, _ = SYNTHETIC_VARIANTS[variant]
    cfg = load_config(
        "synthetic",
        {
            "epochs": epochs,
            "seed": seed,
            "progress": False,
            "tensorboard": False,
            "sample_every": 0,
            "checkpoint_every": 0,
            "interpolation": False,
            "threads": 1,
            "device": "cpu",
            **extra,
            **overrides,
        },
    )
    run_dir = os.path.join(out, "runs", variant, f"seed{seed}")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # an unfinished job (no scores file): start it again
    curve: list[dict] = []
    scatter: dict[int, object] = {}

    def score(tr) -> None:
        order = tr.feature_order(len(tr.data), 11)
        feats = tr.dataset_features(tr.D_raw.features, order)
        y = tr.data.labels[order]
        row = {"epoch": tr.epoch, "step": tr.step}
        if not bool(torch.isfinite(feats).all()):
            row["nonfinite"] = True
        else:
            fc = metrics.feature_clustering(feats, y, 4, seed)
            sep = metrics.class_separation(feats, y)
            row.update(acc=fc["acc"], nmi=fc["nmi"], var_ratio=sep["var_ratio"],
                       pairs_separated=sep["pairs_separated"], min_dprime=sep["min_dprime"])  # fmt: skip
        curve.append(row)
        if seed == scatter_seed and tr.epoch in SCATTER_EPOCHS:
            scatter[tr.epoch] = metrics.pca2(feats).float()
            scatter["labels"] = y

    t0 = time.perf_counter()
    summary = train(cfg, run_dir, on_epoch=score, overwrite=True)
    if scatter:
        os.makedirs(os.path.join(out, "scatter"), exist_ok=True)
        torch.save(scatter, os.path.join(out, "scatter", f"{variant}-seed{seed}.pt"))
    result = {
        "variant": variant,
        "seed": seed,
        "epochs": epochs,
        "status": summary["status"],
        "steps": summary["steps"],
        "train_seconds": summary["seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "n_rows": summary["n_train"],
        "curve": curve,
    }
    path = _job_path(out, variant, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    # the run folder's checkpoint is not needed once scored (and not committed)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return result


# --------------------------------------------------------------------------- statistics
def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def paired(a: list[float], b: list[float]) -> dict:
    """Paired differences a - b over seeds: mean, sd, t, two-sided p (Student's t, n-1 df), wins."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    m, sd = mean_sd(d)
    out = {"n": len(d), "mean_diff": m, "sd_diff": sd, "wins": sum(x > 0 for x in d),
           "losses": sum(x < 0 for x in d), "ties": sum(x == 0 for x in d)}  # fmt: skip
    if len(d) >= 2 and sd > 0:
        t, p = stats.ttest_rel(a, b)
        out["t"], out["p"] = float(t), float(p)
    else:
        out["t"], out["p"] = float("nan"), float("nan")
    return out


def _value(job: dict, metric: str, epochs: list[int]) -> float:
    """The metric at one epoch, or its mean over several (NaN when a run diverged)."""
    rows = {r["epoch"]: r for r in job["curve"]}
    vals = [rows[e].get(metric, float("nan")) for e in epochs if e in rows]
    if len(vals) != len(epochs):
        return float("nan")
    return sum(vals) / len(vals)


def _rows(jobs: dict) -> str:
    rows = sorted({j.get("n_rows") for per in jobs.values() for j in per.values()} - {None})
    return " / ".join(f"{r:,}" for r in rows) or "the"


def build_report(out: str, variants: list[str], seeds: list[int], epochs: int) -> dict:
    """report.json's content from the finished jobs under ``out``/scores."""
    jobs: dict[str, dict[int, dict]] = {v: {} for v in variants}
    for v in variants:
        for s in seeds:
            p = _job_path(out, v, s)
            if os.path.isfile(p):
                with open(p) as f:
                    jobs[v][s] = json.load(f)
    # seeds every variant finished: the paired set
    common = [s for s in seeds if all(s in jobs[v] for v in variants)]
    last = [epochs]
    span = list(range(min(2, epochs), epochs + 1))  # epoch 1 is mostly the initialisation
    rep: dict = {
        "experiment": "synthetic (paper section 4.1, Fig. 2)",
        "epochs": epochs,
        "seeds_asked": seeds,
        "seeds_finished": {v: sorted(jobs[v]) for v in variants},
        "seeds_paired": common,
        "variants": {v: SYNTHETIC_VARIANTS[v][1] for v in variants},
        "metrics": METRICS,
        "scored": f"D's features of all {_rows(jobs)} training rows after every epoch; scikit-learn KMeans "
        "(k=4, n_init=10) for accuracy/NMI",
        "summary": {},
        "curves": {},
        "comparisons": [],
        "seconds": {},
    }
    for v in variants:
        rep["seconds"][v] = mean_sd([j["wall_seconds"] for j in jobs[v].values()])[0]
        rep["summary"][v] = {}
        rep["curves"][v] = {}
        for m in METRICS:
            at_last = [_value(jobs[v][s], m, last) for s in common]
            over = [_value(jobs[v][s], m, span) for s in common]
            rep["summary"][v][m] = {
                f"epoch_{epochs}": mean_sd(at_last),
                f"mean_epochs_{span[0]}_{epochs}": mean_sd(over),
            }
            rep["curves"][v][m] = [
                [e, *mean_sd([_value(jobs[v][s], m, [e]) for s in common])] for e in range(1, epochs + 1)
            ]
        rep["summary"][v]["diverged"] = sum(
            any(r.get("nonfinite") for r in jobs[v][s]["curve"]) for s in common
        )
    for a, b in SYNTHETIC_PAIRS:
        if a not in variants or b not in variants:
            continue
        for m in METRICS:
            for where, eps in ((f"epoch_{epochs}", last), (f"mean_epochs_{span[0]}_{epochs}", span)):
                va = [_value(jobs[a][s], m, eps) for s in common]
                vb = [_value(jobs[b][s], m, eps) for s in common]
                ok = [(x, y) for x, y in zip(va, vb) if not (math.isnan(x) or math.isnan(y))]
                r = paired([x for x, _ in ok], [y for _, y in ok])
                rep["comparisons"].append({"a": a, "b": b, "metric": m, "where": where, **r})
    return rep


# --------------------------------------------------------------------------- figures
def _curves_png(rep: dict, path: str) -> str:
    from .figures import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    for ax, m in zip(axes, METRICS):
        for v, curves in rep["curves"].items():
            rows = [r for r in curves[m] if not math.isnan(r[1])]
            if not rows:
                continue
            e = [r[0] for r in rows]
            mu = [r[1] for r in rows]
            sd = [0.0 if math.isnan(r[2]) else r[2] for r in rows]
            (line,) = ax.plot(e, mu, label=v, lw=1.4)
            ax.fill_between(e, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.set_title(METRICS[m], fontsize=9)
        ax.set_xlabel("epoch")
        if m == "var_ratio":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"synthetic: mean +- sd over {len(rep['seeds_paired'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _scatter_png(out: str, variants: list[str], seed: int, path: str) -> str | None:
    import torch

    from .figures import _plt

    shown = [v for v in variants if os.path.isfile(os.path.join(out, "scatter", f"{v}-seed{seed}.pt"))]
    if not shown:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(shown), len(SCATTER_EPOCHS), figsize=(3.2 * len(SCATTER_EPOCHS), 3.0 * len(shown)),
                             squeeze=False)  # fmt: skip
    for i, v in enumerate(shown):
        d = torch.load(os.path.join(out, "scatter", f"{v}-seed{seed}.pt"), weights_only=False)
        for j, e in enumerate(SCATTER_EPOCHS):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if e in d:
                pts = d[e]
                ax.scatter(pts[:, 0], pts[:, 1], c=d["labels"].numpy(), cmap="tab10", s=1.5, alpha=0.5, vmin=0, vmax=9)
            ax.set_title(f"{v}, epoch {e}", fontsize=8)
    fig.suptitle(f"Fig. 2-style: D's features of the synthetic set, seed {seed} (colour = hidden Gaussian)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _old_figures(out: str) -> dict:
    try:
        with open(os.path.join(out, "report.json")) as f:
            return json.load(f).get("figures", {})
    except (OSError, ValueError):
        return {}


def _fmt(ms: tuple[float, float], digits: int = 3) -> str:
    m, sd = ms
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{m:.{digits}f}"


def write_markdown(rep: dict, path: str, command: str, figures: dict) -> None:
    e = rep["epochs"]
    e0 = min(2, e)
    lines = [
        "# Synthetic experiment (paper section 4.1, Fig. 2): report",
        "",
        f"Generated by `{command}` from the files under `scores/` (do not edit by hand).",
        "",
        f"- epochs: {e}; seeds asked: {len(rep['seeds_asked'])}; seeds finished by every variant "
        f"(the paired set): {len(rep['seeds_paired'])} ({', '.join(map(str, rep['seeds_paired']))})",
        f"- scored: {rep['scored']}",
        "- the paper's claim: KM-GAN's discriminator features separate the 4 hidden Gaussians, "
        "DCGAN's collapse (\"similar points\")",
        "",
        "Variants:",
        "",
    ]
    for v, desc in rep["variants"].items():
        lines.append(f"- `{v}`: {desc} (mean wall time per run {rep['seconds'][v]:.0f} s)")
    budget = " (the paper's budget)" if e == 24 else ""
    for where, title in ((f"epoch_{e}", f"at epoch {e}{budget}"),
                         (f"mean_epochs_{e0}_{e}", f"averaged over epochs {e0}-{e}")):  # fmt: skip
        lines += ["", f"## Mean ± sd over seeds, {title}", "",
                  "| variant | " + " | ".join(METRICS.values()) + " | diverged runs |",
                  "|---|" + "---:|" * (len(METRICS) + 1)]  # fmt: skip
        for v in rep["variants"]:
            s = rep["summary"][v]
            cells = [_fmt(s[m][where], 1 if m == "var_ratio" else 3) for m in METRICS]
            lines.append(f"| `{v}` | " + " | ".join(cells) + f" | {s['diverged']} |")
    lines += ["", "## Paired differences (a - b, same seed)", "",
              "Paired t-test over seeds (two-sided); wins = seeds where a > b.", "",
              "| a - b | metric | where | mean diff ± sd | t | p | wins / n |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for c in rep["comparisons"]:
        dig = 1 if c["metric"] == "var_ratio" else 3
        lines.append(
            f"| `{c['a']}` - `{c['b']}` | {c['metric']} | {c['where'].replace('_', ' ')} | "
            f"{_fmt((c['mean_diff'], c['sd_diff']), dig)} | {c['t']:.2f} | {c['p']:.3g} | {c['wins']} / {c['n']} |"
        )
    lines += ["", "## Figures", ""]
    for name, p in figures.items():
        if p:
            lines.append(f"- {name}: ![{name}]({os.path.basename(p)})")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def report(
    out: str, variants: list[str], seeds: list[int], epochs: int, command: str, scatter_seed: int, draw: bool = True
) -> dict:
    """report.json, REPORT.md and (``draw``) the figures from the finished jobs."""
    rep = build_report(out, variants, seeds, epochs)
    rep["command"] = command
    figs = {}
    if not draw:  # an interim report: the figures of the last full one stay
        figs = {k: os.path.join(out, v) for k, v in _old_figures(out).items()}
    elif rep["seeds_paired"]:
        figs["curves over epochs (mean ± sd bands)"] = _curves_png(rep, os.path.join(out, "curves.png"))
    if draw:
        figs[f"Fig. 2-style scatter, seed {scatter_seed}"] = _scatter_png(
            out, variants, scatter_seed, os.path.join(out, "fig2_scatter.png")
        )
    rep["figures"] = {k: os.path.basename(v) for k, v in figs.items() if v}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    write_markdown(rep, os.path.join(out, "REPORT.md"), command, figs)
    return rep


# --------------------------------------------------------------------------- commands
def synthetic(args) -> int:
    from .config import parse_set

    variants = args.variants.split(",")
    bad = [v for v in variants if v not in SYNTHETIC_VARIANTS]
    if bad:
        raise SystemExit(f"reproduce: error: unknown variant(s) {bad}; known: {', '.join(SYNTHETIC_VARIANTS)}")
    extra = parse_set(args.sets)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    # runs/ holds the trainer's folders (logs, figures): not part of the committed report
    with open(os.path.join(out, ".gitignore"), "w") as f:
        f.write("runs/\n")  # scatter/ (features for the Fig. 2 panel) is kept: --report-only redraws it
    meta = {"epochs": args.epochs, "set": extra}
    meta_path = os.path.join(out, "settings.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise SystemExit(
                f"reproduce: error: {out} holds runs made with {old}, this command asks {meta}: "
                "use another --out (finished seeds are reused only under the same settings)"
            )
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    # the command that trains and reports (what reruns it); --report-only only re-reports
    command = "python -m kmgan_ext.train.reproduce synthetic " + " ".join(a for a in args.argv if a != "--report-only")
    todo = [(v, s) for s in seeds for v in variants if not os.path.isfile(_job_path(out, v, s))]
    if args.report_only:
        todo = []  # the report of what is finished; nothing is trained
    done = len(seeds) * len(variants) - len(todo)
    pace = f"{args.jobs} at a time" if args.jobs > 1 else "one at a time, in this process"
    _say(f"{done} of {len(seeds) * len(variants)} runs already finished under {out}; {len(todo)} to go, {pace}")
    t0 = time.perf_counter()

    def finished(i: int, v: str, s: int, r: dict) -> None:
        last = r["curve"][-1] if r["curve"] else {}
        _say(f"[{i}/{len(todo)}] {v} seed {s}: {r['status']}, acc {last.get('acc', float('nan')):.3f} "
             f"at epoch {last.get('epoch')}, {r['wall_seconds']:.0f} s ({time.perf_counter() - t0:.0f} s elapsed)")  # fmt: skip
        # the report is rewritten as seeds finish: an interrupted reproduction still has one
        if i % len(variants) == 0 and i < len(todo):
            report(out, variants, seeds, args.epochs, command, args.scatter_seed, draw=False)

    if todo and args.jobs == 1:  # in this process: no interpreter start-up per worker
        for i, (v, s) in enumerate(todo, 1):
            finished(i, v, s, run_synthetic_job(out, v, s, args.epochs, extra, args.scatter_seed))
    elif todo:
        import multiprocessing

        # spawn: the main process may hold torch's thread pools (report figures), which fork
        # would copy in an unusable state
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futs = {pool.submit(run_synthetic_job, out, v, s, args.epochs, extra, args.scatter_seed): (v, s)
                    for v, s in todo}  # fmt: skip
            for i, fut in enumerate(as_completed(futs), 1):
                v, s = futs[fut]
                finished(i, v, s, fut.result())
    rep = report(out, variants, seeds, args.epochs, command, args.scatter_seed)
    _say(f"report: {os.path.join(out, 'REPORT.md')} ({len(rep['seeds_paired'])} paired seeds)")
    return 0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kmgan_ext.train.reproduce",
        description="Reproduce the paper's claims over several seeds and write a report "
        "(synthetic: Fig. 2; fashion: Fig. 5c; table: REPRODUCTION.md from the result files).",
    )
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("synthetic", help="Fig. 2: KM-GAN variants vs DCGAN over seeds, scored every epoch")
    s.add_argument("--out", required=True, help="result folder (rerun to continue: finished runs are kept)")
    s.add_argument("--seeds", type=int, default=10, help="number of seeds (default 10)")
    s.add_argument("--first-seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=24, help="epochs per run (paper: 24)")
    s.add_argument("--variants", default=",".join(SYNTHETIC_VARIANTS),
                   help=f"comma-separated subset of: {', '.join(SYNTHETIC_VARIANTS)}")  # fmt: skip
    s.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel processes (default 2)")
    s.add_argument("--scatter-seed", type=int, default=0, help="seed whose features are drawn (Fig. 2 style)")
    s.add_argument("--report-only", action="store_true",
                   help="rewrite report.json / REPORT.md from the finished runs without training the others")  # fmt: skip
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (e.g. n_train=2000 for a quick look)")  # fmt: skip
    from . import repro_clustering, repro_fashion, repro_table

    repro_fashion.add_parser(sub)
    repro_clustering.add_parser(sub)
    repro_table.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv[1:]
    if args.what == "synthetic":
        return synthetic(args)
    from . import repro_clustering, repro_fashion, repro_table

    if args.what == "fashion":
        return repro_fashion.run(args)
    if args.what == "clustering":
        return repro_clustering.run(args)
    return repro_table.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
