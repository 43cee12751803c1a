"""Defects of the Triton kernels found by reviewing the GPU code (issue 11, section 3).

Each test failed before its fix. 3.5 (approximate sqrt / division) is checked on the
compiled PTX in tests/test_triton_aot.py; the interpreter computes both exactly.
"""
from __future__ import annotations

import importlib
import os
import types

import pytest
import torch

import kmgan_ext as km
from kmgan_ext import reference

pytestmark = pytest.mark.emulated_gpu

if km.available_backends()["triton"] is not None:
    pytest.skip(f"triton: {km.available_backends()['triton']}", allow_module_level=True)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from kmgan_ext.kernels import _common  # noqa: E402

A = importlib.import_module("kmgan_ext.kernels.assign")
em = pytest.importorskip("triton_emulation")


# ---- 3.2: fast minibatch_update_ with d = 0 and K > 64 never counted the rows -------------
@pytest.mark.parametrize("k", [10, 70, 300])
@pytest.mark.parametrize("deterministic", [False, True])
def test_update_with_no_columns_still_counts(k, deterministic):
    labels = torch.arange(50) % k
    counts = torch.arange(k, dtype=torch.int64)
    centers = torch.zeros(k, 0)
    km.minibatch_update_(centers, counts, torch.zeros(50, 0), labels,
                         deterministic=deterministic, backend="triton")
    assert torch.equal(counts, torch.arange(k) + torch.bincount(labels, minlength=k))


# ---- 3.6: autotuning inside the op --------------------------------------------------------
def _fake_cuda():
    return types.SimpleNamespace(device=torch.device("cuda", 0))


def test_autotune_allowed_only_on_gpu_outside_capture(monkeypatch):
    monkeypatch.delenv(_common.AUTOTUNE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _common.autotune_allowed(_fake_cuda())
    assert not _common.autotune_allowed(torch.empty(1))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not _common.autotune_allowed(_fake_cuda())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv(_common.AUTOTUNE_ENV, "0")
    assert not _common.autotune_allowed(_fake_cuda())
    monkeypatch.delenv(_common.AUTOTUNE_ENV)
    try:
        km.kernels.set_autotune(False)
        assert not _common.autotune_allowed(_fake_cuda())
        km.kernels.set_autotune(True)
        assert _common.autotune_allowed(_fake_cuda())
    finally:
        km.kernels.set_autotune(None)
    with pytest.raises(TypeError, match="enabled"):
        km.kernels.set_autotune("no")


@pytest.mark.skipif(not INTERPRETED, reason="drives the GPU launch path through the interpreter")
@pytest.mark.parametrize("warmed", [False, True])
def test_no_benchmarking_when_capturing(monkeypatch, warmed):
    """Under capture the autotuner must not run: the config of an earlier eager call for the
    same key (warm-up), else the fixed default, launched directly."""
    def boom(*a, **k):
        raise AssertionError("the autotuner ran during capture")

    monkeypatch.setattr(A._assign_tc_tuned, "run", boom)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(200, 24, generator=g), torch.randn(90, 24, generator=g)
    key = (90, 24, (200).bit_length(), torch.float32)
    chosen = A._tc_configs()[6]
    if warmed:
        monkeypatch.setitem(A._tc_chosen, key, chosen)
    seen = []
    real = A._assign_tc_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append(kw.get("BLOCK_K"))
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(A, "_assign_tc_kernel", Spy())
    with em.gpu_launch_params():
        labels, dist2 = km.assign(x, c, backend="triton")
    ref = reference.assign(x, c)
    assert torch.equal(labels, ref[0])
    want = (chosen if warmed else A.TC_DEFAULT_CONFIG).kwargs["BLOCK_K"]
    assert seen[0] == want


# ---- 3.7: 64-bit offsets --------------------------------------------------------------------
@triton.jit
def _offsets_kernel(a_ptr, b_ptr, out_ptr):
    a = tl.load(a_ptr)
    b = tl.load(b_ptr)
    tl.store(out_ptr, _common.row_offset(a, b))
    tl.store(out_ptr + 1, _common.midpoint(a, b).to(tl.int64))
    tl.store(out_ptr + 2, (a * b).to(tl.int64))          # the old forms, for contrast
    tl.store(out_ptr + 3, ((a + b) // 2).to(tl.int64))


@pytest.mark.skipif(not INTERPRETED, reason="CPU tensors through the interpreter")
def test_offsets_do_not_wrap_at_2_31():
    a_v, b_v = 2**31 - 5, 2**31 - 3
    a = torch.tensor([a_v], dtype=torch.int32)
    b = torch.tensor([b_v], dtype=torch.int32)
    out = torch.zeros(4, dtype=torch.int64)
    import numpy as np

    with np.errstate(over="ignore"):
        _offsets_kernel[(1,)](a, b, out)
    assert out[0] == a_v * b_v and out[1] == (a_v + b_v) // 2
    # int32 arithmetic wraps there: what the kernels computed before.
    assert out[2] != a_v * b_v and out[3] != (a_v + b_v) // 2


def test_kernels_use_the_64_bit_forms():
    """The binary searches and the median row offset go through the helpers above."""
    import inspect

    for mod, name in (("pairwise_l1", "_l1_rank_grad_kernel"), ("pairwise_l1", "_l1_sorted_kernel"),
                      ("minibatch_update", "_sorted_segment_kernel")):
        src = inspect.getsource(getattr(importlib.import_module(f"kmgan_ext.kernels.{mod}"),
                                        name).fn)
        assert "(lo + hi) // 2" not in src and "_s + hi_s) // 2" not in src
        assert "(total_rows // 2) * D" not in src


@pytest.mark.skipif(not INTERPRETED, reason="drives the GPU launch path through the interpreter")
def test_assign_int64_row_list(monkeypatch):
    """The second pass's row list switches to int64 past 2^31 rows: forced here at 100 rows."""
    assert A.row_list_dtype(2**31) == torch.int32 and A.row_list_dtype(2**31 + 1) == torch.int64
    monkeypatch.setattr(A, "ROW_LIST_INT32_MAX", 100)
    from test_triton_emulation import near_ties

    x, c = near_ties(320, 40, 100, 1e-5, seed=2)
    with em.gpu_launch_params(), em.emulate("interleaved", seed=3) as st:
        labels, dist2 = km.assign(x, c, backend="triton")
    ref = reference.assign(x, c)
    assert st.launches >= 3  # prep, main, refine of the listed rows
    assert torch.equal(labels, ref[0])
    torch.testing.assert_close(dist2, ref[1])
