"""Build kmgan_ext as a user gets it and test it outside the source tree (`make test-wheel`).

    python tests/wheel/check_wheel.py [--torch link|pip] [--with-cuda] [--skip-train] [--work DIR] [-v]

1. an sdist of the source tree, then a wheel built from that sdist (so a file missing from the
   sdist fails the build). CPU kernels only unless --with-cuda: nvcc would add minutes, and
   this step checks the packaging, not the kernels (the test suite checks those).
2. a fresh virtual environment (no pip, no source tree, no PYTHONPATH) holding only torch and
   the wheel's declared dependencies. torch is the pinned one of the running environment
   (.venv), linked in by a .pth file (--torch link, the default: a pip install of torch and
   its CUDA libraries writes 4.4 GB and took 110 s on the 2-core CI machine); --torch pip
   installs it instead. Versions are constrained by requirements.txt.
3. `pip install <wheel>`: tests/wheel/smoke.py (every public op once on CPU against the
   reference, the optional-dependency messages), `kmgan-train --list`, `python -m kmgan_ext`.
4. `pip install <wheel>[train]`: the smoke test again, then the synthetic trainer for a few steps.

Prints one line per step; on a failure, the failing command's output.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN_SETS = ["n_train=512", "epochs=1", "max_steps=8", "fake_pool=256", "log_every=4", "feature_batch=256"]


class Failed(Exception):
    pass


def run(cmd: list[str], *, cwd: str, env: dict | None = None, verbose: bool = False) -> str:
    t = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # pip warns once per missing page of a file:// index: noise in every log
    text = "\n".join(l for l in t.stdout.splitlines() if not l.startswith("WARNING: Location 'file:"))
    if verbose:
        print(text)
    if t.returncode != 0:
        raise Failed(f"`{' '.join(cmd)}` exited with {t.returncode}:\n{text[-6000:]}")
    return text


def step(name: str, fn):
    t0 = time.monotonic()
    out = fn()
    print(f"wheel: {name} ({time.monotonic() - t0:.0f} s)", flush=True)
    return out


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def torch_closure() -> list[importlib.metadata.Distribution]:
    """torch and every distribution it requires, extras included (torch asks for
    cuda-toolkit[cudart, ...], whose extras require the nvidia-* libraries); markers are
    evaluated for this interpreter."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [("torch", "")]
    while todo:
        name, extra = todo.pop()
        name = name.lower().replace("_", "-")
        if (name, extra) in done:
            continue
        done.add((name, extra))
        dist = seen.get(name) or importlib.metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = _requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return list(seen.values())


def link_torch(layer: str, site: str) -> str:
    """Symlink torch's distributions (their top-level files) into ``layer``, put ``layer`` on
    the fresh environment's path with a .pth file; the torch version linked."""
    os.makedirs(layer)
    for dist in torch_closure():
        root = str(dist.locate_file(""))
        tops = {str(f).replace("\\", "/").split("/")[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            if top.endswith(".pth"):
                continue
            src, dst = os.path.join(root, top), os.path.join(layer, top)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    with open(os.path.join(site, "torch_from_build_env.pth"), "w") as f:
        f.write(layer + "\n")
    return importlib.metadata.version("torch")


def check_wheel_contents(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    need = ["kmgan_ext/__init__.py", "kmgan_ext/_version.py", "kmgan_ext/kernels/__init__.py",
            "kmgan_ext/train/__main__.py", "kmgan_ext/seeding/__init__.py"]  # fmt: skip
    missing = [n for n in need if n not in names]
    if not any(n.startswith("kmgan_ext/_C") and n.endswith(".so") for n in names):
        missing.append("kmgan_ext/_C*.so")
    stray = [n for n in names if n.split("/")[0] not in ("kmgan_ext",) and ".dist-info/" not in n]
    if missing or stray:
        raise Failed(f"wheel {os.path.basename(wheel)}: missing {missing}, unexpected {stray}")
    for field in ("Requires-Dist: torch", "Requires-Dist: numpy", "Provides-Extra: train"):
        if field not in meta:
            raise Failed(f"wheel METADATA lacks {field!r}:\n{meta[:2000]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch", choices=("link", "pip"), default="link")
    p.add_argument("--with-cuda", action="store_true", help="compile the CUDA kernels into the wheel too")
    p.add_argument("--skip-train", action="store_true", help="skip the [train] install and trainer run")
    p.add_argument("--reuse-wheel", action="store_true", help="use the wheel already in WORK/dist (with --work)")
    p.add_argument("--work", help="work folder (default: a temporary one, removed on success)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="kmgan_wheel_")
    os.makedirs(work, exist_ok=True)
    dist_dir, venv = os.path.join(work, "dist"), os.path.join(work, "venv")
    reuse = a.reuse_wheel and glob.glob(os.path.join(dist_dir, "*.whl"))
    for path in ([] if reuse else [dist_dir]) + [venv, os.path.join(work, "torch_layer"), os.path.join(work, "run")]:
        shutil.rmtree(path, ignore_errors=True)
    t0 = time.monotonic()
    v = a.verbose
    build_env = dict(os.environ)
    if not a.with_cuda:
        build_env["KMGAN_EXT_NO_CUDA"] = "1"
    try:
        if not reuse:
            egg_base = os.path.join(work, "egg_info")  # not kmgan_ext.egg-info in the source tree
            os.makedirs(egg_base, exist_ok=True)
            run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", egg_base, "sdist", "-d", dist_dir],
                cwd=REPO, env=build_env, verbose=v)  # fmt: skip
            (sdist,) = glob.glob(os.path.join(dist_dir, "*.tar.gz"))
            kind = "CPU and CUDA kernels" if a.with_cuda else "CPU kernels only, KMGAN_EXT_NO_CUDA=1"
            step(
                f"sdist {os.path.basename(sdist)}, wheel built from it ({kind})",
                lambda: run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", sdist,
                             "-w", dist_dir], cwd=work, env=build_env, verbose=v),  # fmt: skip
            )
        (wheel,) = glob.glob(os.path.join(dist_dir, "*.whl"))
        check_wheel_contents(wheel)

        # the fresh environment: nothing of this one's but (with --torch link) torch
        env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
        env["KMGAN_EXT_SOURCE_TREE"] = REPO
        env["KMGAN_EXT_PROGRESS"] = "lines"
        py = os.path.join(venv, "bin", "python")
        pip = [sys.executable, "-m", "pip", "--python", py]
        constraints = ["-c", os.path.join(REPO, "requirements.txt")]

        def make_venv():
            run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, verbose=v)
            site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work, env=env)
            site = site.strip().splitlines()[-1]
            if a.torch == "link":
                return f"torch {link_torch(os.path.join(work, 'torch_layer'), site)} linked from {sys.prefix}"
            run(pip + ["install", "-q", "torch"] + constraints, cwd=work, env=env, verbose=v)
            return "torch installed by pip"

        how = step("fresh venv", make_venv)
        print(f"         {how}")

        def install(spec):
            before = set(run(pip + ["list", "--format=freeze"], cwd=work, env=env).split())
            run(pip + ["install", "-q", spec] + constraints, cwd=work, env=env, verbose=v)
            run(pip + ["check"], cwd=work, env=env, verbose=v)
            after = set(run(pip + ["list", "--format=freeze"], cwd=work, env=env).split())
            return sorted(x.split("==")[0] for x in after - before)

        added = step(f"pip install {os.path.basename(wheel)}", lambda: install(wheel))
        print(f"         added: {', '.join(added)}")
        smoke = os.path.join(HERE, "smoke.py")
        out = step("smoke test: every op on CPU vs reference, extras messages, kmgan-train --list, "
                   "python -m kmgan_ext", lambda: run([py, smoke], cwd=work, env=env))  # fmt: skip
        if v:
            print(out)
        if not a.skip_train:
            added = step("pip install <wheel>[train]", lambda: install(wheel + "[train]"))
            print(f"         added: {', '.join(added)}")
            step("smoke test with [train]", lambda: run([py, smoke, "--train"], cwd=work, env=env, verbose=v))
            train = [os.path.join(venv, "bin", "kmgan-train"), "--config", "synthetic", "--out",
                     os.path.join(work, "run"), "--quiet"] + [x for s in TRAIN_SETS for x in ("--set", s)]  # fmt: skip
            out = step("kmgan-train --config synthetic, 8 steps", lambda: run(train, cwd=work, env=env, verbose=v))
            if not os.path.isfile(os.path.join(work, "run", "summary.json")) or "status=max_steps" not in out:
                raise Failed(f"the trainer wrote no summary.json / did not stop at max_steps:\n{out}")
    except Failed as e:
        print(f"wheel: FAILED after {time.monotonic() - t0:.0f} s (work folder kept: {work})\n{e}", flush=True)
        return 1
    print(f"wheel: passed in {time.monotonic() - t0:.0f} s", flush=True)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
