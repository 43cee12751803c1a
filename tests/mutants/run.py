"""`make mutants`: apply each curated mutant (tests/mutants/mutants.py) to a scratch copy of the
working tree, run the tests that must catch it, and print the table (every mutant must be
killed). Not part of `make test`: it takes minutes (C++ mutants rebuild kmgan_ext._C).

    python tests/mutants/run.py                  # all, table to stdout
    python tests/mutants/run.py --kind python triton --out mutants.md
    python tests/mutants/run.py --only cpu-assign-no-exact-recheck
    python tests/mutants/run.py --list

The scratch tree (default /tmp/kmgan_ext_mutants) is a copy of the files git knows here
(tracked and untracked-but-not-ignored) plus the built kmgan_ext/_C*.so; it is kept between
runs so that C++ mutants rebuild incrementally (ninja recompiles the edited file only). Tests
run there with PYTHONPATH pointing at it, so they import the mutated package, never this one
(checked before the first mutant). Each mutant is first looked up exactly once in its file (a
snippet that moved is "stale", reported, never skipped), and the listed tests are first run
on the unmutated tree: a mutant counts as killed only when tests that pass there fail on it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from mutants import MUTANTS  # noqa: E402

KINDS = ("python", "triton", "cpp", "cuda-emulated")


def _files(root: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and os.path.isfile(os.path.join(root, f))]


def sync(root: str, scratch: str) -> None:
    """Make scratch a copy of root's sources and built extension (build/ there is kept)."""
    os.makedirs(scratch, exist_ok=True)
    for rel in _files(root):
        src, dst = os.path.join(root, rel), os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
    for name in os.listdir(os.path.join(root, "kmgan_ext")):
        if name.startswith("_C") and name.endswith(".so"):
            shutil.copy2(os.path.join(root, "kmgan_ext", name), os.path.join(scratch, "kmgan_ext", name))
    # Installed, kernels/ is the subpackage kmgan_ext.kernels (setup.py's package_dir); on
    # PYTHONPATH it has to sit inside the package to be found there.
    link = os.path.join(scratch, "kmgan_ext", "kernels")
    if not os.path.islink(link):
        if os.path.exists(link):
            shutil.rmtree(link)
        os.symlink(os.path.join("..", "kernels"), link)


def env_for(scratch: str) -> dict:
    env = dict(os.environ, PYTHONPATH=scratch + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("KMGAN_EXT_NO_CUDA", "1")
    env.setdefault("MAX_JOBS", "1")
    return env


def check_isolation(scratch: str) -> None:
    code = "import kmgan_ext, kmgan_ext.kernels as k; print(kmgan_ext.__file__); print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env_for(scratch), check=True,
                         capture_output=True, text=True).stdout.split()
    real = os.path.realpath(scratch)
    for path in out:
        if not os.path.realpath(path).startswith(real + os.sep):
            sys.exit(f"the scratch tree does not import its own copy: {path} (expected under {scratch})")


def build(scratch: str) -> tuple[bool, str]:
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-q"]
    p = subprocess.run(["nice"] + cmd, cwd=scratch, env=env_for(scratch), capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr)[-3000:]


def run_tests(scratch: str, tests: list[str], timeout: float) -> tuple[int, str, float]:
    cmd = ["nice", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=scratch, env=env_for(scratch), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.time() - t0
    tail = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    return p.returncode, tail[-1] if tail else "", time.time() - t0


def forms(m: dict) -> tuple[list[str], list[str]]:
    """The mutant's olds and news as lists (a single snippet is a list of one)."""
    olds = m["old"] if isinstance(m["old"], list) else [m["old"]]
    news = m["new"] if isinstance(m["new"], list) else [m["new"]]
    return olds, news


def form_in(text: str, m: dict) -> tuple[str, str] | None:
    """The first (old, new) whose old occurs exactly once in text; None: the mutant is stale."""
    for old, new in zip(*forms(m)):
        if text.count(old) == 1:
            return old, new
    return None


def apply(scratch: str, m: dict) -> str | None:
    """Write the mutant into scratch; the original text, or None when the snippet is stale."""
    path = os.path.join(scratch, m["file"])
    with open(path) as f:
        text = f.read()
    found = form_in(text, m)
    if found is None:
        return None
    with open(path, "w") as f:
        f.write(text.replace(*found))
    return text


def restore(scratch: str, m: dict, text: str) -> None:
    with open(os.path.join(scratch, m["file"]), "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--only", nargs="+", help="mutant names")
    ap.add_argument("--scratch", default=os.path.join("/tmp", "kmgan_ext_mutants"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)

    chosen = [m for m in MUTANTS if m["kind"] in args.kind and (not args.only or m["name"] in args.only)]
    if args.only and len(chosen) != len(args.only):
        sys.exit(f"unknown mutant in {args.only}; see --list")
    # Rebuilds last: a Python or Triton mutant must run against the unmutated _C.
    chosen.sort(key=lambda m: m["kind"] == "cpp")
    if args.list:
        for m in chosen:
            print(f"{m['name']:40s} {m['kind']:8s} {m['file']}: {m['why']}")
        return 0

    sync(ROOT, args.scratch)
    check_isolation(args.scratch)
    if any(m["kind"] == "cpp" for m in chosen):
        ok, log = build(args.scratch)  # the unmutated _C from these sources (incremental)
        if not ok:
            sys.exit("the unmutated tree does not build:\n" + log)
    rows = []
    # Every baseline first, while the tree (and its _C) is unmutated: a C++ mutant's build
    # stays in place after its source is restored, until the next build.
    baseline: dict[tuple, str] = {}
    for m in chosen:
        key = tuple(m["tests"])
        if not args.no_baseline and key not in baseline:
            rc, last, _ = run_tests(args.scratch, m["tests"], args.timeout)
            baseline[key] = "ok" if rc == 0 else f"FAILS UNMUTATED ({last})"
            print(f"baseline {' '.join(key)}: {baseline[key]}", file=sys.stderr, flush=True)
    for m in chosen:
        key = tuple(m["tests"])
        result, detail, secs = "", "", 0.0
        text = apply(args.scratch, m)
        if text is None:
            result, detail = "stale", "snippet not found exactly once: update tests/mutants/mutants.py"
        elif baseline.get(key, "ok") != "ok":
            restore(args.scratch, m, text)
            result, detail = "invalid", baseline[key]
        else:
            built = True
            if m["kind"] == "cpp":
                built, log = build(args.scratch)
                if not built:
                    result, detail = "invalid", "does not compile: " + log.strip().splitlines()[-1][:120]
            if built:
                rc, detail, secs = run_tests(args.scratch, m["tests"], args.timeout)
                result = {0: "NO (survived)", -1: "timeout"}.get(rc, "yes")
            restore(args.scratch, m, text)
        rows.append((m, result, detail, secs))
        print(f"{m['name']}: {result} ({detail}) {secs:.0f}s", file=sys.stderr, flush=True)
    if any(m["kind"] == "cpp" for m in chosen):
        build(args.scratch)  # leave the scratch _C unmutated for the next run

    lines = ["| mutant | kind | file | tests run | killed | pytest's last line |", "|---|---|---|---|---|---|"]
    for m, result, detail, secs in rows:
        tests = " ".join(m["tests"])
        lines.append(f"| {m['name']} | {m['kind']} | {m['file']} | `{tests}` | {result} | {detail} ({secs:.0f} s) |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0 if all(r == "yes" for _, r, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
