"""Command line of the trainer (also the ``kmgan-train`` console script).

    python -m kmgan_ext.train --config NAME_OR_PATH --out DIR [--set key=value ...]
    python -m kmgan_ext.train --resume DIR [--set key=value ...]
    python -m kmgan_ext.train --config cifar10 --sweep table4_clip --out DIR [--set ...]
    python -m kmgan_ext.train --list

The reproduction of the paper's claims (several seeds, reports, REPRODUCTION.md) is
``python -m kmgan_ext.train.reproduce`` (reproduce.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import CONFIGS, DEFAULTS, MODELS, SWEEPS, ConfigError, load_config, parse_set


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kmgan_ext.train",
        description="Train KM-GAN (Algorithm 1), reduced KM-GAN, generalized KM-GAN, DCGAN, GM-GAN or slcGAN.",
        epilog="built-in configs: " + ", ".join(CONFIGS) + "; sweeps: " + ", ".join(SWEEPS) + ". "
        "The paper's claims over several seeds, with a report: python -m kmgan_ext.train.reproduce "
        "{synthetic,fashion,table} --help",
    )
    p.add_argument("--config", help="built-in config name or a JSON file of keys")
    p.add_argument("--out", help="run folder (created; an existing run there is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in --out and start a fresh one there")  # fmt: skip
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable); --list shows the keys")  # fmt: skip
    p.add_argument("--sweep", choices=sorted(SWEEPS),
                   help="run one of the paper's sweeps (Tables 4, 5, 8) into OUT/<key>=<value>; its base config "
                        "is the paper's unless --config names another")  # fmt: skip
    p.add_argument("--list", action="store_true", help="print the config keys, configs and sweeps")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (same as --set progress=false); the run summary is still printed")  # fmt: skip
    return p


def _print_summary(s: dict | None, out: str) -> None:
    if s is None:  # not rank 0
        return
    keys = ("status", "epochs", "steps", "seconds", "feature_acc", "feature_nmi", "center_acc", "center_nmi", "cluster_acc", "cluster_nmi",
            "center_rank_max_abs_diff")  # fmt: skip
    print(f"run folder: {os.path.abspath(out)}")
    print("  " + "  ".join(f"{k}={s[k]:.4g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys if k in s))
    for name, path in s.get("figures", {}).items():
        print(f"  figure {name}: {path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .dist import CollectiveError
    from .trainer import RunExistsError, resume, train

    try:
        overrides = parse_set(args.sets)
        if args.quiet:
            overrides["progress"] = False
        if args.list:
            print("keys (default):")
            for k, v in sorted(DEFAULTS.items()):
                print(f"  {k} = {v!r}")
            print("models (--set model=NAME):")
            for name, what in MODELS.items():
                print(f"  {name}: {what}")
            print("configs:", json.dumps(CONFIGS, indent=2))
            print("sweeps:", json.dumps(SWEEPS))
            return 0
        if args.resume:
            if args.config or args.sweep or args.overwrite:
                raise ConfigError("--resume takes the run folder's own config; drop --config/--sweep/--overwrite")
            _print_summary(resume(args.resume, overrides), args.resume)
            return 0
        if args.sweep:
            # the sweep's own base config (the paper's) unless --config names another
            base, key, values = SWEEPS[args.sweep]
            if not args.out:
                raise ConfigError("--sweep needs --out DIR")
            results = {}
            for v in values:
                out = os.path.join(args.out, f"{key}={v}")
                s = train(load_config(args.config or base, {**overrides, key: v}), out, overwrite=args.overwrite)
                _print_summary(s, out)
                results[f"{key}={v}"] = s
            if results and all(r is not None for r in results.values()):
                with open(os.path.join(args.out, "sweep.json"), "w") as f:
                    json.dump({"sweep": args.sweep, "paper_base": base, "runs": results}, f, indent=2)
            return 0
        if not args.config or not args.out:
            raise ConfigError("give --config NAME_OR_PATH and --out DIR (or --resume DIR)")
        cfg = load_config(args.config, overrides)
        _print_summary(train(cfg, args.out, overwrite=args.overwrite), args.out)
        return 0
    except (ConfigError, RunExistsError, CheckpointError) as e:
        print(f"kmgan-train: error: {e}", file=sys.stderr)
        return 2
    except CollectiveError as e:
        print(f"kmgan-train: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
