"""Run the benchmarks and write one JSON, one markdown table and one PNG per op.

    python bench/run_all.py [--quick | --tiny] [--out DIR] [--ops a,b] [--device cpu|cuda]
                            [--budget-s SECONDS] [--no-compile] [--threads N] [--quiet]

--quick   this CPU in a few minutes (the paper's shapes and the CPU targets)
--tiny    seconds, tiny shapes, no torch.compile: what tests/test_bench.py runs
(neither) the full suite for the device: scale sweeps on a GPU, larger CPU shapes
--budget-s  cases that would start after this many seconds are written as skipped rows

Files in --out (default bench/results/<cpu|cuda>): results.json (device, versions, commit,
date, roofline, rows), results.md (the tables), <op>.png (median time per shape and provider,
log scale; only rows whose check passed are drawn).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import _harness as H  # noqa: E402

# --ops key -> module. A module may write rows of several ops (bench_minibatch_update writes
# minibatch_update and minibatch_step).
MODULES = {
    "assign": "bench_assign",
    "assign_batched": "bench_assign_batched",
    "assign_topk": "bench_assign_topk",
    "soft_assign": "bench_soft_assign",
    "minibatch_update": "bench_minibatch_update",
    "center_loss": "bench_center_loss",
    "assigned_distance": "bench_assigned_distance",
    "pairwise_l1": "bench_pairwise_l1",
    "kmeans_plusplus": "bench_kmeans_plusplus",
    "train_step": "bench_train_step",
    "vector_quantizer": "bench_vector_quantizer",
    "center_loss_layer": "bench_center_loss_layer",
    "estimators": "bench_estimators",
}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--ops", default=",".join(MODULES))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument(
        "--threads", type=int, default=None,
        help="threads of every provider: torch, faiss OpenMP, BLAS/OpenMP via threadpoolctl (default: torch's)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-op and per-case progress lines on stderr")
    args = p.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in MODULES]
    if unknown:
        p.error(f"unknown ops {unknown}; choose from {list(MODULES)}")
    args.ops = ops
    return args


def main(argv=None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # One thread setting for every provider (torch, faiss's OpenMP, BLAS/OpenMP pools).
    threads = H.set_threads(args.threads)
    out = args.out or os.path.join(HERE, "results", device.type)
    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    progress = (lambda *a: None) if args.quiet else H.eprint  # a crash's traceback still prints; a failed case's error is in its row
    ctx = H.Ctx(
        device=device,
        quick=args.quick,
        tiny=args.tiny,
        compile=not (args.no_compile or args.tiny),
        deadline=None if args.budget_s is None else t0 + args.budget_s,
        log=progress,
    )
    progress(f"bench: device {device}, {'tiny' if args.tiny else 'quick' if args.quick else 'full'}, ops {args.ops}")
    progress(f"bench: threads {threads}")
    # before the roofline and the first timing: the run starts with the machine's cores
    start = H.wait_for_cores(log=progress) if device.type == "cpu" and not args.tiny else None
    ctx.roof = H.roofline_for(device, small=args.tiny)
    progress(f"bench: roofline {ctx.roof.bandwidth_gbps:.1f} GB/s (LLC {ctx.roof.cache_gbps}), {ctx.roof.gflops} GFLOP/s ({ctx.roof.source})")
    meta = H.run_metadata(ctx, {k: v for k, v in vars(args).items()}, start)
    rows: list[dict] = []
    for i, key in enumerate(args.ops):
        t = time.monotonic()
        if args.budget_s is not None:
            # Each op gets an equal share of what is left, so a slow first op cannot starve
            # the others (an op's cases run in priority order: paper shape and targets first).
            ctx.deadline = t + max(0.0, t0 + args.budget_s - t) / (len(args.ops) - i)
        progress(f"bench: {key}")
        try:
            mod = importlib.import_module(MODULES[key])
            rows += mod.run(ctx)
        except Exception as e:  # one broken benchmark must not lose the others' rows
            H.eprint(traceback.format_exc())
            r = H.empty_row(key, {}, "(benchmark)", "-")
            r["error"] = f"benchmark crashed: {type(e).__name__}: {e}"
            rows.append(r)
        progress(f"bench: {key} done in {time.monotonic() - t:.0f} s")
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["load_avg_end"] = H._loadavg()
    meta["core_scaling_end"] = H.core_scaling() if not ctx.cuda else None
    result = {**meta, "rows": rows}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")
    md = markdown(result)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    for op in dict.fromkeys(r["op"] for r in rows):
        try:
            plot(result, op, os.path.join(out, f"{op}.png"))
        except Exception as e:
            H.eprint(f"bench: no plot for {op}: {type(e).__name__}: {e}")
    print(md)
    H.eprint(f"bench: wrote {out}/results.json, results.md and the plots in {meta['elapsed_s']} s")
    return result


# --------------------------------------------------------------------------- markdown
def shape_str(shape: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items()) if shape else "-"


def _num(v, digits=4) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return f"{v:.{digits}g}"


def _si(v) -> str:
    if v is None:
        return ""
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {p}"
    return f"{v:.3g} "


def _status(r: dict) -> str:
    if r.get("absent"):
        return "absent: " + r["absent"]
    if r.get("skipped"):
        return "skipped: " + r["skipped"]
    if r.get("error"):
        return "error: " + r["error"]
    if r.get("correct") is False and r.get("check"):
        return "WRONG: " + r["check"]
    return r.get("note") or ""


def _threads(t: dict | None) -> str:
    if not t:
        return "not recorded"
    pools = t.get("threadpools")
    pools = "; ".join(pools) if isinstance(pools, list) else pools
    return f"torch {t.get('torch')}, faiss OpenMP {t.get('faiss_omp')}, BLAS/OpenMP pools: {pools}"


def _cell(s: str) -> str:
    return str(s).replace("|", "/").replace("\n", " ")


def _core_scaling_line(result: dict) -> list[str]:
    """How many of its cores the machine gave the run, at start and end (_metadata.core_scaling)."""
    runs = H.core_scaling_runs(result)
    if not runs:
        return []
    threads = runs[0][1]["threads"]
    waited = {when: f" (after waiting {cs['waited_s']:g} s for the cores)" if cs.get("waited_s", 0) >= 1 else ""
              for when, cs in runs}
    parts = [f"{cs['gflops_1']} / {cs['gflops_all']} GFLOP/s ({cs['ratio']}x) at {when}{waited[when]}"
             for when, cs in runs]
    warn = (f" (below {0.75 * threads:.1f}x: the machine did not give the run all its {threads} cores, and parallel "
            "timings are slower for that)") if min(cs["ratio"] for _, cs in runs) < 0.75 * threads else ""
    return [f"- sgemm 1024^3 on 1 / {threads} threads: " + ", ".join(parts) + warn]


def markdown(result: dict) -> str:
    dev = result["device"]
    roof = result.get("roofline") or {}
    lines = [
        f"# kmgan_ext benchmarks: {dev.get('name')}",
        "",
        f"- date {result['date']}, commit `{result['commit']}`, {result['elapsed_s']} s",
        f"- torch {result['torch']}, triton {result['triton']}, faiss {result['faiss']}, "
        f"scikit-learn {result['sklearn']}, python {result['python']}",
        f"- timing: {result['timing']}",
        f"- threads of every provider: {_threads(result.get('threads'))}",
        f"- 1-min load average at start / end: {result.get('load_avg_start')} / {result.get('load_avg_end')}"
        + (
            f" (above the {dev.get('cores')} cores: CPU timings are distorted by other processes)"
            if dev.get("cores") and max(result.get("load_avg_start") or 0, result.get("load_avg_end") or 0) > dev["cores"]
            else ""
        ),
        *_core_scaling_line(result),
        f"- roofline: {_num(roof.get('bandwidth_gbps'))} GB/s beyond the caches"
        + (f", {_num(roof.get('cache_gbps'))} GB/s for data within the {(roof.get('cache_bytes') or 0) >> 20} MB LLC"
           if roof.get("cache_gbps") else "")
        + ", "
        + ", ".join(f"{k} {_num(v)} GFLOP/s" for k, v in (roof.get("gflops") or {}).items())
        + f" ({roof.get('source')})",
        "- kmgan_ext backends: "
        + ", ".join(f"{b} ({'yes' if why is None else 'no'})" for b, why in result["available_backends"].items()),
        "- `x torch`: speedup against the naive-torch baseline named under each table; "
        "`correct`: the provider's answer was checked against kmgan_ext.reference before timing",
        "",
    ]
    rows = result["rows"]
    for op in dict.fromkeys(r["op"] for r in rows):
        ops_rows = [r for r in rows if r["op"] == op]
        bases = list(dict.fromkeys(r["baseline"] for r in ops_rows if r.get("baseline")))
        lines += [f"## {op}", "", "baseline of `x torch`: " + ", ".join(f"`{b}`" for b in bases)
                  + (" (the fastest plain-torch form of each case, named in the row)" if len(bases) > 1 else ""), ""]
        lines.append(
            "| shape | mode | provider | median ms | p20-p80 ms | correct | x torch | throughput "
            "| % roofline | peak MB | note |"
        )
        lines.append("|---|---|---|---:|---:|---|---:|---:|---:|---:|---|")
        # Absent and skipped providers are listed once under the table (every row of them
        # stays in results.json); the table holds what ran, wrong answers and errors included.
        not_run = [r for r in ops_rows if r["absent"] or r["skipped"]]
        for r in ops_rows:
            if r["absent"] or r["skipped"]:
                continue
            timed = r["median_ms"] is not None
            lines.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (
                        shape_str(r["shape"]),
                        r["mode"],
                        r["provider"],
                        _num(r["median_ms"]),
                        f"{_num(r['p20_ms'], 3)}-{_num(r['p80_ms'], 3)}" if timed else "",
                        "yes" if r["correct"] else "no",
                        (f"{r['speedup_vs_torch']:.2f}" + (f" (vs {r['baseline']})" if len(bases) > 1 else ""))
                        if r["speedup_vs_torch"] else "",
                        f"{_si(r['throughput'])}{r['throughput_unit']}" if r["throughput"] else "",
                        _num(r["pct_of_roofline"], 3),
                        _num(r["peak_mem_mb"], 3),
                        _status(r),
                    )
                )
                + " |"
            )
        lines.append("")
        reasons: dict = {}
        for r in not_run:
            key = (r["provider"], _status(r))
            reasons.setdefault(key, []).append(shape_str(r["shape"]))
        if reasons:
            lines.append("Not run:")
            lines.append("")
            n_shapes = len({shape_str(r["shape"]) for r in ops_rows})
            for (prov, why), shapes in reasons.items():
                shapes = list(dict.fromkeys(shapes))
                where = "" if len(shapes) == n_shapes else f" ({'; '.join(shapes)})"
                lines.append(f"- `{prov}`{where}: {why}")
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def plot(result: dict, op: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["op"] == op and r["median_ms"] and r["correct"]]
    if not rows:
        rows_any = [r for r in result["rows"] if r["op"] == op]
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{op}: no checked, timed rows in this run ({len(rows_any)} rows)", ha="center")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    modes = [m for m in ("full", "forward") if any(r["mode"] == m for r in rows)] or [rows[0]["mode"]]
    mode = modes[0]
    rows = [r for r in rows if r["mode"] == mode]
    shapes = list(dict.fromkeys(shape_str(r["shape"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(shapes) + 3) + 2.5, 4.5))
    for i, p in enumerate(providers):
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(shapes):
            r = next((r for r in rows if r["provider"] == p and shape_str(r["shape"]) == s), None)
            if r is None:
                continue
            xs.append(j + (i - (len(providers) - 1) / 2) * width)
            ys.append(r["median_ms"])
            lo.append(r["median_ms"] - r["p20_ms"])
            hi.append(r["p80_ms"] - r["median_ms"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=p, capsize=2)
    ax.set_yscale("log")
    ax.set_ylabel(f"median ms ({mode}; bars p20-p80)")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([s.replace(" ", "\n") for s in shapes], fontsize=7)
    ax.set_title(f"{op} on {result['device'].get('name')}\ncommit {result['commit'][:12]}, {result['date'][:10]}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
