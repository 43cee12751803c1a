"""assign's GEMM tile with AVX-512 (csrc/cpu/assign_avx512.cpp) gives the AVX2 tile's e and
panel minima bit for bit, on every remainder of rows (twelves) and panels (pairs); and both
paths of km.assign / km.kmeans give the same results end to end (the AVX2 tile, under
KMGAN_EXT_CPU_NO_AVX512=1, run in a subprocess since the choice is made once per process).
On CPUs without AVX-512 the tile tests skip: there is one kernel only."""
import json
import os
import subprocess
import sys

import pytest
import torch

import kmgan_ext as km
from kmgan_ext._show_config import _cpu_flags, _switched_off

pytestmark = pytest.mark.skipif(
    not torch._C._dispatch_has_kernel_for_dispatch_key("kmgan_ext::dist_tile_native", "CPU"),
    reason="kmgan_ext._C without dist_tile_native (no AVX2 tile on this platform)",
)

FLAGS = _cpu_flags()


AVX2 = "avx2" in FLAGS and "fma" in FLAGS and not _switched_off("KMGAN_EXT_CPU_NO_AVX2")
AVX512 = AVX2 and "avx512f" in FLAGS and not _switched_off("KMGAN_EXT_CPU_NO_AVX512")
needs_avx512 = pytest.mark.skipif(not AVX512, reason="no AVX-512F here (or KMGAN_EXT_CPU_NO_*): one tile kernel")


def _tile(x, c, bias, avx512):
    return torch.ops.kmgan_ext.dist_tile_native(x, c, bias, avx512)


def _float64_tile(x, c, bias):
    """e = bias - 2 x.c in float64, and the panel minima over 16 centers (padding: +inf)."""
    k = c.shape[0]
    kw = (k + 15) // 16 * 16
    e = torch.full((x.shape[0], kw), float("inf"), dtype=torch.float64)
    e[:, :k] = bias.double() - 2.0 * x.double() @ c.double().T
    return e, e.view(x.shape[0], -1, 16).amin(-1)


@needs_avx512
@pytest.mark.parametrize("rows", [1, 11, 12, 13, 24, 37, 128])
@pytest.mark.parametrize("k", [1, 16, 17, 32, 33, 48, 100])
@pytest.mark.parametrize("d", [1, 7, 100])
def test_avx512_tile_is_the_avx2_tile_bit_for_bit(rows, k, d):
    g = torch.Generator().manual_seed(rows * 1000 + k * 10 + d)
    x = torch.randn(rows, d, generator=g)
    c = torch.randn(k, d, generator=g)
    bias = (c * c).sum(1)
    e2, m2 = _tile(x, c, bias, False)
    e5, m5 = _tile(x, c, bias, True)
    assert torch.equal(e5, e2) and torch.equal(m5, m2)
    # and both are the tile (not merely equal to each other): float32 within a few ulps of
    # the float64 tile's magnitude
    want_e, want_m = _float64_tile(x, c, bias)
    scale = (bias.abs().max().double() + 2.0 * x.double().abs().sum(1, keepdim=True) * c.double().abs().max()) * 1e-5
    finite = torch.isfinite(want_e)
    assert torch.equal(torch.isfinite(e5), finite)
    assert ((e5.double() - want_e).abs()[finite] <= scale.expand_as(want_e)[finite]).all()
    assert ((m5.double() - want_m).abs() <= scale).all()


@needs_avx512
def test_tile_panel_minimum_is_the_minimum_of_its_row():
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(25, 9, generator=g), torch.randn(40, 9, generator=g)
    e, m = _tile(x, c, torch.zeros(40), True)
    assert torch.equal(m, e.view(25, -1, 16).amin(-1))


_END_TO_END = r"""
import json, sys, torch
import kmgan_ext as km
g = torch.Generator().manual_seed(11)
out = {}
for n, d, k, offset in [(3001, 37, 100, 0.0), (2000, 64, 1000, 0.0), (1500, 16, 48, 1e4)]:
    means = 4.0 * torch.randn(10, d, generator=g) + offset
    x = (means[torch.randint(10, (n,), generator=g)] + torch.randn(n, d, generator=g)).float()
    c = x[torch.randperm(n, generator=g)[:k]].clone()
    lab, d2 = km.assign(x, c, backend="cpu")
    res = km.kmeans(x, k, init=c, niter=5, backend="torch")
    out[str((n, d, k))] = [lab.tolist(), d2.double().tolist(), res.centers.double().flatten().tolist()]
json.dump(out, sys.stdout)
"""


def _end_to_end(no_avx512):
    env = dict(os.environ, KMGAN_EXT_CPU_NO_AVX512="1" if no_avx512 else "0")
    out = subprocess.run([sys.executable, "-c", _END_TO_END], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@needs_avx512
def test_assign_and_kmeans_are_the_same_with_either_tile():
    """Labels are exact with either tile (assign's guard); this checks the AVX-512 routing
    end to end, and keeps the AVX2 tile run on CPUs that would otherwise never take it."""
    with_512, with_avx2 = _end_to_end(False), _end_to_end(True)
    assert with_512.keys() == with_avx2.keys()
    for key in with_512:
        assert with_512[key] == with_avx2[key], key


def test_bad_input_is_named():
    if not AVX2:
        pytest.skip("no AVX2 tile here")
    with pytest.raises(TypeError, match="x must be float32"):
        _tile(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4), False)
    with pytest.raises(ValueError, match="bias"):
        _tile(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(5), False)
    if not AVX512:
        with pytest.raises(RuntimeError, match="no AVX-512"):
            _tile(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4), True)
