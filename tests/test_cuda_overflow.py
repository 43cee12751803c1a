"""Overflow and NaN rows in the CUDA kernels' multi-block paths (contracts 1-3), the CUDA twin of
tests/test_triton_overflow.py.

tests/test_bad_input.py covers them at N = 6 (one block); these shapes take several blocks of
assigned_distance's partials, the loss block's pulls over many rows, and both modes of the center
updates (the fast mode's float32 shared-memory tiles and its direct double path, the
deterministic mode's sorted pieces): float32 squares or tile sums past 3.4e38 whose float64
result fits, and a NaN row, which must reach its own cluster only. The float64 reference is the
truth. Runs on the CPU harness (cuda_emulated) and, on a GPU, on the real kernels.
"""
from __future__ import annotations

import pytest
import torch

import kmgan_ext as km
from testing import cuda_kernel_params

pytestmark = pytest.mark.emulated_gpu


def _close(got, want):
    for g, w in zip(got, want):
        if g is None:  # kmgan_losses' optional outputs
            continue
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.cpu().double(), w.cpu().double(), rtol=1e-5, atol=1e-5,
                                   equal_nan=True)


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
@pytest.mark.parametrize("reduction", ["fro", "mean", "sq_sum"])
@pytest.mark.parametrize("scale", [3e19, 1e30])
def test_distances_past_float32_squares(device, backend, reduction, scale):
    g = torch.Generator().manual_seed(0)
    # N > 8 rows a block (several float64 partials); every fake row's float32 square overflows.
    fr = torch.randn(90, 40, generator=g)
    ff = torch.randn(70, 40, generator=g) * scale
    cr = torch.randn(5, 40, generator=g) * scale
    cf = torch.randn(6, 40, generator=g)
    lab = torch.randint(0, 5, (70,), generator=g)
    fr, ff, cr, cf, lab = (t.to(device) for t in (fr, ff, cr, cf, lab))
    got = km.kmgan_losses(fr, ff, cr, cf, reduction=reduction, backend=backend)
    _close(got, km.kmgan_losses(fr, ff, cr, cf, reduction=reduction, backend="reference"))
    got_ad = km.assigned_distance(ff, lab, cr, reduction, backend=backend)
    _close([got_ad], [km.assigned_distance(ff, lab, cr, reduction, backend="reference")])
    if reduction != "sq_sum":
        assert torch.isfinite(got_ad)  # a norm: fits float32 (its squares do not)


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("kd", [(4, 16), (64, 160)], ids=["shared-tiles", "direct-double"])
@pytest.mark.parametrize("case", ["nan row", "huge rows"])
def test_center_update_nan_and_overflow(device, backend, deterministic, kd, case):
    g = torch.Generator().manual_seed(0)
    k, d = kd  # 4 x 16 float32 partials fit a block's shared memory; 64 x 160 do not
    n = 300  # two tiles of the fast mode
    x = torch.randn(n, d, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    if case == "nan row":
        x[5, 7] = float("nan")
    else:  # 40 rows at 3e38 in one tile: float32 sums overflow, the mean (the new center) fits
        labels[:40] = 3
        x[:40] = 3e38
    c = torch.randn(k, d, generator=g)
    cnt = torch.randint(0, 3, (k,), generator=g)
    x, labels, c, cnt = (t.to(device) for t in (x, labels, c, cnt))
    want_c, want_n = c.clone(), cnt.clone()
    km.minibatch_update_(want_c, want_n, x, labels, deterministic=deterministic,
                         backend="reference")
    km.minibatch_update_(c, cnt, x, labels, deterministic=deterministic, backend=backend)
    _close([c, cnt], [want_c, want_n])
    assert want_c.isnan().any(1).sum() == (1 if case == "nan row" else 0)
    assert want_c.isfinite().all() or case == "nan row"


@pytest.mark.parametrize("device,backend", cuda_kernel_params())
@pytest.mark.parametrize("deterministic", [False, True])
def test_step_near_float32_max(device, backend, deterministic):
    """minibatch_step_ on rows near float32 max that all take one center: the assignment's
    squares and the update's float32 tile sums overflow, the float64 answer fits."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(50, 3, generator=g) + 1) * 1e38
    c = torch.randn(4, 3, generator=g)
    cnt = torch.tensor([0, 3, 1, 0])
    x, c, cnt = x.to(device), c.to(device), cnt.to(device)
    want_c, want_n = c.clone(), cnt.clone()
    want_l = km.minibatch_step_(want_c, want_n, x, deterministic=deterministic, backend="reference")
    got_l = km.minibatch_step_(c, cnt, x, deterministic=deterministic, backend=backend)
    assert torch.equal(got_l.cpu(), want_l.cpu())
    _close([c, cnt], [want_c, want_n])
    assert want_c.isfinite().all()
