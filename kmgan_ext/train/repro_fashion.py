"""``python -m kmgan_ext.train.reproduce fashion``: the paper's Fig. 5c (section 4.3).

Trains KM-GAN and DCGAN on Fashion-MNIST (the ``fashion`` config: DCGAN networks, d_round
10,000, clip box [-1, 1]), trains the project's 3-layer CNN classifier on the 60,000 training
images (its test accuracy on the 10,000 test images is stated; the paper's had 91%),
classifies ``--samples`` generated images of each model, and writes DIR/report.json and
DIR/REPORT.md: the class histograms side by side with their distance from uniform (largest and
smallest share, chi-square and KL to uniform). The paper: every class ~10%, "Shirt" 7.0%.

The paper's budget (24 epochs of 70,000 images) needs a GPU; ``--epochs`` and ``--n-train``
give a reduced one (the report states epochs and images seen). Resumable: a finished model is
not retrained, an interrupted one resumes from its newest checkpoint.
"""
from __future__ import annotations

import json
import os
import time

MODELS = ("kmgan", "dcgan")


def add_parser(sub) -> None:
    s = sub.add_parser("fashion", help="Fig. 5c: class histogram of generated Fashion-MNIST images")
    s.add_argument("--out", required=True, help="result folder (rerun to continue)")
    s.add_argument("--epochs", type=int, default=24, help="epochs per model (paper: 24)")
    s.add_argument("--n-train", type=int, default=0, help="training images (0 = all 70,000 as the paper)")
    s.add_argument("--samples", type=int, default=5000, help="generated images classified per model (paper: 5,000)")
    s.add_argument("--classifier-epochs", type=int, default=5)
    s.add_argument("--classifier-n-train", type=int, default=0, help="0 = all 60,000 training images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-root", default="", help="idx files (default: Debian's dataset-fashion-mnist)")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for both models")  # fmt: skip


def _train_or_resume(model: str, run_dir: str, overrides: dict) -> dict:
    from .checkpoint import list_checkpoints
    from .config import load_config
    from .trainer import resume, train

    summary = os.path.join(run_dir, "summary.json")
    if os.path.isfile(summary):
        with open(summary) as f:
            s = json.load(f)
        if s.get("status") == "finished":
            return s  # done: not retrained
    if list_checkpoints(os.path.join(run_dir, "checkpoints")):
        mutable = {k: v for k, v in overrides.items() if k in ("epochs", "progress", "tensorboard")}
        return resume(run_dir, mutable)
    cfg = load_config("fashion", {**overrides, "model": model})
    return train(cfg, run_dir, overwrite=True)


def run(args) -> int:
    from .config import parse_set
    from .fig5c import PAPER, compare

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".gitignore"), "w") as f:
        f.write("runs/*/checkpoints/\nruns/*/tensorboard/\nclassifier.pt\n")
    overrides = {
        "epochs": args.epochs,
        "n_train": args.n_train,
        "seed": args.seed,
        "data_root": args.data_root,
        "fashion_hist": False,  # one classifier for both models, below
        "progress": False,
        "tensorboard": False,
        **parse_set(args.sets),
    }
    t0 = time.perf_counter()
    runs = {}
    for model in MODELS:
        print(f"training {model} ({args.epochs} epochs) ...", flush=True)
        runs[model] = _train_or_resume(model, os.path.join(out, "runs", model), overrides)
    res = compare(
        [os.path.join(out, "runs", m) for m in MODELS], out, samples=args.samples,
        classifier_epochs=args.classifier_epochs, data_root=args.data_root, device=runs["kmgan"]["device"],
        seed=args.seed, classifier_n_train=args.classifier_n_train,
    )  # fmt: skip
    batch = {}
    for m in MODELS:
        with open(os.path.join(out, "runs", m, "config.json")) as f:
            batch[m] = json.load(f)["batch_size"]
    rep = {
        "experiment": "Fashion-MNIST class histogram (paper section 4.3, Fig. 5c)",
        "command": "python -m kmgan_ext.train.reproduce fashion " + " ".join(args.argv),
        "paper": PAPER,
        "budget": {
            m: {"epochs": runs[m]["epochs"], "steps": runs[m]["steps"], "n_train": runs[m]["n_train"],
                "images_seen": runs[m]["steps"] * batch[m], "train_seconds": runs[m]["seconds"]}
            for m in MODELS
        },  # fmt: skip
        "classifier": res["classifier"],
        "n_generated": args.samples,
        "histograms": res["runs"],
        "figure": os.path.basename(res["figure"]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    write_markdown(rep, os.path.join(out, "REPORT.md"))
    print(f"report: {os.path.join(out, 'REPORT.md')}")
    return 0


def write_markdown(rep: dict, path: str) -> None:
    c = rep["classifier"]
    lines = [
        "# Fashion-MNIST Fig. 5c: report",
        "",
        f"Generated by `{rep['command']}` (do not edit by hand).",
        "",
        f"- classifier: the project's 3-layer CNN, {c['epochs']} epochs on {c['n_train']:,} training images; "
        f"test accuracy {c['test_acc']:.4f} on {c['n_test']:,} test images (the paper's: 0.91)",
        f"- {rep['n_generated']:,} generated images per model classified",
    ]
    for m, b in rep["budget"].items():
        lines.append(f"- {m}: {b['epochs']} epochs, {b['steps']:,} steps, {b['images_seen']:,} images seen "
                     f"(of {b['n_train']:,} training images), {b['train_seconds']:.0f} s training")  # fmt: skip
    names = list(next(iter(rep["histograms"].values()))["fractions"])
    models = list(rep["histograms"])
    lines += ["", "| class | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{100 * rep['histograms'][m]['fractions'][n]:.1f}%" for m in models) + " |")
    for key, label in (("max_share", "largest share"), ("min_share", "smallest share")):
        lines.append(f"| {label} | " + " | ".join(f"{100 * rep['histograms'][m][key]:.1f}%" for m in models) + " |")
    for key, label, fmt in (("max_min_ratio", "largest / smallest", "{:.2f}"), ("chi2_uniform", "chi-square vs uniform", "{:.1f}"),
                            ("chi2_p", "chi-square p", "{:.3g}"), ("kl_to_uniform", "KL to uniform (nats)", "{:.4f}")):  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(fmt.format(rep["histograms"][m][key]) for m in models) + " |")
    lines += ["", f"![Fig. 5c]({rep['figure']})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
