"""km.soft_assign past float32's range (issue 16, contract 2) on every kernel backend.

|x|, |c| past ~1e19 overflow float32 squared distances (near float32 max the differences
too) where the float64 reference's q stays finite: the kernels redo such rows in float64 from
the inputs. tests/test_bad_input.py checks one program at N = 6 in float32; here several
programs and tiles, rows of both kinds in one call (a huge row next to ordinary ones, a NaN
row), bfloat16 inputs (float32's range), Triton at the GPU's launch geometry too, and a
backward whose float32 sums overflow while the float64 gradient fits (the fallback path that
tests/test_backward_overflow.py's random data does not reach).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import kmgan_ext as km
from testing import fast_backend_params

SCALES = [3e19, 1e38]  # float32 squares overflow; differences too
SHAPES = [(6, 4, 3), (70, 40, 20)]  # (N, K, d): one program / block, and several with tiles
# (huge operand, dtype): bfloat16 has float32's range
CASES = [("x", torch.float32), ("centers", torch.float32), ("both", torch.bfloat16)]


def _geometries(backend):
    # Triton under the interpreter: its own few large programs, and the GPU's block sizes
    return ["interpreter", "gpu"] if backend == "triton" else ["native"]


def _geometry(name):
    if name == "gpu":
        import triton_emulation as em

        return em.gpu_launch_params()
    return contextlib.nullcontext()


def _inputs(scale, shape, dtype, where):
    n, k, d = shape
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=g).clamp(-3, 3)
    c = torch.randn(k, d, generator=g).clamp(-3, 3)
    if where in ("x", "both"):
        x[::2] *= scale  # huge rows next to ordinary ones (in one program)
    if where in ("centers", "both"):
        c[1:] *= scale
    x[1] = c[k - 1]  # a row on a center
    x[4, 0] = float("nan")  # a NaN row: NaN, whatever its neighbours
    return x.to(dtype), c.to(dtype)


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("where,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_forward_past_float32(device, backend, shape, scale, where, dtype):
    x, c = _inputs(scale, shape, dtype, where)
    for kind in ("student_t", "softmax"):
        want = km.soft_assign(x, c, kind=kind, temperature=2.0, backend="reference")
        assert want[~want.isnan().any(1)].isfinite().all()
        for geometry in _geometries(backend):
            with _geometry(geometry):
                got = km.soft_assign(x.to(device), c.to(device), kind=kind, temperature=2.0, backend=backend)
            assert got.dtype == want.dtype
            torch.testing.assert_close(got.cpu().double(), want.double(), rtol=1e-5, atol=1e-6,
                                       equal_nan=True, msg=lambda m: f"{kind}, {geometry}: {m}")


@pytest.mark.parametrize("device,backend", fast_backend_params())
@pytest.mark.parametrize("kind", ["student_t", "softmax"])
def test_backward_float32_sums_overflow(device, backend, kind):
    """20 equal rows at 2^127 tie between c_0 = 2^127 + 2^120 and c_2 = 2^127 - 2^120 (equal
    distances, exactly; their float32 squares overflow), with weights that give every row the
    same W_i0 = -1/4: a float32 sum of W_i0 x_i over a tile of rows passes 3.4e38, while
    grad c_0 = 2 sum_i W_i0 (c_0 - x_i) ~ 1e37 fits."""
    n, d, k = 20, 2, 4
    x = torch.full((n, d), 2.0**127)
    c = torch.stack([torch.full((d,), 2.0**127 + 2.0**120), torch.full((d,), -3e38),
                     torch.full((d,), 2.0**127 - 2.0**120), torch.full((d,), 1.0)])
    wq = torch.zeros(n, k)
    wq[:, 0], wq[:, 2] = 1.0, -1.0

    def grads(be, geometry="native"):
        xl, cl = x.clone().to(device).requires_grad_(), c.clone().to(device).requires_grad_()
        with _geometry(geometry):
            q = km.soft_assign(xl, cl, kind=kind, temperature=2.0, backend=be)
            (q * wq.to(device)).sum().backward()
        return q.detach().cpu(), xl.grad.cpu(), cl.grad.cpu()

    want = grads("reference")
    assert want[0][0, 0] == want[0][0, 2] > 0.3 and want[2].isfinite().all()
    for geometry in _geometries(backend):
        for i, (g, w) in enumerate(zip(grads(backend, geometry), want)):
            scale = float(w.abs().max())
            torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-5 * scale,
                                       msg=lambda m: f"{geometry}, output {i}: {m}")
