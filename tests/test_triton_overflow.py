"""Overflow and NaN rows in the Triton kernels' multi-program paths (contracts 1-3).

tests/test_bad_input.py covers them at N = 6 (the one-program kernels); these shapes take the
row-tile / fast / deterministic paths, at the interpreter's and at the GPU's launch
parameters: float32 squares or block sums past 3.4e38 whose float64 result fits, and a NaN
row, which must reach its own cluster only. The float64 reference is the truth.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

import kmgan_ext as km

if km.available_backends()["triton"] is not None:
    pytest.skip(f"triton: {km.available_backends()['triton']}", allow_module_level=True)

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRETED else "cuda"
GEOMETRIES = ["interpreter", "gpu"] if INTERPRETED else ["gpu"]


def _geometry(name):
    if name == "gpu" and INTERPRETED:
        import triton_emulation as em

        return em.gpu_launch_params()
    return contextlib.nullcontext()


def _close(got, want):
    for g, w in zip(got, want):
        if g is None:
            continue
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.cpu().double(), w.cpu().double(), rtol=1e-5, atol=1e-5,
                                   equal_nan=True)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("scale", [3e19, 1e30])
def test_distances_past_float32_squares(geometry, scale):
    g = torch.Generator().manual_seed(0)
    # d > 128 and N > 128: the loss block's row tiles and assigned_distance's partials.
    fr = torch.randn(300, 200, generator=g)
    ff = torch.randn(200, 200, generator=g) * scale
    cr = torch.randn(5, 200, generator=g) * scale
    cf = torch.randn(6, 200, generator=g)
    lab = torch.randint(0, 5, (200,), generator=g)
    fr, ff, cr, cf, lab = (t.to(DEVICE) for t in (fr, ff, cr, cf, lab))
    with _geometry(geometry):
        got = km.kmgan_losses(fr, ff, cr, cf, backend="triton")
        got_ad = [km.assigned_distance(ff, lab, cr, r, backend="triton")
                  for r in ("fro", "mean", "sq_sum")]
    _close(got, km.kmgan_losses(fr, ff, cr, cf, backend="reference"))
    _close(got_ad, [km.assigned_distance(ff, lab, cr, r, backend="reference")
                    for r in ("fro", "mean", "sq_sum")])
    assert torch.isfinite(got_ad[0])  # ~scale * 200: fits float32, its squares do not


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("case", ["nan row", "huge rows"])
def test_center_update_nan_and_overflow(geometry, deterministic, case):
    g = torch.Generator().manual_seed(0)
    n, k, d = 130, 64, 512  # N K d > 2^22: past the one-program update
    x = torch.randn(n, d, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    if case == "nan row":
        x[5, 7] = float("nan")
    else:  # 40 rows at 3e38: float32 sums overflow, the mean (the new center) fits
        labels[:40] = 3
        x[:40] = 3e38
    c = torch.randn(k, d, generator=g)
    cnt = torch.randint(0, 3, (k,), generator=g)
    x, labels, c, cnt = (t.to(DEVICE) for t in (x, labels, c, cnt))
    want_c, want_n = c.clone(), cnt.clone()
    km.minibatch_update_(want_c, want_n, x, labels, deterministic=deterministic,
                         backend="reference")
    with _geometry(geometry):
        km.minibatch_update_(c, cnt, x, labels, deterministic=deterministic, backend="triton")
    _close([c, cnt], [want_c, want_n])
    assert want_c.isnan().any(1).sum() == (1 if case == "nan row" else 0)
