"""Run bench/run_all.py with a planted wrong answer in every kernel of one backend.

    python tests/planted_bench.py BACKEND run_all-args...
    python tests/planted_bench.py BACKEND --sweep sweep-args...     (bench/sweep.py instead)

Every function of BACKEND's backend interface (kmgan_ext/_dispatch.py) is wrapped: float
outputs come back scaled by 1.01 and shifted by 1e-3 (so zeros change too), in-place updates
leave their first argument likewise off, integer outputs (labels) are left alone (the label
checks are tested apart: test_check_labels_rejects_a_wrong_label). A benchmark whose check
passes such a backend cannot tell a wrong kernel from a right one
(tests/test_bench.py::test_every_check_fails_a_planted_wrong_answer, and for the sweep
tests/test_bench_sweep.py::test_every_sweep_check_fails_a_planted_wrong_answer).
"""
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _off(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t * 1.01 + 1e-3
    if isinstance(t, (tuple, list)):
        return type(t)(_off(v) for v in t) if not hasattr(t, "_fields") else type(t)(*(_off(v) for v in t))
    return t


def _planted(fn, name):
    def wrong(*args, **kw):
        out = fn(*args, **kw)
        if name.endswith("_"):
            with torch.no_grad():
                args[0].mul_(1.01).add_(1e-3)
            return out
        return _off(out)

    return wrong


def plant(backend: str) -> None:
    from kmgan_ext import _dispatch

    right = _dispatch.implementation

    def implementation(b):
        impl = right(b)
        if b != backend:
            return impl
        return types.SimpleNamespace(**{n: _planted(getattr(impl, n), n) for n in dir(impl)
                                        if not n.startswith("__") and callable(getattr(impl, n))})

    _dispatch.implementation = implementation
    if backend == "cpu":
        # km.kmeans' bounded Lloyd kernel (csrc/cpu/lloyd_cpu.cpp) is called by km.kmeans itself,
        # not through the backend interface: its centers and distances are made as wrong.
        import importlib

        kmeans_mod = importlib.import_module("kmgan_ext.seeding.kmeans")
        bounded = kmeans_mod._lloyd_bounded

        def wrong_bounded(*args, **kw):
            out = bounded(*args, **kw)
            return None if out is None else _off(out)

        kmeans_mod._lloyd_bounded = wrong_bounded


if __name__ == "__main__":
    plant(sys.argv[1])
    if sys.argv[2:3] == ["--sweep"]:
        import sweep

        sweep.main(sys.argv[3:])
    else:
        import run_all

        run_all.main(sys.argv[2:])
