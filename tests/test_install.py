"""Packaging and what a user sees: pip extras and the optional-import messages, the single
version, progress output by destination (bar / lines / off), show_config and the --quiet flags.
(The wheel itself is built and tested in a fresh environment by tests/wheel/check_wheel.py,
`make test-wheel`.)"""
import io
import json
import re
import os
import runpy
import struct
import sys

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import _optional, _progress, _show_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    return runpy.run_path(os.path.join(ROOT, "setup.py"))  # run_name != "__main__": no setup()


# ------------------------------------------------------------------ version and extras
def test_version_in_one_place(setup_py):
    assert setup_py["_version"]() == km.__version__
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert km.__version__ not in f.read()


def test_extras_layers(setup_py):
    extras = setup_py["_extras"]()
    assert {"faiss", "train", "bench", "test", "all"} <= set(extras)
    names = {e: {r.split(">")[0].split("=")[0] for r in reqs} for e, reqs in extras.items()}
    assert {"torchvision", "scipy", "scikit-learn", "matplotlib", "tensorboard", "tqdm"} <= names["train"]
    assert "faiss-cpu" in names["faiss"] and {"pytest"} <= names["test"]
    for extra, reqs in names.items():
        assert reqs <= names["all"], extra


def test_extras_are_pinned_in_requirements(setup_py):
    """Every package an extra names is pinned in requirements.txt, so CI tests them."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = {line.split("==")[0].strip().lower() for line in f if "==" in line and not line.startswith("#")}
    for req in setup_py["_extras"]()["all"]:
        assert req.split(">")[0].split("=")[0].lower() in pinned, req


def test_wheel_requires_the_torch_minor_it_was_built_with(setup_py):
    major, minor = torch.__version__.split(".")[:2]
    assert setup_py["_torch_requirement"]() == f"torch>={major}.{minor},<{major}.{int(minor) + 1}"


# ------------------------------------------------------------------ optional imports
def test_require_names_the_extra_for_a_missing_module():
    with pytest.raises(ImportError, match=r"kmgan_ext\[train\].*nosuchdist|nosuchdist.*kmgan_ext\[train\]") as e:
        _optional.require("kmgan_ext_no_such_module", extra="train", purpose="the test", pip="nosuchdist")
    assert "is not installed" in str(e.value) and "the test" in str(e.value)


def test_require_reports_a_broken_install(tmp_path, monkeypatch):
    (tmp_path / "kmgan_broken_dep.py").write_text("import kmgan_ext_missing_inner_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(_optional.MissingDependency, match="failed to import .*kmgan_ext_missing_inner_module"):
        _optional.require("kmgan_broken_dep", extra="bench")


def test_require_returns_the_module():
    assert _optional.require("json", extra="train") is json


def test_require_extra_lists_everything_missing(monkeypatch):
    monkeypatch.setitem(_optional.EXTRAS, "train", {"tqdm": "tqdm", "nosuch-a": "nosuch_a", "nosuch-b": "nosuch_b"})
    with pytest.raises(_optional.MissingDependency, match=r"nosuch-a, nosuch-b\. pip install 'kmgan_ext\[train\]'"):
        _optional.require_extra("train", "the trainer")
    monkeypatch.setitem(_optional.EXTRAS, "train", {"nosuch-a": "nosuch_a"})
    _optional.require_extra("train", "the trainer", ignore=("nosuch_a",))


def test_trainer_fails_first_naming_the_train_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(_optional.EXTRAS, "train", {"nosuch-a": "nosuch_a"})
    from kmgan_ext.train import train

    with pytest.raises(ImportError, match=r"kmgan_ext\[train\]"):
        train("synthetic", str(tmp_path / "run"), {"max_steps": 1})
    assert not os.path.exists(tmp_path / "run")  # nothing was started


def test_extract_features_needs_no_tqdm(monkeypatch):
    """progress=False used to import tqdm anyway (ModuleNotFoundError without it)."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "bar")  # even asked for, a bar needs tqdm
    net = torch.nn.Linear(4, 2)
    x = torch.randn(10, 4)
    for progress in (False, True):
        assert km.extract_features(net, x, batch_size=3, progress=progress).shape == (10, 2)


def test_faiss_backend_names_the_extra(monkeypatch):
    from kmgan_ext.seeding import _data

    monkeypatch.setattr(_data, "faiss_module", lambda: None)
    with pytest.raises(RuntimeError, match=r"kmgan_ext\[faiss\]"):
        km.kmeans(torch.randn(20, 3), 2, backend="faiss")
    with pytest.raises(RuntimeError, match=r"kmgan_ext\[faiss\]"):
        km.kmeans_plusplus(torch.randn(20, 3), 2, backend="faiss")


# ------------------------------------------------------------------ progress
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_mode_follows_the_output(monkeypatch):
    monkeypatch.delenv("KMGAN_EXT_PROGRESS", raising=False)
    assert _progress.mode_for(io.StringIO()) == "lines"
    assert _progress.mode_for(_Tty()) == "bar"
    assert _progress.mode_for(_Tty(), enabled=False) == "off"
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "off")
    assert _progress.mode_for(_Tty()) == "off"
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "lines")
    assert _progress.mode_for(_Tty()) == "lines"
    monkeypatch.setenv("KMGAN_EXT_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="KMGAN_EXT_PROGRESS"):
        _progress.mode_for(_Tty())


def test_progress_lines_in_a_log(monkeypatch):
    monkeypatch.delenv("KMGAN_EXT_PROGRESS", raising=False)
    monkeypatch.setenv("KMGAN_EXT_PROGRESS_INTERVAL", "1000")
    log = io.StringIO()
    with _progress.progress(500, desc="epoch 1/2", unit="steps", file=log) as p:
        for _ in range(500):
            p.update(1)
            p.set_postfix({"L_D": torch.tensor(0.123456), "n": 3})
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0]]  # one line for 500 steps
    assert log.getvalue().startswith("epoch 1/2: 500/500 steps in ") and "L_D=0.123 n=3" in log.getvalue()
    quiet = io.StringIO()
    with _progress.progress(5, desc="features", file=quiet, summary=False) as p:
        p.update(5)
    assert quiet.getvalue() == ""  # a short inner task says nothing
    monkeypatch.setenv("KMGAN_EXT_PROGRESS_INTERVAL", "0")
    every = io.StringIO()
    with _progress.progress(3, desc="d", file=every, summary=False) as p:
        for _ in range(3):
            p.update(1)
    assert len(every.getvalue().splitlines()) == 3  # 2 while running, 1 at the end
    monkeypatch.setenv("KMGAN_EXT_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="KMGAN_EXT_PROGRESS_INTERVAL"):
        _progress.progress(3, desc="d", file=io.StringIO())


def test_progress_bar_on_a_terminal_and_off(monkeypatch):
    monkeypatch.delenv("KMGAN_EXT_PROGRESS", raising=False)
    tty = _Tty()
    with _progress.progress(4, desc="bar", file=tty) as p:
        p.update(4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()
    off = _Tty()
    with _progress.progress(4, desc="x", file=off, enabled=False) as p:
        p.update(4)
        p.set_postfix({"a": torch.tensor(1.0)})
    assert off.getvalue() == ""


def test_trainer_log_has_one_line_per_epoch(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("KMGAN_EXT_PROGRESS", raising=False)
    from kmgan_ext.train import train

    sets = {"n_train": 256, "epochs": 2, "fake_pool": 128, "feature_batch": 128, "tensorboard": False, "sample_every": 0}
    train("synthetic", str(tmp_path / "run"), sets)
    err = capfd.readouterr().err  # pytest's capture is a file: not a terminal
    lines = [line for line in err.splitlines() if "epoch" in line]
    assert len(lines) == 2 and lines[0].startswith("kmgan epoch 1/2: 4/4 steps in "), err
    assert "\r" not in err


# ------------------------------------------------------------------ show_config
def _fatbin(entries):
    body = b""
    for kind, arch in entries:
        payload = b"\0" * 24
        header = struct.pack("<HHIQ", kind, 0x101, 64, len(payload)) + b"\0" * 12 + struct.pack("<I", arch)
        body += header.ljust(64, b"\0") + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_fatbin_archs(tmp_path):
    blob = b"junk" + _fatbin([(2, 80), (2, 90), (2, 80)]) + b"\x50\xed\x55\xba" + b"x" * 40 + _fatbin([(1, 90)])
    (tmp_path / "lib.so").write_bytes(blob)
    assert _show_config.fatbin_archs(str(tmp_path / "lib.so")) == {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}
    (tmp_path / "cpu.so").write_bytes(b"\x7fELF" + b"\0" * 100)
    assert _show_config.fatbin_archs(str(tmp_path / "cpu.so")) == {"sass": [], "ptx": []}


def _nvcc():
    import glob
    import shutil

    for home in [os.environ.get("CUDA_HOME")] + sorted(glob.glob("/usr/local/cuda*")):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="no nvcc")
def test_fatbin_archs_of_a_real_nvcc_build(tmp_path):
    """The fat binary layout assumed above, as nvcc writes it (SASS and PTX entries)."""
    import subprocess

    (tmp_path / "k.cu").write_text("__global__ void k(float* x) { x[threadIdx.x] += 1.f; }\n"
                                   "void launch(float* x) { k<<<1, 32>>>(x); }\n")  # fmt: skip
    gencode = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=compute_90"]
    subprocess.run([_nvcc(), "-shared", "-Xcompiler", "-fPIC", *gencode, "k.cu", "-o", "libk.so"], cwd=tmp_path,
                   check=True, capture_output=True)  # fmt: skip
    assert _show_config.fatbin_archs(str(tmp_path / "libk.so")) == {"sass": ["sm_80"], "ptx": ["compute_90"]}


def test_show_config_report():
    rep = _show_config.report()
    assert rep["versions"]["kmgan_ext"] == km.__version__ and rep["versions"]["torch"] == torch.__version__
    assert set(rep["backends (None = usable)"]) == set(km.BACKENDS)
    native = rep["native (kmgan_ext._C)"]
    assert native["loaded"] and native["cpu_kernels"]
    if native["cuda_kernels"]:
        in_binary = native["cuda_archs (in the binary)"]
        assert in_binary["sass"] or in_binary["ptx"], native
        recorded = native["cuda_archs (recorded)"]
        if isinstance(recorded, dict):  # the build's record and the binary agree
            assert recorded == in_binary, native
    assert rep["threads"]["torch.get_num_threads"] == torch.get_num_threads()
    assert "assign_avx2_fma_kernel" in rep["cpu"]


def test_show_config_reads_the_build_record(monkeypatch):
    """h1-cuda's record of the compiled architectures (_dispatch.compiled_cuda_archs)."""
    from kmgan_ext import _dispatch

    monkeypatch.setattr(_dispatch, "native_has_cuda", lambda: True)
    monkeypatch.setattr(_dispatch, "compiled_cuda_archs", lambda: (("80", "90"), ("90",)), raising=False)
    native = _show_config.report()["native (kmgan_ext._C)"]
    assert native["cuda_archs (recorded)"] == {"sass": ["sm_80", "sm_90"], "ptx": ["compute_90"]}
    assert _show_config._format(native["cuda_archs (recorded)"]) == "sm_80 (SASS), sm_90 (SASS), compute_90 (PTX)"


def test_show_config_without_the_extension(monkeypatch):
    from kmgan_ext import _dispatch

    monkeypatch.setattr(_dispatch, "_load_native", lambda: "kmgan_ext._C could not be loaded (test)")
    native = _show_config.report()["native (kmgan_ext._C)"]
    assert native["loaded"] is False and native["error"].endswith("(test)")
    out = io.StringIO()
    km.show_config(file=out)
    assert "could not be loaded (test)" in out.getvalue()


def test_show_config_prints_text_and_json(capsys):
    from kmgan_ext.__main__ import main

    km.show_config()
    text = capsys.readouterr().out
    for needle in ("kmgan_ext", "torch", "numpy", "triton", "faiss", "cpu_kernels", "get_num_threads"):
        assert needle in text, needle
    assert re.search(r"\n\s*reference\s+usable\n", text), "the reference backend's line"
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"]["kmgan_ext"] == km.__version__


# ------------------------------------------------------------------ --quiet
def test_trainer_quiet_turns_progress_off(monkeypatch, tmp_path):
    from kmgan_ext.train import __main__ as cli
    from kmgan_ext.train import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda cfg, out, **kw: seen.update(cfg) or None)
    assert cli.main(["--config", "synthetic", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["progress"] is False
    assert cli.main(["--config", "synthetic", "--out", str(tmp_path)]) == 0
    assert seen["progress"] is True


def test_bench_quiet(tmp_path, capfd):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import run_all
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    threads = torch.get_num_threads()
    try:
        run_all.main(["--tiny", "--ops", "pairwise_l1", "--quiet", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("bench: wrote")
    ], err
    assert (tmp_path / "results.json").exists()


# ------------------------------------------------------------------ the wheel check's own checks
def _check_wheel_module():
    sys.path.insert(0, os.path.join(ROOT, "tests", "wheel"))
    try:
        import check_wheel
    finally:
        sys.path.pop(0)
    return check_wheel


def test_wheel_contents_check(tmp_path):
    import zipfile

    cw = _check_wheel_module()
    files = ["kmgan_ext/__init__.py", "kmgan_ext/_version.py", "kmgan_ext/kernels/__init__.py",
             "kmgan_ext/train/__main__.py", "kmgan_ext/seeding/__init__.py", "kmgan_ext/_C.abi3.so"]  # fmt: skip
    meta = "Requires-Dist: torch<2.15,>=2.14\nRequires-Dist: numpy\nProvides-Extra: train\n"

    def wheel(names, name="ok.whl"):
        path = str(tmp_path / name)
        with zipfile.ZipFile(path, "w") as z:
            for n in names:
                z.writestr(n, "")
            z.writestr("kmgan_ext-0.1.0.dist-info/METADATA", meta)
        return path

    cw.check_wheel_contents(wheel(files))
    with pytest.raises(cw.Failed, match=r"missing \['kmgan_ext/_C\*\.so'\]"):
        cw.check_wheel_contents(wheel(files[:-1], "no_c.whl"))
    with pytest.raises(cw.Failed, match="unexpected.*tests/test_x.py"):
        cw.check_wheel_contents(wheel(files + ["tests/test_x.py"], "stray.whl"))


def test_torch_closure_follows_extras():
    """torch asks for cuda-toolkit[cudart, ...]: the nvidia-* libraries come through its extras
    (the first version of the check missed them and pip reinstalled them in the fresh venv)."""
    import importlib.metadata

    names = {d.metadata["Name"].lower() for d in _check_wheel_module().torch_closure()}
    assert "torch" in names
    wanted = [r for r in importlib.metadata.requires("torch") or [] if r.startswith("cuda-toolkit[")]
    if wanted:
        assert "nvidia-cuda-runtime" in names, names
